import type { Queryable } from './database';

/**
 * The reads of the live page (GET /dashboard/data) beyond the pipeline snapshot (db/pipeline.ts): each one
 * statement on an index, so a refresh costs a few index scans whatever the size of the history. Ages and durations
 * are measured on the database's clock, as the pipeline's are.
 */

/** A build running now, with its latest progress event. */
export interface ActiveBuildRow {
  id: string;
  projectId: string;
  userId: string;
  startedAt: Date | null;
  ageSeconds: number;
  /** The latest progress event's figure (0..1), null before the first one. */
  progress: number | null;
  phase: string | null;
  message: string | null;
  /** The runner holding the build's lease (null for a build moved through the API). */
  runner: string | null;
}

/**
 * In: a limit. Out: the builds in `building` (oldest first, at most `limit`), each with its age since it started and
 * its latest progress event (a lateral scan backwards on the build_events primary key, stopping at the first
 * progress). Errors: only the database's own.
 */
export async function readActiveBuilds(q: Queryable, limit = 50): Promise<ActiveBuildRow[]> {
  const { rows } = await q.query<{
    id: string;
    project_id: string;
    user_id: string;
    started_at: Date | null;
    age_s: number | null;
    progress: number | null;
    phase: string | null;
    message: string | null;
    lease_owner: string | null;
  }>(
    `select b.id, b.project_id, b.user_id, b.started_at, b.lease_owner,
            extract(epoch from clock_timestamp() - coalesce(b.started_at, b.created_at))::float8 as age_s,
            p.progress, p.phase, p.message
       from builds b
       left join lateral (select e.progress, e.phase, e.message from build_events e
                           where e.build_id = b.id and e.type = 'progress'
                           order by e.seq desc limit 1) p on true
      where b.state = 'building'
      order by b.started_at nulls last, b.id
      limit $1::int`,
    [limit],
  );
  return rows.map((row) => ({
    id: row.id,
    projectId: row.project_id,
    userId: row.user_id,
    startedAt: row.started_at === null ? null : new Date(row.started_at),
    ageSeconds: Math.max(0, row.age_s ?? 0),
    progress: row.progress,
    phase: row.phase,
    message: row.message,
    runner: row.lease_owner,
  }));
}

/**
 * In: nothing. Out: the oldest queued build's id (the one runners claim next), or undefined when none waits — on the
 * builds_queued index. Errors: only the database's own.
 */
export async function readOldestQueuedBuildId(q: Queryable): Promise<string | undefined> {
  const { rows } = await q.query<{ id: string }>(
    `select id from builds where state = 'queued' order by created_at, id limit 1`,
  );
  return rows[0]?.id;
}

/** A recently created build. */
export interface RecentBuildRow {
  id: string;
  projectId: string;
  userId: string;
  state: string;
  reason: string | null;
  createdAt: Date;
  startedAt: Date | null;
  finishedAt: Date | null;
  /** From start to its end (or to now while it builds); null for a build that never started. */
  durationSeconds: number | null;
}

/**
 * In: a limit. Out: the most recently created builds, newest first (on builds_created), with their state, reason
 * and duration. Errors: only the database's own.
 */
export async function readRecentBuilds(q: Queryable, limit = 20): Promise<RecentBuildRow[]> {
  const { rows } = await q.query<{
    id: string;
    project_id: string;
    user_id: string;
    state: string;
    reason: string | null;
    created_at: Date;
    started_at: Date | null;
    finished_at: Date | null;
    duration_s: number | null;
  }>(
    `select id, project_id, user_id, state, reason, created_at, started_at, finished_at,
            extract(epoch from coalesce(finished_at, clock_timestamp()) - started_at)::float8 as duration_s
       from builds
      order by created_at desc, id desc
      limit $1::int`,
    [limit],
  );
  return rows.map((row) => ({
    id: row.id,
    projectId: row.project_id,
    userId: row.user_id,
    state: row.state,
    reason: row.reason,
    createdAt: new Date(row.created_at),
    startedAt: row.started_at === null ? null : new Date(row.started_at),
    finishedAt: row.finished_at === null ? null : new Date(row.finished_at),
    durationSeconds: row.duration_s === null ? null : Math.max(0, row.duration_s),
  }));
}

/** How many builds ended in a state (and, for failures, with a reason) within the window. */
export interface EndedBuildsRow {
  state: string;
  reason: string | null;
  count: number;
}

/**
 * In: a window in seconds. Out: the builds that ended within it (on builds_finished), counted by final state and
 * reason. Errors: only the database's own.
 */
export async function readEndedBuilds(q: Queryable, withinSeconds = 3600): Promise<EndedBuildsRow[]> {
  const { rows } = await q.query<{ state: string; reason: string | null; n: number }>(
    `select state, reason, count(*)::int as n
       from builds
      where finished_at > clock_timestamp() - make_interval(secs => $1::int)
      group by state, reason`,
    [withinSeconds],
  );
  return rows.map((row) => ({ state: row.state, reason: row.reason, count: row.n }));
}

/** The ledger entries of one type within the window, summed. */
export interface LedgerSumRow {
  type: string;
  entries: number;
  /** Sum of the signed change of balance. */
  amount: number;
  /** Sum of the signed change of reserved credits. */
  reservedChange: number;
}

/**
 * In: a window in seconds. Out: the ledger entries written within it (on credit_ledger_created), summed by type.
 * Errors: only the database's own.
 */
export async function readLedgerSums(q: Queryable, withinSeconds = 3600): Promise<LedgerSumRow[]> {
  const { rows } = await q.query<{ type: string; n: number; amount: unknown; reserved_change: unknown }>(
    `select type, count(*)::int as n, coalesce(sum(amount), 0)::bigint as amount,
            coalesce(sum(reserved_change), 0)::bigint as reserved_change
       from credit_ledger
      where created_at > clock_timestamp() - make_interval(secs => $1::int)
      group by type`,
    [withinSeconds],
  );
  return rows.map((row) => ({
    type: row.type,
    entries: row.n,
    amount: Number(row.amount),
    reservedChange: Number(row.reserved_change),
  }));
}
