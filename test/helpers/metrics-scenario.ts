import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createKilnClient, type KilnResponse } from '../../src/client/sign';
import { TEST_SECRET } from './app';
import { type KilnProcess, spawnKiln } from './kiln-process';
import { alive, waitFor } from './wait';
import { awayFromWindowEdge } from './window';

/**
 * A scripted day of Kiln, for the metrics tests: builds deployed, failed, cancelled (queued and building) and lost,
 * one left queued and one left building; credits granted, reserved, committed, released and expired; keyed requests
 * executed, replayed and reused; requests refused by the per-user rate limit. Every request it sends is tallied by
 * process, method, route template and status, so the test can say what each process's /metrics must read.
 *
 * The lost build needs a runner that dies: a "victim" process (command executor, a build that waits) claims it and is
 * killed with SIGKILL before the measured processes start; they reap it. Its own counters die with it, so nothing it
 * did is expected of the measured processes, and its hold was renewed to the victim's long RESERVATION_TTL_S, so the
 * reaper releases it (it cannot lapse first).
 */

const ROOT = new URL('../..', import.meta.url).pathname;
const SLOW_BUILD = `sh ${join(ROOT, 'test/fixtures/slow-build.sh')}`;

/** Holds taken by the measured processes live this long; the scenario's direct hold is left to expire. */
export const SCENARIO_TTL_S = 12;
/** The per-user quota the scenario fills (RATE_LIMIT_USER_PER_MIN of the measured processes). */
const USER_QUOTA = 40;
const RATE_LIMITED_EXTRA = 5;

/** Environment of the measured processes (add the shared one: database, schema, Redis prefix). */
export const SCENARIO_ENV: Record<string, string> = {
  BUILD_EXECUTOR: 'external',
  RUNNER_CONCURRENCY: '0',
  BUILD_LEASE_S: '2',
  RESERVATION_TTL_S: String(SCENARIO_TTL_S),
  CREDIT_SWEEP_INTERVAL_S: '1',
  // An interval gives the audit-staleness signal its denominator; the auditor's first run is an hour away, after the
  // scenario (which asks for its own audit).
  CREDIT_AUDIT_INTERVAL_S: '3600',
  RATE_LIMIT_USER_PER_MIN: String(USER_QUOTA),
  RATE_LIMIT_IP_PER_MIN: '0',
};

/** One request the scenario sent: which process answered, and the labels api_request_duration_seconds gives it. */
interface Sent {
  url: string;
  method: string;
  route: string;
  status: number;
}

/** What the measured processes must show once the scenario ran. */
export interface ScenarioExpectation {
  /** Per process URL: requests by `method route status`. */
  requests: Map<string, Map<string, number>>;
  /** Signed requests each process received (all signed with v1 and v2: outcome `both`). */
  signedRequests: Map<string, number>;
  /** Sums over the measured processes. */
  transitions: Record<string, number>;
  completed: Record<'deployed' | 'failed' | 'cancelled', number>;
  failures: Record<string, number>;
  durationCount: Record<'deployed' | 'failed' | 'cancelled', number>;
  queueWaitCount: number;
  /** Credits deployed builds used that no balance covered. */
  uncollected: number;
  credits: Record<'grant' | 'reserve' | 'commit' | 'refund' | 'release' | 'expire' | 'charge', number>;
  idempotency: Record<'executed' | 'replayed_store' | 'replayed_database' | 'key_in_use' | 'key_reused', number>;
  rateLimitedUser: number;
  /** The same on every process (read from the database). */
  gauges: {
    queueDepth: number;
    activeBuilds: number;
    holdsActive: number;
    creditsReserved: number;
    oldestQueuedBuildId: string;
    auditProblems: number;
  };
  /** When the scenario's full audit ran (the audit gauge must be at or after it). */
  auditAfterS: number;
  /** When the oldest queued build was created. */
  oldestQueuedAt: number;
}

type Build = { id: string; state: string; reservationId: string; reason: string | null };

/**
 * The victim: a process that claims one build of user `u_lost` and is killed while it runs. Returns the build's id
 * and when the victim was killed (its line in service_instances stays, last renewed at most 15 s before).
 * `env` is the shared environment (its DATA_DIR must be the one the measured processes will use in embedded mode).
 */
