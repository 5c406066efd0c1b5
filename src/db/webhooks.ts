import { type BuildEvent, type DbBuildEvent, toEvent } from './builds';
import type { Database, Queryable } from './database';

/** A delivery claimed for one attempt: the message, where it goes and the secrets that sign it. */
export interface ClaimedDelivery {
  id: number;
  buildId: string;
  projectId: string;
  replay: boolean;
  /** This attempt's number (1 for the first). */
  attempt: number;
  /** When the outbox row was written (the event's commit, give or take): delivery latency is measured from it. */
  queuedAt: Date;
  event: BuildEvent;
  url: string;
  /** The secrets that sign: the current one first, then the previous one while it overlaps. */
  secrets: string[];
}

interface DbClaimed extends DbBuildEvent {
  id: number;
  build_id: string;
  project_id: string;
  replay: boolean;
  attempts: number;
  queued_at: Date;
  url: string;
  secret: string;
  previous_secret: string | null;
}

/**
 * Claim due deliveries for one attempt each. A row is due when it is pending, its time has come, its project's
 * endpoint is enabled, and no earlier pending row of its build exists (per build, events go out in order: a later
 * one waits while an earlier one is retrying). At most `perProject` rows of a project per claim, none of the
 * projects in `busyProjects` (those with as many attempts in flight as a project may have), `limit` in all. Each
 * claimed row counts the attempt and moves its time `leaseS` ahead: a process that dies mid-attempt leaves it to be
 * claimed again then. Rows another claimer holds are skipped, not waited for.
 * In: the limits. Out: the claimed deliveries with their event, URL and secrets. Errors: only the database's own.
 */
export async function claimDeliveries(
  q: Queryable,
  options: { limit: number; perProject: number; busyProjects: string[]; leaseS: number },
): Promise<ClaimedDelivery[]> {
  const { rows } = await q.query<DbClaimed>(
    `with candidates as (
       select id from (
         select d.id, row_number() over (partition by d.project_id order by d.next_attempt_at, d.id) as rank
           from webhook_deliveries d join projects p on p.id = d.project_id
          where d.status = 'pending' and d.next_attempt_at <= now()
            and p.webhook_url is not null and p.webhook_disabled_at is null
            and d.project_id <> all($3::text[])
            and not exists (select 1 from webhook_deliveries e
                             where e.build_id = d.build_id and e.status = 'pending' and e.id < d.id)
          order by d.next_attempt_at, d.id
          limit $1::int * 4) ranked
        where rank <= $2::int
        limit $1::int),
     locked as (
       select d.id from webhook_deliveries d
        where d.id in (select id from candidates)
        for update skip locked),
     claimed as (
       update webhook_deliveries d
          set attempts = d.attempts + 1, next_attempt_at = now() + make_interval(secs => $4::int)
         from locked
        where d.id = locked.id and d.status = 'pending' and d.next_attempt_at <= now()
       returning d.id, d.build_id, d.seq, d.project_id, d.replay, d.attempts, d.created_at as queued_at)
     select c.id, c.build_id, c.project_id, c.replay, c.attempts, c.queued_at,
            e.seq, e.type, e.phase, e.message, e.progress, e.data, e.created_at,
            p.webhook_url as url, p.webhook_secret as secret,
            case when p.webhook_previous_secret_until > now() then p.webhook_previous_secret end as previous_secret
       from claimed c
       join build_events e on e.build_id = c.build_id and e.seq = c.seq
       join projects p on p.id = c.project_id
      where p.webhook_url is not null and p.webhook_disabled_at is null
      order by c.id`,
    [options.limit, options.perProject, options.busyProjects, options.leaseS],
  );
  return rows.map((row) => ({
    id: Number(row.id),
    buildId: row.build_id,
    projectId: row.project_id,
    replay: row.replay,
    attempt: row.attempts,
    queuedAt: row.queued_at,
    event: toEvent(row),
    url: row.url,
    secrets: row.previous_secret ? [row.secret, row.previous_secret] : [row.secret],
  }));
}

/** One attempt's result, as the delivery log keeps it. */
export interface AttemptRecord {
  deliveryId: number;
  attempt: number;
  buildId: string;
  projectId: string;
  /** The URL attempted: the endpoint's state changes only if it is still the project's URL. */
  url: string;
  attemptedAt: Date;
  durationMs: number;
  statusCode: number | null;
  delivered: boolean;
  failure: string | null;
  detail: string | null;
  responseBody: string;
  /** Seconds until the next try after a failure (counted on the database's clock); null: no try left. */
  retryInS: number | null;
  /** Disable the project's endpoint (410 Gone): its pending deliveries fail with it. */
  disable: string | null;
  /** Disable the endpoint once it has failed without a success for this long. */
  disableAfterS: number;
  /** A failure this long after the previous one starts the failing period again (the endpoint was idle). */
  failingResetS: number;
}

