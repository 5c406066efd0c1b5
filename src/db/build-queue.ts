import { B_COLUMNS, type DbBuild } from './builds';
import type { Queryable } from './database';

/**
 * Claim up to `limit` of the oldest queued builds for `owner`: move them to building with a lease of
 * `leaseSeconds` and write their `started` events, in one statement. `for update skip locked` lets many runners
 * claim at once without waiting on each other or taking the same build. Empty when nothing is queued.
 */
export async function claimBuilds(
  q: Queryable,
  owner: string,
  leaseSeconds: number,
  limit: number,
): Promise<DbBuild[]> {
  const { rows } = await q.query<DbBuild>(
    `with next as (
       select id from builds where state = 'queued' order by created_at, id for update skip locked limit $3::int),
     b as (
       update builds set state = 'building', started_at = now(), lease_owner = $1::text,
              lease_expires_at = now() + make_interval(secs => $2::int), last_event_seq = last_event_seq + 1
         from next where builds.id = next.id
       returning builds.*),
     e as (
       insert into build_events (build_id, seq, type, message, data)
       select id, last_event_seq, 'started', 'Build started', jsonb_build_object('runner', $1::text) from b)
     select ${B_COLUMNS} from b order by b.created_at, b.id`,
    [owner, leaseSeconds, limit],
  );
  return rows;
}

/**
 * Extend the lease of a build this runner holds. False when the runner no longer holds it (cancelled, or failed
 * as worker_lost): the runner must then stop the build.
 */
export async function renewLease(q: Queryable, buildId: string, owner: string, leaseSeconds: number): Promise<boolean> {
  const { rowCount } = await q.query(
    `update builds set lease_expires_at = now() + make_interval(secs => $3::int)
      where id = $1::text and lease_owner = $2::text and state = 'building'`,
    [buildId, owner, leaseSeconds],
  );
  return rowCount === 1;
}

/** A build the reaper failed, with the runner that held it. */
export type LapsedBuild = DbBuild & { last_owner: string | null };

/**
 * Fail, as worker_lost, up to `limit` building builds whose lease lapsed (their runner died), each with its
 * `failed` event. Safe to run in every process at once (skip locked). Nothing is reaped until the database server has
 * been up for `graceSeconds` (a lease): a restart stops every runner's heartbeats, and a live runner renews its lease
 * (and records the end of a build that finished meanwhile) within a lease of the database answering again.
 * In: the grace in seconds and a batch limit. Out: the builds failed, each with `last_owner`, the runner that held it.
 * Errors: only the database's own.
 */
export async function failLapsedBuilds(q: Queryable, graceSeconds: number, limit = 100): Promise<LapsedBuild[]> {
  const { rows } = await q.query<LapsedBuild>(
    `with lapsed as (
       select id, lease_owner from builds
        where state = 'building' and lease_expires_at < now()
          and pg_postmaster_start_time() < now() - make_interval(secs => $2::int)
        order by lease_expires_at for update skip locked limit $1::int),
     b as (
       update builds set state = 'failed', finished_at = now(), reason = 'worker_lost',
              error = 'The runner holding this build stopped renewing its lease (process died or lost the database).',
              lease_owner = null, lease_expires_at = null, last_event_seq = last_event_seq + 1
         from lapsed where builds.id = lapsed.id
       returning builds.*, lapsed.lease_owner as last_owner),
     e as (
       insert into build_events (build_id, seq, type, message, data)
       select id, last_event_seq, 'failed', 'Runner lost: the build is failed',
              jsonb_build_object('reason', 'worker_lost', 'runner', last_owner) from b)
     select ${B_COLUMNS}, b.last_owner from b`,
    [limit, graceSeconds],
  );
  return rows;
}

/**
 * Holds that expire within `withinSeconds` of builds no runner renews: queued ones, and ones an external runner
 * moved to building. A build's hold must live as long as the build (runners renew theirs with their lease).
 */
export async function queuedHoldsExpiringSoon(q: Queryable, withinSeconds: number, limit = 100): Promise<string[]> {
  const { rows } = await q.query<{ id: string }>(
    `select r.id from builds b join credit_reservations r on r.id = b.reservation_id
      where (b.state = 'queued' or (b.state = 'building' and b.lease_owner is null))
        and r.state = 'active' and r.expires_at < now() + make_interval(secs => $1::int)
      limit $2::int`,
    [withinSeconds, limit],
  );
  return rows.map((r) => r.id);
}

/** Builds waiting in the queue, across all processes. */
export async function queueDepth(q: Queryable): Promise<number> {
  const { rows } = await q.query<{ n: number }>(`select count(*)::int as n from builds where state = 'queued'`);
  return rows[0].n;
}
