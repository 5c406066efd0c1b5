import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openRedisStore } from '../../src/store/redis';
import { StoreUnavailableError } from '../../src/store/store';
import { openTestPglite, openTestPostgres } from '../helpers/db';
import { DATABASE_URL, REDIS_URL } from '../helpers/env';
import { deleteKeys, openTestDatabaseStore, openTestRedis, type TestStore } from '../helpers/store';

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

    it('claims a nonce once under concurrency and counts every attempt in each counter', async () => {
      const counters = [
        { key: 'claim-ip', windowMs: 60_000 },
        { key: 'claim-user', windowMs: 60_000 },
      ];
      const results = await Promise.all(
        Array.from({ length: 50 }, (_, i) =>
          t.store.claimNonceAndHit({ keys: ['nonce:claim'], value: `v${i}`, ttlMs: 5_000 }, counters),
        ),
      );
      expect(results.filter((r) => r.fresh)).toHaveLength(1);
      expect(await t.store.get('nonce:claim')).toBe(`v${results.findIndex((r) => r.fresh)}`);
      for (const r of results) {
        expect(r.counts).toHaveLength(2);
        for (const c of r.counts) {
          expect(c.resetMs).toBeGreaterThanOrEqual(0);
          expect(c.resetMs).toBeLessThanOrEqual(60_000);
        }
      }
      // Each counter saw all 50 hits, in order, unless a window boundary fell inside the burst.
      for (const index of [0, 1]) {
        const seen = results.map((r) => r.counts[index].count).sort((a, b) => a - b);
        expect(new Set(seen).size).toBeGreaterThanOrEqual(25);
        expect(seen[seen.length - 1]).toBeGreaterThanOrEqual(25);
      }
    });

    it('claims with no counters, and its counters are the windows hit() counts', async () => {
      expect(await t.store.claimNonceAndHit({ keys: ['nonce:bare'], value: 'x', ttlMs: 5_000 }, [])).toEqual({
        fresh: true,
        counts: [],
        epochMs: expect.any(Number),
      });
      expect(await t.store.setIfAbsent('nonce:bare', 'y', 5_000)).toBe(false);
      // A nonce claimed by setIfAbsent is taken for claimNonceAndHit too; the counter still counts the refused claim.
      await t.store.setIfAbsent('nonce:taken', 'first', 5_000);
      const window = 3_600_000;
      const first = await t.store.claimNonceAndHit({ keys: ['nonce:taken'], value: 'second', ttlMs: 5_000 }, [
        { key: 'shared', windowMs: window },
      ]);
      expect(first.fresh).toBe(false);
      expect(await t.store.get('nonce:taken')).toBe('first');
      const second = await t.store.hit('shared', window);
      // Same window unless the hour turned between the two calls.
      if (second.count !== 1) expect(second.count).toBe(first.counts[0].count + 1);
    });

    it('answers claims made together, with different counters, each with its own result', async () => {
      const window = 3_600_000;
      const [none, one, two, replay] = await Promise.all([
        t.store.claimNonceAndHit({ keys: ['nonce:mix-0'], value: 'a', ttlMs: 5_000 }, []),
        t.store.claimNonceAndHit({ keys: ['nonce:mix-1'], value: 'b', ttlMs: 5_000 }, [
          { key: 'mix-a', windowMs: window },
        ]),
        t.store.claimNonceAndHit({ keys: ['nonce:mix-2'], value: 'c', ttlMs: 5_000 }, [
          { key: 'mix-b', windowMs: window },
          { key: 'mix-a', windowMs: window },
        ]),
        t.store.claimNonceAndHit({ keys: ['nonce:mix-1'], value: 'd', ttlMs: 5_000 }, [
          { key: 'mix-b', windowMs: window },
        ]),
      ]);
      expect(none).toEqual({ fresh: true, counts: [], epochMs: expect.any(Number) });
      // mix-1 is claimed twice: one wins (on the database, whichever connection gets there first) and keeps its value.
      expect([one.fresh, replay.fresh].sort()).toEqual([false, true]);
      expect(one.counts).toHaveLength(1);
      expect(two.fresh).toBe(true);
      expect(two.counts).toHaveLength(2);
      expect(replay.counts).toHaveLength(1);
      expect(await t.store.get('nonce:mix-1')).toBe(one.fresh ? 'b' : 'd');
      // Same window unless the hour turned inside the burst: mix-a and mix-b were each hit twice.
      const a = [one.counts[0].count, two.counts[1].count].sort();
      const b = [two.counts[0].count, replay.counts[0].count].sort();
      if (a[1] !== 1) expect(a).toEqual([1, 2]);
      if (b[1] !== 1) expect(b).toEqual([1, 2]);
    });

    it('reads a key in the same claim, alone or among claims that read nothing', async () => {
      await t.store.set('stored:present', 'the response', 5_000);
      const window = 3_600_000;
      const windowBefore = Math.floor(Date.now() / window);
      const [plain, present, absent, shared] = await Promise.all([
        t.store.claimNonceAndHit({ keys: ['nonce:read-0'], value: 'a', ttlMs: 5_000 }, [
          { key: 'read-ip', windowMs: window },
        ]),
        t.store.claimNonceAndHit(
          { keys: ['nonce:read-1'], value: 'b', ttlMs: 5_000 },
          [{ key: 'read-ip', windowMs: window }],
          'stored:present',
        ),
        t.store.claimNonceAndHit({ keys: ['nonce:read-2'], value: 'c', ttlMs: 5_000 }, [], 'stored:absent'),
        t.store.claimNonceAndHit(
          { keys: ['nonce:read-1'], value: 'd', ttlMs: 5_000 },
          [{ key: 'read-ip', windowMs: window }],
          'stored:present',
        ),
      ]);
      expect(plain).toEqual({ fresh: true, counts: [expect.objectContaining({})], epochMs: expect.any(Number) });
      expect(plain.read).toBeUndefined();
      expect(present.read).toBe('the response');
      expect(absent).toEqual({ fresh: true, counts: [], read: null, epochMs: expect.any(Number) });
      // One of the two uses of the nonce is refused (which one, on the database, depends on which connection wins),
      // and the refused one's read still answers.
      expect([present.fresh, shared.fresh].sort()).toEqual([false, true]);
      expect(shared.read).toBe('the response');
      // Three hits on one counter in one batch: each claim got its own count (unless the hour turned meanwhile).
      const seen = [plain, present, shared].map((r) => r.counts[0].count).sort((a, b) => a - b);
      if (Math.floor(Date.now() / window) === windowBefore) expect(seen).toEqual([1, 2, 3]);
    });

    it('forgets a claimed nonce after its TTL and resets its counters after their window', async () => {
      const claim = () =>
        t.store.claimNonceAndHit({ keys: ['nonce:short'], value: 'x', ttlMs: 80 }, [
          { key: 'claim-short', windowMs: 400 },
        ]);
      expect((await claim()).fresh).toBe(true);
      expect((await claim()).fresh).toBe(false);
      await sleep(450);
      const again = await claim();
      expect(again.fresh).toBe(true);
      expect(again.counts[0].count).toBe(1);
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

    it('claims several keys all or nothing, and stores marks without checking them', async () => {
      const claim = (keys: string[], marks: string[] = []) =>
        t.store.claimNonceAndHit({ keys, marks, value: 'v', ttlMs: 5_000 }, []);
      expect((await claim(['multi:a', 'multi:b'], ['multi:mark'])).fresh).toBe(true);
      // One key of the two is taken: refused, and the free one is not stored.
      expect((await claim(['multi:c', 'multi:b'])).fresh).toBe(false);
      expect(await t.store.get('multi:c')).toBeNull();
      // A mark is remembered (a later claim of it as a key is refused) but a claim that marks it again passes.
      expect((await claim(['multi:d'], ['multi:mark'])).fresh).toBe(true);
      expect((await claim(['multi:mark'])).fresh).toBe(false);
      // A refused claim stores no marks.
      expect((await claim(['multi:a'], ['multi:mark-2'])).fresh).toBe(false);
      expect(await t.store.get('multi:mark-2')).toBeNull();
      // A check that exists refuses the claim; a check is never stored.
      const checked = (keys: string[], checks: string[]) =>
        t.store.claimNonceAndHit({ keys, checks, value: 'v', ttlMs: 5_000 }, []);
      expect((await checked(['multi:e'], ['multi:mark'])).fresh).toBe(false);
      expect(await t.store.get('multi:e')).toBeNull();
      expect((await checked(['multi:f'], ['multi:absent'])).fresh).toBe(true);
      expect(await t.store.get('multi:absent')).toBeNull();
    });

    it('answers the same epoch claim after claim while it keeps its data', async () => {
      const first = await t.store.claimNonceAndHit({ keys: ['epoch:1'], value: 'v', ttlMs: 5_000 }, []);
      const second = await t.store.claimNonceAndHit({ keys: ['epoch:2'], value: 'v', ttlMs: 5_000 }, []);
      expect(second.epochMs).toBe(first.epochMs);
      expect(first.epochMs).toBeLessThanOrEqual(Date.now());
    });

    it('answers ping', async () => {
      await expect(t.store.ping()).resolves.toBeUndefined();
    });
  });
}