export async function loseABuild(env: Record<string, string>, tag: string): Promise<{ id: string; killedAt: number }> {
  const victim = await spawnKiln({
    ...env,
    BUILD_EXECUTOR: 'command',
    BUILD_COMMAND: SLOW_BUILD,
    RUNNER_CONCURRENCY: '1',
    BUILD_LEASE_S: '2',
    RESERVATION_TTL_S: '3600',
    RATE_LIMIT_IP_PER_MIN: '0',
  });
  let pidsFile: string | undefined;
  try {
    const api = createKilnClient({ baseUrl: victim.url, secret: TEST_SECRET });
    const ok = async (res: Promise<KilnResponse>, status: number) => {
      const r = await res;
      if (r.status !== status) throw new Error(`victim: expected ${status}, got ${r.status}: ${r.text}`);
      return r;
    };
    await ok(
      api('POST', '/v1/credits/grant', { userId: 'u_lost', credits: 1000, reason: 'seed', source: 'test' }),
      200,
    );
    await ok(api('POST', '/v1/projects', { id: `p_lost_${tag}`, ownerId: 'o', name: 'lost' }), 201);
    const created = await ok(
      api('POST', '/v1/builds', { projectId: `p_lost_${tag}`, userId: 'u_lost', estimatedCredits: 20 }),
      201,
    );
    const id = (created.body as Build).id;
    pidsFile = join(env.DATA_DIR, 'builds', id, 'pids');
    await waitFor('the victim to run the build', async () =>
      (await readFile(pidsFile!, 'utf8').catch(() => '')) ? true : undefined,
    );
    victim.child.kill('SIGKILL');
    const killedAt = Date.now();
    await victim.exited;
    return { id, killedAt };
  } finally {
    await victim.stop('SIGKILL');
    // The killed runner's command is in its own process group: reap it, as a host would.
    const pids = pidsFile ? (await readFile(pidsFile, 'utf8').catch(() => '')).trim().split(' ').map(Number) : [];
    for (const pid of pids.filter((p) => p > 0 && alive(p))) process.kill(pid, 'SIGKILL');
  }
}

/**
 * Run the scenario against the measured processes (requests alternate between them), after `loseABuild`. Returns
 * what every figure must be. `tag` keeps ids apart from another run on the same database.
 */
