import { type BuildState, validNextStates } from '../domain/build-states';
import { type Queryable, sqlState } from './database';

/** A build as the API shows it (SPEC section 5): every response that carries a build carries its state. */
export interface Build {
  id: string;
  projectId: string;
  userId: string;
  state: BuildState;
  previousState: BuildState | null;
  validNextStates: BuildState[];
  createdAt: string;
  startedAt: string | null;
  finishedAt: string | null;
  durationMs: number | null;
  estimatedCredits: number;
  actualCredits: number | null;
  reservationId: string | null;
  previewUrl: string | null;
  error: string | null;
  reason: string | null;
  metadata: Record<string, unknown>;
}

/** An event of a build, numbered per build from 1. */
export interface BuildEvent {
  seq: number;
  type: 'queued' | 'started' | 'progress' | 'log' | 'deployed' | 'failed' | 'cancelled';
  phase?: string;
  message?: string;
  progress?: number;
  data?: Record<string, unknown>;
  createdAt: string;
}

export interface DbBuild {
  id: string;
  project_id: string;
  user_id: string;
  state: BuildState;
  previous_state: BuildState | null;
  /** bigint columns (0008), read as numbers by both adapters (postgres.ts's int8 parser; PGlite's own). */
  estimated_credits: number;
  actual_credits: number | null;
  reservation_id: string | null;
  preview_url: string | null;
  error: string | null;
  reason: string | null;
  metadata: Record<string, unknown>;
  created_at: Date;
  started_at: Date | null;
  finished_at: Date | null;
  lease_owner: string | null;
}

export interface DbBuildEvent {
  seq: number;
  type: BuildEvent['type'];
  phase: string | null;
  message: string | null;
  progress: number | null;
  data: Record<string, unknown> | null;
  created_at: Date;
}

export const BUILD_COLUMNS = `id, project_id, user_id, state, previous_state, estimated_credits, actual_credits,
  reservation_id, preview_url, error, reason, metadata, created_at, started_at, finished_at, lease_owner`;
/** The build columns qualified with `b.`, for statements that select from a CTE named b. */
export const B_COLUMNS = BUILD_COLUMNS.split(',')
  .map((c) => `b.${c.trim()}`)
  .join(', ');

/** A build row as the API shows it (camelCase, its valid next states, its duration). Pure. */
export function toBuild(row: DbBuild): Build {
  return {
    id: row.id,
    projectId: row.project_id,
    userId: row.user_id,
    state: row.state,
    previousState: row.previous_state,
    validNextStates: validNextStates(row.state),
    createdAt: row.created_at.toISOString(),
    startedAt: row.started_at?.toISOString() ?? null,
    finishedAt: row.finished_at?.toISOString() ?? null,
    durationMs: row.started_at && row.finished_at ? row.finished_at.getTime() - row.started_at.getTime() : null,
    estimatedCredits: row.estimated_credits,
    actualCredits: row.actual_credits,
    reservationId: row.reservation_id,
    previewUrl: row.preview_url,
    error: row.error,
    reason: row.reason,
    metadata: row.metadata,
  };
}

/** An event row as the API shows it. Pure. */
export function toEvent(row: DbBuildEvent): BuildEvent {
  return {
    seq: row.seq,
    type: row.type,
    ...(row.phase === null ? {} : { phase: row.phase }),
    ...(row.message === null ? {} : { message: row.message }),
    ...(row.progress === null ? {} : { progress: row.progress }),
    ...(row.data === null ? {} : { data: row.data }),
    createdAt: row.created_at.toISOString(),
  };
}

export interface NewBuild {
  id: string;
  /** The id of the credit hold taken for it in the same statement. */
  reservationId: string;
  projectId: string;
  userId: string;
  estimatedCredits: number;
  metadata: Record<string, unknown>;
  /** How long the hold lasts unless renewed (seconds), and the ledger's words and ids for it. */
  holdTtlS: number;
  holdReason: string;
  requestId: string;
  correlationId: string;
}