/** What settling an attempt did to the delivery and the endpoint. */
export interface Settled {
  /** False when the delivery had been claimed again meanwhile (this attempt outlived its lease): only logged. */
  applied: boolean;
  status: 'pending' | 'delivered' | 'failed';
  /** Why the endpoint was disabled by this attempt, if it was. */
  disabledReason: string | null;
  /** Pending deliveries of the project failed because the endpoint was disabled. */
  abandoned: number;
}

/**
 * Record an attempt and move its delivery on: delivered, pending again in `retryInS`, or failed. A success clears
 * the endpoint's failing mark; a failure sets it (if unset), and disables the endpoint when asked (410) or when it
 * has failed for `disableAfterS` — failing the project's pending deliveries with it. Nothing but the attempt's log
 * changes unless the delivery is still at this attempt (a lapsed lease may have let another process claim it), and
 * the endpoint changes only if the URL attempted is still the project's.
 * In: the attempt. Out: what changed. Errors: only the database's own.
 */
export async function settleDelivery(q: Queryable, record: AttemptRecord): Promise<Settled> {
  // One call of webhook_settle (migration 0011): the attempt, the delivery, its build's next message and the endpoint.
  const { rows } = await q.query<{
    applied: boolean;
    status: Settled['status'];
    disabled_reason: string | null;
    abandoned: number;
  }>(
    `select applied, status, disabled_reason, abandoned
       from webhook_settle($1::bigint, $2::int, $3::text, $4::text, $5::text, $6::timestamptz, $7::int, $8::int,
                           $9::boolean, $10::text, $11::text, $12::text, $13::float8, $14::text, $15::int, $16::int)`,
    [
      record.deliveryId,
      record.attempt,
      record.buildId,
      record.projectId,
      record.url,
      record.attemptedAt,
      Math.round(record.durationMs),
      record.statusCode,
      record.delivered,
      record.failure,
      record.detail,
      record.responseBody,
      record.retryInS,
      record.disable,
      record.disableAfterS,
      record.failingResetS,
    ],
  );
  const row = rows[0];
  return { applied: row.applied, status: row.status, disabledReason: row.disabled_reason, abandoned: row.abandoned };
}

/**
 * Tidy the outbox after races the writes cannot exclude cheaply: fail the pending rows of endpoints that were
 * disabled or removed (settling the attempt that disables an endpoint fails its rows already, but an event committed
 * at that moment may have queued one: its transaction read the project before the disable committed), and make due
 * any build's first pending row still waiting at 'infinity' (a replay queued while its predecessor settled; settling
 * waits for a transaction writing the build's next event, so live events do not need this). One process at a time.
 * In: the database. Out: the rows failed and the heads made due, or undefined when another process is sweeping.
 * Errors: only the database's own.
 */
export async function sweepDeliveries(db: Database): Promise<{ abandoned: number; promoted: number } | undefined> {
  return db.transaction(async (tx) => {
    // One process sweeps at a time; the others skip this round.
    const { rows } = await tx.query<{ mine: boolean }>(
      `select pg_try_advisory_xact_lock(hashtext('kiln.webhook_sweep')) as mine`,
    );
    if (!rows[0].mine) return undefined;
    const promoted = await tx.query(
      `update webhook_deliveries d set next_attempt_at = now()
        where d.status = 'pending' and d.next_attempt_at = 'infinity'::timestamptz
          and not exists (select 1 from webhook_deliveries e
                           where e.build_id = d.build_id and e.status = 'pending' and e.id < d.id)`,
    );
    const abandoned = await tx.query(
      `update webhook_deliveries d
          set status = 'failed', finished_at = now(),
              last_failure = case when p.webhook_url is null then 'endpoint_removed' else 'endpoint_disabled' end
         from projects p
        where p.id = d.project_id and d.status = 'pending'
          and (p.webhook_url is null or p.webhook_disabled_at is not null)`,
    );
    return { abandoned: abandoned.rowCount, promoted: promoted.rowCount };
  });
}

/**
 * Queue a replay of a build's events `fromSeq..toSeq` to its project's endpoint (when it has one, enabled), after
 * anything of the build still pending (the first due now when nothing is, the rest waiting behind it). In: the build and the range. Out: the rows queued (0 without an endpoint, or when the project was deleted).
 * Errors: only the database's own.
 */
