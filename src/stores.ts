import { mkdir } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import type { Config } from './config';
import type { Database } from './db/database';
import { migrate } from './db/migrate';
import { openPglite } from './db/pglite';
import { openPostgres } from './db/postgres';
import { redactUrl } from './startup';
import { openDatabaseStore } from './store/database';
import { openRedisStore } from './store/redis';
import type { EphemeralStore } from './store/store';

/**
 * Hex digits of the deployment id that namespace its Redis keys: 48 random bits tell deployments sharing one Redis
 * apart, and every key of every signed request carries them (shorter keys, a smaller claim command).
 */
const NAMESPACE_DIGITS = 12;

/** Connections of the background pool: heartbeats, the reaper, the claim loop, sweeps, audits. */
export const BACKGROUND_POOL_SIZE = 4;

/** Open the database the configuration names (PostgreSQL, else embedded PGlite) and bring its schema up to date. */
export async function openDatabase(config: Config): Promise<Database> {
  if (!config.databaseUrl) await mkdir(config.dataDir, { recursive: true });
  const db = config.databaseUrl
    ? openPostgres({
        url: config.databaseUrl,
        schema: config.databaseSchema,
        max: config.databasePoolSize,
        backgroundMax: BACKGROUND_POOL_SIZE,
        statementTimeoutMs: config.databaseStatementTimeoutS * 1000,
        poolTimeoutMs: config.databasePoolTimeoutMs,
      })
    : await openPglite({ dataDir: resolve(join(config.dataDir, 'pgdata')), schema: config.databaseSchema });
  try {
    // On the background pool: a migration rewriting a large table must not hit the request statements' time limit.
    await migrate(db.background, config.databaseSchema);
  } catch (error) {
    await db.close().catch(() => {});
    throw error;
  }
  return db;
}

export interface StoreOptions {
  /** This deployment's id (kiln_settings): every Redis key and channel is namespaced by it. */
  deploymentId: string;
  /** Told of a store setting that weakens a guarantee. */
  warn?: (message: string) => void;
  /** Told when a LISTEN connection (no Redis, PostgreSQL) is lost or restored. */
  onListenConnection?: Parameters<typeof openDatabaseStore>[0]['onListenConnection'];
}

/**
 * Open Redis when configured — its keys under REDIS_PREFIX and the deployment's id, so deployments sharing a Redis
 * never meet — else the store kept in the database itself.
 */
export function openStore(config: Config, db: Database, options: StoreOptions): Promise<EphemeralStore> {
  return config.redisUrl
    ? openRedisStore({
        url: config.redisUrl,
        prefix: `${config.redisPrefix}${options.deploymentId.slice(0, NAMESPACE_DIGITS)}:`,
        warn: options.warn,
      })
    : Promise.resolve(
        openDatabaseStore({
          db,
          background: db.background,
          channelPrefix: `kiln_${config.databaseSchema}_`,
          onListenConnection: options.onListenConnection,
        }),
      );
}

/** A one-line description of the stores in use, with credentials removed. */
export function describeStores(config: Config): string {
  const database = config.databaseUrl
    ? `PostgreSQL ${redactUrl(config.databaseUrl)} (schema ${config.databaseSchema})`
    : `embedded PGlite in ${resolve(config.dataDir, 'pgdata')}`;
  const store = config.redisUrl ? `Redis ${redactUrl(config.redisUrl)}` : 'nonces and rate limits in the database';
  return `database: ${database}; store: ${store}`;
}
