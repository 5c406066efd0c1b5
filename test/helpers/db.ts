import pg from 'pg';
import type { Database } from '../../src/db/database';
import { migrate } from '../../src/db/migrate';
import { openPglite } from '../../src/db/pglite';
import { openPostgres } from '../../src/db/postgres';
import { DATABASE_URL, uniqueName } from './env';

export interface TestDatabase {
  db: Database;
  schema: string;
  cleanup(): Promise<void>;
}

/** Drop a test schema with a short-lived connection of its own. */
export async function dropSchema(url: string, schema: string): Promise<void> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    await client.query(`drop schema if exists "${schema}" cascade`);
  } finally {
    await client.end();
  }
}

/** An in-memory PGlite database, migrated. */
export async function openTestPglite(): Promise<TestDatabase> {
  const db = await openPglite({ schema: 'public' });
  await migrate(db, 'public');
  return { db, schema: 'public', cleanup: () => db.close() };
}

/** A fresh schema on the real PostgreSQL of DATABASE_URL, migrated; cleanup drops it. */
export async function openTestPostgres(url = DATABASE_URL!): Promise<TestDatabase> {
  const schema = uniqueName('t');
  const db = openPostgres({ url, schema, max: 20 });
  await migrate(db, schema);
  return {
    db,
    schema,
    async cleanup() {
      await db.close();
      await dropSchema(url, schema);
    },
  };
}

/** The database this run tests against: real PostgreSQL when DATABASE_URL is set, else PGlite. */
export function openTestDatabase(): Promise<TestDatabase> {
  return DATABASE_URL ? openTestPostgres() : openTestPglite();
}