/** The row build_create writes for `build`, created at `createdAt`: queued, nothing else known yet. Pure. */
export function queuedRow(build: NewBuild, createdAt: Date): DbBuild {
  return {
    id: build.id,
    project_id: build.projectId,
    user_id: build.userId,
    state: 'queued',
    previous_state: null,
    estimated_credits: build.estimatedCredits,
    actual_credits: null,
    reservation_id: build.reservationId,
    preview_url: null,
    error: null,
    reason: null,
    metadata: build.metadata,
    created_at: createdAt,
    started_at: null,
    finished_at: null,
    lease_owner: null,
  };
}

/** What queueBuild did: see build_create (migration 0012). */
export type QueuedBuild =
  | { outcome: 'created'; build: DbBuild; available: number; expired: number }
  | { outcome: 'insufficient'; available: number }
  | { outcome: 'busy'; active: DbBuild | undefined }
  | { outcome: 'no_project' };

/**
 * Queue a build and hold its credits in one statement (build_create): check the project, insert the build as queued
 * with its first event (seq 1), and reserve its credits under the user's account lock. 'busy' when the project
 * allows one active build and has one (the partial unique index is the arbiter, so concurrent inserts wait and then
 * lose); 'insufficient' when the credits are short. Nothing is written unless 'created', so the statement may run
 * alone, in autocommit; in a transaction, 'insufficient' has aborted it (roll back). Errors: 23505 when the build id
 * exists, and the database's own.
 */
export async function queueBuild(q: Queryable, build: NewBuild): Promise<QueuedBuild> {
  const result = await runQueueBuild(q, build).catch((error: unknown) => {
    if (sqlState(error) !== 'KB402') throw error;
    return { outcome: 'insufficient' as const, available: Number((error as { detail?: string }).detail) };
  });
  return result;
}

async function runQueueBuild(q: Queryable, build: NewBuild): Promise<QueuedBuild> {
  const { rows } = await q.query<
    DbBuild & { outcome: QueuedBuild['outcome']; balance: number; reserved: number; expired: number }
  >(
    `select * from build_create($1::text, $2::text, $3::text, $4::text, $5::bigint, $6::jsonb, $7::int, $8::text,
                                $9::text, $10::text)`,
    [
      build.id,
      build.projectId,
      build.userId,
      build.reservationId,
      build.estimatedCredits,
      JSON.stringify(build.metadata),
      build.holdTtlS,
      build.requestId,
      build.correlationId,
      build.holdReason,
    ],
  );
  const { outcome, balance, reserved, expired, ...row } = rows[0];
  switch (outcome) {
    case 'created':
      return { outcome, build: row, available: balance - reserved, expired };
    case 'busy':
      return { outcome, active: row.id === null ? undefined : row };
    default:
      return { outcome: 'no_project' };
  }
}

/** In: a build id. Out: its row, or undefined when there is none. Errors: only the database's own. */
export async function findBuild(q: Queryable, id: string): Promise<DbBuild | undefined> {
  const { rows } = await q.query<DbBuild>(`select ${BUILD_COLUMNS} from builds where id = $1::text`, [id]);
  return rows[0];
}

/**
 * In: a project id. Out: up to `limit` of its active builds (queued or building), oldest first, and how many there
 * are in all. Errors: only the database's own.
 */
export async function activeBuildsOf(
  q: Queryable,
  projectId: string,
  limit: number,
): Promise<{ total: number; builds: { id: string; state: string }[] }> {
  const { rows } = await q.query<{ id: string; state: string; total: number }>(
    `select id, state, count(*) over ()::int as total from builds
      where project_id = $1::text and state in ('queued', 'building')
      order by created_at, id limit $2::int`,
    [projectId, limit],
  );
  return { total: rows[0]?.total ?? 0, builds: rows.map(({ id, state }) => ({ id, state })) };
}

/** Ids read in one statement at most by a BuildReader. */
const READ_BATCH = 100;

/** Reads builds by id outside any transaction, as `findBuild` does; see createBuildReader. */
export type BuildReader = (id: string) => Promise<DbBuild | undefined>;

/**
 * A reader of builds by id for requests that run outside a transaction: the reads asked for while the event loop
 * handles one turn of I/O go to PostgreSQL together, as one statement on one connection, once that turn is over.
 * Each read is still sent after its request arrived, so it sees everything committed before that (no shared
 * in-flight result). Polling clients read builds far more than they change them; a statement per read woke a
 * PostgreSQL backend per read.
 */
