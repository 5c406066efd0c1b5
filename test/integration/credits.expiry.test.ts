import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sweepLapsedHolds } from '../../src/db/credits';
import { openPostgres } from '../../src/db/postgres';
import { startCreditSweeper } from '../../src/services/credit-sweeper';
import {
  audit,
  chargeCredits,
  commitReservation,
  grant,
  releaseReservation,
  renewReservation,
  reserveCredits,
} from '../../src/services/credits';
import { Tally } from '../../src/services/tally';
import { startTestApp, type TestApp } from '../helpers/app';
import { DATABASE_URL } from '../helpers/env';
import { signedInject } from '../helpers/signed';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe('credit expiry and concurrency', () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await startTestApp({
      RESERVATION_TTL_S: '2',
      BUILD_LEASE_S: '1',
      RATE_LIMIT_USER_PER_MIN: '0',
      RATE_LIMIT_IP_PER_MIN: '0',
    });
  });
  afterAll(() => t.close());
  const call = (method: 'GET' | 'POST', url: string, body?: unknown) => signedInject(t.app, { method, url, body });
  const expireEntries = async (reservationId: string) =>
    (
      await t.database.db.query<{ n: number }>(
        `select count(*)::int as n from credit_ledger where type = 'expire' and reservation_id = $1::text`,
        [reservationId],
      )
    ).rows[0].n;

  it('a lapsed hold stops counting at its expiry instant, before any sweeper runs', async () => {
    await grant(t.database.db, { userId: 'u_exp', credits: 100, reason: 'seed', source: 'test' });
    const hold = (await call('POST', '/v1/credits/reserve', { userId: 'u_exp', estimatedCredits: 100 })).json();
    expect((await call('POST', '/v1/credits/reserve', { userId: 'u_exp', estimatedCredits: 1 })).statusCode).toBe(402);
    const wait = Date.parse(hold.expires) - Date.now();
    await sleep(Math.max(0, wait) + 20);
    // Reads already exclude it, with no expire entry written yet.
    expect(await expireEntries(hold.reservationId)).toBe(0);
    expect((await call('GET', '/v1/credits/balance/u_exp')).json()).toMatchObject({ reserved: 0, available: 100 });
    expect((await call('GET', `/v1/credits/reservations/${hold.reservationId}`)).json()).toMatchObject({
      state: 'expired',
      refunded: 100,
    });
    const commit = await call('POST', '/v1/credits/commit', { reservationId: hold.reservationId, actualCredits: 1 });
    expect(commit.statusCode).toBe(409);
    expect(commit.json().data.state).toBe('expired');
    // An operation expires it first (one entry), then holds the credits again.
    const again = await call('POST', '/v1/credits/reserve', { userId: 'u_exp', estimatedCredits: 100 });
    expect(again.statusCode).toBe(201);
    expect(await expireEntries(hold.reservationId)).toBe(1);
    expect((await audit(t.database.db, 'u_exp')).ok).toBe(true);
  });

  it('two sweepers racing write exactly one expire entry per hold', async () => {
    const ids: string[] = [];
    for (let u = 0; u < 8; u++) {
      await grant(t.database.db, { userId: `u_sweep_${u}`, credits: 50, reason: 'seed', source: 'test' });
      for (let h = 0; h < 3; h++) {
        const held = await reserveCredits(t.database.db, { userId: `u_sweep_${u}`, amount: 10, ttlS: 1 });
        ids.push(held.reservationId);
      }
    }
    await sleep(1100);
    const counts = await Promise.all(
      Array.from({ length: 6 }, (_, i) => sweepLapsedHolds(t.database.db, 3, `sweep_test_${i}`)),
    );
    // The sweeper's loop: keep sweeping until nothing is left.
    let rest = { holds: 0, credits: 0 };
    for (let n = { holds: -1, credits: 0 }; n.holds !== 0; ) {
      n = await sweepLapsedHolds(t.database.db, 100, 'sweep_rest');
      rest = { holds: rest.holds + n.holds, credits: rest.credits + n.credits };
    }
    // Each hold was expired by exactly one of them: what the sweeps say they expired is what they wrote.
    const written = await t.database.db.query<{ n: number; credits: number }>(
      "select count(*)::int as n, coalesce(-sum(reserved_change), 0)::int as credits from credit_ledger where type = 'expire' and request_id like 'sweep\\_%'",
    );
    expect(counts.reduce((a, b) => a + b.holds, 0) + rest.holds).toBe(written.rows[0].n);
    expect(counts.reduce((a, b) => a + b.credits, 0) + rest.credits).toBe(written.rows[0].credits);
    expect(written.rows[0].n).toBeGreaterThanOrEqual(ids.length);
    for (const id of ids) expect(await expireEntries(id)).toBe(1);
    expect((await audit(t.database.db)).ok).toBe(true);
  });

  it('startCreditSweeper twice: every lapsed hold written once, within a few intervals', async () => {
    await grant(t.database.db, { userId: 'u_sweeper', credits: 30, reason: 'seed', source: 'test' });
    const holds = await Promise.all(
      [1, 2, 3].map(() => reserveCredits(t.database.db, { userId: 'u_sweeper', amount: 10, ttlS: 1 })),
    );
    const stops = [
      startCreditSweeper(t.database.db, pino({ level: 'silent' }), 50),
      startCreditSweeper(t.database.db, pino({ level: 'silent' }), 50),
    ];
    try {
      await sleep(1600);
    } finally {
      for (const stop of stops) stop();
    }
    for (const hold of holds) expect(await expireEntries(hold.reservationId)).toBe(1);
    const balance = (await call('GET', '/v1/credits/balance/u_sweeper')).json();
    expect(balance).toMatchObject({ balance: 30, reserved: 0 });
    expect((await audit(t.database.db, 'u_sweeper')).ok).toBe(true);
  });

  it('every credit operation says what it expired on the way, and the tally counts it only once committed', async () => {
    const { registry } = await import('../../src/metrics');
    const usage = async (operation: string) =>
      Number(
        new RegExp(`^credit_usage_total\\{operation="${operation}"\\} (\\S+)$`, 'm').exec(
          await registry.metrics(),
        )?.[1],
      );
    const before = { expire: await usage('expire'), reserve: await usage('reserve'), grant: await usage('grant') };
    await grant(t.database.db, { userId: 'u_told', credits: 1000, reason: 'seed', source: 'test' });
    /** A hold of `amount` that lapses at once, then `operation` on the same account: it reports that hold. */
    const lapseThen = async (amount: number, operation: (tally: Tally) => Promise<unknown>) => {
      await reserveCredits(t.database.db, { userId: 'u_told', amount, ttlS: 1 });
      await sleep(1_100);
      const tally = new Tally();
      await operation(tally).catch(() => undefined);
      return tally;
    };
    const other = await reserveCredits(t.database.db, { userId: 'u_told', amount: 5, ttlS: 600 });
    const spare = await reserveCredits(t.database.db, { userId: 'u_told', amount: 5, ttlS: 600 });
    const tallies = [
      await lapseThen(11, (tally) =>
        grant(t.database.db, { userId: 'u_told', credits: 1, reason: 'r', source: 's', tally }),
      ),
      await lapseThen(12, (tally) => reserveCredits(t.database.db, { userId: 'u_told', amount: 3, ttlS: 600, tally })),
      // refused (402), yet what it expired first is written: it is reported all the same
      await lapseThen(13, (tally) => reserveCredits(t.database.db, { userId: 'u_told', amount: 1_000_000, tally })),
      await lapseThen(14, (tally) =>
        commitReservation(t.database.db, { reservationId: other.reservationId, actualCredits: 2, tally }),
      ),
      await lapseThen(15, (tally) =>
        releaseReservation(t.database.db, { reservationId: spare.reservationId, reason: 'done', tally }),
      ),
      await lapseThen(16, (tally) =>
        chargeCredits(t.database.db, { userId: 'u_told', credits: 4, reason: 'r', tally }),
      ),
      await lapseThen(17, (tally) => renewReservation(t.database.db, other.reservationId, 60, { tally })),
    ];
    // Nothing is counted before the tallies are committed.
    expect(await usage('expire')).toBe(before.expire);
    for (const tally of tallies) tally.commit();
    expect(await usage('expire')).toBe(before.expire + 11 + 12 + 13 + 14 + 15 + 16 + 17);
    expect(await usage('grant')).toBe(before.grant + 1);
    expect(await usage('reserve')).toBe(before.reserve + 3);
    // A second commit of the same tally counts nothing more.
    for (const tally of tallies) tally.commit();
    expect(await usage('expire')).toBe(before.expire + 11 + 12 + 13 + 14 + 15 + 16 + 17);
    // The ledger agrees: every lapsed hold has one expire entry.
    const { rows } = await t.database.db.query<{ n: number; credits: number }>(
      `select count(*)::int as n, (-sum(reserved_change))::int as credits from credit_ledger
        where user_id = 'u_told' and type = 'expire'`,
    );
    expect(rows[0]).toEqual({ n: 7, credits: 11 + 12 + 13 + 14 + 15 + 16 + 17 });
    expect((await audit(t.database.db, 'u_told')).ok).toBe(true);
  });

  it('renewing extends an active hold; a lapsed or resolved one cannot be renewed', async () => {
    await grant(t.database.db, { userId: 'u_renew', credits: 20, reason: 'seed', source: 'test' });
    const held = await reserveCredits(t.database.db, { userId: 'u_renew', amount: 10, ttlS: 1 });
    const renewed = await renewReservation(t.database.db, held.reservationId, 60);
    expect(Date.parse(renewed.expiresAt) - Date.now()).toBeGreaterThan(50_000);
    await sleep(1100);
    expect((await call('GET', `/v1/credits/reservations/${held.reservationId}`)).json().state).toBe('active');
    const short = await reserveCredits(t.database.db, { userId: 'u_renew', amount: 10, ttlS: 1 });
    await sleep(1100);
    await expect(renewReservation(t.database.db, short.reservationId, 60)).rejects.toMatchObject({
      code: 'RESERVATION_NOT_ACTIVE',
      data: { state: 'expired' },
    });
    await expect(renewReservation(t.database.db, 'res_nope', 60)).rejects.toMatchObject({
      code: 'RESERVATION_NOT_FOUND',
    });
    expect((await audit(t.database.db, 'u_renew')).ok).toBe(true);
  });
});

describe.skipIf(!DATABASE_URL)('an operation that waits for the account lock (PostgreSQL)', () => {
  it('judges expiry by the time it got the lock, not the time it started waiting', async () => {
    const t = await startTestApp();
    const other = openPostgres({ url: DATABASE_URL!, schema: t.database.schema, max: 1 });
    try {
      await grant(t.database.db, { userId: 'u_wait', credits: 50, reason: 'seed', source: 'test' });
      const hold = await reserveCredits(t.database.db, { userId: 'u_wait', amount: 20, ttlS: 1 });
      const locker = await other.begin();
      await locker.query("select 1 from credit_accounts where user_id = 'u_wait' for update");
      const commit = commitReservation(t.database.db, { reservationId: hold.reservationId, actualCredits: 5 });
      const settled = commit.then(
        () => 'committed',
        (error: { code?: string; data?: { state?: string } }) => `${error.code}:${error.data?.state}`,
      );
      await sleep(1_300); // the hold lapses while the commit waits for the lock
      await locker.rollback();
      expect(await settled).toBe('RESERVATION_NOT_ACTIVE:expired');
      expect((await audit(t.database.db, 'u_wait')).ok).toBe(true);
    } finally {
      await other.close();
      await t.close();
    }
  });
});