export async function queueReplays(q: Queryable, buildId: string, fromSeq: number, toSeq: number): Promise<number> {
  const { rowCount } = await q.query(
    `insert into webhook_deliveries (build_id, seq, project_id, replay, next_attempt_at)
     select e.build_id, e.seq, p.id, true,
            case when e.seq = $2::int and not exists (select 1 from webhook_deliveries w
                                                       where w.build_id = e.build_id and w.status = 'pending')
                 then now() else 'infinity'::timestamptz end
       from build_events e join builds b on b.id = e.build_id join projects p on p.id = b.project_id
      where e.build_id = $1::text and e.seq between $2::int and $3::int
        and p.webhook_url is not null and p.webhook_disabled_at is null and p.deleted_at is null
      order by e.seq`,
    [buildId, fromSeq, toSeq],
  );
  return rowCount;
}

/**
 * The last event's seq of a build (0 when it has none); undefined when there is no such build. The row is read
 * `for share`: the caller's transaction then waits for one writing an event of the build, and holds the next one
 * back until it commits (a replay is queued after every event it could see, and before any later one).
 */
export async function lastEventSeq(q: Queryable, buildId: string): Promise<number | undefined> {
  const { rows } = await q.query<{ last: number }>(
    `select last_event_seq as last from builds where id = $1::text for share`,
    [buildId],
  );
  return rows[0]?.last;
}

/** One attempt in the delivery log. */
export interface AttemptLog {
  attempt: number;
  attemptedAt: string;
  durationMs: number;
  statusCode: number | null;
  outcome: 'delivered' | 'failed';
  failure: string | null;
  detail: string | null;
  responseBody: string | null;
}

/** One delivery (a message) in the delivery log, with every attempt so far. */
export interface DeliveryLog {
  id: number;
  seq: number;
  eventType: string;
  replay: boolean;
  status: 'pending' | 'delivered' | 'failed';
  attempts: AttemptLog[];
  /** When the next attempt is due; null once finished, or while waiting behind an earlier message of the build. */
  nextAttemptAt: string | null;
  createdAt: string;
  finishedAt: string | null;
  lastFailure: string | null;
}

/**
 * A build's deliveries after delivery id `afterId`, oldest first, at most `limit`, each with all its attempts.
 * In: the build, a cursor and a limit. Out: the deliveries. Errors: only the database's own.
 */
export async function listDeliveries(
  q: Queryable,
  buildId: string,
  afterId: number,
  limit: number,
): Promise<DeliveryLog[]> {
  const { rows } = await q.query<{
    id: number;
    seq: number;
    type: string;
    replay: boolean;
    status: DeliveryLog['status'];
    next_attempt_at: Date | null;
    created_at: Date;
    finished_at: Date | null;
    last_failure: string | null;
    attempts: AttemptLog[] | null;
  }>(
    `select d.id, d.seq, e.type, d.replay, d.status, d.created_at, d.finished_at, d.last_failure,
            -- a row waiting behind an earlier message of its build has no time of its own yet ('infinity')
            case when d.status = 'pending' and d.next_attempt_at <> 'infinity'::timestamptz
                 then d.next_attempt_at end as next_attempt_at,
            (select json_agg(json_build_object(
                      'attempt', a.attempt, 'attemptedAt', a.attempted_at, 'durationMs', a.duration_ms,
                      'statusCode', a.status_code, 'outcome', a.outcome, 'failure', a.failure, 'detail', a.detail,
                      'responseBody', a.response_body) order by a.attempt)
               from webhook_attempts a where a.delivery_id = d.id) as attempts
       from webhook_deliveries d join build_events e on e.build_id = d.build_id and e.seq = d.seq
      where d.build_id = $1::text and d.id > $2::bigint
      order by d.id limit $3::int`,
    [buildId, afterId, limit],
  );
  return rows.map((row) => ({
    id: Number(row.id),
    seq: row.seq,
    eventType: row.type,
    replay: row.replay,
    status: row.status,
    attempts: (row.attempts ?? []).map((a) => ({ ...a, attemptedAt: new Date(a.attemptedAt).toISOString() })),
    nextAttemptAt: row.next_attempt_at?.toISOString() ?? null,
    createdAt: row.created_at.toISOString(),
    finishedAt: row.finished_at?.toISOString() ?? null,
    lastFailure: row.last_failure,
  }));
}
