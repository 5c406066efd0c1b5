import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { claimKey, type IdempotencyRecord, type OnceEffect, runOnce } from '../../src/db/idempotency';
import { openPostgres } from '../../src/db/postgres';
import { registry } from '../../src/metrics';
import { startTestApp, type TestApp } from '../helpers/app';
import { openTestDatabase, type TestDatabase } from '../helpers/db';
import { DATABASE_URL } from '../helpers/env';
import { signedInject } from '../helpers/signed';

/**
 * A keyed write in one statement (idempotency_once, migration 0013): claim, effect, record and commit together, or
 * nothing. On the adapter the suite runs with (PGlite, or PostgreSQL with DATABASE_URL); a lock held elsewhere needs
 * a second connection, so that case runs on PostgreSQL only.
 */
describe('runOnce (idempotency_once)', () => {
  let t: TestDatabase;
  let n = 0;
  const MARK = 'test-mark';
  const figure = (name: string) => `@${MARK}:${name}@`;
  beforeAll(async () => {
    t = await openTestDatabase();
  });
  afterAll(() => t.cleanup());

  const actor = { requestId: 'req_once', correlationId: 'corr_once' };
  const record = (
    key: string,
    path: string,
    body: unknown,
    statusCode = 201,
  ): Omit<IdempotencyRecord, 'expiresAt'> => ({
    key,
    method: 'POST',
    path,
    bodyHash: 'hash',
    statusCode,
    responseBody: JSON.stringify(body),
    responseHeaders: { 'content-type': 'application/json; charset=utf-8' },
    requestId: `req_${key}`,
  });
  const grant = (user: string, credits: number) =>
    t.db.query("select * from credit_grant($1, $2, null, 'test', 'test', 'setup', 'setup')", [user, credits]);
  const count = async (sql: string, params: unknown[]) =>
    (await t.db.query<{ n: number }>(`select count(*)::int as n from ${sql}`, params)).rows[0].n;
  /**
   * Whether the key is free: neither recorded nor locked. PostgreSQL answers a statement's error before its aborted
   * transaction lets the key's lock go, so a lock seen right after a declined statement is asked about again for up
   * to a second; a lock still held after that (a leaked claim: the lease is 30 s) or a record answers false.
   */
  const keyIsFree = async (key: string) => {
    const deadline = Date.now() + 1_000;
    let claim = await claimKey(t.db, key, 30);
    while ('locked' in claim && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 10));
      claim = await claimKey(t.db, key, 30);
    }
    if ('claimed' in claim) await claim.claimed.rollback();
    return 'claimed' in claim;
  };
  const reserve = (id: string, userId: string, amount: number): OnceEffect => ({
    op: 'reserve',
    args: { id, userId, amount, buildId: null, ttlS: 600, reason: 'hold for a test', ...actor },
  });
  const reserveBody = (id: string, amount: number) => ({
    reservationId: id,
    reserved: amount,
    expires: figure('expires'),
    available: figure('available'),
  });

  it('holds credits and records the answer with its figures written in, in one statement', async () => {
    const user = `u_once_${++n}`;
    await grant(user, 100);
    const key = `once-${n}`;
    const id = `res_once_${n}`;
    const outcome = await runOnce(
      t.db,
      record(key, '/v1/credits/reserve', reserveBody(id, 10)),
      3600,
      30,
      MARK,
      reserve(id, user, 10),
    );
    if (!('sent' in outcome)) throw new Error(`declined: ${outcome.declined}`);
    const { rows } = await t.db.query<{ expires_at: Date }>(
      'select expires_at from credit_reservations where id = $1',
      [id],
    );
    expect(JSON.parse(outcome.sent.body)).toEqual({
      reservationId: id,
      reserved: 10,
      expires: rows[0].expires_at.toISOString(),
      available: 90,
    });
    expect(outcome.sent.result).toMatchObject({ outcome: 'ok', balance: 100, reserved: 10 });
    expect(outcome.sent.expiresAt.getTime()).toBeGreaterThan(Date.now() + 3_500_000);
    // The ledger entry carries the request's ids; the record holds the very body sent.
    expect(
      await count(
        "credit_ledger where reservation_id = $1 and type = 'reserve' and request_id = $2 and correlation_id = $3",
        [id, actor.requestId, actor.correlationId],
      ),
    ).toBe(1);
    const again = await claimKey(t.db, key, 30);
    expect('record' in again && again.record.responseBody).toBe(outcome.sent.body);
  });

  it('declines, changing nothing, when the key has a live record (KI200)', async () => {
    const user = `u_once_${++n}`;
    await grant(user, 100);
    const key = `once-${n}`;
    const first = await runOnce(
      t.db,
      record(key, '/p', reserveBody(`res_a_${n}`, 5)),
      3600,
      30,
      MARK,
      reserve(`res_a_${n}`, user, 5),
    );
    expect('sent' in first).toBe(true);
    const second = await runOnce(
      t.db,
      record(key, '/p', reserveBody(`res_b_${n}`, 5)),
      3600,
      30,
      MARK,
      reserve(`res_b_${n}`, user, 5),
    );
    expect(second).toEqual({ declined: 'KI200' });
    expect(await count('credit_reservations where user_id = $1', [user])).toBe(1);
  });

  it('declines, writing nothing (no hold, no ledger entry, no record), when the effect refuses (KI300)', async () => {
    const user = `u_once_${++n}`;
    await grant(user, 3);
    const key = `once-${n}`;
    const ledgerBefore = await count('credit_ledger where user_id = $1', [user]);
    const outcome = await runOnce(
      t.db,
      record(key, '/p', reserveBody(`res_${n}`, 5)),
      3600,
      30,
      MARK,
      reserve(`res_${n}`, user, 5),
    );
    expect(outcome).toEqual({ declined: 'KI300' });
    expect(await count('credit_reservations where user_id = $1', [user])).toBe(0);
    expect(await count('credit_ledger where user_id = $1', [user])).toBe(ledgerBefore);
    expect(await keyIsFree(key)).toBe(true);
  });

  it('commits and releases holds with their figures; a repeated commit answers as the first', async () => {
    const user = `u_once_${++n}`;
    await grant(user, 100);
    const held = [`res_c_${n}`, `res_r_${n}`];
    for (const id of held) {
      const r = await runOnce(
        t.db,
        record(`${id}-k`, '/p', reserveBody(id, 10)),
        3600,
        30,
        MARK,
        reserve(id, user, 10),
      );
      expect('sent' in r).toBe(true);
    }
    const commitBody = { charged: figure('charged'), refunded: figure('refunded'), newBalance: figure('newBalance') };
    const commit = (key: string) =>
      runOnce(t.db, record(key, '/v1/credits/commit', commitBody, 200), 3600, 30, MARK, {
        op: 'resolve',
        args: { reservationId: held[0], action: 'commit', actual: 4, buildId: null, reason: 'done', ...actor },
      });
    const committed = await commit(`commit-${n}`);
    if (!('sent' in committed)) throw new Error('declined');
    // Balance 100 − 4 charged; the other hold still reserves 10.
    expect(JSON.parse(committed.sent.body)).toEqual({ charged: 4, refunded: 6, newBalance: 86 });
    const repeated = await commit(`commit-again-${n}`);
    expect('sent' in repeated && JSON.parse(repeated.sent.body)).toEqual({ charged: 4, refunded: 6, newBalance: 86 });
    expect('sent' in repeated && repeated.sent.result.outcome).toBe('repeat');
    const release = (id: string, key: string) =>
      runOnce(
        t.db,
        record(key, '/v1/credits/release', { released: figure('released'), newBalance: figure('newBalance') }, 200),
        3600,
        30,
        MARK,
        {
          op: 'resolve',
          args: { reservationId: id, action: 'release', actual: null, buildId: null, reason: 'unused', ...actor },
        },
      );
    const released = await release(held[1], `release-${n}`);
    expect('sent' in released && JSON.parse(released.sent.body)).toEqual({ released: 10, newBalance: 96 });
    // Releasing the committed hold is refused: declined, and its key stays free.
    expect(await release(held[0], `release-bad-${n}`)).toEqual({ declined: 'KI300' });
    expect(await keyIsFree(`release-bad-${n}`)).toBe(true);
    expect(await count("credit_ledger where user_id = $1 and type in ('commit', 'release')", [user])).toBe(2);
  });

  it('queues a build with its first event and hold; declines a busy project, short credits and a taken id', async () => {
    const user = `u_once_${++n}`;
    await grant(user, 10);
    const projects = [`p_once_${n}`, `p_once_b_${n}`];
    for (const id of projects) {
      await t.db.query("insert into projects (id, owner_id, name) values ($1, 'o', 'n')", [id]);
    }
    const build = (key: string, id: string, project: string, amount: number) =>
      runOnce(t.db, record(key, '/v1/builds', { id, createdAt: figure('createdAt') }), 3600, 30, MARK, {
        op: 'build',
        args: {
          id,
          projectId: project,
          userId: user,
          reservationId: `res_${id}`,
          estimatedCredits: amount,
          metadata: { framework: 'vite' },
          holdTtlS: 600,
          holdReason: `hold for build ${id}`,
          ...actor,
        },
      });
    const id = `b_once_${n}`;
    const queued = await build(`build-${n}`, id, projects[0], 6);
    if (!('sent' in queued)) throw new Error(`declined: ${queued.declined}`);
    const { rows } = await t.db.query<{ created_at: Date; state: string }>(
      'select created_at, state from builds where id = $1',
      [id],
    );
    expect(JSON.parse(queued.sent.body)).toEqual({ id, createdAt: rows[0].created_at.toISOString() });
    expect(rows[0].state).toBe('queued');
    expect(await count('build_events where build_id = $1', [id])).toBe(1);
    expect(await count("credit_reservations where build_id = $1 and state = 'active' and amount = 6", [id])).toBe(1);
    // Busy (one active build per project), short credits (4 left), a taken id: each declines, writing nothing.
    expect(await build(`build-busy-${n}`, `b_busy_${n}`, projects[0], 1)).toEqual({ declined: 'KI300' });
    expect(await build(`build-short-${n}`, `b_short_${n}`, projects[1], 5)).toEqual({ declined: 'KB402' });
    expect(await build(`build-taken-${n}`, id, projects[1], 1)).toEqual({ declined: '23505' });
    expect(await count('builds where user_id = $1', [user])).toBe(1);
    expect(await count('credit_reservations where user_id = $1', [user])).toBe(1);
    for (const key of [`build-busy-${n}`, `build-short-${n}`, `build-taken-${n}`])
      expect(await keyIsFree(key)).toBe(true);
  });

  it('writes figures only where the mark is its own', async () => {
    const user = `u_once_${++n}`;
    await grant(user, 100);
    const id = `res_mark_${n}`;
    const body = { note: '@other-mark:available@', reservationId: id, available: figure('available') };
    const outcome = await runOnce(t.db, record(`mark-${n}`, '/p', body), 3600, 30, MARK, reserve(id, user, 1));
    expect('sent' in outcome && JSON.parse(outcome.sent.body)).toEqual({
      note: '@other-mark:available@',
      reservationId: id,
      available: 99,
    });
  });

  it.skipIf(!DATABASE_URL)(
    'declines while another transaction holds the key (KI409), then runs once it ends',
    async () => {
      const user = `u_once_${++n}`;
      await grant(user, 100);
      const key = `once-locked-${n}`;
      const other = openPostgres({ url: DATABASE_URL!, schema: t.schema, max: 1 });
      try {
        const holder = await claimKey(other, key, 30);
        if (!('claimed' in holder)) throw new Error('not claimed');
        const id = `res_locked_${n}`;
        const attempt = () =>
          runOnce(t.db, record(key, '/p', reserveBody(id, 5)), 3600, 30, MARK, reserve(id, user, 5));
        expect(await attempt()).toEqual({ declined: 'KI409' });
        expect(await count('credit_reservations where id = $1', [id])).toBe(0);
        await holder.claimed.rollback();
        expect('sent' in (await attempt())).toBe(true);
        expect(await count('credit_reservations where id = $1', [id])).toBe(1);
      } finally {
        await other.close();
      }
    },
  );
});