export async function runScenario(processes: KilnProcess[], lostBuildId: string, tag: string) {
  const sent: Sent[] = [];
  let turn = 0;
  const clients = processes.map((p) => ({
    url: p.url,
    call: createKilnClient({ baseUrl: p.url, secret: TEST_SECRET }),
  }));
  /** Send one signed request to the next process, tallying it under its route template. */
  const send = async <T = unknown>(
    method: string,
    path: string,
    route: string,
    body?: unknown,
    headers: Record<string, string> = {},
  ): Promise<KilnResponse<T>> => {
    const client = clients[turn++ % clients.length];
    const res = await client.call<T>(method, path, body, headers);
    sent.push({ url: client.url, method, route, status: res.status });
    return res;
  };
  const expect = async <T = unknown>(status: number, res: Promise<KilnResponse<T>>): Promise<KilnResponse<T>> => {
    const r = await res;
    if (r.status !== status) throw new Error(`expected ${status}, got ${r.status}: ${r.text}`);
    return r;
  };
  const project = (name: string) =>
    expect(201, send('POST', '/v1/projects', '/v1/projects', { id: `p_${name}_${tag}`, ownerId: 'o', name }));
  const build = async (name: string, credits: number, headers: Record<string, string> = {}, userId = 'u1') =>
    (
      await expect(
        201,
        send<Build>(
          'POST',
          '/v1/builds',
          '/v1/builds',
          { projectId: `p_${name}_${tag}`, userId, estimatedCredits: credits },
          headers,
        ),
      )
    ).body;
  const patch = (id: string, change: Record<string, unknown>) =>
    expect(200, send<Build>('PATCH', `/v1/builds/${id}`, '/v1/builds/:id', change));

  // The direct hold that will expire comes first: the rest of the scenario runs while it lapses.
  await expect(
    200,
    send('POST', '/v1/credits/grant', '/v1/credits/grant', {
      userId: 'u2',
      credits: 500,
      reason: 'seed',
      source: 'test',
    }),
  );
  const lapsing = await expect(
    201,
    send<{ reservationId: string }>('POST', '/v1/credits/reserve', '/v1/credits/reserve', {
      userId: 'u2',
      estimatedCredits: 25,
    }),
  );
  await expect(
    200,
    send(
      'POST',
      '/v1/credits/grant',
      '/v1/credits/grant',
      { userId: 'u1', credits: 10_000, reason: 'seed', source: 'test', plan: 'pro' },
      {
        'idempotency-key': `grant_${tag}`,
      },
    ),
  );
  for (const name of ['a', 'b', 'c', 'd', 'f', 'g', 'h', 'i']) await project(name);
  /**
   * The credit routes, each used in two rounds a few seconds apart: a hold committed in part, a hold released. A
   * scraper sees each route's series before its second use, so a rate (the credit routes' p95) has an increase.
   */
  const hold = async () =>
    (
      await expect(
        201,
        send<{ reservationId: string }>('POST', '/v1/credits/reserve', '/v1/credits/reserve', {
          userId: 'u2',
          estimatedCredits: 10,
        }),
      )
    ).body.reservationId;
  const creditRound = async () => {
    const commit = { reservationId: await hold(), actualCredits: 4 };
    await expect(200, send('POST', '/v1/credits/commit', '/v1/credits/commit', commit));
    const release = { reservationId: await hold(), reason: 'not needed' };
    await expect(200, send('POST', '/v1/credits/release', '/v1/credits/release', release));
  };
  await creditRound();

  // a: deployed, 60 of its 100 charged. b: failed. c: cancelled while queued. d: cancelled while building.
  const a = await build('a', 100);
  await patch(a.id, { state: 'building' });
  await patch(a.id, { state: 'deployed', actualCredits: 60 });
  const b = await build('b', 50);
  await patch(b.id, { state: 'building' });
  await patch(b.id, { state: 'failed', reason: 'exit_code', error: 'exit 1' });
  const c = await build('c', 30);
  await expect(200, send('POST', `/v1/builds/${c.id}/cancel`, '/v1/builds/:id/cancel'));
  const d = await build('d', 40);
  await patch(d.id, { state: 'building' });
  await expect(200, send('POST', `/v1/builds/${d.id}/cancel`, '/v1/builds/:id/cancel', { reason: 'user asked' }));

  // f: queued, with a key: executed, replayed, then the key reused for another body (422).
  const key = { 'idempotency-key': `build_f_${tag}` };
  const oldestQueuedAt = Date.now();
  const f = await build('f', 10, key);
  const replayed = await expect(
    201,
    send<Build>(
      'POST',
      '/v1/builds',
      '/v1/builds',
      { projectId: `p_f_${tag}`, userId: 'u1', estimatedCredits: 10 },
      key,
    ),
  );
  if (replayed.body.id !== f.id || replayed.headers.get('idempotent-replayed') !== 'true') {
    throw new Error(`the keyed create was not replayed: ${replayed.text}`);
  }
  await expect(
    422,
    send('POST', '/v1/builds', '/v1/builds', { projectId: `p_f_${tag}`, userId: 'u1', estimatedCredits: 11 }, key),
  );
  // g: left building (an external runner's lease is BUILD_TIMEOUT_S, 30 min by default).
  const g = await build('g', 15);
  await patch(g.id, { state: 'building' });
  // h: used 30 against a hold of 10: the hold is committed and 20 more charged from the balance. i: a user with 10
  // credits uses 50: its hold of 10 is committed, the other 40 are uncollected.
  const h = await build('h', 10);
  await patch(h.id, { state: 'building' });
  await patch(h.id, { state: 'deployed', actualCredits: 30 });
  await expect(
    200,
    send('POST', '/v1/credits/grant', '/v1/credits/grant', {
      userId: 'u_poor',
      credits: 10,
      reason: 'seed',
      source: 'test',
    }),
  );
  const i = await build('i', 10, {}, 'u_poor');
  await patch(i.id, { state: 'building' });
  await patch(i.id, { state: 'deployed', actualCredits: 50 });

  // The lost build is reaped by a measured process (worker_lost), its hold released.
  await waitFor('the lost build to be reaped', async () => {
    const r = await send<Build>('GET', `/v1/builds/${lostBuildId}`, '/v1/builds/:id');
    return r.status === 200 && r.body.state === 'failed' ? r.body : undefined;
  });

  // Rate limits: one user's quota filled, then RATE_LIMITED_EXTRA more refused.
  await awayFromWindowEdge(15_000);
  for (let i = 0; i < USER_QUOTA + RATE_LIMITED_EXTRA; i++) {
    await expect(i < USER_QUOTA ? 200 : 429, send('GET', '/v1/credits/balance/u_rl', '/v1/credits/balance/:userId'));
  }

  // The direct hold lapses and a sweeper writes its expiry (polled once a second: the reads count against u2's quota).
  await waitFor(
    'the lapsed hold to be written as expired',
    async () => {
      const r = await send<{ entries: { type: string; reservationId: string | null }[] }>(
        'GET',
        '/v1/credits/ledger/u2',
        '/v1/credits/ledger/:userId',
      );
      return r.body.entries.some((e) => e.type === 'expire' && e.reservationId === lapsing.body.reservationId)
        ? true
        : undefined;
    },
    (SCENARIO_TTL_S + 20) * 1000,
    1_000,
  );

  // The credit routes' second round, long after the first (a scraper has seen the first by now).
  await creditRound();

  const auditAfterS = Math.floor(Date.now() / 1000);
  const audit = await expect(200, send<{ ok: boolean }>('GET', '/v1/credits/audit', '/v1/credits/audit'));
  if (!audit.body.ok) throw new Error(`the books do not balance: ${audit.text}`);

  const requests = new Map<string, Map<string, number>>();
  const signedRequests = new Map<string, number>();
  for (const s of sent) {
    const byKey = requests.get(s.url) ?? new Map<string, number>();
    const key = `${s.method} ${s.route} ${s.status}`;
    byKey.set(key, (byKey.get(key) ?? 0) + 1);
    requests.set(s.url, byKey);
    signedRequests.set(s.url, (signedRequests.get(s.url) ?? 0) + 1);
  }
  const expected: ScenarioExpectation = {
    requests,
    signedRequests,
    // The lost build was queued and started by the victim: only its end is the measured processes'.
    transitions: {
      'none queued': 8,
      'queued building': 6,
      'queued cancelled': 1,
      'building deployed': 3,
      'building failed': 2,
      'building cancelled': 1,
    },
    completed: { deployed: 3, failed: 2, cancelled: 2 },
    failures: { exit_code: 1, worker_lost: 1 },
    durationCount: { deployed: 3, failed: 2, cancelled: 1 },
    queueWaitCount: 6,
    uncollected: 40,
    credits: {
      grant: 10_500 + 10,
      // builds a, b, c, d, f, g, h, i; the lapsing hold; two rounds of 10 + 10
      reserve: 100 + 50 + 30 + 40 + 10 + 15 + 10 + 10 + 25 + 40,
      // a; h and i their whole holds; two rounds
      commit: 60 + 10 + 10 + 2 * 4,
      refund: 40 + 2 * 6,
      // builds b, c, d, the lost one; two rounds
      release: 50 + 30 + 40 + 20 + 2 * 10,
      expire: 25,
      // h beyond its hold (i's user had nothing left)
      charge: 20,
    },
    idempotency: { executed: 2, replayed_store: 1, replayed_database: 0, key_in_use: 0, key_reused: 1 },
    rateLimitedUser: RATE_LIMITED_EXTRA,
    gauges: {
      queueDepth: 1,
      activeBuilds: 1,
      holdsActive: 2,
      creditsReserved: 10 + 15,
      oldestQueuedBuildId: f.id,
      auditProblems: 0,
    },
    auditAfterS,
    oldestQueuedAt,
  };
  return { expected, builds: { a, b, c, d, f, g, h, i } };
}
