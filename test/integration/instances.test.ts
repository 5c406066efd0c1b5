import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { listInstances, markSilentInstances, registerInstance, renewInstance } from '../../src/db/instances';
import { readPipeline } from '../../src/db/pipeline';
import { startInstanceLine } from '../../src/services/instances';
import { openTestDatabase, type TestDatabase } from '../helpers/db';
import { DATABASE_URL } from '../helpers/env';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const line = (id: string, leaseSeconds = 30) => ({
  id,
  hostname: 'host-a',
  pid: 1,
  version: 'v',
  leaseSeconds,
  health: { store: 'up' },
});

/** A line whose process stopped renewing it `silentS` seconds ago (as a SIGKILL leaves it). */
async function silent(t: TestDatabase, id: string, silentS: number, leaseSeconds: number): Promise<void> {
  await t.db.query(
    `insert into service_instances (id, hostname, pid, version, lease_seconds, last_seen_at)
     values ($1::text, 'host-b', 2, 'v', $2::int, now() - make_interval(secs => $3::int))`,
    [id, leaseSeconds, silentS],
  );
}

describe('service_instances: a health line per process, dead past its lease', () => {
  let t: TestDatabase;
  beforeAll(async () => {
    t = await openTestDatabase();
  });
  afterAll(() => t.cleanup());

  it('reads each line live or dead by its own lease, marks the dead once, and revives one that renews', async () => {
    await registerInstance(t.db, line('i_live'));
    await silent(t, 'i_crashed', 20, 10);
    await silent(t, 'i_slow', 20, 60);
    // Read as dead as soon as its lease has passed, before any process has marked it.
    // (as /readyz, /metrics and the live page count them)
    expect(await readPipeline(t.db)).toMatchObject({ liveInstances: 2, deadInstances: 1 });
    const before = await listInstances(t.db);
    expect(before.map((i) => [i.id, i.state, i.deadAt])).toEqual([
      ['i_live', 'live', null],
      ['i_slow', 'live', null],
      ['i_crashed', 'dead', null],
    ]);
    expect(before[2].silentSeconds).toBeGreaterThanOrEqual(19);

    const marked = await markSilentInstances(t.db);
    expect(marked.map((m) => m.id)).toEqual(['i_crashed']);
    expect(marked[0]).toMatchObject({ hostname: 'host-b', pid: 2 });
    expect(await markSilentInstances(t.db)).toEqual([]);
    expect((await listInstances(t.db)).find((i) => i.id === 'i_crashed')?.deadAt).toBeInstanceOf(Date);

    // It was only stalled: its next renewal clears the mark and says so.
    expect(await renewInstance(t.db, 'i_crashed', { store: 'down' })).toBe('revived');
    expect(await renewInstance(t.db, 'i_crashed', { store: 'up' })).toBe('renewed');
    const revived = (await listInstances(t.db)).find((i) => i.id === 'i_crashed');
    expect(revived).toMatchObject({ state: 'live', deadAt: null, health: { store: 'up' } });
    expect(await renewInstance(t.db, 'i_never_registered', {})).toBe('missing');
  });

  it('removes a line a day after it was marked dead', async () => {
    await silent(t, 'i_old', 2 * 86_400, 30);
    await t.db.query(`update service_instances set dead_at = now() - interval '25 hours' where id = 'i_old'`);
    await markSilentInstances(t.db);
    expect((await listInstances(t.db)).map((i) => i.id)).not.toContain('i_old');
  });

  it('a running process writes its health, marks the silent within a beat, and removes its line when it stops', async () => {
    const logs: Record<string, unknown>[] = [];
    const logger = pino({ level: 'info' }, { write: (s: string) => void logs.push(JSON.parse(s)) });
    await silent(t, 'i_killed', 10, 3);
    const stop = await startInstanceLine({
      db: t.db,
      logger,
      id: 'i_me',
      hostname: 'here',
      pid: process.pid,
      version: 'test',
      leaseSeconds: 3,
      store: async () => {},
      buildsRunning: () => 1,
      runnerConcurrency: 2,
    });
    try {
      const deadline = Date.now() + 5_000;
      while (!logs.some((l) => l.deadInstanceId === 'i_killed') && Date.now() < deadline) await sleep(100);
      const warning = logs.find((l) => l.deadInstanceId === 'i_killed');
      expect(warning).toMatchObject({ level: 40, hostname: 'host-b', pid: 2 });
      expect(String(warning?.msg)).toMatch(/did not renew its line within its lease: marked dead/);
      const me = (await listInstances(t.db)).find((i) => i.id === 'i_me');
      expect(me).toMatchObject({ state: 'live', leaseSeconds: 3, hostname: 'here', pid: process.pid });
      expect(me?.health).toMatchObject({ store: 'up', buildsRunning: 1, runnerConcurrency: 2 });
      expect(me?.health.rssMb).toBeGreaterThan(0);
      expect(me?.silentSeconds).toBeLessThan(3);
    } finally {
      await stop();
    }
    expect((await listInstances(t.db)).map((i) => i.id)).not.toContain('i_me');
  });
});

describe.runIf(DATABASE_URL)('service_instances with many processes marking at once (PostgreSQL)', () => {
  let t: TestDatabase;
  beforeAll(async () => {
    t = await openTestDatabase();
  });
  afterAll(() => t.cleanup());

  it('marks each silent line once', async () => {
    for (let i = 0; i < 10; i++) await silent(t, `i_gone_${i}`, 60, 5);
    const rounds = await Promise.all(Array.from({ length: 8 }, () => markSilentInstances(t.db)));
    const marked = rounds.flat().map((m) => m.id);
    expect(marked.sort()).toEqual(Array.from({ length: 10 }, (_, i) => `i_gone_${i}`).sort());
  });
});