/** kiln_idempotency_requests_total of one outcome, and credit_usage_total of one operation, as /metrics shows them. */
const metric = async (name: string, label: string, value: string) =>
  Number(new RegExp(`^${name}\\{${label}="${value}"\\} (\\S+)$`, 'm').exec(await registry.metrics())?.[1] ?? 0);

describe('keyed writes through the routes that run them in one statement', () => {
  let t: TestApp;
  let n = 0;
  const logLines: Record<string, unknown>[] = [];
  beforeAll(async () => {
    t = await startTestApp({}, undefined, logLines);
  });
  afterAll(() => t.close());
  // Nothing may go wrong behind an answer that looked right (a handler running on after its reply was sent, say).
  afterEach(() => {
    expect(logLines.filter((l) => Number(l.level) >= 50).map((l) => l.msg)).toEqual([]);
    logLines.length = 0;
  });

  const post = (url: string, body: unknown, key?: string) =>
    signedInject(t.app, { method: 'POST', url, body, headers: key ? { 'idempotency-key': key } : {} });
  const get = (url: string) => signedInject(t.app, { method: 'GET', url });
  const grant = async (userId: string, credits: number) =>
    expect((await post('/v1/credits/grant', { userId, credits, reason: 'test', source: 'test' })).statusCode).toBe(200);

  it('answers a keyed reserve as an unkeyed one, replays it byte for byte, and counts it once', async () => {
    const user = `u_route_${++n}`;
    await grant(user, 100);
    const executed = await metric('kiln_idempotency_requests_total', 'outcome', 'executed');
    const reserved = await metric('credit_usage_total', 'operation', 'reserve');
    const keyed = await post('/v1/credits/reserve', { userId: user, estimatedCredits: 7 }, `route-${n}`);
    expect(keyed.statusCode).toBe(201);
    const unkeyed = await post('/v1/credits/reserve', { userId: user, estimatedCredits: 7 });
    const [a, b] = [keyed.json(), unkeyed.json()];
    expect(Object.keys(a)).toEqual(Object.keys(b));
    expect(a).toMatchObject({ reserved: 7, available: 93 });
    expect(b).toMatchObject({ reserved: 7, available: 86 });
    expect(keyed.headers['content-type']).toBe(unkeyed.headers['content-type']);
    expect(keyed.headers.location).toBe(`/v1/credits/reservations/${a.reservationId}`);
    const hold = (await get(keyed.headers.location as string)).json();
    expect(hold).toMatchObject({ reservationId: a.reservationId, reserved: 7, state: 'active', expires: a.expires });
    expect(await metric('kiln_idempotency_requests_total', 'outcome', 'executed')).toBe(executed + 1);
    expect(await metric('credit_usage_total', 'operation', 'reserve')).toBe(reserved + 14);
    // From the store's copy, then from the database's record: the bytes first sent.
    const fromStore = await post('/v1/credits/reserve', { userId: user, estimatedCredits: 7 }, `route-${n}`);
    await t.store.store.delete(`idem:route-${n}`);
    const fromDatabase = await post('/v1/credits/reserve', { userId: user, estimatedCredits: 7 }, `route-${n}`);
    for (const replay of [fromStore, fromDatabase]) {
      expect(replay.statusCode).toBe(201);
      expect(replay.body).toBe(keyed.body);
      expect(replay.headers['idempotent-replayed']).toBe('true');
      expect(replay.headers.location).toBe(keyed.headers.location);
    }
    expect((await get(`/v1/credits/balance/${user}`)).json()).toMatchObject({ reserved: 14, available: 86 });
  });

  it('takes one database statement for a keyed reserve, commit, release and build (with an estimate), none opened', async () => {
    const user = `u_route_${++n}`;
    await grant(user, 100);
    const project = (await post('/v1/projects', { ownerId: user, name: 'one statement' })).json();
    const [first, second] = [
      (await post('/v1/credits/reserve', { userId: user, estimatedCredits: 4 })).json(),
      (await post('/v1/credits/reserve', { userId: user, estimatedCredits: 4 })).json(),
    ];
    const db = t.database.db;
    const spies = { query: vi.spyOn(db, 'query'), begin: vi.spyOn(db, 'begin'), beginWith: vi.spyOn(db, 'beginWith') };
    try {
      for (const [url, body] of [
        ['/v1/credits/reserve', { userId: user, estimatedCredits: 3 }],
        ['/v1/credits/commit', { reservationId: first.reservationId, actualCredits: 2 }],
        ['/v1/credits/release', { reservationId: second.reservationId, reason: 'unused' }],
        ['/v1/builds', { projectId: project.id, userId: user, estimatedCredits: 2 }],
      ] as const) {
        for (const spy of Object.values(spies)) spy.mockClear();
        const response = await post(url, body, `one-${url}-${n}`);
        expect(response.statusCode).toBeLessThan(300);
        // In embedded mode the ephemeral store is the database too: its statements (store_claim, store_entries) are
        // the store's round trips, not the request's.
        const requestStatements = spies.query.mock.calls.filter(
          ([sql]) => !/store_claim|store_entries/.test(String(sql)),
        );
        expect({
          url,
          query: requestStatements.length,
          begin: spies.begin.mock.calls.length + spies.beginWith.mock.calls.length,
        }).toEqual({ url, query: 1, begin: 0 });
      }
    } finally {
      for (const spy of Object.values(spies)) spy.mockRestore();
    }
  });

  it('answers a keyed build with the createdAt the build has, and its first event', async () => {
    const user = `u_route_${++n}`;
    await grant(user, 100);
    const project = (await post('/v1/projects', { ownerId: user, name: 'once' })).json();
    const created = await post(
      '/v1/builds',
      { projectId: project.id, userId: user, estimatedCredits: 3, metadata: { b: 1, a: [1, 'x'] } },
      `build-${n}`,
    );
    expect(created.statusCode).toBe(201);
    const body = created.json();
    const read = (await get(`/v1/builds/${body.id}`)).json();
    expect(body).toEqual(read);
    expect(created.headers.location).toBe(`/v1/builds/${body.id}`);
    expect((await get(`/v1/builds/${body.id}/events`)).json().events).toHaveLength(1);
    await t.store.store.delete(`idem:build-${n}`);
    const again = await post(
      '/v1/builds',
      { projectId: project.id, userId: user, estimatedCredits: 3, metadata: { b: 1, a: [1, 'x'] } },
      `build-${n}`,
    );
    expect(again.body).toBe(created.body);
    expect(again.headers['idempotent-replayed']).toBe('true');
    expect((await get(`/v1/credits/balance/${user}`)).json()).toMatchObject({ reserved: 3 });
  });

  it('runs a refused keyed write the general way: the refusal in its own words, recorded when SPEC says so', async () => {
    const user = `u_route_${++n}`;
    await grant(user, 5);
    // 402 is not recorded: the retry after a grant succeeds under the same key.
    const short = await post('/v1/credits/reserve', { userId: user, estimatedCredits: 8 }, `short-${n}`);
    expect(short.statusCode).toBe(402);
    expect(short.json()).toMatchObject({ error: 'INSUFFICIENT_CREDITS', data: { userId: user } });
    await grant(user, 5);
    const retried = await post('/v1/credits/reserve', { userId: user, estimatedCredits: 8 }, `short-${n}`);
    expect(retried.statusCode).toBe(201);
    expect(retried.headers['idempotent-replayed']).toBeUndefined();
    // A 404 is recorded, and replays without the location of the hold the handler had named.
    const missing = await post(
      '/v1/credits/commit',
      { reservationId: `res_missing_${n}`, actualCredits: 1 },
      `missing-${n}`,
    );
    expect(missing.statusCode).toBe(404);
    expect(missing.json().error).toBe('RESERVATION_NOT_FOUND');
    await t.store.store.delete(`idem:missing-${n}`);
    const replayed = await post(
      '/v1/credits/commit',
      { reservationId: `res_missing_${n}`, actualCredits: 1 },
      `missing-${n}`,
    );
    expect(replayed.statusCode).toBe(404);
    expect(replayed.body).toBe(missing.body);
    expect(replayed.headers['idempotent-replayed']).toBe('true');
  });

  it('records a refused body under its key, and answers a reused key as a reused key, before any write', async () => {
    const user = `u_route_${++n}`;
    await grant(user, 50);
    const bad = await post('/v1/credits/reserve', { userId: user, estimatedCredits: 0 }, `bad-${n}`);
    expect(bad.statusCode).toBe(400);
    await t.store.store.delete(`idem:bad-${n}`);
    const badAgain = await post('/v1/credits/reserve', { userId: user, estimatedCredits: 0 }, `bad-${n}`);
    expect(badAgain.statusCode).toBe(400);
    expect(badAgain.headers['idempotent-replayed']).toBe('true');
    expect(badAgain.body).toBe(bad.body);
    // A key recorded for a hold, sent again with a body the schema refuses (the store's copy gone): 422, not 400.
    const ok = await post('/v1/credits/reserve', { userId: user, estimatedCredits: 2 }, `used-${n}`);
    expect(ok.statusCode).toBe(201);
    await t.store.store.delete(`idem:used-${n}`);
    const reused = await post('/v1/credits/reserve', { userId: user, estimatedCredits: 0 }, `used-${n}`);
    expect(reused.statusCode).toBe(422);
    expect(reused.json()).toMatchObject({ error: 'IDEMPOTENCY_KEY_REUSED', data: { differs: ['body'] } });
    expect((await get(`/v1/credits/balance/${user}`)).json()).toMatchObject({ reserved: 2 });
  });
});

