import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { appendEvent, listEvents, queueBuild, transitionBuild } from '../../src/db/builds';
import { openTestDatabase, type TestDatabase } from '../helpers/db';
import { DATABASE_URL } from '../helpers/env';

/** No event after the end (SPEC section 5): a build's events stop at its terminal one, whatever races it. */
describe('build events after the end', () => {
  let t: TestDatabase;
  let n = 0;
  beforeAll(async () => {
    t = await openTestDatabase();
    await t.db.query(
      "insert into projects (id, owner_id, name, allow_concurrent_builds) values ('p_ev', 'o', 'n', true)",
    );
    await t.db.query("select credit_grant('u_ev', 1000000, null, 'test', 'test', 'test', 'test')");
  });
  afterAll(() => t.cleanup());

  const newBuild = async () => {
    const id = `b_ev_${++n}`;
    await queueBuild(t.db, {
      id,
      reservationId: `r_${id}`,
      projectId: 'p_ev',
      userId: 'u_ev',
      estimatedCredits: 1,
      metadata: {},
      holdTtlS: 600,
      holdReason: 'test',
      requestId: 'req',
      correlationId: 'corr',
    });
    return id;
  };
  const log = { type: 'log' as const, message: 'line' };
  const cancel = (id: string, from: 'queued' | 'building') =>
    transitionBuild(t.db, id, { from, to: 'cancelled', reason: 'cancelled', event: { message: 'Build cancelled' } });

  it('appends while the build is queued or building, and nothing once it was cancelled', async () => {
    const id = await newBuild();
    expect(await appendEvent(t.db, id, log)).toBe(2);
    await transitionBuild(t.db, id, { from: 'queued', to: 'building', event: { message: 'Build started' } });
    expect(await appendEvent(t.db, id, { type: 'progress', progress: 0.5 })).toBe(4);
    expect((await cancel(id, 'building'))?.state).toBe('cancelled');
    expect(await appendEvent(t.db, id, log)).toBeUndefined();
    expect(await appendEvent(t.db, id, { type: 'progress', progress: 1 })).toBeUndefined();
    const events = await listEvents(t.db, id, 0, 100);
    expect(events.map((e) => e.type)).toEqual(['queued', 'log', 'started', 'progress', 'cancelled']);
    const { rows } = await t.db.query<{ last_event_seq: number }>('select last_event_seq from builds where id = $1', [
      id,
    ]);
    expect(rows[0].last_event_seq).toBe(5);
  });

  it('appends nothing to a deployed or failed build, or to no build', async () => {
    for (const to of ['deployed', 'failed'] as const) {
      const id = await newBuild();
      await transitionBuild(t.db, id, { from: 'queued', to: 'building', event: { message: 'Build started' } });
      await transitionBuild(t.db, id, { from: 'building', to, event: { message: `Build ${to}` } });
      expect(await appendEvent(t.db, id, log)).toBeUndefined();
      expect((await listEvents(t.db, id, 0, 100)).at(-1)?.type).toBe(to);
    }
    expect(await appendEvent(t.db, 'b_ev_missing', log)).toBeUndefined();
  });

  it.skipIf(!DATABASE_URL)(
    'many appends racing a cancel on PostgreSQL: every event is numbered before the cancelled one',
    async () => {
      for (let round = 0; round < 3; round++) {
        const id = await newBuild();
        await transitionBuild(t.db, id, { from: 'queued', to: 'building', event: { message: 'Build started' } });
        let cancelled = false;
        let afterCancel = 0;
        // Eight writers append as fast as the pool lets them, before, during and after the cancel.
        const writers = Array.from({ length: 8 }, async () => {
          while (afterCancel < 40) {
            await appendEvent(t.db, id, log);
            if (cancelled) afterCancel += 1;
          }
        });
        await new Promise((resolve) => setTimeout(resolve, 30));
        const ended = await cancel(id, 'building');
        cancelled = true;
        expect(ended?.state).toBe('cancelled');
        await Promise.all(writers);
        const events = await listEvents(t.db, id, 0, 100_000);
        const end = events.find((e) => e.type === 'cancelled');
        expect(end).toBeDefined();
        expect(events.filter((e) => e.type === 'log').length).toBeGreaterThan(0);
        expect(events.filter((e) => e.seq > end!.seq)).toEqual([]);
        expect(events.at(-1)?.type).toBe('cancelled');
      }
    },
  );
});
