import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { foldAnalytics } from '../../src/db/analytics';
import type { Queryable } from '../../src/db/database';
import { pruneOnce, type RetentionSettings } from '../../src/services/retention';
import { openTestDatabase, type TestDatabase } from '../helpers/db';
import { DATABASE_URL } from '../helpers/env';

const DAY_S = 86_400;

/**
 * A finished build as history holds it (triggers off, as a restore would write it): ended `daysAgo` days ago, with
 * two events and, when deployed, a preview file in the database.
 */
async function history(
  t: TestDatabase,
  build: { id: string; project: string; state: 'deployed' | 'failed' | 'queued'; daysAgo: number },
): Promise<void> {
  await t.db.transaction(async (tx) => {
    await tx.query('set local session_replication_role = replica');
    await tx.query(
      `insert into projects (id, owner_id, name) values ($1::text, 'o', 'n') on conflict (id) do nothing`,
      [build.project],
    );
    const ended = build.state !== 'queued';
    await tx.query(
      `insert into builds (id, project_id, user_id, state, previous_state, estimated_credits, exclusive, created_at,
                           started_at, finished_at, last_event_seq)
       values ($1::text, $2::text, 'u', $3::text, $4::text, 1, false,
               now() - make_interval(secs => $5::float8 + 600), now() - make_interval(secs => $5::float8 + 300),
               case when $6::boolean then now() - make_interval(secs => $5::float8) end, 2)`,
      [build.id, build.project, build.state, ended ? 'building' : null, build.daysAgo * DAY_S, ended],
    );
    await tx.query(
      `insert into build_events (build_id, seq, type) values ($1::text, 1, 'queued'), ($1::text, 2, $2::text)`,
      [build.id, ended ? build.state : 'log'],
    );
    if (build.state === 'deployed') {
      await tx.query(
        `insert into build_preview_files (build_id, path, size, body) values ($1::text, 'index.html', 2, '\\x6869')`,
        [build.id],
      );
    }
  });
}

const count = async (q: Queryable, sql: string, params: unknown[] = []) =>
  (await q.query<{ n: number }>(`select count(*)::int as n from ${sql}`, params)).rows[0].n;

/**
 * Fold every event into the analytics rollups (retention never removes an event the fold has not read). The fold
 * takes only settled rows: while any transaction of the cluster (another test's) is open, it waits; so this folds
 * until no event is left past its cursor, within a deadline.
 */
