import { Redis } from 'ioredis';
import { openMemoryStore } from '../../src/store/memory';
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

export async function openTestRedis(url = REDIS_URL!): Promise<TestStore> {
  const prefix = `${uniqueName('test')}:`;
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

export function openTestMemory(): TestStore {
  const store = openMemoryStore();
  return { store, prefix: '', cleanup: () => store.close() };
}

/** The store this run tests against: Redis when REDIS_URL is set, else the in-process store. */
export async function openTestStore(): Promise<TestStore> {
  return REDIS_URL ? openTestRedis() : openTestMemory();
}
