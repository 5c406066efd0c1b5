import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { findBuild } from '../../src/db/builds';
import { registry } from '../../src/metrics';
import { holdForStart } from '../../src/services/build-credits';
import { startTestApp, type TestApp } from '../helpers/app';
import { signedInject } from '../helpers/signed';

/** Credits wired into builds (SPEC sections 5 and 6): hold on create, charge on deployed, release otherwise. */
describe('builds and credits', () => {
  let t: TestApp;
  let n = 0;
  beforeAll(async () => {
    t = await startTestApp({
      BUILD_EXECUTOR: 'external',
      DEFAULT_ESTIMATE_CREDITS: '100',
      CREDITS_PER_BUILD_MINUTE: '7',
    });
  });
  afterAll(() => t.close());

  const call = (method: 'GET' | 'POST' | 'PATCH', url: string, body?: unknown, key?: string) =>
    signedInject(t.app, { method, url, body, headers: key ? { 'idempotency-key': key } : {} });
  const grant = (userId: string, credits: number) =>
    call('POST', '/v1/credits/grant', { userId, credits, reason: 'test', source: 'test' });
  const balance = async (userId: string) => (await call('GET', `/v1/credits/balance/${userId}`)).json();
  const uncollected = async () => {
    const text = await registry.metrics();
    return Number(/^kiln_credits_uncollected_total (\d+)/m.exec(text)?.[1] ?? 0);
  };
  const newUserAndProject = async (credits: number) => {
    const userId = `user_bc_${++n}`;
    if (credits > 0) expect((await grant(userId, credits)).statusCode).toBe(200);
    const projectId = `prj_bc_${n}`;
    expect((await call('POST', '/v1/projects', { id: projectId, ownerId: userId, name: 'bc' })).statusCode).toBe(201);
    return { userId, projectId };
  };

  it('holds the estimated credits in the transaction that creates the build', async () => {
    const { userId, projectId } = await newUserAndProject(1000);
    const res = await call('POST', '/v1/builds', { projectId, userId, estimatedCredits: 150 });
    expect(res.statusCode).toBe(201);
    const build = res.json();
    expect(build.reservationId).toMatch(/^res_/);
    expect(await balance(userId)).toMatchObject({ balance: 1000, reserved: 150, available: 850 });
    const hold = (await call('GET', `/v1/credits/reservations/${build.reservationId}`)).json();
    expect(hold).toMatchObject({ state: 'active', buildId: build.id });
  });

  it('holds the estimate when the client gives none (the configured default without history)', async () => {
    const { userId, projectId } = await newUserAndProject(1000);
    const build = (await call('POST', '/v1/builds', { projectId, userId })).json();
    expect(build.estimatedCredits).toBe(100);
    expect((await balance(userId)).reserved).toBe(100);
  });

  it('answers 402 with a recommendation and creates nothing when credits are short', async () => {
    const { userId, projectId } = await newUserAndProject(350);
    const res = await call('POST', '/v1/builds', { projectId, userId, estimatedCredits: 500 });
    expect(res.statusCode).toBe(402);
    const body = res.json();
    expect(body.error).toBe('INSUFFICIENT_CREDITS');
    expect(body.data).toMatchObject({ required: 500, available: 350, shortfall: 150 });
    expect(body.data.recommendation.package).toBeTruthy();
    expect(body.message).toMatch(/150/);
    expect((await call('GET', `/v1/builds?projectId=${projectId}`)).json().builds).toEqual([]);
    expect(await balance(userId)).toMatchObject({ balance: 350, reserved: 0 });
    // The project's slot is free: a build it can afford goes in.
    expect((await call('POST', '/v1/builds', { projectId, userId, estimatedCredits: 300 })).statusCode).toBe(201);
  });

  it('does not record a 402 or a 429 under its key: the same request succeeds once the cause is gone', async () => {
    const { userId, projectId } = await newUserAndProject(0);
    const request = { projectId, userId, estimatedCredits: 50 };
    const short = await call('POST', '/v1/builds', request, 'key-402-then-ok');
    expect(short.statusCode).toBe(402);
    expect((await grant(userId, 200)).statusCode).toBe(200);
    const paid = await call('POST', '/v1/builds', request, 'key-402-then-ok');
    expect(paid.statusCode).toBe(201);
    expect(paid.headers['idempotent-replayed']).toBeUndefined();

    const busy = await call('POST', '/v1/builds', request, 'key-429-then-ok');
    expect(busy.statusCode).toBe(429);
    expect(busy.json().error).toBe('BUILD_ALREADY_RUNNING');
    expect((await call('POST', `/v1/builds/${paid.json().id}/cancel`, {})).statusCode).toBe(200);
    const next = await call('POST', '/v1/builds', request, 'key-429-then-ok');
    expect(next.statusCode).toBe(201);
    expect(next.headers['idempotent-replayed']).toBeUndefined();
    // Once it succeeded, the key replays the success.
    const replayed = await call('POST', '/v1/builds', request, 'key-429-then-ok');
    expect(replayed.headers['idempotent-replayed']).toBe('true');
    expect(replayed.body).toBe(next.body);
    expect((await call('GET', `/v1/builds?projectId=${projectId}`)).json().builds).toHaveLength(2);
  });

  it('charges the actual credits on deployed and refunds the rest of the hold', async () => {
    const { userId, projectId } = await newUserAndProject(1000);
    const build = (await call('POST', '/v1/builds', { projectId, userId, estimatedCredits: 200 })).json();
    await call('PATCH', `/v1/builds/${build.id}`, { state: 'building' });
    const done = await call('PATCH', `/v1/builds/${build.id}`, { state: 'deployed', actualCredits: 120 });
    expect(done.json()).toMatchObject({ state: 'deployed', actualCredits: 120 });
    expect(await balance(userId)).toMatchObject({ balance: 880, reserved: 0, available: 880 });
    expect((await call('GET', `/v1/credits/reservations/${build.reservationId}`)).json()).toMatchObject({
      state: 'committed',
    });
  });

  const ledger = async (userId: string) =>
    (await call('GET', `/v1/credits/ledger/${userId}`)).json().entries as { type: string; amount: number }[];

  it('prices a deployed build that reports no credits from its time building, at CREDITS_PER_BUILD_MINUTE', async () => {
    const { userId, projectId } = await newUserAndProject(1000);
    const build = (await call('POST', '/v1/builds', { projectId, userId, estimatedCredits: 50 })).json();
    await call('PATCH', `/v1/builds/${build.id}`, { state: 'building' });
    const done = await call('PATCH', `/v1/builds/${build.id}`, { state: 'deployed' });
    // Under a minute of building: one started minute at 7 credits.
    expect(done.json()).toMatchObject({ state: 'deployed', actualCredits: 7 });
    expect(await balance(userId)).toMatchObject({ balance: 993, reserved: 0 });
  });

  it('charges what a build used beyond its hold from the available balance', async () => {
    const { userId, projectId } = await newUserAndProject(1000);
    const build = (await call('POST', '/v1/builds', { projectId, userId, estimatedCredits: 50 })).json();
    await call('PATCH', `/v1/builds/${build.id}`, { state: 'building' });
    await call('PATCH', `/v1/builds/${build.id}`, { state: 'deployed', actualCredits: 80 });
    expect(await balance(userId)).toMatchObject({ balance: 920, reserved: 0 });
    expect((await ledger(userId)).slice(0, 2)).toMatchObject([
      { type: 'charge', amount: -30 },
      { type: 'commit', amount: -50 },
    ]);
  });

  it('charges no more than the balance holds, and counts the rest as uncollected', async () => {
    const { userId, projectId } = await newUserAndProject(100);
    const build = (await call('POST', '/v1/builds', { projectId, userId, estimatedCredits: 60 })).json();
    await call('PATCH', `/v1/builds/${build.id}`, { state: 'building' });
    const before = await uncollected();
    await call('PATCH', `/v1/builds/${build.id}`, { state: 'deployed', actualCredits: 500 });
    expect(await balance(userId)).toMatchObject({ balance: 0, reserved: 0, available: 0 });
    expect(await uncollected()).toBe(before + 400);
  });

  it("refuses to commit or release an active build's hold through the credits API (RESERVATION_HELD_BY_BUILD)", async () => {
    const { userId, projectId } = await newUserAndProject(1000);
    const build = (await call('POST', '/v1/builds', { projectId, userId, estimatedCredits: 100 })).json();
    const released = await call('POST', '/v1/credits/release', {
      reservationId: build.reservationId,
      reason: 'web app',
    });
    expect(released.statusCode).toBe(409);
    expect(released.json()).toMatchObject({
      error: 'RESERVATION_HELD_BY_BUILD',
      data: { reservationId: build.reservationId, buildId: build.id, state: 'queued' },
    });
    await call('PATCH', `/v1/builds/${build.id}`, { state: 'building' });
    const committed = await call('POST', '/v1/credits/commit', {
      reservationId: build.reservationId,
      actualCredits: 80,
    });
    expect(committed.json()).toMatchObject({ error: 'RESERVATION_HELD_BY_BUILD', data: { state: 'building' } });
    const done = await call('PATCH', `/v1/builds/${build.id}`, { state: 'deployed', actualCredits: 90 });
    expect(done.json()).toMatchObject({ state: 'deployed' });
    expect(await balance(userId)).toMatchObject({ balance: 910, reserved: 0 });
  });

  /**
   * Before 0008 the credits API could resolve an active build's hold. Such a hold (simulated here by resolving it
   * while the build does not point at it) stays as it was: the build is not charged again, nor started.
   */
  const resolveBehindTheBuild = async (build: { id: string; reservationId: string }, path: string, body: object) => {
    await t.database.db.query('update builds set reservation_id = null where id = $1', [build.id]);
    const res = await call('POST', path, { reservationId: build.reservationId, ...body });
    await t.database.db.query('update builds set reservation_id = $2 where id = $1', [build.id, build.reservationId]);
    return res;
  };

  it("charges nothing more when the web app committed the build's hold itself (before 0008 refused that)", async () => {
    const { userId, projectId } = await newUserAndProject(1000);
    const build = (await call('POST', '/v1/builds', { projectId, userId, estimatedCredits: 100 })).json();
    await call('PATCH', `/v1/builds/${build.id}`, { state: 'building' });
    const committed = await resolveBehindTheBuild(build, '/v1/credits/commit', { actualCredits: 80 });
    expect(committed.statusCode).toBe(200);
    const done = await call('PATCH', `/v1/builds/${build.id}`, { state: 'deployed', actualCredits: 100 });
    expect(done.json()).toMatchObject({ state: 'deployed' });
    expect(await balance(userId)).toMatchObject({ balance: 920, reserved: 0 });
    expect((await ledger(userId)).filter((e) => e.type === 'charge')).toEqual([]);
  });

  it('will not start a build whose hold was released through the credits API (before 0008 refused that)', async () => {
    const { userId, projectId } = await newUserAndProject(1000);
    const build = (await call('POST', '/v1/builds', { projectId, userId, estimatedCredits: 100 })).json();
    await resolveBehindTheBuild(build, '/v1/credits/release', { reason: 'web app' });
    const start = await call('PATCH', `/v1/builds/${build.id}`, { state: 'building' });
    expect(start.statusCode).toBe(409);
    expect(start.json()).toMatchObject({ error: 'RESERVATION_NOT_ACTIVE', data: { state: 'released' } });
    expect(await balance(userId)).toMatchObject({ balance: 1000, reserved: 0 });
  });

  it('does not hold again a build that ended while it was starting (its hold lapsed, a cancel raced the claim)', async () => {
    const { userId, projectId } = await newUserAndProject(1000);
    const build = (await call('POST', '/v1/builds', { projectId, userId, estimatedCredits: 100 })).json();
    const db = t.database.db;
    await db.query("update credit_reservations set expires_at = now() - interval '1 second' where id = $1", [
      build.reservationId,
    ]);
    // A runner claims it (and is about to hold its credits again) while a cancel ends it.
    await db.query("update builds set state = 'building', started_at = now() where id = $1", [build.id]);
    const claimed = (await findBuild(db, build.id))!;
    expect((await call('POST', `/v1/builds/${build.id}/cancel`)).statusCode).toBe(200);
    const refused = await db
      .transaction((tx) => holdForStart(tx, claimed, { reservationTtlS: 1800 }, pino({ level: 'silent' })))
      .catch((error: unknown) => error);
    expect(refused).toMatchObject({ code: 'INVALID_STATE_TRANSITION', data: { currentState: 'cancelled' } });
    expect(await balance(userId)).toMatchObject({ balance: 1000, reserved: 0 });
    const { rows } = await db.query('select id from credit_reservations where build_id = $1 and state = $2', [
      build.id,
      'active',
    ]);
    expect(rows).toEqual([]);
    expect((await call('GET', `/v1/builds/${build.id}`)).json().reservationId).toBe(build.reservationId);
  });

  it('refuses a build that would hold nothing', async () => {
    const { userId, projectId } = await newUserAndProject(10);
    const free = await call('POST', '/v1/builds', { projectId, userId, estimatedCredits: 0 });
    expect(free.statusCode).toBe(400);
    expect(free.json().data.issues[0].path).toBe('body.estimatedCredits');
  });

  it.each(['failed', 'cancelled'])('releases the whole hold when a build is %s', async (state) => {
    const { userId, projectId } = await newUserAndProject(500);
    const build = (await call('POST', '/v1/builds', { projectId, userId, estimatedCredits: 400 })).json();
    await call('PATCH', `/v1/builds/${build.id}`, { state: 'building' });
    expect((await call('PATCH', `/v1/builds/${build.id}`, { state })).statusCode).toBe(200);
    expect(await balance(userId)).toMatchObject({ balance: 500, reserved: 0, available: 500 });
    expect((await call('GET', `/v1/credits/reservations/${build.reservationId}`)).json()).toMatchObject({
      state: 'released',
    });
  });

  it('releases the hold of a queued build that is cancelled', async () => {
    const { userId, projectId } = await newUserAndProject(500);
    const build = (await call('POST', '/v1/builds', { projectId, userId, estimatedCredits: 100 })).json();
    expect((await call('POST', `/v1/builds/${build.id}/cancel`)).statusCode).toBe(200);
    expect((await balance(userId)).reserved).toBe(0);
  });

  it('keeps the books balanced after all of it', async () => {
    const audit = await call('GET', '/v1/credits/audit');
    expect(audit.statusCode).toBe(200);
    expect(audit.json()).toMatchObject({ ok: true });
    expect(audit.json().checkedUsers).toBeGreaterThanOrEqual(n);
  });
});

