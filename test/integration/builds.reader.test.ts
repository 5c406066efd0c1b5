import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createBuildReader } from '../../src/db/builds';
import type { Queryable } from '../../src/db/database';
import { openTestDatabase, type TestDatabase } from '../helpers/db';

/** The batched reader behind GET /v1/builds/:id, on the run's database (PGlite, or PostgreSQL when configured). */
describe('build reader', () => {
  let t: TestDatabase;
  beforeAll(async () => {
    t = await openTestDatabase();
    await t.db.query("insert into projects (id, owner_id, name) values ('p_reader', 'o', 'n')");
    await t.db.query(
      `insert into builds (id, project_id, user_id, state, exclusive, estimated_credits)
       select 'b_reader_' || g, 'p_reader', 'u', 'queued', false, g from generate_series(1, 150) g`,
    );
  });
  afterAll(() => t.cleanup());

  /** The database, counting the statements sent through it. */
  function counting(): { q: Queryable; statements: () => number } {
    let n = 0;
    return {
      q: {
        query: (sql, params) => {
          n++;
          return t.db.query(sql, params);
        },
      } as Queryable,
      statements: () => n,
    };
  }

  it('answers reads asked together with one statement each, duplicates and unknown ids included', async () => {
    const { q, statements } = counting();
    const read = createBuildReader(q);
    const ids = ['b_reader_1', 'b_reader_2', 'b_reader_1', 'b_missing', 'b_reader_3'];
    const rows = await Promise.all(ids.map((id) => read(id)));
    expect(rows.map((r) => r?.id)).toEqual(['b_reader_1', 'b_reader_2', 'b_reader_1', undefined, 'b_reader_3']);
    expect(rows[3]).toBeUndefined();
    expect(rows[2]?.estimated_credits).toBe(1);
    expect(statements()).toBe(1);
  });

  it('splits a large turn into statements of at most 100 ids', async () => {
    const { q, statements } = counting();
    const read = createBuildReader(q);
    const rows = await Promise.all(Array.from({ length: 150 }, (_, i) => read(`b_reader_${i + 1}`)));
    expect(rows.every((r, i) => r?.id === `b_reader_${i + 1}`)).toBe(true);
    expect(statements()).toBe(2);
  });

  it('sees a change committed before the read was asked', async () => {
    const read = createBuildReader(t.db);
    expect((await read('b_reader_10'))?.state).toBe('queued');
    await t.db.query("update builds set state = 'building' where id = 'b_reader_10'");
    expect((await read('b_reader_10'))?.state).toBe('building');
  });

  it('rejects every read of a failed statement, and the next turn works again', async () => {
    let fail = true;
    const read = createBuildReader({
      query: (sql: string, params?: readonly unknown[]) =>
        fail ? Promise.reject(new Error('database went away')) : t.db.query(sql, params),
    } as Queryable);
    const results = await Promise.allSettled([read('b_reader_4'), read('b_reader_5')]);
    expect(results.map((r) => r.status)).toEqual(['rejected', 'rejected']);
    fail = false;
    expect((await read('b_reader_4'))?.id).toBe('b_reader_4');
  });
});