export function createBuildReader(db: Queryable): BuildReader {
  let pending = new Map<string, { resolve(row: DbBuild | undefined): void; reject(error: unknown): void }[]>();
  const flush = () => {
    const batch = pending;
    pending = new Map();
    const ids = [...batch.keys()];
    for (let from = 0; from < ids.length; from += READ_BATCH) {
      const slice = ids.slice(from, from + READ_BATCH);
      db.query<DbBuild>(`select ${BUILD_COLUMNS} from builds where id = any($1::text[])`, [slice]).then(
        ({ rows }) => {
          const byId = new Map(rows.map((row) => [row.id, row]));
          for (const id of slice) for (const waiter of batch.get(id) ?? []) waiter.resolve(byId.get(id));
        },
        (error: unknown) => {
          for (const id of slice) for (const waiter of batch.get(id) ?? []) waiter.reject(error);
        },
      );
    }
  };
  return (id) =>
    new Promise((resolve, reject) => {
      if (pending.size === 0) setImmediate(flush);
      const waiters = pending.get(id);
      if (waiters) waiters.push({ resolve, reject });
      else pending.set(id, [{ resolve, reject }]);
    });
}

export interface BuildListFilter {
  projectId?: string;
  state?: BuildState;
  userId?: string;
  limit: number;
  /** Continue after this (createdAt, id), newest first. */
  after?: { createdAt: Date; id: string };
}

/**
 * In: optional project, state and user filters, a limit and a (createdAt, id) to continue after. Out: up to `limit`
 * rows, newest first (index builds_created or builds_project_created). Errors: only the database's own.
 */
export async function listBuilds(q: Queryable, filter: BuildListFilter): Promise<DbBuild[]> {
  const { rows } = await q.query<DbBuild>(
    `select ${BUILD_COLUMNS} from builds
      where ($1::text is null or project_id = $1::text)
        and ($2::text is null or state = $2::text)
        and ($3::text is null or user_id = $3::text)
        and ($4::timestamptz is null or (created_at, id) < ($4::timestamptz, $5::text))
      order by created_at desc, id desc
      limit $6::int`,
    [
      filter.projectId ?? null,
      filter.state ?? null,
      filter.userId ?? null,
      filter.after?.createdAt ?? null,
      filter.after?.id ?? null,
      filter.limit,
    ],
  );
  return rows;
}

export interface TransitionChange {
  to: BuildState;
  /** The state the caller saw; the update only happens if the build is still in it. */
  from: BuildState;
  reason?: string | null;
  error?: string | null;
  previewUrl?: string | null;
  actualCredits?: number | null;
  /** The event written with the change. */
  event: { message: string; data?: Record<string, unknown> };
  /** Only this lease owner may make the change (runners); undefined for API callers. */
  leaseOwner?: string;
  /** On entering building: hold the build for this long (no owner) so the reaper finds it if it is abandoned. */
  leaseSeconds?: number;
}

/**
 * Move a build from `from` to `to` and write its event in one statement. started_at is set on entering
 * building, finished_at on entering a terminal state. Undefined when the build was no longer in `from` (or held by
 * another runner); the trigger raises KL001 for a transition outside the table.
 */
export async function transitionBuild(
  q: Queryable,
  id: string,
  change: TransitionChange,
): Promise<DbBuild | undefined> {
  const type = change.to === 'building' ? 'started' : change.to;
  const { rows } = await q.query<DbBuild>(
    `with b as (
       update builds set
         state = $2::text,
         started_at = case when $2::text = 'building' then now() else started_at end,
         finished_at = case when $2::text in ('deployed', 'failed', 'cancelled') then now() else finished_at end,
         reason = coalesce($4::text, reason),
         error = coalesce($5::text, error),
         preview_url = coalesce($6::text, preview_url),
         actual_credits = coalesce($7::bigint, actual_credits),
         lease_owner = case when $2::text in ('deployed', 'failed', 'cancelled') then null else lease_owner end,
         lease_expires_at = case when $2::text in ('deployed', 'failed', 'cancelled') then null
                                 when $12::int is not null then now() + make_interval(secs => $12::int)
                                 else lease_expires_at end,
         last_event_seq = last_event_seq + 1
       where id = $1::text and state = $3::text and ($10::text is null or lease_owner = $10::text)
       returning *),
     e as (
       insert into build_events (build_id, seq, type, message, data)
       select id, last_event_seq, $8::text, $9::text, $11::jsonb from b)
     select ${B_COLUMNS} from b`,
    [
      id,
      change.to,
      change.from,
      change.reason ?? null,
      change.error ?? null,
      change.previewUrl ?? null,
      change.actualCredits ?? null,
      type,
      change.event.message,
      change.leaseOwner ?? null,
      change.event.data === undefined ? null : JSON.stringify(change.event.data),
      change.leaseSeconds ?? null,
    ],
  );
  return rows[0];
}

