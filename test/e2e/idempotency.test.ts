import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { createKilnClient } from '../../src/client/sign';
import { openPglite } from '../../src/db/pglite';
import { openPostgres } from '../../src/db/postgres';
import { TEST_SECRET } from '../helpers/app';
import { DATABASE_URL, REDIS_URL } from '../helpers/env';
import { type KilnProcess, sharedKilns } from '../helpers/kiln-process';
import { deleteKeys } from '../helpers/store';

/**
 * Idempotency across real processes. With DATABASE_URL the processes share one schema; in embedded mode one
 * process at a time owns DATA_DIR, so "another process" is the same directory restarted.
 */
describe('idempotency across processes and crashes', () => {
  const shared = sharedKilns();
  const start = () => shared.start();
  const client = (kiln: KilnProcess) => createKilnClient({ baseUrl: kiln.url, secret: TEST_SECRET });

  /** How many projects an owner has, read straight from the database (the process must be stopped in embedded mode). */
  async function countProjects(ownerId: string): Promise<number> {
    const db = DATABASE_URL
      ? openPostgres({ url: DATABASE_URL, schema: shared.env.DATABASE_SCHEMA, max: 1 })
      : await openPglite({ dataDir: join(shared.env.DATA_DIR, 'pgdata'), schema: 'public' });
    try {
      const { rows } = await db.query<{ n: number }>(
        'select count(*)::int as n from projects where owner_id = $1::text',
        [ownerId],
      );
      return rows[0].n;
    } finally {
      await db.close();
    }
  }

  it(`200 concurrent identical creates with one key over ${DATABASE_URL ? 'three processes' : 'one process'} make one project`, async () => {
    const processes = DATABASE_URL ? await Promise.all([start(), start(), start()]) : [await start()];
    const body = { ownerId: 'owner_storm', name: 'Storm', settings: { region: 'eu' } };
    const responses = await Promise.all(
      Array.from({ length: 200 }, (_, i) =>
        client(processes[i % processes.length])('POST', '/v1/projects', body, { 'idempotency-key': 'storm-key' }),
      ),
    );
    const statuses = responses.map((r) => r.status);
    const successes = responses.filter((r) => r.status === 201);
    expect(statuses.every((s) => s === 201 || s === 409)).toBe(true);
    expect(successes.length).toBeGreaterThanOrEqual(1);
    expect(new Set(successes.map((r) => r.text)).size).toBe(1);
    expect(successes.filter((r) => r.headers.get('idempotent-replayed') !== 'true')).toHaveLength(1);
    for (const busy of responses.filter((r) => r.status === 409)) {
      expect((busy.body as { error: string }).error).toBe('IDEMPOTENCY_KEY_IN_USE');
      expect(busy.headers.get('retry-after')).toBe('1');
    }
    // Every client that retries now gets the one answer.
    const retry = await client(processes[0])('POST', '/v1/projects', body, { 'idempotency-key': 'storm-key' });
    expect(retry.text).toBe(successes[0].text);
    await Promise.all(processes.map((p) => p.stop()));
    expect(await countProjects('owner_storm')).toBe(1);
  });

  it('a process killed after committing: the retry elsewhere replays the committed answer, from PostgreSQL', async () => {
    const a = await start();
    const body = { ownerId: 'owner_killed_after', name: 'K' };
    const first = await client(a)('POST', '/v1/projects', body, { 'idempotency-key': 'killed-after' });
    expect(first.status).toBe(201);
    // The answer is treated as lost: the process dies, and the store's copy goes with it (Redis is flushed too).
    a.child.kill('SIGKILL');
    await a.exited;
    if (REDIS_URL) await deleteKeys(REDIS_URL, shared.env.REDIS_PREFIX);
    const b = await start();
    const retry = await client(b)('POST', '/v1/projects', body, { 'idempotency-key': 'killed-after' });
    expect(retry.status).toBe(201);
    expect(retry.headers.get('idempotent-replayed')).toBe('true');
    expect(retry.text).toBe(first.text);
    await b.stop();
    expect(await countProjects('owner_killed_after')).toBe(1);
  });

  it('a process killed at an arbitrary point mid-request: after retries there is exactly one effect', async () => {
    const body = { ownerId: 'owner_killed_any', name: 'K' };
    for (const delayMs of [0, 5, 20]) {
      const a = await start();
      const inFlight = client(a)('POST', '/v1/projects', body, { 'idempotency-key': 'killed-any' }).catch(
        () => undefined,
      );
      await new Promise((r) => setTimeout(r, delayMs));
      a.child.kill('SIGKILL');
      await a.exited;
      await inFlight;
    }
    const b = await start();
    const retry = await client(b)('POST', '/v1/projects', body, { 'idempotency-key': 'killed-any' });
    expect(retry.status).toBe(201);
    const again = await client(b)('POST', '/v1/projects', body, { 'idempotency-key': 'killed-any' });
    expect(again.text).toBe(retry.text);
    await b.stop();
    expect(await countProjects('owner_killed_any')).toBe(1);
  });

  it.skipIf(!DATABASE_URL)(
    'a process killed before committing: its key is free at once and the retry runs once',
    async () => {
      const a = await start();
      const blocker = openPostgres({ url: DATABASE_URL!, schema: shared.env.DATABASE_SCHEMA, max: 1 });
      const lock = await blocker.begin();
      // Kiln's insert waits on this lock, inside its transaction, holding the key.
      await lock.query('lock table projects in access exclusive mode');
      const body = { ownerId: 'owner_killed_before', name: 'K' };
      const inFlight = client(a)('POST', '/v1/projects', body, { 'idempotency-key': 'killed-before' }).catch(
        () => undefined,
      );
      const waiting = openPostgres({ url: DATABASE_URL!, schema: shared.env.DATABASE_SCHEMA, max: 1 });
      for (let i = 0; i < 100; i++) {
        const { rows } = await waiting.query<{ n: number }>(
          "select count(*)::int as n from pg_locks where locktype = 'advisory' and granted and database = (select oid from pg_database where datname = current_database())",
        );
        if (rows[0].n > 0) break;
        await new Promise((r) => setTimeout(r, 50));
      }
      a.child.kill('SIGKILL');
      await a.exited;
      await inFlight;
      await lock.rollback();
      await blocker.close();
      await waiting.close();
      const b = await start();
      const retry = await client(b)('POST', '/v1/projects', body, { 'idempotency-key': 'killed-before' });
      expect(retry.status).toBe(201);
      expect(retry.headers.get('idempotent-replayed')).toBeNull();
      await b.stop();
      expect(await countProjects('owner_killed_before')).toBe(1);
    },
  );
});
