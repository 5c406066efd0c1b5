import pino from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { verifyWebhook } from '../../src/client/webhook';
import { DeliveryWorker } from '../../src/delivery/worker';
import { parseNetworkList } from '../../src/domain/ip-ranges';
import type { WebhookPayload } from '../../src/domain/webhooks';
import { BuildSignals } from '../../src/store/signals';
import { startTestApp, type TestApp } from '../helpers/app';
import { type Received, type Receiver, startReceiver } from '../helpers/receiver';
import { signedInject } from '../helpers/signed';
import { sleep, waitFor } from '../helpers/wait';

/**
 * Webhooks end to end inside one process: the HTTP app writes events (the outbox rows come with them), a real
 * DeliveryWorker on the same database and store delivers them to a real local receiver (127.0.0.1, allow-listed).
 */
const LOOPBACK = parseNetworkList('127.0.0.1/32').networks;
const SCHEDULE = [0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1];

describe('webhooks: outbox, delivery, replay', () => {
  let t: TestApp;
  let receiver: Receiver;
  const workers: { worker: DeliveryWorker; signals: BuildSignals }[] = [];
  const startWorker = async (options: { allowedNetworks?: typeof LOOPBACK; disableAfterS?: number } = {}) => {
    const logger = pino({ level: 'silent' });
    const signals = new BuildSignals(t.store.store, logger);
    const worker = new DeliveryWorker({
      db: t.database.db.background,
      signals,
      logger,
      concurrency: 8,
      timeoutS: 5,
      retryScheduleS: SCHEDULE,
      disableAfterS: options.disableAfterS ?? 3600,
      allowHttp: true,
      allowedNetworks: options.allowedNetworks ?? LOOPBACK,
      pollMs: 200,
    });
    await worker.start();
    workers.push({ worker, signals });
    return worker;
  };
  const stopWorkers = async () => {
    for (const { worker, signals } of workers.splice(0)) {
      await worker.stop(5_000);
      await signals.close();
    }
  };

  beforeAll(async () => {
    t = await startTestApp({
      BUILD_EXECUTOR: 'external',
      WEBHOOK_ALLOWED_NETWORKS: '127.0.0.1/32',
      WEBHOOK_ALLOW_HTTP: 'true',
      WEBHOOK_SECRET_OVERLAP_S: '3600',
    });
    const granted = await call('POST', '/v1/credits/grant', {
      userId: 'u_hook',
      credits: 1_000_000,
      reason: 'test budget',
      source: 'test',
    });
    expect(granted.statusCode).toBe(200);
    receiver = await startReceiver();
  });
  afterEach(async () => {
    await stopWorkers();
    receiver.answer = () => ({ status: 204 });
  });
  afterAll(async () => {
    await receiver.close();
    await t.close();
  });

  const call = (method: 'GET' | 'POST' | 'PATCH' | 'PUT', url: string, body?: unknown) =>
    signedInject(t.app, { method, url, body });
  let projects = 0;
  /** A project whose webhook posts to the receiver under /p/<id>; its secret. */
  const hookedProject = async (extra: Record<string, unknown> = {}) => {
    const id = `prj_hook_${++projects}_${Date.now()}`;
    const res = await call('POST', '/v1/projects', {
      id,
      ownerId: 'o',
      name: id,
      webhookUrl: `${receiver.url}/p/${id}`,
      ...extra,
    });
    expect(res.statusCode).toBe(201);
    const body = res.json();
    expect(body.webhookSecret).toMatch(/^whsec_[A-Za-z0-9+/]{32}$/);
    expect(body.webhook).toMatchObject({ status: 'active', failingSince: null, disabledAt: null });
    return { id, secret: body.webhookSecret as string };
  };
  /** A build of the project driven through `states` (PATCH), each transition one event. */
  const buildThrough = async (projectId: string, states: string[]) => {
    const created = await call('POST', '/v1/builds', { projectId, userId: 'u_hook', estimatedCredits: 1 });
    expect(created.statusCode).toBe(201);
    const id = created.json().id as string;
    for (const state of states) {
      const res = await call('PATCH', `/v1/builds/${id}`, { state, ...(state === 'failed' ? { reason: 'x' } : {}) });
      expect(res.statusCode).toBe(200);
    }
    return id;
  };
  const forProject = (id: string) => receiver.received.filter((r) => r.path === `/p/${id}`);
  const payloads = (got: Received[], secret: string) =>
    got.map((r) => verifyWebhook<WebhookPayload>(secret, r.headers as Record<string, string>, r.body));
  /** The seqs a build's deliveries arrived with, in arrival order (first arrival of each message). */
  const seqsOf = (got: ReturnType<typeof payloads>, buildId: string) =>
    got.filter((p) => p.payload.data.buildId === buildId).map((p) => p.payload.data.seq);
  const deliveries = async (buildId: string) => {
    const res = await call('GET', `/v1/builds/${buildId}/deliveries?limit=200`);
    expect(res.statusCode).toBe(200);
    return res.json().deliveries as {
      seq: number;
      status: string;
      replay: boolean;
      attempts: { outcome: string; failure: string | null; statusCode: number | null; responseBody: string | null }[];
    }[];
  };

  it('refuses webhook URLs it could never deliver to, naming the field', async () => {
    const bad = [
      'ftp://example.com/hook',
      'not a url',
      'https://user:pw@example.com/hook',
      'https://10.0.0.8/hook',
      'https://[::1]/hook',
      'https://169.254.169.254/latest',
    ];
    for (const webhookUrl of bad) {
      const res = await call('POST', '/v1/projects', { ownerId: 'o', name: 'bad', webhookUrl });
      expect(res.statusCode, webhookUrl).toBe(400);
      expect(res.json().data.issues[0].path, webhookUrl).toBe('body.webhookUrl');
    }
    const strict = await startTestApp({ WEBHOOK_ALLOW_HTTP: 'false' });
    try {
      const res = await signedInject(strict.app, {
        method: 'POST',
        url: '/v1/projects',
        body: { ownerId: 'o', name: 'http', webhookUrl: 'http://example.com/hook' },
      });
      expect(res.statusCode).toBe(400);
      expect(res.json().data.issues[0].message).toMatch(/https/);
    } finally {
      await strict.close();
    }
  });

  it('delivers every event of concurrent builds, signed (verifyWebhook), in seq order per build', async () => {
    const hooked = await Promise.all(Array.from({ length: 4 }, () => hookedProject()));
    await startWorker();
    const builds = await Promise.all(
      hooked.map((p, i) => buildThrough(p.id, i % 2 ? ['building', 'deployed'] : ['building', 'failed'])),
    );
    await waitFor('every event delivered', async () =>
      hooked.every((p) => forProject(p.id).length >= 3) ? true : undefined,
    );
    for (const [i, p] of hooked.entries()) {
      const got = payloads(forProject(p.id), p.secret);
      expect(seqsOf(got, builds[i])).toEqual([1, 2, 3]);
      expect(got.map((g) => g.payload.type)).toEqual([
        'build.queued',
        'build.started',
        i % 2 ? 'build.deployed' : 'build.failed',
      ]);
      expect(got.every((g) => g.payload.replay === false && g.payload.data.projectId === p.id)).toBe(true);
      // Another project's secret does not verify it.
      expect(() => payloads(forProject(p.id), hooked[(i + 1) % hooked.length].secret)).toThrow(/signature/);
      // The receiver has them; each attempt is recorded just after it answered.
      const log = await waitFor('the attempts recorded', async () => {
        const all = await deliveries(builds[i]);
        return all.every((d) => d.status !== 'pending') ? all : undefined;
      });
      expect(log.map((d) => [d.seq, d.status])).toEqual([
        [1, 'delivered'],
        [2, 'delivered'],
        [3, 'delivered'],
      ]);
      expect(log[0].attempts).toMatchObject([{ outcome: 'delivered', statusCode: 204, failure: null }]);
    }
  });

  it('holds a build’s later events while an earlier one retries, through refusal, 500 and 429, then sends the backlog in order', async () => {
    const p = await hookedProject();
    const other = await hookedProject();
    let phase: 'error' | 'throttle' | 'ok' = 'error';
    receiver.answer = (r) => {
      if (r.path !== `/p/${p.id}`) return { status: 204 };
      if (phase === 'error') return { status: 500, body: 'database down on our side' };
      if (phase === 'throttle') return { status: 429, headers: { 'retry-after': '1' }, body: 'slow down' };
      return { status: 200, body: 'ok' };
    };
    await receiver.stop(); // refusing connections
    await startWorker();
    const build = await buildThrough(p.id, ['building', 'deployed']);
    await waitFor('refused attempts', async () => {
      const log = await deliveries(build);
      return log[0]?.attempts.some((a) => a.failure === 'connect_failed') ? true : undefined;
    });
    await receiver.restart();
    // Another endpoint is not held up by this one.
    const otherBuild = await buildThrough(other.id, ['building']);
    await waitFor('the other project delivered', async () => (forProject(other.id).length >= 2 ? true : undefined));
    await waitFor('a 500 answered', async () => (forProject(p.id).length >= 1 ? true : undefined));
    await sleep(1_500);
    phase = 'throttle';
    await waitFor('a 429 answered', async () =>
      (await deliveries(build))[0].attempts.some((a) => a.statusCode === 429) ? true : undefined,
    );
    // Nothing after seq 1 was sent while seq 1 was failing.
    expect(forProject(p.id).every((r) => JSON.parse(r.body).data.seq === 1)).toBe(true);
    phase = 'ok';
    await waitFor('the backlog delivered', async () =>
      (await deliveries(build)).every((d) => d.status === 'delivered') ? true : undefined,
    );
    const accepted = forProject(p.id).filter((_, i, all) => i >= all.length - 3);
    expect(seqsOf(payloads(accepted, p.secret), build)).toEqual([1, 2, 3]);
    const first = (await deliveries(build))[0];
    const failures = first.attempts.filter((a) => a.outcome === 'failed');
    expect(failures.map((a) => a.failure)).toEqual(expect.arrayContaining(['connect_failed', 'http_status']));
    expect(failures.find((a) => a.statusCode === 500)?.responseBody).toBe('database down on our side');
    expect(first.attempts.at(-1)).toMatchObject({ outcome: 'delivered', statusCode: 200, responseBody: 'ok' });
    // Every retry of one message carries the same webhook-id; its failing mark is gone once it succeeded.
    const ids = new Set(
      forProject(p.id)
        .filter((r) => JSON.parse(r.body).data.seq === 1)
        .map((r) => r.headers['webhook-id']),
    );
    expect(ids.size).toBe(1);
    expect((await call('GET', `/v1/projects/${p.id}`)).json().webhook.status).toBe('active');
    expect(otherBuild).toBeTruthy();
  });

  it('disables an endpoint that answers 410 Gone, and naming its URL again enables it', async () => {
    const p = await hookedProject();
    receiver.answer = (r) => (r.path === `/p/${p.id}` ? { status: 410, body: 'gone' } : { status: 204 });
    // Both events queued before the first attempt: the 410 fails the one waiting behind it too.
    const build = await buildThrough(p.id, ['building']);
    await startWorker();
    const project = await waitFor('the endpoint disabled', async () => {
      const body = (await call('GET', `/v1/projects/${p.id}`)).json();
      return body.webhook.status === 'disabled' ? body : undefined;
    });
    expect(project.webhook).toMatchObject({ status: 'disabled', disabledReason: 'gone' });
    expect((await deliveries(build)).map((d) => [d.seq, d.status, d.attempts.length])).toEqual([
      [1, 'failed', 1],
      [2, 'failed', 0],
    ]);
    // Disabled: new events queue nothing.
    await call('PATCH', `/v1/builds/${build}`, { state: 'deployed' });
    expect(await deliveries(build)).toHaveLength(2);
    receiver.answer = () => ({ status: 204 });
    const again = await call('PATCH', `/v1/projects/${p.id}`, { webhookUrl: `${receiver.url}/p/${p.id}` });
    expect(again.statusCode).toBe(200);
    expect(again.json().webhook.status).toBe('active');
    expect(again.json().webhookSecret).toBeUndefined(); // the same URL keeps its secret
    const replay = await call('POST', `/v1/builds/${build}/replay`, { fromSeq: 1 });
    expect(replay.json()).toEqual({ replayed: 3, fromSeq: 1, toSeq: 3, webhookDeliveries: 3 });
    await waitFor('the replay delivered', async () =>
      (await deliveries(build)).filter((d) => d.replay && d.status === 'delivered').length === 3 ? true : undefined,
    );
  });

  it('disables an endpoint failing for longer than WEBHOOK_DISABLE_AFTER_S', async () => {
    const p = await hookedProject();
    receiver.answer = (r) => (r.path === `/p/${p.id}` ? { status: 503 } : { status: 204 });
    await startWorker({ disableAfterS: 2 });
    await buildThrough(p.id, []);
    const project = await waitFor(
      'the endpoint disabled',
      async () => {
        const body = (await call('GET', `/v1/projects/${p.id}`)).json();
        return body.webhook.status === 'disabled' ? body : undefined;
      },
      20_000,
    );
    expect(project.webhook.disabledReason).toBe('failing');
    expect(project.webhook.failingSince).not.toBeNull();
  });

  it('replays exactly the asked range, marked replay, and refuses ranges outside the build', async () => {
    const p = await hookedProject();
    await startWorker();
    const build = await buildThrough(p.id, ['building', 'deployed']);
    await waitFor('the events delivered', async () => (forProject(p.id).length >= 3 ? true : undefined));
    const res = await call('POST', `/v1/builds/${build}/replay`, { fromSeq: 2, toSeq: 3 });
    expect(res.statusCode).toBe(200);
    expect(res.json()).toEqual({ replayed: 2, fromSeq: 2, toSeq: 3, webhookDeliveries: 2 });
    await waitFor('the replay delivered', async () => (forProject(p.id).length >= 5 ? true : undefined));
    await sleep(500);
    const got = payloads(forProject(p.id), p.secret);
    expect(got.map((g) => [g.payload.data.seq, g.payload.replay])).toEqual([
      [1, false],
      [2, false],
      [3, false],
      [2, true],
      [3, true],
    ]);
    // A replay is a new message: its own webhook-id.
    expect(new Set(got.map((g) => g.id)).size).toBe(5);
    for (const [body, field] of [
      [{ fromSeq: 4 }, 'body.fromSeq'],
      [{ fromSeq: 1, toSeq: 9 }, 'body.toSeq'],
      [{ fromSeq: 3, toSeq: 2 }, 'body.toSeq'],
    ] as const) {
      const refused = await call('POST', `/v1/builds/${build}/replay`, body);
      expect(refused.statusCode, JSON.stringify(body)).toBe(400);
      expect(refused.json().data.issues[0].path).toBe(field);
      expect(refused.json().data.lastSeq).toBe(3);
    }
    expect((await call('POST', '/v1/builds/bld_none/replay', { fromSeq: 1 })).statusCode).toBe(404);
    expect((await call('POST', `/v1/builds/${build}/replay`, { fromSeq: 0 })).statusCode).toBe(400);
    await sleep(400);
    expect(forProject(p.id)).toHaveLength(5);
  });

  it('rotates the secret with an overlap in which both secrets sign', async () => {
    const p = await hookedProject();
    const rotated = await call('POST', `/v1/projects/${p.id}/webhook-secret`);
    expect(rotated.statusCode).toBe(200);
    const next = rotated.json().webhookSecret as string;
    expect(next).toMatch(/^whsec_/);
    expect(next).not.toBe(p.secret);
    expect(rotated.json().webhook.previousSecretValidUntil).not.toBeNull();
    await startWorker();
    await buildThrough(p.id, []);
    await waitFor('delivered', async () => (forProject(p.id).length >= 1 ? true : undefined));
    const [got] = forProject(p.id);
    expect(String(got.headers['webhook-signature']).split(' ')).toHaveLength(2);
    expect(() => payloads([got], next)).not.toThrow();
    expect(() => payloads([got], p.secret)).not.toThrow();
    // Read back later, the secret is never shown again.
    expect((await call('GET', `/v1/projects/${p.id}`)).json().webhookSecret).toBeUndefined();
    const plain = await call('POST', '/v1/projects', { ownerId: 'o', name: 'no hook' });
    const none = await call('POST', `/v1/projects/${plain.json().id}/webhook-secret`);
    expect(none.statusCode).toBe(409);
    expect(none.json().error).toBe('WEBHOOK_NOT_SET');
    // A new URL gets a new secret; removing the URL removes the webhook.
    const moved = await call('PATCH', `/v1/projects/${p.id}`, { webhookUrl: `${receiver.url}/p/${p.id}/v2` });
    expect(moved.json().webhookSecret).toMatch(/^whsec_/);
    const removed = await call('PATCH', `/v1/projects/${p.id}`, { webhookUrl: null });
    expect(removed.json()).toMatchObject({ webhookUrl: null, webhook: null });
  });

  it('refuses at every attempt an address outside the allow-list (a name resolving to loopback), recording why', async () => {
    const p = await hookedProject();
    // This worker has no allow-list: localhost resolves to a loopback address, which it must not reach.
    await call('PATCH', `/v1/projects/${p.id}`, { webhookUrl: `http://localhost:${receiver.port}/p/${p.id}` });
    await startWorker({ allowedNetworks: [] });
    const build = await buildThrough(p.id, []);
    const log = await waitFor('a refused attempt', async () => {
      const all = await deliveries(build);
      return all[0]?.attempts.length ? all : undefined;
    });
    expect(log[0].attempts[0]).toMatchObject({ outcome: 'failed', failure: 'blocked_address', statusCode: null });
    expect(forProject(p.id)).toHaveLength(0);
  });
});
