import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Queryable } from '../../src/db/database';
import { readPipeline, readPipelineWithin } from '../../src/db/pipeline';
import { sharedRead } from '../../src/services/shared-read';
import { openTestDatabase, type TestDatabase } from '../helpers/db';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The pipeline read behind the shared gauges and the live page: one statement, on indexes, shared by scrapes. */
describe('the pipeline snapshot', () => {
  let t: TestDatabase;
  beforeAll(async () => {
    t = await openTestDatabase();
  });
  afterAll(() => t.cleanup());

  /** The database, counting the statements sent through it (and failing the next `failures` of them). */
  const counting = (failures = 0) => {
    const sent: string[] = [];
    let failing = failures;
    const q: Queryable = {
      query: async (sql, params) => {
        sent.push(sql);
        if (failing > 0) {
          failing -= 1;
          throw new Error('the database is away');
        }
        return t.db.query(sql, params);
      },
    };
    return { q, sent };
  };

  it('reads the queue, running builds, holds, instances and the latest audit in one statement', async () => {
    await t.db.query(`insert into projects (id, owner_id, name) values ('p_pipe', 'o', 'n')`);
    await t.db.query(
      `insert into builds (id, project_id, user_id, state, estimated_credits, exclusive, created_at)
       values ('b_pipe_1', 'p_pipe', 'u', 'queued', 1, false, now() - interval '90 seconds'),
              ('b_pipe_2', 'p_pipe', 'u', 'queued', 1, false, now() - interval '5 seconds')`,
    );
    await t.db.query(`insert into credit_accounts (user_id, balance, reserved) values ('u_pipe', 100, 30)`);
    await t.db.query(
      `insert into credit_reservations (id, user_id, amount, expires_at, request_id, correlation_id, reason)
       values ('r_pipe_1', 'u_pipe', 10, now() + interval '1 hour', 'r', 'c', 'x'),
              ('r_pipe_2', 'u_pipe', 20, now() + interval '1 hour', 'r', 'c', 'x'),
              ('r_pipe_3', 'u_pipe', 40, now() - interval '1 second', 'r', 'c', 'lapsed: not counted')`,
    );
    await t.db.query(
      `insert into service_instances (id, hostname, pid, version, last_seen_at, lease_seconds)
       values ('i_live', 'h', 1, 'v', now() - interval '50 seconds', 60),
              ('i_gone', 'h', 2, 'v', now() - interval '10 minutes', 60),
              ('i_short', 'h', 3, 'v', now() - interval '20 seconds', 10)`,
    );
    await t.db.query(
      `insert into credit_audit_runs (ok, problems, checked_users, checked_reservations, ledger_entries, source)
       values (false, 3, 1, 1, 1, 'cli')`,
    );
    // Webhook messages: b_pipe_1's first is retrying later, its second is due but waits behind it (its build is
    // late, not delivery); b_pipe_2's is due since 30 s and could be claimed: that is the overdue figure.
    await t.db.query(
      `insert into build_events (build_id, seq, type) values ('b_pipe_1', 1, 'queued'), ('b_pipe_1', 2, 'log'),
              ('b_pipe_2', 1, 'queued'), ('b_pipe_2', 2, 'log')`,
    );
    await t.db.query(
      `insert into webhook_deliveries (build_id, seq, project_id, status, next_attempt_at)
       values ('b_pipe_1', 1, 'p_pipe', 'pending', now() + interval '1 hour'),
              ('b_pipe_1', 2, 'p_pipe', 'pending', now() - interval '90 seconds'),
              ('b_pipe_2', 1, 'p_pipe', 'pending', now() - interval '30 seconds'),
              ('b_pipe_2', 2, 'p_pipe', 'delivered', now() - interval '10 minutes')`,
    );
    const { q, sent } = counting();
    const snapshot = await readPipeline(q);
    expect(sent).toHaveLength(1);
    // As the scrapes read it: in a transaction whose statements the database cancels past a limit.
    const { oldestQueuedAgeSeconds: _age, webhookOldestDueSeconds: _due, ...rest } = snapshot;
    expect(await readPipelineWithin(t.db, 2_000)).toMatchObject(rest);
    expect(snapshot).toMatchObject({
      queuedBuilds: 2,
      buildingBuilds: 0,
      activeHolds: 2,
      reservedCredits: 30,
      // Each line by its own lease: 50 s silent within 60 is live; 20 s silent past 10 is dead.
      liveInstances: 1,
      deadInstances: 2,
      webhookPending: 3,
      audit: { problems: 3 },
    });
    expect(snapshot.webhookOldestDueSeconds).toBeGreaterThanOrEqual(30);
    expect(snapshot.webhookOldestDueSeconds).toBeLessThan(85);
    expect(snapshot.oldestQueuedAgeSeconds).toBeGreaterThanOrEqual(90);
    expect(snapshot.oldestQueuedAgeSeconds).toBeLessThan(150);
  });

  it('serves concurrent and repeated askers from one read for a second, and does not keep a failure', async () => {
    const { q, sent } = counting(1);
    const read = sharedRead(() => readPipeline(q), 300);
    await expect(read()).rejects.toThrow(/away/);
    const first = await Promise.all(Array.from({ length: 20 }, () => read()));
    expect(sent).toHaveLength(2);
    expect(new Set(first).size).toBe(1);
    await read();
    expect(sent).toHaveLength(2);
    await sleep(350);
    await read();
    expect(sent).toHaveLength(3);
  });

  it('abandons a read that never answers: the next asker starts another', async () => {
    let calls = 0;
    const read = sharedRead(() => (++calls === 1 ? new Promise<number>(() => {}) : Promise.resolve(calls)), 1_000, 200);
    const stuck = read();
    expect(await Promise.race([stuck, sleep(50).then(() => 'waiting')])).toBe('waiting');
    expect(await Promise.race([read(), sleep(50).then(() => 'still shared')])).toBe('still shared');
    await sleep(200);
    expect(await read()).toBe(2);
    // The fresh answer serves the askers that follow.
    expect(await read()).toBe(2);
    expect(calls).toBe(2);
  });

  it('has an index for each of its parts (no sequential scan when the planner may avoid one)', async () => {
    const { q, sent } = counting();
    await readPipeline(q);
    const tx = await t.db.begin();
    try {
      await tx.query('set local enable_seqscan = off');
      const { rows } = await tx.query<Record<string, string>>(`explain ${sent[0].replaceAll('$1::int', '60')}`);
      const plan = rows.map((r) => Object.values(r)[0]).join('\n');
      // service_instances has one row per process and no index on last_seen_at: a scan of it is fine.
      const scans = plan.split('\n').filter((line) => /Seq Scan on (?!service_instances)/.test(line));
      expect(scans).toEqual([]);
    } finally {
      await tx.rollback();
    }
  });
});
