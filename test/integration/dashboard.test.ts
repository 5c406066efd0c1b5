import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { appendEvent } from '../../src/db/builds';
import { startTestApp, type TestApp } from '../helpers/app';
import { signedInject } from '../helpers/signed';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** The page's figures are read at most once a second per process (and the pipeline's too): wait past both. */
const PAST_CACHE_MS = 2_100;

type Dashboard = {
  generatedAt: string;
  pipeline: Record<string, unknown>;
  active: { id: string; progress: number | null; phase: string | null; message: string | null; ageSeconds: number }[];
  recent: { id: string; state: string; reason: string | null; durationSeconds: number | null }[];
  lastHour: Record<string, unknown>;
  credits: { lastHour: Record<string, number>; activeHolds: number; reservedCredits: number };
  routes: { method: string; route: string; requests: number; clientErrors: number; errorRate: number }[];
  audit: { ok: boolean; problems: number; stale: boolean; ranAt: string } | null;
  dependencies: Record<string, string>;
};

describe('the live page: GET /dashboard and /dashboard/data', () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await startTestApp({ BUILD_EXECUTOR: 'external', CREDIT_AUDIT_INTERVAL_S: '0' });
  });
  afterAll(() => t?.close());

  const call = (method: 'GET' | 'POST' | 'PATCH', url: string, body?: unknown) =>
    signedInject(t.app, { method, url, body });
  const data = async (): Promise<Dashboard> => {
    const res = await t.app.inject({ method: 'GET', url: '/dashboard/data' });
    expect(res.statusCode).toBe(200);
    expect(res.headers['cache-control']).toBe('no-store');
    return res.json();
  };
  let projects = 0;
  /** A build of a fresh project holding 100 credits, moved through `steps` (each a PATCH body). */
  const build = async (...steps: Record<string, unknown>[]) => {
    const projectId = `prj_dash_${++projects}`;
    expect((await call('POST', '/v1/projects', { id: projectId, ownerId: 'u', name: projectId })).statusCode).toBe(201);
    const created = await call('POST', '/v1/builds', { projectId, userId: 'user_dash', estimatedCredits: 100 });
    expect(created.statusCode).toBe(201);
    const id = created.json().id as string;
    for (const step of steps) expect((await call('PATCH', `/v1/builds/${id}`, step)).statusCode).toBe(200);
    return id;
  };
  const ids: Record<string, string> = {};

  it('shows what was done: queue, builds running with progress, recent builds, outcomes, credits by kind', async () => {
    // Requests on routes nothing else here uses, for the error rate by route (this process's counts).
    for (let i = 0; i < 3; i++) expect((await call('GET', '/v1/projects/prj_nowhere')).statusCode).toBe(404);
    expect((await t.app.inject({ method: 'GET', url: '/healthz' })).statusCode).toBe(200);

    expect(
      (
        await call('POST', '/v1/credits/grant', {
          userId: 'user_dash',
          credits: 10_000,
          reason: 'test',
          source: 'test',
        })
      ).statusCode,
    ).toBe(200);
    ids.queuedFirst = await build();
    await sleep(5); // created_at orders the queue
    ids.queuedSecond = await build();
    ids.buildingWithProgress = await build({ state: 'building' });
    ids.buildingBare = await build({ state: 'building' });
    ids.deployedUnder = await build({ state: 'building' }, { state: 'deployed', actualCredits: 40 });
    ids.deployedOver = await build({ state: 'building' }, { state: 'deployed', actualCredits: 150 });
    ids.failedTests1 = await build({ state: 'building' }, { state: 'failed', reason: 'tests_failed' });
    ids.failedTests2 = await build({ state: 'building' }, { state: 'failed', reason: 'tests_failed' });
    ids.failedBare = await build({ state: 'building' }, { state: 'failed' });
    ids.cancelled = await build({ state: 'cancelled' });
    // Progress events: the latest progress counts, not a log line after it.
    await appendEvent(t.database.db, ids.buildingWithProgress, { type: 'progress', phase: 'install', progress: 0.25 });
    await appendEvent(t.database.db, ids.buildingWithProgress, {
      type: 'progress',
      phase: 'build',
      message: 'Compiling the site',
      progress: 0.6,
    });
    await appendEvent(t.database.db, ids.buildingWithProgress, { type: 'log', message: 'still compiling' });
    // Credits moved through the credits API: a release, a commit with a refund, a hold left active.
    const reserve = async (credits: number) => {
      const res = await call('POST', '/v1/credits/reserve', { userId: 'user_dash', estimatedCredits: credits });
      expect(res.statusCode).toBe(201);
      return res.json().reservationId as string;
    };
    const released = await reserve(200);
    expect((await call('POST', '/v1/credits/release', { reservationId: released, reason: 'test' })).statusCode).toBe(
      200,
    );
    const committed = await reserve(50);
    expect((await call('POST', '/v1/credits/commit', { reservationId: committed, actualCredits: 30 })).statusCode).toBe(
      200,
    );
    await reserve(70);

    const d = await data();
    expect(Math.abs(Date.parse(d.generatedAt) - Date.now())).toBeLessThan(10_000);
    expect(d.pipeline).toMatchObject({
      queuedBuilds: 2,
      oldestQueuedBuildId: ids.queuedFirst,
      buildingBuilds: 2,
      activeHolds: 5,
      reservedCredits: 470,
    });
    expect(d.pipeline.oldestQueuedAgeSeconds).toBeGreaterThan(0);
    expect(d.active.map((b) => b.id)).toEqual([ids.buildingWithProgress, ids.buildingBare]);
    expect(d.active[0]).toMatchObject({ progress: 0.6, phase: 'build', message: 'Compiling the site' });
    expect(d.active[1]).toMatchObject({ progress: null, phase: null });
    expect(d.active[0].ageSeconds).toBeGreaterThanOrEqual(0);

    const order = [
      'cancelled',
      'failedBare',
      'failedTests2',
      'failedTests1',
      'deployedOver',
      'deployedUnder',
      'buildingBare',
      'buildingWithProgress',
      'queuedSecond',
      'queuedFirst',
    ];
    expect(d.recent.map((b) => b.id)).toEqual(order.map((name) => ids[name]));
    expect(d.recent.map((b) => b.state)).toEqual([
      'cancelled',
      'failed',
      'failed',
      'failed',
      'deployed',
      'deployed',
      'building',
      'building',
      'queued',
      'queued',
    ]);
    expect(d.recent[1].reason).toBeNull();
    expect(d.recent[2].reason).toBe('tests_failed');
    expect(d.recent[4].durationSeconds).toBeGreaterThanOrEqual(0);
    expect(d.recent[0].durationSeconds).toBeNull(); // cancelled while queued: it never started
    expect(d.recent[9].durationSeconds).toBeNull();

    expect(d.lastHour).toEqual({
      deployed: 2,
      failed: 3,
      cancelled: 1,
      successRate: 0.4,
      failuresByReason: [
        { reason: 'tests_failed', count: 2 },
        { reason: 'unspecified', count: 1 },
      ],
    });
    // 10 builds held 100 each; the API reserved 200 + 50 + 70. Charged: 40, 100 + 50 beyond the hold, 30.
    expect(d.credits).toEqual({
      lastHour: {
        granted: 10_000,
        reserved: 1_320,
        charged: 220,
        refunded: 60 + 20,
        released: 4 * 100 + 200,
        expired: 0,
        entries: 1 + 13 + 3 + 1 + 5,
      },
      activeHolds: 5,
      reservedCredits: 470,
    });
    expect(d.routes).toContainEqual(
      expect.objectContaining({ method: 'GET', route: '/v1/projects/:id', requests: 3, clientErrors: 3, errorRate: 1 }),
    );
    expect(d.routes).toContainEqual(
      expect.objectContaining({ method: 'GET', route: '/healthz', requests: 1, clientErrors: 0, errorRate: 0 }),
    );
    // Sorted by errors: the route with only errors comes before those without.
    const routes = d.routes.map((r) => `${r.method} ${r.route}`);
    expect(routes.indexOf('GET /v1/projects/:id')).toBeLessThan(routes.indexOf('GET /healthz'));
    expect(d.audit).toBeNull();
    expect(d.dependencies).toEqual({ database: 'up', store: 'up' });
  });

  it('shows a new build queued, and the latest audit, once read again', async () => {
    // Whatever is already there (this test needs none of it), read past the page's one-second cache.
    await sleep(PAST_CACHE_MS);
    const before = await data();
    const queued = await build();
    expect((await call('GET', '/v1/credits/audit')).statusCode).toBe(200);
    await sleep(PAST_CACHE_MS);
    const d = await data();
    expect(d.pipeline.queuedBuilds).toBe((before.pipeline.queuedBuilds as number) + 1);
    expect(d.pipeline.oldestQueuedBuildId).toBe(before.pipeline.oldestQueuedBuildId ?? queued);
    expect(d.recent[0]).toMatchObject({ id: queued, state: 'queued' });
    expect(d.audit).toMatchObject({ ok: true, problems: 0, stale: false });
  });

  it('serves the page itself as static HTML holding no figures', async () => {
    const res = await t.app.inject({ method: 'GET', url: '/dashboard' });
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toBe('text/html; charset=utf-8');
    expect(res.headers['content-security-policy']).toMatch(/script-src 'sha256-[^']+'/);
    expect(res.body).toContain('<title>Kiln · live</title>');
    expect(res.body).toContain('dashboard/data');
    expect(res.body).not.toMatch(/bld_[A-Za-z0-9_-]{6}/);
  });
});

