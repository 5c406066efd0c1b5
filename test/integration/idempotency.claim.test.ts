import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sqlState } from '../../src/db/database';
import { claimKey, commitRecord, type IdempotencyRecord, insertRecord } from '../../src/db/idempotency';
import { openPostgres } from '../../src/db/postgres';
import { openTestDatabase, type TestDatabase } from '../helpers/db';
import { DATABASE_URL } from '../helpers/env';

/**
 * The SQL that carries a keyed request in three round trips (migration 0012): BEGIN + idempotency_claim + savepoint,
 * the effect, idempotency_record + COMMIT. On the adapter the suite runs with (PGlite, or PostgreSQL with
 * DATABASE_URL); a lock held elsewhere needs a second connection, so that case runs on PostgreSQL only.
 */
describe('claimKey and commitRecord', () => {
  let t: TestDatabase;
  let n = 0;
  beforeAll(async () => {
    t = await openTestDatabase();
  });
  afterAll(() => t.cleanup());

  const record = (key: string, responseBody = '{"ok":true}'): Omit<IdempotencyRecord, 'expiresAt'> => ({
    key,
    method: 'POST',
    path: '/v1/projects',
    bodyHash: 'hash',
    statusCode: 201,
    responseBody,
    responseHeaders: { 'content-type': 'application/json; charset=utf-8' },
    requestId: `req_${key}`,
  });
  /** The effect of a test request: one project row. */
  const effect = (q: { query: TestDatabase['db']['query'] }, id: string) =>
    q.query("insert into projects (id, owner_id, name) values ($1, 'o', 'n')", [id]);
  const projects = async (id: string) =>
    (await t.db.query<{ n: number }>('select count(*)::int as n from projects where id = $1', [id])).rows[0].n;
  const claimed = async (key: string) => {
    const claim = await claimKey(t.db, key, 30);
    if (!('claimed' in claim)) throw new Error(`expected the key to be claimed, got ${JSON.stringify(claim)}`);
    return claim.claimed;
  };

  it('claims a new key, then commits the effect and its record together; a second claim finds the record', async () => {
    const key = `claim-${++n}`;
    const tx = await claimed(key);
    await effect(tx, `p_claim_${n}`);
    const expiresAt = await commitRecord(tx, record(key), 3600, false);
    expect(expiresAt.getTime()).toBeGreaterThan(Date.now() + 3_500_000);
    expect(await projects(`p_claim_${n}`)).toBe(1);
    const again = await claimKey(t.db, key, 30);
    expect(again).toEqual({ record: { ...record(key), expiresAt } });
  });

  it('keeps the record of an error but undoes its effect (to the savepoint of the claim)', async () => {
    const key = `claim-${++n}`;
    const tx = await claimed(key);
    await effect(tx, `p_undone_${n}`);
    const failed = { ...record(key, '{"error":"PROJECT_NOT_FOUND"}'), statusCode: 404 };
    await commitRecord(tx, failed, 3600, true);
    expect(await projects(`p_undone_${n}`)).toBe(0);
    const again = await claimKey(t.db, key, 30);
    expect('record' in again && again.record.statusCode).toBe(404);
  });

  it('commits nothing when the record cannot be written (a live record of the key: KI001)', async () => {
    const key = `claim-${++n}`;
    const tx = await claimed(key);
    await effect(tx, `p_refused_${n}`);
    await insertRecord(tx, record(key), 3600); // as if another request had recorded it under the same lock
    const error = await commitRecord(tx, record(key), 3600, false).catch((e: unknown) => e);
    expect(sqlState(error)).toBe('KI001');
    await tx.rollback();
    expect(await projects(`p_refused_${n}`)).toBe(0);
    const next = await claimKey(t.db, key, 30);
    expect('claimed' in next).toBe(true);
    if ('claimed' in next) await next.claimed.rollback();
  });

  it('stores and returns the body byte for byte, whatever it holds (quotes, backslashes, $1, unicode, newlines)', async () => {
    const key = `claim-'"\\$1-${++n}`;
    const body = JSON.stringify({ text: 'it\'s \\ a "quote" $1 $2::text; commit; é ☃ 𝄞\nnext', n: -1.5e-7 });
    const tx = await claimed(key);
    await commitRecord(tx, { ...record(key, body), responseHeaders: { etag: '"v1"' } }, 3600, false);
    const again = await claimKey(t.db, key, 30);
    if (!('record' in again)) throw new Error('no record');
    expect(again.record.responseBody).toBe(body);
    expect(again.record.key).toBe(key);
    expect(again.record.responseHeaders).toEqual({ etag: '"v1"' });
  });

  it('lets an expired record be replaced by a new request', async () => {
    const key = `claim-${++n}`;
    await insertRecord(t.db, record(key), 1);
    await new Promise((r) => setTimeout(r, 1_100));
    const tx = await claimed(key);
    await commitRecord(tx, { ...record(key), statusCode: 200 }, 3600, false);
    const again = await claimKey(t.db, key, 30);
    expect('record' in again && again.record.statusCode).toBe(200);
  });

  it.skipIf(!DATABASE_URL)(
    'says locked while another transaction holds the key, and runs it once that one ends',
    async () => {
      const key = `claim-${++n}`;
      const other = openPostgres({ url: DATABASE_URL!, schema: t.schema, max: 1 });
      try {
        const holder = await claimKey(other, key, 30);
        if (!('claimed' in holder)) throw new Error('not claimed');
        expect(await claimKey(t.db, key, 30)).toEqual({ locked: true });
        await effect(holder.claimed, `p_locked_${n}`);
        await commitRecord(holder.claimed, record(key), 3600, false);
        // The lock's previous holder committed a record: the next claim sees it (its lookup's snapshot follows the lock).
        const after = await claimKey(t.db, key, 30);
        expect('record' in after && after.record.requestId).toBe(`req_${key}`);
        // A claim that found the key locked or recorded gave its connection back: the one-connection pool still works.
        expect(await claimKey(other, key, 30)).toMatchObject({ record: { key } });
        expect((await other.query<{ one: number }>('select 1 as one')).rows[0].one).toBe(1);
      } finally {
        await other.close();
      }
    },
  );

  it.skipIf(!DATABASE_URL)(
    'sees the record committed by a holder it waited behind, under many racing claims',
    async () => {
      // 20 connections claim one key at once, each running the effect when it wins: exactly one effect, and every
      // other claim is locked or finds the record.
      const key = `claim-race-${++n}`;
      const pool = openPostgres({ url: DATABASE_URL!, schema: t.schema, max: 20 });
      try {
        const outcomes = await Promise.all(
          Array.from({ length: 20 }, async (_, i) => {
            const claim = await claimKey(pool, key, 30);
            if (!('claimed' in claim)) return 'locked' in claim ? 'locked' : 'recorded';
            await effect(claim.claimed, `p_race_${n}_${i}`);
            await commitRecord(claim.claimed, record(key), 3600, false);
            return 'ran';
          }),
        );
        expect(outcomes.filter((o) => o === 'ran')).toHaveLength(1);
        const { rows } = await t.db.query<{ n: number }>(
          "select count(*)::int as n from projects where id like 'p_race_' || $1::text || '_%'",
          [String(n)],
        );
        expect(rows[0].n).toBe(1);
      } finally {
        await pool.close();
      }
    },
  );
});