async function foldAll(t: TestDatabase): Promise<void> {
  const deadline = Date.now() + 60_000;
  for (;;) {
    await foldAnalytics(t.db, 100_000);
    const left = await count(
      t.db,
      `build_events e, analytics_fold_cursors c
        where c.source = 'build_events' and (e.xact, e.build_id, e.seq) > (c.xact, c.ref, c.n)`,
    );
    if (left === 0) return;
    if (Date.now() > deadline) throw new Error(`${left} events still not folded after 60 s`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

describe('retention: what old builds leave behind', () => {
  let t: TestDatabase;
  let dataDir: string;
  let settings: RetentionSettings;
  const ids = ['a1', 'a2', 'a3', 'b1', 'b2', 'c1', 'r1', 'q1'].map((id) => `ret_${id}`);
  const [a1, a2, a3, b1, b2, c1, r1, q1] = ids;

  beforeAll(async () => {
    t = await openTestDatabase();
    dataDir = await mkdtemp(join(tmpdir(), 'kiln-retention-'));
    settings = { dataDir, workspaceDays: 7, previewDays: 30, eventDays: 20, webhookDays: 20 };
    // Project A: two old deploys (a2 the latest) and a failure after them; B: an old deploy superseded by a recent
    // one, and a failure 10 days ago; C: one old deploy, its latest. q1 still waits.
    await history(t, { id: a1, project: 'ret_pa', state: 'deployed', daysAgo: 40 });
    await history(t, { id: a2, project: 'ret_pa', state: 'deployed', daysAgo: 35 });
    await history(t, { id: a3, project: 'ret_pa', state: 'failed', daysAgo: 31 });
    await history(t, { id: b1, project: 'ret_pb', state: 'deployed', daysAgo: 3 });
    await history(t, { id: b2, project: 'ret_pb', state: 'deployed', daysAgo: 39 });
    await history(t, { id: c1, project: 'ret_pc', state: 'deployed', daysAgo: 38 });
    await history(t, { id: r1, project: 'ret_pb', state: 'failed', daysAgo: 10 });
    await history(t, { id: q1, project: 'ret_pc', state: 'queued', daysAgo: 0 });
    for (const id of [...ids, 'not_a_build_of_this_database']) {
      await mkdir(join(dataDir, 'builds', id, 'preview'), { recursive: true });
      await writeFile(join(dataDir, 'builds', id, 'preview', 'index.html'), id);
    }
    // Outbox rows of b1 (recent): delivered and failed 25 days ago (one with attempts), delivered 5 days ago,
    // pending; and b2's first message still pending (its endpoint retrying).
    await t.db.query(
      `insert into webhook_deliveries (build_id, seq, project_id, status, finished_at)
       values ($1::text, 1, 'ret_pb', 'delivered', now() - interval '25 days'),
              ($1::text, 2, 'ret_pb', 'failed', now() - interval '25 days'),
              ($1::text, 1, 'ret_pb', 'delivered', now() - interval '5 days'),
              ($1::text, 2, 'ret_pb', 'pending', null),
              ($2::text, 1, 'ret_pb', 'pending', null)`,
      [b1, b2],
    );
    await t.db.query(
      `insert into webhook_attempts (delivery_id, attempt, build_id, attempted_at, duration_ms, outcome)
       select id, a, build_id, now() - interval '25 days', 10, 'delivered'
         from webhook_deliveries, generate_series(1, 2) a where status = 'delivered' and finished_at < now() - interval '20 days'`,
    );
  });
  afterAll(async () => {
    await t?.cleanup();
    if (dataDir) await rm(dataDir, { recursive: true, force: true });
  });

  const eventsOf = (id: string) => count(t.db, 'build_events where build_id = $1', [id]);

  it('removes old workspaces, previews and finished outbox rows, keeping each project’s latest deploy; events wait for the fold', async () => {
    // A removal cut short earlier (a process killed mid-way) left a directory aside: it goes first.
    await mkdir(join(dataDir, 'builds', '.pruning-ret_gone-0a1b2c3d', 'preview'), { recursive: true });
    const removed = await pruneOnce(t.db, settings);
    // Nothing folded yet: event retention waits at the first build that ended over 20 days ago.
    expect(removed).toEqual({ workspaces: 4, previews: 2, webhooks: 2, events: 0, eventsWaitingFor: a1 });
    // Workspaces: a1 and b2 superseded, a3 and r1 failed, all over 7 days; a2 and c1 are their project's latest;
    // the directory no build of this database owns stays.
    expect((await readdir(join(dataDir, 'builds'))).sort()).toEqual(
      [a2, b1, c1, q1, 'not_a_build_of_this_database'].sort(),
    );
    const previews = await t.db.query<{ build_id: string }>(
      'select build_id from build_preview_files order by build_id',
    );
    expect(previews.rows.map((r) => r.build_id)).toEqual([a2, b1, c1].sort());
    expect(await count(t.db, 'webhook_deliveries where build_id = $1', [b1])).toBe(2);
    expect(await count(t.db, "webhook_deliveries where status = 'pending'")).toBe(2);
    expect(await count(t.db, 'webhook_attempts')).toBe(0);
    // Nothing folded yet: no event goes.
    for (const id of ids) expect(await eventsOf(id), id).toBe(2);
  });

  it('removes the events of builds over their age once folded, stopping at one with a message pending', async () => {
    await foldAll(t);
    expect(await pruneOnce(t.db, settings)).toMatchObject({ events: 1, eventsWaitingFor: b2 });
    expect(await eventsOf(a1)).toBe(0);
    // b2 (39 days) has a message still pending: it and every build after it in end order wait.
    for (const id of [b2, c1, a2, a3]) expect(await eventsOf(id), id).toBe(2);

    await t.db.query(
      `update webhook_deliveries set status = 'delivered', finished_at = now() where build_id = $1::text`,
      [b2],
    );
    const second = await pruneOnce(t.db, settings);
    expect(second).toMatchObject({ events: 4 });
    expect(second.eventsWaitingFor).toBeUndefined();
    for (const id of [b2, c1, a2, a3]) expect(await eventsOf(id), id).toBe(0);
    // Its outbox row pointed at an event: it went with it. Recent builds keep every event.
    expect(await count(t.db, 'webhook_deliveries where build_id = $1', [b2])).toBe(0);
    for (const id of [b1, r1, q1]) expect(await eventsOf(id), id).toBe(2);
    // Builds themselves are never pruned; a second pass finds nothing left.
    expect(await count(t.db, "builds where id like 'ret_%'")).toBe(8);
    expect(await pruneOnce(t.db, settings)).toEqual({ workspaces: 0, previews: 0, webhooks: 0, events: 0 });
  });

  it('keeps a kind forever when its setting is 0', async () => {
    expect(await pruneOnce(t.db, { dataDir, workspaceDays: 0, previewDays: 0, eventDays: 0, webhookDays: 0 })).toEqual(
      {},
    );
  });

  it('leaves the event and attempt tables append-only to everything else', async () => {
    await expect(t.db.query('delete from build_events where build_id = $1', [b1])).rejects.toMatchObject({
      code: 'KL003',
    });
    await expect(t.db.query("update build_events set message = 'x' where build_id = $1", [b1])).rejects.toMatchObject({
      code: 'KL003',
    });
    // Even with retention's setting on, an update is refused.
    await expect(
      t.db.transaction(async (tx) => {
        await tx.query(`select set_config('kiln.pruning', 'on', true)`);
        await tx.query("update build_events set message = 'x' where build_id = $1", [b1]);
      }),
    ).rejects.toMatchObject({ code: 'KL003' });
    expect(await eventsOf(b1)).toBe(2);
  });
});

describe.runIf(DATABASE_URL)('retention in several processes at once, while builds go on (PostgreSQL)', () => {
  let t: TestDatabase;
  let dataDir: string;
  beforeAll(async () => {
    t = await openTestDatabase();
    dataDir = await mkdtemp(join(tmpdir(), 'kiln-retention-'));
  });
  afterAll(async () => {
    await t?.cleanup();
    if (dataDir) await rm(dataDir, { recursive: true, force: true });
  });

  it('does each piece of work once, and keeps what builds write meanwhile', async () => {
    // 30 old deploys over 3 projects (the latest of each is kept), each with a workspace.
    for (let i = 0; i < 30; i++) {
      const id = `old_${i}`;
      await history(t, { id, project: `old_p${i % 3}`, state: 'deployed', daysAgo: 60 - i });
      await mkdir(join(dataDir, 'builds', id), { recursive: true });
    }
    await foldAll(t);
    const settings = { dataDir, workspaceDays: 7, previewDays: 30, eventDays: 20, webhookDays: 20 };
    // Six "processes" (each pass on connections of its own from the pool), and builds deploying at the same time.
    const fresh = Array.from({ length: 20 }, (_, i) => `new_${i}`);
    const [passes] = await Promise.all([
      Promise.all(Array.from({ length: 6 }, () => pruneOnce(t.db, settings))),
      Promise.all(fresh.map((id, i) => history(t, { id, project: `new_p${i % 4}`, state: 'deployed', daysAgo: 0 }))),
    ]);
    const total = (kind: 'workspaces' | 'previews' | 'events') =>
      passes.reduce((n, pass) => n + Math.max(0, pass[kind] ?? 0), 0);
    expect({ workspaces: total('workspaces'), previews: total('previews'), events: total('events') }).toEqual({
      workspaces: 27,
      previews: 27,
      events: 30,
    });
    expect((await readdir(join(dataDir, 'builds'))).sort()).toEqual(['old_27', 'old_28', 'old_29']);
    expect(await count(t.db, "build_preview_files where build_id like 'old_%'")).toBe(3);
    expect(await count(t.db, "build_events where build_id like 'old_%'")).toBe(0);
    expect(await count(t.db, "build_preview_files where build_id like 'new_%'")).toBe(20);
    expect(await count(t.db, "build_events where build_id like 'new_%'")).toBe(40);
  });
});