describe('the live page with METRICS_TOKEN set', () => {
  const TOKEN = 'dash-token-0123456789';
  let t: TestApp;
  beforeAll(async () => {
    t = await startTestApp({ METRICS_TOKEN: TOKEN, CREDIT_AUDIT_INTERVAL_S: '1' });
  });
  afterAll(() => t?.close());

  it('answers 401 in the envelope without the bearer token, or with another, and 200 with it', async () => {
    for (const authorization of [undefined, 'Bearer wrong-token-0123456', TOKEN]) {
      const res = await t.app.inject({
        method: 'GET',
        url: '/dashboard/data',
        headers: authorization ? { authorization } : {},
      });
      expect(res.statusCode).toBe(401);
      expect(res.headers['www-authenticate']).toBe('Bearer realm="kiln-metrics"');
      expect(res.json()).toMatchObject({ error: 'UNAUTHORIZED', requestId: expect.any(String) });
      expect(JSON.stringify(res.json())).not.toContain('queuedBuilds');
    }
    const res = await t.app.inject({
      method: 'GET',
      url: '/dashboard/data',
      headers: { authorization: `Bearer ${TOKEN}` },
    });
    expect(res.statusCode).toBe(200);
    expect(res.json().pipeline).toMatchObject({ queuedBuilds: 0, buildingBuilds: 0 });
  });

  it('still serves the page without a token (it holds nothing)', async () => {
    const res = await t.app.inject({ method: 'GET', url: '/dashboard' });
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toBe('text/html; charset=utf-8');
  });

  it('calls an audit older than twice CREDIT_AUDIT_INTERVAL_S stale', async () => {
    expect((await signedInject(t.app, { method: 'GET', url: '/v1/credits/audit' })).statusCode).toBe(200);
    await sleep(PAST_CACHE_MS + 500);
    const res = await t.app.inject({
      method: 'GET',
      url: '/dashboard/data',
      headers: { authorization: `Bearer ${TOKEN}` },
    });
    expect(res.json().audit).toMatchObject({ ok: true, problems: 0, stale: true });
    expect(res.json().auditIntervalSeconds).toBe(1);
  });
});
