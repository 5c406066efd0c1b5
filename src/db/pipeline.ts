import type { Database, Queryable } from './database';

/** The pipeline as the database sees it, for the shared gauges of /metrics and the live page. */
export interface PipelineRow {
  queuedBuilds: number;
  oldestQueuedAgeSeconds: number;
  buildingBuilds: number;
  activeHolds: number;
  reservedCredits: number;
  /** Processes whose line in service_instances was renewed within its lease. */
  liveInstances: number;
  /** Processes whose line was not (marked dead or not yet): each crashed or stalled; lines go a day after. */
  deadInstances: number;
  /** Webhook messages pending (waiting for their time, or due). */
  webhookPending: number;
  /** How long the most overdue pending message has been due (0 when none is). */
  webhookOldestDueSeconds: number;
  audit?: { ranAt: Date; problems: number };
}

/**
 * In: nothing. Out: queued and building builds, the oldest queued build's age, active unexpired holds and their
 * credits, live and dead instances (by each line's lease), pending webhook messages and how overdue the oldest one a
 * worker could claim now is (one waiting behind an earlier message of its build is not late: its build is), and the
 * latest full audit — in one statement, each part on an index (builds_queued, builds_building_lease,
 * credit_reservations_lapsing, webhook_deliveries_due, credit_audit_runs_latest), so a scrape
 * costs a few index scans whatever the size of the history (and a read of each active hold's row, for their sum).
 * Errors: only the database's own.
 */
export async function readPipeline(q: Queryable): Promise<PipelineRow> {
  const { rows } = await q.query<{
    queued: number;
    oldest_s: number | null;
    building: number;
    holds: number;
    reserved: unknown;
    instances: number;
    dead_instances: number;
    wh_pending: number;
    wh_due_s: number | null;
    audit_at: Date | null;
    audit_problems: number | null;
  }>(
    `select q.queued, q.oldest_s, b.building, h.holds, h.reserved, i.instances, i.dead_instances, w.wh_pending, wd.wh_due_s,
            a.ran_at as audit_at, a.problems as audit_problems
       from (select count(*)::int as queued,
                    extract(epoch from clock_timestamp() - min(created_at))::float8 as oldest_s
               from builds where state = 'queued') q,
            (select count(*)::int as building from builds where state = 'building') b,
            (select count(*)::int as holds, coalesce(sum(amount), 0)::bigint as reserved
               from credit_reservations where state = 'active' and expires_at > clock_timestamp()) h,
            (select count(*) filter (where live)::int as instances, count(*) filter (where not live)::int as dead_instances
               from (select dead_at is null and last_seen_at >= clock_timestamp() - make_interval(secs => lease_seconds)
                              as live from service_instances) s) i,
            (select count(*)::int as wh_pending from webhook_deliveries where status = 'pending') w,
            (select extract(epoch from clock_timestamp() - min(next_attempt_at))::float8 as wh_due_s
               from (select d.next_attempt_at from webhook_deliveries d
                      where d.status = 'pending' and d.next_attempt_at <= clock_timestamp()
                        and not exists (select 1 from webhook_deliveries e
                                         where e.build_id = d.build_id and e.status = 'pending' and e.id < d.id)
                      order by d.next_attempt_at limit 1) head) wd
            left join lateral (select ran_at, problems from credit_audit_runs order by ran_at desc limit 1) a on true`,
  );
  const row = rows[0];
  return {
    queuedBuilds: row.queued,
    oldestQueuedAgeSeconds: Math.max(0, row.oldest_s ?? 0),
    buildingBuilds: row.building,
    activeHolds: row.holds,
    reservedCredits: Number(row.reserved),
    liveInstances: row.instances,
    deadInstances: row.dead_instances,
    webhookPending: row.wh_pending,
    webhookOldestDueSeconds: Math.max(0, row.wh_due_s ?? 0),
    audit: row.audit_at === null ? undefined : { ranAt: new Date(row.audit_at), problems: row.audit_problems ?? 0 },
  };
}

/**
 * readPipeline in a transaction of its own whose statements are cancelled after `timeoutMs` (the background pool has
 * no statement limit): a scrape never leaves a read hanging on a locked or overloaded database. In: the database and
 * the limit. Out: as readPipeline. Errors: 57014 when cancelled, and the database's own.
 */
export function readPipelineWithin(db: Database, timeoutMs: number): Promise<PipelineRow> {
  return db.transaction(async (tx) => {
    await tx.query("select set_config('statement_timeout', $1::text, true)", [String(timeoutMs)]);
    return readPipeline(tx);
  });
}
