import type { Queryable } from './database';

/**
 * Each process's line in service_instances (migrations 0001 and 0015): who it is, when it last renewed its line,
 * how long it may go without renewing (its lease), what it says of itself (health), and when another process found
 * it silent past its lease (dead_at).
 */
export interface InstanceLine {
  id: string;
  hostname: string;
  pid: number;
  version: string;
  startedAt: Date;
  lastSeenAt: Date;
  leaseSeconds: number;
  /** What the process said of itself at its last renewal (src/services/instances.ts, InstanceHealth). */
  health: Record<string, unknown>;
  /** live: renewed within its lease; dead: not (whether or not a process has marked it yet). */
  state: 'live' | 'dead';
  /** When it was marked dead; null while live, or dead but not marked yet. */
  deadAt: Date | null;
  /** Seconds since its last renewal, by the database's clock. */
  silentSeconds: number;
}

/** Record this process's line (again, if it was removed meanwhile). */
export async function registerInstance(
  db: Queryable,
  instance: { id: string; hostname: string; pid: number; version: string; leaseSeconds: number; health: object },
): Promise<void> {
  await db.query(
    `insert into service_instances (id, hostname, pid, version, lease_seconds, health)
     values ($1::text, $2::text, $3::int, $4::text, $5::int, $6::jsonb)
     on conflict (id) do update set last_seen_at = now(), health = excluded.health, dead_at = null`,
    [instance.id, instance.hostname, instance.pid, instance.version, instance.leaseSeconds, instance.health],
  );
}

/**
 * In: this process's id and what it says of itself. Out: 'renewed'; 'revived' when another process had marked it
 * dead (it was silent past its lease: stalled, or cut from the database) and the mark is now cleared; 'missing'
 * when its line is gone (removed a day after it was marked dead): register again. Errors: the database's own.
 */
export async function renewInstance(
  db: Queryable,
  id: string,
  health: object,
): Promise<'renewed' | 'revived' | 'missing'> {
  const { rows } = await db.query<{ was_dead: boolean }>(
    `with before as (select dead_at from service_instances where id = $1::text for update)
     update service_instances s set last_seen_at = now(), health = $2::jsonb, dead_at = null
       from before where s.id = $1::text
     returning before.dead_at is not null as was_dead`,
    [id, health],
  );
  if (rows.length === 0) return 'missing';
  return rows[0].was_dead ? 'revived' : 'renewed';
}

/**
 * Mark dead the lines not renewed within their lease, and remove those dead for a day. Out: the lines this call
 * marked (another process marking the same line at once marks it once). Errors: the database's own.
 */
export async function markSilentInstances(
  db: Queryable,
): Promise<{ id: string; hostname: string; pid: number; silentSeconds: number }[]> {
  const { rows } = await db.query<{ id: string; hostname: string; pid: number; silent_s: number }>(
    `update service_instances set dead_at = now()
      where dead_at is null and last_seen_at < now() - make_interval(secs => lease_seconds)
      returning id, hostname, pid, extract(epoch from now() - last_seen_at)::float8 as silent_s`,
  );
  await db.query(`delete from service_instances where dead_at < now() - interval '1 day'`);
  return rows.map((r) => ({ id: r.id, hostname: r.hostname, pid: r.pid, silentSeconds: r.silent_s }));
}

/** Every line, live ones first, then by host and start. Errors: the database's own. */
export async function listInstances(q: Queryable): Promise<InstanceLine[]> {
  const { rows } = await q.query<{
    id: string;
    hostname: string;
    pid: number;
    version: string;
    started_at: Date;
    last_seen_at: Date;
    lease_seconds: number;
    health: Record<string, unknown>;
    dead_at: Date | null;
    live: boolean;
    silent_s: number;
  }>(
    `select id, hostname, pid, version, started_at, last_seen_at, lease_seconds, health, dead_at,
            dead_at is null and last_seen_at >= now() - make_interval(secs => lease_seconds) as live,
            greatest(0, extract(epoch from now() - last_seen_at))::float8 as silent_s
       from service_instances
      order by live desc, hostname, started_at, id`,
  );
  return rows.map((r) => ({
    id: r.id,
    hostname: r.hostname,
    pid: r.pid,
    version: r.version,
    startedAt: new Date(r.started_at),
    lastSeenAt: new Date(r.last_seen_at),
    leaseSeconds: r.lease_seconds,
    health: r.health,
    state: r.live ? 'live' : 'dead',
    deadAt: r.dead_at === null ? null : new Date(r.dead_at),
    silentSeconds: r.silent_s,
  }));
}

/** Remove this process's line (a clean stop). Errors: the database's own. */
export async function unregisterInstance(db: Queryable, id: string): Promise<void> {
  await db.query('delete from service_instances where id = $1::text', [id]);
}