describe.skipIf(!DATABASE_URL)('keyed writes in one statement while the key is held (PostgreSQL)', () => {
  it('answers 409 IDEMPOTENCY_KEY_IN_USE, to a valid body and to a refused one, writing nothing', async () => {
    const t = await startTestApp();
    const other = openPostgres({ url: DATABASE_URL!, schema: t.database.schema, max: 1 });
    try {
      await signedInject(t.app, {
        method: 'POST',
        url: '/v1/credits/grant',
        body: { userId: 'u_held', credits: 10, reason: 'test', source: 'test' },
      });
      const holder = await claimKey(other, 'key-held', 30);
      if (!('claimed' in holder)) throw new Error('not claimed');
      const send = (estimatedCredits: number) =>
        signedInject(t.app, {
          method: 'POST',
          url: '/v1/credits/reserve',
          body: { userId: 'u_held', estimatedCredits },
          headers: { 'idempotency-key': 'key-held' },
        });
      for (const credits of [3, 0]) {
        const busy = await send(credits);
        expect(busy.statusCode).toBe(409);
        expect(busy.headers['retry-after']).toBe('1');
        expect(busy.json()).toMatchObject({ error: 'IDEMPOTENCY_KEY_IN_USE', data: { key: 'key-held' } });
      }
      await holder.claimed.rollback();
      expect((await send(3)).statusCode).toBe(201);
      const { rows } = await t.database.db.query<{ n: number }>(
        "select count(*)::int as n from credit_reservations where user_id = 'u_held'",
      );
      expect(rows[0].n).toBe(1);
    } finally {
      await other.close();
      await t.close();
    }
  });
});
