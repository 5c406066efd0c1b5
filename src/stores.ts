import { mkdir } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import type { Config } from './config';
import type { Database } from './db/database';
import { migrate } from './db/migrate';
import { openPglite } from './db/pglite';
import { openPostgres } from './db/postgres';
import { openMemoryStore } from './store/memory';
import { openRedisStore } from './store/redis';
import type { EphemeralStore } from './store/store';

/** Open the database the configuration names (PostgreSQL, else embedded PGlite) and bring its schema up to date. */
export async function openDatabase(config: Config): Promise<Database> {
  if (!config.databaseUrl) await mkdir(config.dataDir, { recursive: true });
  const db = config.databaseUrl
    ? openPostgres({ url: config.databaseUrl, schema: config.databaseSchema, max: config.databasePoolSize })
    : await openPglite({ dataDir: resolve(join(config.dataDir, 'pgdata')), schema: config.databaseSchema });
  try {
    await migrate(db, config.databaseSchema);
  } catch (error) {
    await db.close().catch(() => {});
    throw error;
  }
  return db;
}

/** Open Redis when configured, else the in-process store. */
export function openStore(config: Config): Promise<EphemeralStore> {
  return config.redisUrl
    ? openRedisStore({ url: config.redisUrl, prefix: config.redisPrefix })
    : Promise.resolve(openMemoryStore());
}

/** A one-line description of the stores in use, with credentials removed. */
export function describeStores(config: Config): string {
  const redact = (url: string) => {
    const parsed = new URL(url);
    if (parsed.password) parsed.password = '***';
    return parsed.toString();
  };
  const database = config.databaseUrl
    ? `PostgreSQL ${redact(config.databaseUrl)} (schema ${config.databaseSchema})`
    : `embedded PGlite in ${resolve(config.dataDir, 'pgdata')}`;
  const store = config.redisUrl ? `Redis ${redact(config.redisUrl)}` : 'in-process store';
  return `database: ${database}; store: ${store}`;
}
