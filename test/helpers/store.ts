import { Redis } from 'ioredis';
import type { Database } from '../../src/db/database';
import { openDatabaseStore } from '../../src/store/database';
import { openRedisStore } from '../../src/store/redis';
import type { EphemeralStore } from '../../src/store/store';
import { REDIS_URL, uniqueName } from './env';

export interface TestStore {
  store: EphemeralStore;
  prefix: string;
  cleanup(): Promise<void>;
}

/** Delete every key under `prefix` (SCAN, never KEYS). */
export async function deleteKeys(url: string, prefix: string): Promise<void> {
  const redis = new Redis(url, { lazyConnect: true });
  await redis.connect();
  try {
    let cursor = '0';
    do {
      const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 500);
      if (keys.length) await redis.del(...keys);
      cursor = next;
    } while (cursor !== '0');
  } finally {
    redis.disconnect();
  }
}

/**
 * A store on a brand-new key prefix. A new namespace has lost nothing, so its epoch starts at 0 (as a deployment's
 * first start would have it, were Kiln able to tell a first start from a Redis that lost its data): requests signed
 * before the test opened it are judged like any other.
 */
export async function openTestRedis(url = REDIS_URL!): Promise<TestStore> {
  const prefix = `${uniqueName('test')}:`;
  const redis = new Redis(url, { lazyConnect: true });
  await redis.connect();
  try {
    const runId = /run_id:(\w+)/.exec(await redis.info('server'))?.[1];
    await redis.set(`${prefix}epoch`, `0:${runId}`);
  } finally {
    redis.disconnect();
  }
  const store = await openRedisStore({ url, prefix });
  return {
    store,
    prefix,
    async cleanup() {
      await store.close();
      await deleteKeys(url, prefix);
    },
  };
}

/** The store kept in the database (no Redis), on a test database (its schema names its NOTIFY channels). */
export function openTestDatabaseStore(database: { db: Database; schema: string }): TestStore {
  const store = openDatabaseStore({
    db: database.db,
    background: database.db.background,
    channelPrefix: `kiln_${database.schema}_`,
  });
  return { store, prefix: '', cleanup: () => store.close() };
}

/** The store this run tests against: Redis when REDIS_URL is set, else the store kept in the test's database. */
export async function openTestStore(database: { db: Database; schema: string }): Promise<TestStore> {
  return REDIS_URL ? openTestRedis() : openTestDatabaseStore(database);
}
