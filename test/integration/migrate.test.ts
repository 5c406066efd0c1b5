import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { migrate, readMigrations } from '../../src/db/migrate';
import { openPglite } from '../../src/db/pglite';
import { openPostgres } from '../../src/db/postgres';
import { dropSchema } from '../helpers/db';
import { DATABASE_URL, uniqueName } from '../helpers/env';

describe('migrations', () => {
  it('are numbered without gaps and apply once on PGlite', async () => {
    const migrations = await readMigrations();
    expect(migrations.map((m) => m.version)).toEqual(migrations.map((_, i) => i + 1));
    const db = await openPglite({ schema: 'kiln' });
    try {
      expect(await migrate(db, 'kiln')).toEqual(migrations.map((m) => m.name));
      expect(await migrate(db, 'kiln')).toEqual([]);
      const { rows } = await db.query<{ n: number }>('select count(*)::int as n from kiln.schema_migrations');
      expect(rows[0].n).toBe(migrations.length);
    } finally {
      await db.close();
    }
  });

  it('refuses badly named or gapped migration files', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'kiln-mig-'));
    try {
      await writeFile(join(dir, '0001_ok.sql'), 'select 1');
      await writeFile(join(dir, '0003_gap.sql'), 'select 1');
      await expect(readMigrations(dir)).rejects.toThrow(/should be number 2/);
      await rm(join(dir, '0003_gap.sql'));
      await writeFile(join(dir, '0002-Bad Name.sql'), 'select 1');
      await expect(readMigrations(dir)).rejects.toThrow(/NNNN_snake_name/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('rolls back a failing migration entirely', async () => {
    const db = await openPglite({ schema: 'public' });
    try {
      const failing = [
        { version: 1, name: '0001_a.sql', sql: 'create table a (id int);' },
        { version: 2, name: '0002_b.sql', sql: 'create table b (id int); select no_such_function();' },
      ];
      await expect(migrate(db, 'public', failing)).rejects.toThrow();
      const { rows } = await db.query<{ n: number }>(
        "select count(*)::int as n from information_schema.tables where table_name in ('a', 'b', 'schema_migrations')",
      );
      expect(rows[0].n).toBe(0);
    } finally {
      await db.close();
    }
  });

  it.skipIf(!DATABASE_URL)('three processes migrating one database at once apply each migration once', async () => {
    const schema = uniqueName('mig');
    const pools = [1, 2, 3].map(() => openPostgres({ url: DATABASE_URL!, schema, max: 2 }));
    try {
      const results = await Promise.all(pools.map((db) => migrate(db, schema)));
      const expected = (await readMigrations()).map((m) => m.name);
      expect(results.flat().sort()).toEqual(expected.sort());
      const { rows } = await pools[0].query<{ n: number }>(
        `select count(*)::int as n from "${schema}".schema_migrations`,
      );
      expect(rows[0].n).toBe(expected.length);
    } finally {
      await Promise.all(pools.map((db) => db.close()));
      await dropSchema(DATABASE_URL!, schema);
    }
  });
});
