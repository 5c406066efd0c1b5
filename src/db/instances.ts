import type { Queryable } from './database';

/** Record this process in service_instances (see migration 0001). */
export async function registerInstance(
  db: Queryable,
  instance: { id: string; hostname: string; pid: number; version: string },
) {
  await db.query(
    `insert into service_instances (id, hostname, pid, version) values ($1::text, $2::text, $3::int, $4::text)
     on conflict (id) do update set last_seen_at = now()`,
    [instance.id, instance.hostname, instance.pid, instance.version],
  );
}

/** In: this process's instance id. Out: nothing; its last_seen_at is now. Errors: only the database's own. */
export async function touchInstance(db: Queryable, id: string): Promise<void> {
  await db.query('update service_instances set last_seen_at = now() where id = $1::text', [id]);
}

/** Remove this process's row, and rows of processes not seen for an hour (they died without saying so). */
export async function unregisterInstance(db: Queryable, id: string): Promise<void> {
  await db.query(`delete from service_instances where id = $1::text or last_seen_at < now() - interval '1 hour'`, [id]);
}