/** The store kept in a database of its own, closed with it. */
async function databaseStore(open: typeof openTestPglite): Promise<TestStore> {
  const database = await open();
  const t = openTestDatabaseStore(database);
  return {
    ...t,
    async cleanup() {
      await t.cleanup();
      await database.cleanup();
    },
  };
}

contract('database (PGlite)', () => databaseStore(openTestPglite));
if (DATABASE_URL) contract('database (PostgreSQL)', () => databaseStore(() => openTestPostgres()));
if (REDIS_URL) contract('Redis', () => openTestRedis());

describe('what a store may lose, it says', () => {
  it('the embedded database loses nothing: its epoch is 0', async () => {
    const t = await databaseStore(openTestPglite);
    try {
      expect((await t.store.claimNonceAndHit({ keys: ['e:0'], value: 'v', ttlMs: 1_000 }, [])).epochMs).toBe(0);
    } finally {
      await t.cleanup();
    }
  });

  it.runIf(DATABASE_URL)('PostgreSQL commits claims asynchronously: its epoch is the server start', async () => {
    const t = await databaseStore(() => openTestPostgres());
    try {
      const claim = await t.store.claimNonceAndHit({ keys: ['e:pg'], value: 'v', ttlMs: 1_000 }, []);
      const client = new pg.Client({ connectionString: DATABASE_URL });
      await client.connect();
      const { rows } = await client
        .query('select floor(extract(epoch from pg_postmaster_start_time()) * 1000)::float8 as ms')
        .finally(() => client.end());
      expect(claim.epochMs).toBe(Number(rows[0].ms));
    } finally {
      await t.cleanup();
    }
  });

  it.runIf(REDIS_URL)('Redis: losing its data moves the epoch to the moment it was found lost', async () => {
    const t = await openTestRedis();
    try {
      const before = await t.store.claimNonceAndHit({ keys: ['e:redis'], value: 'v', ttlMs: 60_000 }, []);
      expect(before.epochMs).toBe(0); // a new namespace: nothing lost yet
      const lostAt = Date.now();
      // What a restart without persistence does to this deployment's keys: all gone, the epoch with them.
      await deleteKeys(REDIS_URL as string, t.prefix);
      const after = await t.store.claimNonceAndHit({ keys: ['e:redis'], value: 'v', ttlMs: 60_000 }, []);
      // The nonce was forgotten (fresh again), and the store says so: its epoch is now.
      expect(after.fresh).toBe(true);
      expect(after.epochMs).toBeGreaterThanOrEqual(lostAt - 50);
      expect(after.epochMs).toBeGreaterThan(before.epochMs);
    } finally {
      await t.cleanup();
    }
  });
});

describe('Redis unavailable', () => {
  it('fails fast with StoreUnavailableError', async () => {
    await expect(openRedisStore({ url: 'redis://127.0.0.1:1', prefix: 'x:' })).rejects.toBeInstanceOf(
      StoreUnavailableError,
    );
  });

  it.runIf(REDIS_URL)('rejects claims with StoreUnavailableError once the connection is gone', async () => {
    const t = await openTestRedis();
    await t.store.close();
    await expect(
      t.store.claimNonceAndHit({ keys: ['nonce:down'], value: 'x', ttlMs: 1_000 }, [{ key: 'down', windowMs: 1_000 }]),
    ).rejects.toBeInstanceOf(StoreUnavailableError);
    await t.cleanup();
  });
});
