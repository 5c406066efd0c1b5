import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import {
  claimKey,
  type IdempotencyRecord,
  type OnceEffect,
  type OnceItem,
  runOnceGroup,
} from '../../src/db/idempotency';
import { openPostgres } from '../../src/db/postgres';
import { registry } from '../../src/metrics';
import { OnceGroups, type OnceOutcome } from '../../src/services/idempotency';
import { startTestApp, type TestApp } from '../helpers/app';
import { openTestDatabase, type TestDatabase } from '../helpers/db';
import { DATABASE_URL } from '../helpers/env';
import { signedInject } from '../helpers/signed';

/**
 * Keyed writes in groups (idempotency_once_batch, migration 0016; OnceGroups): several keyed writes in one statement
 * and one transaction, each whole or absent on its own. On the adapter the suite runs with (PGlite, or PostgreSQL
 * with DATABASE_URL); a lock held by another session needs a second connection, so those cases run on PostgreSQL only.
 */
describe('keyed writes in groups', () => {
  let t: TestDatabase;
  let n = 0;
  const MARK = 'group-mark';
  const figure = (name: string) => `@${MARK}:${name}@`;
  beforeAll(async () => {
    t = await openTestDatabase();
  });
  afterAll(() => t.cleanup());

  const actor = { requestId: 'req_group', correlationId: 'corr_group' };
  const record = (key: string, body: unknown): Omit<IdempotencyRecord, 'expiresAt'> => ({
    key,
    method: 'POST',
    path: '/v1/credits/reserve',
    bodyHash: 'hash',
    statusCode: 201,
    responseBody: JSON.stringify(body),
    responseHeaders: { 'content-type': 'application/json; charset=utf-8' },
    requestId: `req_${key}`,
  });
  const reserve = (key: string, id: string, userId: string, amount: number): OnceItem => ({
    record: record(key, { reservationId: id, available: figure('available') }),
    effect: { op: 'reserve', args: { id, userId, amount, buildId: null, ttlS: 600, reason: 'group test', ...actor } },
  });
  const resolve = (key: string, reservationId: string, actual: number): OnceItem => ({
    record: record(key, { reservationId, charged: figure('charged'), newBalance: figure('newBalance') }),
    effect: {
      op: 'resolve',
      args: { reservationId, action: 'commit', actual, buildId: null, reason: 'group test', ...actor },
    },
  });
  const build = (key: string, id: string, projectId: string, userId: string, amount: number): OnceItem => ({
    record: record(key, { id, createdAt: figure('createdAt') }),
    effect: {
      op: 'build',
      args: {
        id,
        projectId,
        userId,
        reservationId: `res_${id}`,
        estimatedCredits: amount,
        metadata: {},
        holdTtlS: 600,
        holdReason: `hold for build ${id}`,
        ...actor,
      },
    },
  });
  const grant = (user: string, credits: number) =>
    t.db.query("select * from credit_grant($1, $2, null, 'test', 'test', 'setup', 'setup')", [user, credits]);
  const count = async (sql: string, params: unknown[]) =>
    (await t.db.query<{ n: number }>(`select count(*)::int as n from ${sql}`, params)).rows[0].n;
  const group = (items: OnceItem[]) => runOnceGroup(t.db, items, 3600, MARK);
  /** Whether a key is neither recorded nor held. */
  const keyIsFree = async (key: string) => {
    const claim = await claimKey(t.db, key, 30);
    if ('claimed' in claim) await claim.claimed.rollback();
    return 'claimed' in claim;
  };
  const sentBody = (outcome: unknown) => {
    if (!outcome || typeof outcome !== 'object' || !('sent' in outcome)) throw new Error(JSON.stringify(outcome));
    return JSON.parse((outcome as { sent: { body: string } }).sent.body);
  };

  it('runs every kind of keyed write of a group as it runs alone, answering each in the order given', async () => {
    const [late, early] = [`zz_group_${++n}`, `aa_group_${n}`]; // run in the opposite order: by user
    await grant(late, 100);
    await grant(early, 100);
    const heldId = `res_held_${n}`;
    await t.db.query(
      "select * from credit_reserve($1, $2, 20, null, 600, 'setup', 'setup', 'setup')", // committed below, in the group
      [heldId, early],
    );
    const project = `p_group_${n}`;
    await t.db.query("insert into projects (id, owner_id, name) values ($1, 'o', 'n')", [project]);
    const outcomes = await group([
      reserve(`g-late-${n}`, `res_late_${n}`, late, 10),
      resolve(`g-commit-${n}`, heldId, 15),
      build(`g-build-${n}`, `b_group_${n}`, project, early, 30),
      reserve(`g-early-${n}`, `res_early_${n}`, early, 5),
    ]);
    expect(outcomes).toHaveLength(4);
    expect(sentBody(outcomes[0])).toEqual({ reservationId: `res_late_${n}`, available: 90 });
    // `early` had 100, 20 held: the commit charges 15 (balance 85), the build then holds 30 (55 available), the
    // reserve 5 more (50): all in one transaction, in that order.
    expect(sentBody(outcomes[1])).toEqual({ reservationId: heldId, charged: 15, newBalance: 85 });
    const { rows } = await t.db.query<{ created_at: Date }>('select created_at from builds where id = $1', [
      `b_group_${n}`,
    ]);
    expect(sentBody(outcomes[2])).toEqual({ id: `b_group_${n}`, createdAt: rows[0].created_at.toISOString() });
    expect(sentBody(outcomes[3])).toEqual({ reservationId: `res_early_${n}`, available: 50 });
    for (const key of [`g-late-${n}`, `g-commit-${n}`, `g-build-${n}`, `g-early-${n}`]) {
      const again = await claimKey(t.db, key, 30);
      expect('record' in again).toBe(true);
    }
    expect(await count('build_events where build_id = $1', [`b_group_${n}`])).toBe(1);
    expect(
      await count(
        'credit_accounts a where a.user_id = any($1) and a.balance = (select sum(amount) from credit_ledger l where l.user_id = a.user_id)',
        [[late, early]],
      ),
    ).toBe(2);
  });

  it('declines or fails one write of a group alone, leaving nothing of it, and keeps the others', async () => {
    const user = `u_group_${++n}`;
    await grant(user, 100);
    const recorded = `g-recorded-${n}`;
    expect('sent' in (await group([reserve(recorded, `res_first_${n}`, user, 1)]))[0]).toBe(true);
    const project = `p_group_${n}`;
    await t.db.query("insert into projects (id, owner_id, name) values ($1, 'o', 'n')", [project]);
    const unknownOp: OnceItem = {
      record: record(`g-unknown-${n}`, {}),
      effect: { op: 'explode', args: {} } as unknown as OnceEffect,
    };
    const outcomes = await group([
      reserve(`g-ok-a-${n}`, `res_ok_a_${n}`, user, 10),
      reserve(`g-short-${n}`, `res_short_${n}`, user, 1_000), // short credits: the effect refuses
      reserve(recorded, `res_again_${n}`, user, 1), // the key has a live record
      build(`g-busy-${n}`, `b_first_${n}`, project, user, 1),
      build(`g-busy-b-${n}`, `b_second_${n}`, project, user, 1), // one active build per project
      unknownOp,
      reserve(`g-ok-b-${n}`, `res_ok_b_${n}`, user, 20),
    ]);
    expect(outcomes.map((o) => Object.keys(o)[0])).toEqual([
      'sent',
      'declined',
      'declined',
      'sent',
      'declined',
      'error',
      'sent',
    ]);
    expect(outcomes[1]).toEqual({ declined: 'KI300' });
    expect(outcomes[2]).toEqual({ declined: 'KI200' });
    expect(outcomes[4]).toEqual({ declined: 'KI300' });
    const failed = outcomes[5] as { error: Error & { code?: string } };
    expect(failed.error.code).toBe('22023');
    expect(failed.error.message).toMatch(/unknown operation explode/);
    // The writes that succeeded are there, and their figures follow each other in the group's order.
    expect(sentBody(outcomes[0])).toEqual({ reservationId: `res_ok_a_${n}`, available: 89 });
    expect(sentBody(outcomes[6])).toEqual({ reservationId: `res_ok_b_${n}`, available: 68 });
    // Nothing of the others: no hold, no build, no ledger entry, no record, no lock left on their keys.
    expect(await count('credit_reservations where id = any($1)', [[`res_short_${n}`, `res_again_${n}`]])).toBe(0);
    expect(await count('builds where id = $1', [`b_second_${n}`])).toBe(0);
    expect(await count("credit_ledger where user_id = $1 and type = 'reserve'", [user])).toBe(4);
    for (const key of [`g-short-${n}`, `g-busy-b-${n}`, `g-unknown-${n}`]) expect(await keyIsFree(key)).toBe(true);
  });

  it('runs a key given twice in one group once: the second is declined as recorded', async () => {
    const user = `u_group_${++n}`;
    await grant(user, 100);
    const key = `g-twice-${n}`;
    const outcomes = await group([reserve(key, `res_a_${n}`, user, 5), reserve(key, `res_b_${n}`, user, 5)]);
    expect('sent' in outcomes[0]).toBe(true);
    expect(outcomes[1]).toEqual({ declined: 'KI200' });
    expect(await count('credit_reservations where user_id = $1', [user])).toBe(1);
  });

  it('sends the writes of one event-loop turn as one statement, in groups of at most KEYED_GROUP_MAX', async () => {
    const user = `u_group_${++n}`;
    await grant(user, 100);
    const groups = new OnceGroups(t.db, { ttlSeconds: 3600, leaseSeconds: 30, mark: MARK, groupMax: 3 });
    const spy = vi.spyOn(t.db, 'query');
    const sizes = async () => {
      const text = await registry.metrics();
      return {
        count: Number(/^kiln_keyed_write_group_size_count (\S+)$/m.exec(text)?.[1]),
        sum: Number(/^kiln_keyed_write_group_size_sum (\S+)$/m.exec(text)?.[1]),
      };
    };
    try {
      const before = await sizes();
      const outcomes = await Promise.all(
        Array.from({ length: 5 }, (_, i) => groups.run(reserve(`g-turn-${n}-${i}`, `res_turn_${n}_${i}`, user, 1))),
      );
      expect(outcomes.every((o) => 'sent' in o)).toBe(true);
      const statements = spy.mock.calls.map(([sql]) => String(sql));
      // Three together, then the last two together: two statements, no write alone.
      expect(statements.map((sql) => sql.includes('idempotency_once_batch'))).toEqual([true, true]);
      expect(await sizes()).toEqual({ count: before.count + 2, sum: before.sum + 5 });
      spy.mockClear();
      // Alone: the one-statement form, without a subtransaction.
      expect('sent' in (await groups.run(reserve(`g-alone-${n}`, `res_alone_${n}`, user, 1)))).toBe(true);
      expect(spy.mock.calls.map(([sql]) => String(sql).match(/idempotency_once(_batch)?\(/)?.[0])).toEqual([
        'idempotency_once(',
      ]);
    } finally {
      spy.mockRestore();
    }
    expect(await count('credit_reservations where user_id = $1', [user])).toBe(6);
  });

  it.skipIf(!DATABASE_URL)(
    'holds the writes that come while a statement is in flight, and sends them together after at most 20 ms',
    async () => {
      // (PGlite answers within the turn: nothing is ever in flight there.) The first write waits on a lock another
      // transaction holds, so it stays in flight; the next two come in turns of their own, are held, and go together.
      const [user, busy] = [`u_group_${++n}`, `u_busy_${n}`];
      await grant(user, 100);
      await grant(busy, 100);
      const other = openPostgres({ url: DATABASE_URL!, schema: t.schema, max: 1 });
      const groups = new OnceGroups(t.db, { ttlSeconds: 3600, leaseSeconds: 30, mark: MARK, groupMax: 16 });
      const spy = vi.spyOn(t.db, 'query');
      try {
        const tx = await other.begin();
        await tx.query('select 1 from credit_accounts where user_id = $1 for update', [busy]);
        const first = groups.run(reserve(`g-first-${n}`, `res_first_${n}`, busy, 1));
        const later: Promise<OnceOutcome>[] = [];
        for (const i of [1, 2]) {
          await new Promise((r) => setImmediate(r)); // each in a turn of its own
          later.push(groups.run(reserve(`g-later-${n}-${i}`, `res_later_${n}_${i}`, user, 1)));
        }
        expect((await Promise.all(later)).every((o) => 'sent' in o)).toBe(true); // while the first still waits
        await tx.commit();
        expect('sent' in (await first)).toBe(true);
        expect(spy.mock.calls.map(([sql]) => String(sql).match(/idempotency_once(_batch)?\(/)?.[0])).toEqual([
          'idempotency_once(',
          'idempotency_once_batch(',
        ]);
      } finally {
        spy.mockRestore();
        await other.close();
      }
    },
  );

  it.skipIf(!DATABASE_URL)(
    'declines the one write whose key another session holds (KI409), keeping the rest',
    async () => {
      const user = `u_group_${++n}`;
      await grant(user, 100);
      const key = `g-held-${n}`;
      const other = openPostgres({ url: DATABASE_URL!, schema: t.schema, max: 1 });
      try {
        const holder = await claimKey(other, key, 30);
        if (!('claimed' in holder)) throw new Error('not claimed');
        const outcomes = await group([
          reserve(`g-free-${n}`, `res_free_${n}`, user, 1),
          reserve(key, `res_held_${n}`, user, 1),
        ]);
        expect('sent' in outcomes[0]).toBe(true);
        expect(outcomes[1]).toEqual({ declined: 'KI409' });
        await holder.claimed.rollback();
        expect(await count('credit_reservations where user_id = $1', [user])).toBe(1);
      } finally {
        await other.close();
      }
    },
  );

  it.skipIf(!DATABASE_URL)(
    'commits a group without the write that waits on a lock past its budget, then runs that write alone',
    async () => {
      const [a, b] = [`wait_a_${++n}`, `wait_b_${n}`];
      await grant(a, 100);
      await grant(b, 100);
      const other = openPostgres({ url: DATABASE_URL!, schema: t.schema, max: 1 });
      const groups = new OnceGroups(t.db, { ttlSeconds: 3600, leaseSeconds: 30, mark: MARK, groupMax: 16 });
      try {
        // Another transaction holds b's account: b's write gives up within its budget, the group commits a's, and b's
        // runs again alone, waiting (with the full lease) until the other transaction ends.
        const tx = await other.begin();
        await tx.query('select 1 from credit_accounts where user_id = $1 for update', [b]);
        const running = Promise.all([
          groups.run(reserve(`w-a-${n}`, `res_w_a_${n}`, a, 1)),
          groups.run(reserve(`w-b-${n}`, `res_w_b_${n}`, b, 1)),
        ]);
        const holds = (user: string) => count('credit_reservations where user_id = $1', [user]);
        const deadline = Date.now() + 10_000;
        while ((await holds(a)) === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
        expect(await holds(a)).toBe(1); // committed while b's account is still held
        expect(await holds(b)).toBe(0);
        await tx.commit();
        const outcomes = await running;
        expect(outcomes.map((o) => Object.keys(o)[0])).toEqual(['sent', 'sent']);
        expect(groups.retriedAlone).toBe(1);
        expect(await holds(b)).toBe(1);
        expect(await count("credit_ledger where user_id = any($1) and type = 'reserve'", [[a, b]])).toBe(2);
      } finally {
        await other.close();
      }
    },
    15_000,
  );

  it('runs the writes of a group in the order of the users whose accounts they lock (a commit: its hold’s user)', async () => {
    // Two groups at once then take their account locks in one order, and cannot deadlock on them.
    const [zz, mm, aa] = [`zz_order_${++n}`, `mm_order_${n}`, `aa_order_${n}`];
    for (const user of [zz, mm, aa]) await grant(user, 100);
    const held = `res_order_${n}`;
    await t.db.query("select * from credit_reserve($1, $2, 5, null, 600, 'setup', 'setup', 'setup')", [held, mm]);
    const outcomes = await group([
      reserve(`o-zz-${n}`, `res_zz_${n}`, zz, 1),
      resolve(`o-mm-${n}`, held, 2),
      reserve(`o-aa-${n}`, `res_aa_${n}`, aa, 1),
    ]);
    expect(outcomes.every((o) => 'sent' in o)).toBe(true);
    const { rows } = await t.db.query<{ user_id: string }>(
      "select user_id from credit_ledger where user_id = any($1) and type <> 'grant' and request_id = $2 order by id",
      [[zz, mm, aa], actor.requestId],
    );
    expect(rows.map((r) => r.user_id)).toEqual([aa, mm, zz]);
  });
});

describe('keyed writes in groups through the routes', () => {
  let t: TestApp;
  let n = 0;
  beforeAll(async () => {
    t = await startTestApp({ RATE_LIMIT_USER_PER_MIN: '0', RATE_LIMIT_IP_PER_MIN: '0' });
  });
  afterAll(() => t.close());

  const post = (url: string, body: unknown, key?: string) =>
    signedInject(t.app, { method: 'POST', url, body, headers: key ? { 'idempotency-key': key } : {} });
  const statements = async () =>
    Number(/^kiln_keyed_write_group_size_count (\S+)$/m.exec(await registry.metrics())?.[1] ?? 0);

  it('answers each keyed write sent at once as if alone: the refused one in its own words, the others as recorded', async () => {
    const user = `u_routes_${++n}`;
    expect(
      (await post('/v1/credits/grant', { userId: user, credits: 50, reason: 'test', source: 'test' })).statusCode,
    ).toBe(200);
    const before = await statements();
    const amounts = [5, 6, 1_000, 7, 8, 9];
    const responses = await Promise.all(
      amounts.map((estimatedCredits, i) =>
        post('/v1/credits/reserve', { userId: user, estimatedCredits }, `routes-${n}-${i}`),
      ),
    );
    const afterBurst = await statements();
    expect(responses.map((r) => r.statusCode)).toEqual([201, 201, 402, 201, 201, 201]);
    expect(responses[2].json()).toMatchObject({ error: 'INSUFFICIENT_CREDITS', data: { userId: user } });
    // Each answer is the one recorded: a retry replays it byte for byte (from the database, the store's copy gone).
    for (const [i, response] of responses.entries()) {
      if (response.statusCode !== 201) continue;
      await t.store.store.delete(`idem:routes-${n}-${i}`);
      const again = await post(
        '/v1/credits/reserve',
        { userId: user, estimatedCredits: amounts[i] },
        `routes-${n}-${i}`,
      );
      expect(again.body).toBe(response.body);
      expect(again.headers['idempotent-replayed']).toBe('true');
    }
    // A refusal SPEC section 4 records (404), sent at once with others: recorded, replayed, nothing written.
    const missing = { reservationId: `res_missing_${n}`, actualCredits: 1 };
    const [notFound, beside] = await Promise.all([
      post('/v1/credits/commit', missing, `routes-missing-${n}`),
      post('/v1/credits/reserve', { userId: user, estimatedCredits: 1 }, `routes-beside-${n}`),
    ]);
    expect([notFound.statusCode, beside.statusCode]).toEqual([404, 201]);
    expect(notFound.json().error).toBe('RESERVATION_NOT_FOUND');
    await t.store.store.delete(`idem:routes-missing-${n}`);
    const replayed = await post('/v1/credits/commit', missing, `routes-missing-${n}`);
    expect(replayed.statusCode).toBe(404);
    expect(replayed.body).toBe(notFound.body);
    expect(replayed.headers['idempotent-replayed']).toBe('true');
    // 402 is not recorded: the same key runs again, and is refused again.
    expect(
      (await post('/v1/credits/reserve', { userId: user, estimatedCredits: 1_000 }, `routes-${n}-2`)).statusCode,
    ).toBe(402);
    const balance = (await signedInject(t.app, { method: 'GET', url: `/v1/credits/balance/${user}` })).json();
    expect(balance).toMatchObject({ reserved: 36, available: 14 });
    // Sent at once, the writes went to the database in fewer statements than writes.
    if (DATABASE_URL) expect(afterBurst - before).toBeLessThan(amounts.length);
  });
});
