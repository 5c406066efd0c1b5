import { describe, expect, it } from 'vitest';
import {
  type Build,
  createKilnClient,
  isKilnError,
  type KilnClientOptions,
  type KilnError,
  type ResponseInfo,
} from '../../packages/client/src/index';
import { TEST_SECRET } from '../helpers/app';
import { sharedKilns } from '../helpers/kiln-process';

/**
 * The client package against a real Kiln process: a logical operation retried after its answer was lost is one
 * build, and Kiln's refusals arrive as typed KilnErrors. RUNNER_CONCURRENCY is 0 (spawnKiln's default), so builds
 * stay queued and a second one on a project is refused with BUILD_ALREADY_RUNNING.
 */
describe('the client package end to end', () => {
  const shared = sharedKilns({ RATE_LIMIT_USER_PER_MIN: '0', RATE_LIMIT_IP_PER_MIN: '0' });
  // One process for the block: embedded PGlite allows one per data directory.
  let started: ReturnType<typeof shared.start> | undefined;
  const kilnOnce = () => {
    started ??= shared.start();
    return started;
  };

  async function caught(promise: Promise<unknown>): Promise<KilnError> {
    const error = await promise.then(
      () => undefined,
      (e: unknown) => e,
    );
    if (!isKilnError(error)) throw new Error(`expected a KilnError, got ${String(error)}`);
    return error;
  }

  it('retries a build whose answer was lost with the same Idempotency-Key: one build, the replayed answer', async () => {
    const kiln = await kilnOnce();
    const responses: ResponseInfo[] = [];
    let lost = 0;
    // A fetch that delivers the first POST /v1/builds but loses its answer, as a dropped connection would.
    const lossy: typeof fetch = async (input, init) => {
      const response = await fetch(input, init);
      if (init?.method === 'POST' && String(input).endsWith('/v1/builds') && lost++ === 0) {
        await response.text();
        throw new TypeError('fetch failed (the answer was lost)');
      }
      return response;
    };
    const options: KilnClientOptions = {
      baseUrl: kiln.url,
      secret: TEST_SECRET,
      correlationId: 'e2e_client_1',
      retry: { baseDelayMs: 50 },
      onResponse: (info) => responses.push(info),
    };
    const client = createKilnClient({ ...options, fetch: lossy });

    await client.grantCredits({ userId: 'client_user', credits: 1000, reason: 'e2e', source: 'test' });
    const project = await client.createProject({ id: 'client_prj', ownerId: 'client_user', name: 'client e2e' });
    expect(project).toMatchObject({ id: 'client_prj', version: 1 });

    const build = await client.createBuild({ projectId: 'client_prj', userId: 'client_user', estimatedCredits: 10 });
    expect(build).toMatchObject({ projectId: 'client_prj', state: 'queued', estimatedCredits: 10 });
    expect(lost).toBe(2);
    // onResponse saw the one answer the client received: the replay of the first attempt's.
    const seen = responses.filter((r) => r.method === 'POST' && r.path === '/v1/builds');
    expect(seen.map((r) => [r.status, r.attempt, r.headers.get('idempotent-replayed')])).toEqual([[201, 2, 'true']]);

    const list = await client.request<{ builds: Build[] }>('GET', '/v1/builds?projectId=client_prj');
    expect(list.builds.map((b) => b.id)).toEqual([build.id]);
    // One hold for that one build.
    expect(await client.getBalance('client_user')).toMatchObject({ balance: 1000, reserved: 10, available: 990 });
    expect((await client.getBuild(build.id)).reservationId).toBe(build.reservationId);

    // The same logical operation sent twice at once (same key) on a project that does not exist: both callers get
    // the same recorded 404 (the second waits out IDEMPOTENCY_KEY_IN_USE through its retries), one request id.
    const twice = await Promise.allSettled(
      [1, 2].map(() =>
        client.request<Build>('POST', '/v1/builds', {
          body: { projectId: 'client_prj2', userId: 'client_user' },
          idempotencyKey: 'client-e2e-same-op',
        }),
      ),
    );
    const reasons = twice.map((r) => (r.status === 'rejected' ? r.reason : r.value));
    for (const reason of reasons) expect(isKilnError(reason, 'PROJECT_NOT_FOUND')).toBe(true);
    const [first, second] = reasons as KilnError[];
    expect(second.requestId).toBe(first.requestId);

    // A second active build on the project: 429 BUILD_ALREADY_RUNNING, typed, and not retried. (An attempt before it
    // may have met a transient answer the client does retry, such as a 503 on a loaded machine: that is allowed.)
    const before = responses.length;
    const busy = await caught(client.createBuild({ projectId: 'client_prj', userId: 'client_user' }));
    expect(busy).toMatchObject({ status: 429, error: 'BUILD_ALREADY_RUNNING' });
    const answers = responses.slice(before).map((r) => `${r.status} ${(r.body as { error?: string })?.error}`);
    expect(
      answers.filter((a) => a === '429 BUILD_ALREADY_RUNNING'),
      answers.join(', '),
    ).toHaveLength(1);
    expect(answers.at(-1)).toBe('429 BUILD_ALREADY_RUNNING');
    expect(
      answers.filter((a) => a.startsWith('500')),
      answers.join(', '),
    ).toEqual([]);
    expect(busy.data).toMatchObject({ activeBuildId: build.id });
    expect(busy.retryAfterSeconds).toBeGreaterThan(0);
  });

  it('throws typed errors: 404 and 400 VALIDATION_ERROR with their request ids, 402 with the shortfall', async () => {
    const kiln = await kilnOnce();
    const client = createKilnClient({ baseUrl: kiln.url, secret: TEST_SECRET, correlationId: 'e2e_client_2' });

    const missing = await caught(client.getBuild('bld_does_not_exist'));
    expect(missing).toMatchObject({ status: 404, error: 'BUILD_NOT_FOUND', attempts: 1 });
    expect(missing.requestId).toMatch(/^req_/);
    expect(missing.requestId).toBe(missing.headers.get('x-request-id'));
    expect(missing.correlationId).toBe('e2e_client_2');
    expect(missing.message).toContain('bld_does_not_exist');

    const invalid = await caught(
      client.request('POST', '/v1/builds', { body: { projectId: 'bad id!', estimatedCredits: -1 } }),
    );
    expect(invalid).toMatchObject({ status: 400, error: 'VALIDATION_ERROR', attempts: 1 });
    expect(invalid.requestId).toMatch(/^req_/);
    const issues = (invalid.data as { issues: { path: string; message: string }[] }).issues;
    expect(issues.length).toBeGreaterThanOrEqual(2);

    await client.createProject({ id: 'poor_prj', ownerId: 'poor_user', name: 'no credits' });
    await client.grantCredits({ userId: 'poor_user', credits: 5, reason: 'e2e', source: 'test' });
    const poor = await caught(client.createBuild({ projectId: 'poor_prj', userId: 'poor_user', estimatedCredits: 50 }));
    expect(poor).toMatchObject({ status: 402, error: 'INSUFFICIENT_CREDITS', attempts: 1 });
    expect(poor.data).toMatchObject({ required: 50, available: 5, shortfall: 45 });
    expect(poor.requestId).toMatch(/^req_/);

    // raw(): the same refusal as an answer, for code that branches on status.
    const raw = await client.raw<{ error: string }>('GET', '/v1/projects/nope');
    expect(raw.status).toBe(404);
    expect(raw.body.error).toMatch(/NOT_FOUND$/);
  });
});