describe('a build whose hold lapsed before it started (RESERVATION_TTL_S=2)', () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await startTestApp({ BUILD_EXECUTOR: 'external', RESERVATION_TTL_S: '2', BUILD_LEASE_S: '1' });
  });
  afterAll(() => t.close());
  const call = (method: 'GET' | 'POST' | 'PATCH', url: string, body?: unknown) =>
    signedInject(t.app, { method, url, body });
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

  it('holds its estimate again when it starts, and pays from that hold', async () => {
    await call('POST', '/v1/credits/grant', { userId: 'user_lapsed', credits: 100, reason: 't', source: 't' });
    await call('POST', '/v1/projects', { id: 'prj_lapsed', ownerId: 'user_lapsed', name: 'l' });
    const build = (
      await call('POST', '/v1/builds', { projectId: 'prj_lapsed', userId: 'user_lapsed', estimatedCredits: 30 })
    ).json();
    await sleep(2_200); // nobody renewed the hold
    const started = await call('PATCH', `/v1/builds/${build.id}`, { state: 'building' });
    expect(started.statusCode).toBe(200);
    expect(started.json().reservationId).not.toBe(build.reservationId);
    expect((await call('GET', `/v1/credits/reservations/${started.json().reservationId}`)).json()).toMatchObject({
      state: 'active',
      reserved: 30,
      buildId: build.id,
    });
    await call('PATCH', `/v1/builds/${build.id}`, { state: 'deployed', actualCredits: 20 });
    expect((await call('GET', '/v1/credits/balance/user_lapsed')).json()).toMatchObject({ balance: 80, reserved: 0 });
  });

  it('answers 402 and starts nothing when the user can no longer afford it', async () => {
    await call('POST', '/v1/credits/grant', { userId: 'user_lapsed_poor', credits: 50, reason: 't', source: 't' });
    await call('POST', '/v1/projects', { id: 'prj_lapsed_poor', ownerId: 'user_lapsed_poor', name: 'l' });
    const build = (
      await call('POST', '/v1/builds', {
        projectId: 'prj_lapsed_poor',
        userId: 'user_lapsed_poor',
        estimatedCredits: 40,
      })
    ).json();
    await sleep(2_200);
    // Meanwhile the credits went to something else.
    const other = await call('POST', '/v1/credits/reserve', { userId: 'user_lapsed_poor', estimatedCredits: 30 });
    expect(other.statusCode).toBe(201);
    const started = await call('PATCH', `/v1/builds/${build.id}`, { state: 'building' });
    expect(started.statusCode).toBe(402);
    expect(started.json().data).toMatchObject({ required: 40, available: 20 });
    expect((await call('GET', `/v1/builds/${build.id}`)).json()).toMatchObject({ state: 'queued' });
  });

  it('a deployed build whose hold lapsed while it ran pays from the available balance', async () => {
    await call('POST', '/v1/credits/grant', { userId: 'user_lapsed_run', credits: 100, reason: 't', source: 't' });
    await call('POST', '/v1/projects', { id: 'prj_lapsed_run', ownerId: 'user_lapsed_run', name: 'l' });
    const build = (
      await call('POST', '/v1/builds', { projectId: 'prj_lapsed_run', userId: 'user_lapsed_run', estimatedCredits: 30 })
    ).json();
    await call('PATCH', `/v1/builds/${build.id}`, { state: 'building' });
    await sleep(2_200); // no heartbeats in this process: the hold lapses while it builds
    await call('PATCH', `/v1/builds/${build.id}`, { state: 'deployed', actualCredits: 25 });
    expect((await call('GET', '/v1/credits/balance/user_lapsed_run')).json()).toMatchObject({
      balance: 75,
      reserved: 0,
    });
    const audit = (await call('GET', '/v1/credits/audit')).json();
    expect(audit.ok).toBe(true);
  });
});
