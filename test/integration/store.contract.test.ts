import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openRedisStore } from '../../src/store/redis';
import { StoreUnavailableError } from '../../src/store/store';
import { REDIS_URL } from '../helpers/env';
import { openTestMemory, openTestRedis, type TestStore } from '../helpers/store';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function contract(name: string, open: () => Promise<TestStore> | TestStore) {
  describe(`store contract: ${name}`, () => {
    let t: TestStore;
    beforeAll(async () => {
      t = await open();
    });
    afterAll(() => t.cleanup());

    it('sets a key only when absent, atomically under concurrency', async () => {
      const results = await Promise.all(
        Array.from({ length: 50 }, (_, i) => t.store.setIfAbsent('once', `v${i}`, 5_000)),
      );
      expect(results.filter(Boolean)).toHaveLength(1);
      const winner = results.indexOf(true);
      expect(await t.store.get('once')).toBe(`v${winner}`);
    });

    it('forgets keys after their TTL', async () => {
      expect(await t.store.setIfAbsent('short', 'x', 80)).toBe(true);
      await t.store.set('short-set', 'y', 80);
      expect(await t.store.get('short-set')).toBe('y');
      await sleep(150);
      expect(await t.store.get('short')).toBeNull();
      expect(await t.store.get('short-set')).toBeNull();
      expect(await t.store.setIfAbsent('short', 'again', 1_000)).toBe(true);
    });

    it('gets, overwrites and deletes', async () => {
      expect(await t.store.get('missing')).toBeNull();
      await t.store.set('k', 'one', 5_000);
      await t.store.set('k', 'two', 5_000);
      expect(await t.store.get('k')).toBe('two');
      await t.store.delete('k');
      expect(await t.store.get('k')).toBeNull();
    });

    it('counts hits in a fixed window and resets after it', async () => {
      const counts = await Promise.all(Array.from({ length: 20 }, () => t.store.hit('counter', 400)));
      const sorted = counts.map((c) => c.count).sort((a, b) => a - b);
      // All 20 land in one window unless the window boundary falls inside the burst.
      expect(sorted[sorted.length - 1]).toBeGreaterThanOrEqual(10);
      for (const c of counts) expect(c.resetMs).toBeGreaterThanOrEqual(0);
      for (const c of counts) expect(c.resetMs).toBeLessThanOrEqual(400);
      await sleep(450);
      expect((await t.store.hit('counter', 400)).count).toBe(1);
    });

    it('publishes to subscribers and stops after unsubscribe', async () => {
      const got: string[] = [];
      const stop = await t.store.subscribe('wake', (m) => got.push(m));
      await t.store.publish('wake', 'one');
      for (let i = 0; i < 50 && got.length < 1; i++) await sleep(10);
      await stop();
      await t.store.publish('wake', 'two');
      await sleep(50);
      expect(got).toEqual(['one']);
    });

    it('answers ping', async () => {
      await expect(t.store.ping()).resolves.toBeUndefined();
    });
  });
}

contract('memory', openTestMemory);
if (REDIS_URL) contract('Redis', () => openTestRedis());

describe('Redis unavailable', () => {
  it('fails fast with StoreUnavailableError', async () => {
    await expect(openRedisStore({ url: 'redis://127.0.0.1:1', prefix: 'x:' })).rejects.toBeInstanceOf(
      StoreUnavailableError,
    );
  });
});
