import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { rootPath } from '../paths';
import { type Database, quoteIdent } from './database';

export const MIGRATIONS_DIR = rootPath('migrations');
const NAME = /^(\d{4})_[a-z0-9_]+\.sql$/;

export interface Migration {
  version: number;
  name: string;
  sql: string;
}

/** Read `NNNN_snake_name.sql` files in version order; refuses gaps, duplicates and badly named files. */
export async function readMigrations(dir = MIGRATIONS_DIR): Promise<Migration[]> {
  const files = (await readdir(dir)).filter((f) => f.endsWith('.sql')).sort();
  const migrations: Migration[] = [];
  for (const [index, name] of files.entries()) {
    const match = NAME.exec(name);
    if (!match) throw new Error(`migration file "${name}" is not named NNNN_snake_name.sql`);
    const version = Number(match[1]);
    if (version !== index + 1)
      throw new Error(`migration "${name}" should be number ${index + 1}: no gaps, no repeats`);
    migrations.push({ version, name, sql: await readFile(join(dir, name), 'utf8') });
  }
  return migrations;
}

/**
 * Apply every migration not yet recorded, in one transaction under an advisory lock, so processes starting
 * together against one database apply each migration exactly once (the others wait, then find nothing to do).
 * Returns the names applied by this call.
 */
export async function migrate(db: Database, schema: string, migrations?: Migration[]): Promise<string[]> {
  const pending = migrations ?? (await readMigrations());
  return db.transaction(async (tx) => {
    await tx.query('select pg_advisory_xact_lock(hashtext($1::text))', [`kiln.migrate.${schema}`]);
    await tx.exec(
      `create schema if not exists ${quoteIdent(schema)}; set local search_path = ${quoteIdent(schema)}, public`,
    );
    await tx.query(
      `create table if not exists schema_migrations (
         version integer primary key,
         name text not null,
         applied_at timestamptz not null default now())`,
    );
    const { rows } = await tx.query<{ version: number }>('select version from schema_migrations');
    const applied = new Set(rows.map((r) => r.version));
    const done: string[] = [];
    for (const migration of pending) {
      if (applied.has(migration.version)) continue;
      await tx.exec(migration.sql);
      await tx.query('insert into schema_migrations (version, name) values ($1::int, $2::text)', [
        migration.version,
        migration.name,
      ]);
      done.push(migration.name);
    }
    return done;
  });
}