/**
 * Point a build at a new hold (its first one lapsed before it started), only while it is queued or building. False
 * when the build has ended meanwhile (a cancel that raced its start): the caller must not keep the hold.
 */
export async function setBuildReservation(q: Queryable, id: string, reservationId: string): Promise<boolean> {
  const { rowCount } = await q.query(
    `update builds set reservation_id = $2::text where id = $1::text and state in ('queued', 'building')`,
    [id, reservationId],
  );
  return rowCount === 1;
}

/**
 * Record what a deployed build used that the user's balance could not cover (0 by default), or null when that is
 * unknown (its hold was resolved outside the build). The audit checks that the build paid its actual credits less
 * this. Call it in the transaction that settles the build.
 */
export async function setBuildUncollected(q: Queryable, id: string, credits: number | null): Promise<void> {
  await q.query('update builds set uncollected_credits = $2::bigint where id = $1::text', [id, credits]);
}

export interface NewEvent {
  type: 'progress' | 'log';
  phase?: string;
  message?: string;
  progress?: number;
  data?: Record<string, unknown>;
}

/**
 * Append a progress or log event (numbered after the build's last one) in one statement, only while the build is
 * queued or building: no event follows a terminal one. The update that numbers the event is conditional on the
 * state, so a concurrent end either commits first (this statement then re-reads the row, sees it ended and appends
 * nothing) or waits for this one (and numbers its own event after it). The seq, or undefined when nothing was
 * appended (the build ended, or there is no such build).
 */
export async function appendEvent(q: Queryable, buildId: string, event: NewEvent): Promise<number | undefined> {
  const { rows } = await q.query<{ seq: number }>(
    `with b as (update builds set last_event_seq = last_event_seq + 1
                 where id = $1::text and state in ('queued', 'building')
                returning id, last_event_seq)
     insert into build_events (build_id, seq, type, phase, message, progress, data)
     select id, last_event_seq, $2::text, $3::text, $4::text, $5::real, $6::jsonb from b
     returning seq`,
    [
      buildId,
      event.type,
      event.phase ?? null,
      event.message ?? null,
      event.progress ?? null,
      event.data === undefined ? null : JSON.stringify(event.data),
    ],
  );
  return rows[0]?.seq;
}

/**
 * In: a build id, the seq to read after and a limit. Out: its events after that seq, in seq order (nothing for an
 * unknown build). Errors: only the database's own (the route bounds `afterSeq` to int4).
 */
export async function listEvents(
  q: Queryable,
  buildId: string,
  afterSeq: number,
  limit: number,
): Promise<BuildEvent[]> {
  const { rows } = await q.query<DbBuildEvent>(
    `select seq, type, phase, message, progress, data, created_at from build_events
      where build_id = $1::text and seq > $2::int order by seq limit $3::int`,
    [buildId, afterSeq, limit],
  );
  return rows.map(toEvent);
}

/** Median duration (seconds) of the project's last 20 deployed builds, if it has any. */
export async function typicalDurationSeconds(q: Queryable, projectId: string): Promise<number | undefined> {
  const { rows } = await q.query<{ seconds: number | null }>(
    `select percentile_cont(0.5) within group (order by extract(epoch from finished_at - started_at))::float8 as seconds
       from (select started_at, finished_at from builds
              where project_id = $1::text and state = 'deployed' and started_at is not null
              order by finished_at desc limit 20) recent`,
    [projectId],
  );
  return rows[0]?.seconds ?? undefined;
}
