import type { Database, Queryable } from './database';

/** The pipeline as the database sees it, for the shared gauges of /metrics and the live page. */
export interface PipelineRow {
  queuedBuilds: number;
  oldestQueuedAgeSeconds: number;
  buildingBuilds: number;
  activeHolds: number;
  reservedCredits: number;
  liveInstances: number;
  audit?: { ranAt: Date; problems: number };
}

/**
 * In: nothing. Out: queued and building builds, the oldest queued build's age, active unexpired holds and their
 * credits, live instances (seen within `liveWithinS`) and the latest full audit — in one statement, each part on an
 * index (builds_queued, builds_building_lease, credit_reservations_lapsing, credit_audit_runs_latest), so a scrape
 * costs a few index scans whatever the size of the history (and a read of each active hold's row, for their sum).
 * Errors: only the database's own.
 */
export async function readPipeline(q: Queryable, liveWithinS = 60): Promise<PipelineRow> {
  const { rows } = await q.query<{
    queued: number;
    oldest_s: number | null;
    building: number;
    holds: number;
    reserved: unknown;
    instances: number;
    audit_at: Date | null;
    audit_problems: number | null;
  }>(
    `select q.queued, q.oldest_s, b.building, h.holds, h.reserved, i.instances,
            a.ran_at as audit_at, a.problems as audit_problems
       from (select count(*)::int as queued,
                    extract(epoch from clock_timestamp() - min(created_at))::float8 as oldest_s
               from builds where state = 'queued') q,
            (select count(*)::int as building from builds where state = 'building') b,
            (select count(*)::int as holds, coalesce(sum(amount), 0)::bigint as reserved
               from credit_reservations where state = 'active' and expires_at > clock_timestamp()) h,
            (select count(*)::int as instances from service_instances
              where last_seen_at > clock_timestamp() - make_interval(secs => $1::int)) i
            left join lateral (select ran_at, problems from credit_audit_runs order by ran_at desc limit 1) a on true`,
    [liveWithinS],
  );
  const row = rows[0];
  return {
    queuedBuilds: row.queued,
    oldestQueuedAgeSeconds: Math.max(0, row.oldest_s ?? 0),
    buildingBuilds: row.building,
    activeHolds: row.holds,
    reservedCredits: Number(row.reserved),
    liveInstances: row.instances,
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
