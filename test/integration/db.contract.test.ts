import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DatabaseUnavailableError, sqlState } from '../../src/db/database';
import { openPostgres } from '../../src/db/postgres';
import { openTestPglite, openTestPostgres, type TestDatabase } from '../helpers/db';
import { DATABASE_URL } from '../helpers/env';

/** One contract, run against every adapter available in this run. */
function contract(name: string, open: () => Promise<TestDatabase>) {
  describe(`database contract: ${name}`, () => {
    let t: TestDatabase;
    beforeAll(async () => {
      t = await open();
      await t.db.exec(
        'create table contract_items (id int primary key, label text not null, doc jsonb, at timestamptz)',
      );
    });
    afterAll(() => t.cleanup());

    it('round-trips typed parameters', async () => {
      const { rows } = await t.db.query<{ i: number; b: number; s: string; j: { a: number[] }; d: Date; n: null }>(
        'select $1::int as i, $2::bigint as b, $3::text as s, $4::jsonb as j, $5::timestamptz as d, null as n',
        [7, 9_007_199_254, 'héllo ✓', JSON.stringify({ a: [1, 2] }), '2026-01-15T10:30:00Z'],
      );
      expect(rows[0]).toEqual({
        i: 7,
        b: 9_007_199_254,
        s: 'héllo ✓',
        j: { a: [1, 2] },
        d: new Date('2026-01-15T10:30:00Z'),
        n: null,
      });
    });

    it('reports affected rows', async () => {
      await t.db.query("insert into contract_items values (1, 'a'), (2, 'b')");
      const result = await t.db.query("update contract_items set label = 'z' where id in (1, 2)");
      expect(result.rowCount).toBe(2);
    });

    it('commits a transaction that resolves and rolls back one that throws', async () => {
      const value = await t.db.transaction(async (tx) => {
        await tx.query("insert into contract_items values (10, 'kept')");
        return 'done';
      });
      expect(value).toBe('done');
      await expect(
        t.db.transaction(async (tx) => {
          await tx.query("insert into contract_items values (11, 'lost')");
          throw new Error('abort');
        }),
      ).rejects.toThrow('abort');
      const { rows } = await t.db.query<{ id: number }>('select id from contract_items where id >= 10 order by id');
      expect(rows.map((r) => r.id)).toEqual([10]);
    });

    it('keeps uncommitted work invisible and transactions from interleaving', async () => {
      let release!: () => void;
      const gate = new Promise<void>((r) => {
        release = r;
      });
      const first = t.db.transaction(async (tx) => {
        await tx.query("insert into contract_items values (20, 'first')");
        await gate;
        await tx.query("update contract_items set label = 'first-done' where id = 20");
      });
      await new Promise((r) => setTimeout(r, 20));
      const outside = t.db.query<{ n: number }>('select count(*)::int as n from contract_items where id = 20');
      const second = t.db.transaction(async (tx) => {
        const { rows } = await tx.query<{ label: string }>('select label from contract_items where id = 20');
        return rows[0]?.label ?? null;
      });
      release();
      await first;
      const seen = (await outside).rows[0].n;
      // PGlite serialises (the outside query waits: sees 1); PostgreSQL runs it at once (sees 0). Never half-done.
      expect([0, 1]).toContain(seen);
      const label = await second;
      expect(label).not.toBe('first');
      if (t.db.kind === 'pglite') expect(label).toBe('first-done');
    });

    it('keeps the SQLSTATE of statement errors', async () => {
      const error = await t.db.query("insert into contract_items values (1, 'dup')").catch((e: unknown) => e);
      expect(sqlState(error)).toBe('23505');
      const inTx = await t.db
        .transaction((tx) => tx.query("insert into contract_items values (1, 'dup')"))
        .catch((e: unknown) => e);
      expect(sqlState(inTx)).toBe('23505');
    });

    it('runs multi-statement scripts', async () => {
      await t.db.exec("insert into contract_items values (30, 'x'); insert into contract_items values (31, 'y');");
      const { rows } = await t.db.query<{ n: number }>(
        'select count(*)::int as n from contract_items where id in (30, 31)',
      );
      expect(rows[0].n).toBe(2);
    });

    it('delivers LISTEN/NOTIFY', async () => {
      const received: string[] = [];
      const stop = await t.db.listen('contract_wake', (payload) => received.push(payload));
      await t.db.query("select pg_notify('contract_wake', 'hello')");
      await t.db.transaction((tx) => tx.query("select pg_notify('contract_wake', 'from-tx')"));
      for (let i = 0; i < 50 && received.length < 2; i++) await new Promise((r) => setTimeout(r, 20));
      await stop();
      expect(received).toEqual(['hello', 'from-tx']);
    });
  });
}

contract('PGlite', openTestPglite);
if (DATABASE_URL) contract('PostgreSQL', () => openTestPostgres());

describe.skipIf(!DATABASE_URL)('PostgreSQL LISTEN after its connection is lost', () => {
  let t: TestDatabase;
  beforeAll(async () => {
    t = await openTestPostgres();
  });
  afterAll(() => t.cleanup());

  it('reconnects, says so, wakes the listener once, and delivers later notifications', async () => {
    const channel = `contract_relisten_${process.pid}_${Date.now()}`;
    const received: string[] = [];
    const events: string[] = [];
    const stop = await t.db.listen(
      channel,
      (payload) => received.push(payload),
      (event) => events.push(event.state),
    );
    const waitFor = async (check: () => boolean) => {
      for (let i = 0; i < 200 && !check(); i++) await new Promise((r) => setTimeout(r, 25));
      expect(check()).toBe(true);
    };
    await t.db.query('select pg_notify($1::text, $2::text)', [channel, 'before']);
    await waitFor(() => received.includes('before'));
    // What a PostgreSQL restart does to the listening session: its backend goes away.
    const admin = openPostgres({ url: DATABASE_URL as string, schema: 'public' });
    const { rows } = await admin.query<{ n: number }>(
      `select count(pg_terminate_backend(pid))::int as n from pg_stat_activity where query = $1::text`,
      [`listen "${channel}"`],
    );
    await admin.close();
    expect(rows[0].n).toBe(1);
    await waitFor(() => events.includes('restored'));
    expect(events).toEqual(['lost', 'restored']);
    // The catch-up wake-up for what may have been missed meanwhile.
    expect(received).toEqual(['before', '']);
    await t.db.query('select pg_notify($1::text, $2::text)', [channel, 'after']);
    await waitFor(() => received.includes('after'));
    await stop();
  });
});

describe.skipIf(!DATABASE_URL)('PostgreSQL unavailable', () => {
  it('turns a refused connection into DatabaseUnavailableError', async () => {
    const db = openPostgres({ url: 'postgres://postgres@127.0.0.1:1/test', schema: 'public' });
    await expect(db.query('select 1')).rejects.toBeInstanceOf(DatabaseUnavailableError);
    await expect(db.transaction((tx) => tx.query('select 1'))).rejects.toBeInstanceOf(DatabaseUnavailableError);
    await db.close();
  });
});
