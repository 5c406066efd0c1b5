import type { Database, Queryable, Transaction } from './database';

/**
 * Retention (migration 0015): what old builds leave behind, removed in small batches. Each batch is one transaction
 * under a transaction-scoped advisory lock of its kind and schema, so processes running retention at once never do
 * the same work: one takes the batch, the others answer -1 and wait for their next run. The ledger is never pruned.
 */

/** Take `kind`'s retention lock for this transaction; false when another process holds it. */
async function tryLock(tx: Transaction, kind: string): Promise<boolean> {
  const { rows } = await tx.query<{ mine: boolean }>(
    `select pg_try_advisory_xact_lock(hashtextextended('kiln.retention.' || $1::text || ':' || current_schema(), 0))
       as mine`,
    [kind],
  );
  return rows[0].mine;
}

/**
 * In: a kind of retention work (with what tells its instances apart, e.g. a host and a directory) and the work.
 * Out: what `work` answered, run in a transaction holding that kind's lock; -1 without running it when another
 * process holds the lock. Errors: the work's and the database's.
 */
export function underRetentionLock<T>(
  db: Database,
  kind: string,
  work: (tx: Transaction) => Promise<T>,
): Promise<T | -1> {
  return db.transaction(async (tx) => ((await tryLock(tx, kind)) ? work(tx) : -1));
}

/** Allow this transaction's deletes from the append-only tables retention prunes (their triggers check it). */
async function allowPruning(tx: Transaction): Promise<void> {
  await tx.query(`select set_config('kiln.pruning', 'on', true)`);
}

/**
 * The condition "this build (alias b) is not the latest deployed build of its project" (it failed, was cancelled,
 * or a later build deployed): the latest keeps its preview and its workspace whatever its age.
 */
const SUPERSEDED = `(b.state <> 'deployed' or exists (select 1 from builds n
                             where n.project_id = b.project_id and n.state = 'deployed'
                               and (n.finished_at, n.id) > (b.finished_at, b.id)))`;

/**
 * In: builds that finished before `before`, at most `limit`. Out: how many builds' previews were removed from the
 * database (their files, build_preview_files), -1 when another process holds this kind's lock. The latest deployed
 * build of each project keeps its preview. Errors: only the database's own.
 */
export async function prunePreviews(db: Database, before: Date, limit: number): Promise<number> {
  return underRetentionLock(db, 'previews', async (tx) => {
    const { rows } = await tx.query<{ n: number }>(
      `with doomed as (
         select b.id from (select distinct build_id from build_preview_files) f
           join builds b on b.id = f.build_id
          where b.finished_at < $1::timestamptz and ${SUPERSEDED}
          limit $2::int),
       gone as (delete from build_preview_files where build_id in (select id from doomed) returning build_id)
       select count(distinct build_id)::int as n from gone`,
      [before, limit],
    );
    return rows[0].n;
  });
}

/**
 * In: the ids of build workspaces found on this process's disk, and the age before which they may go. Out: those
 * whose build finished before `before` and is not the latest deployed of its project. Builds the database does not
 * know are not named (their directory is left alone). Errors: only the database's own.
 */
export async function workspacesToPrune(q: Queryable, ids: string[], before: Date): Promise<string[]> {
  if (ids.length === 0) return [];
  const { rows } = await q.query<{ id: string }>(
    `select b.id from builds b
      where b.id = any($1::text[]) and b.finished_at < $2::timestamptz and ${SUPERSEDED}`,
    [ids, before],
  );
  return rows.map((r) => r.id);
}

/**
 * In: the age before which finished webhook messages go, at most `limit` of them. Out: how many outbox rows
 * (webhook_deliveries no longer pending, with their attempts) were removed; -1 when another process holds the lock.
 * Errors: only the database's own.
 */
export async function pruneOutbox(db: Database, before: Date, limit: number): Promise<number> {
  return underRetentionLock(db, 'outbox', async (tx) => {
    await allowPruning(tx);
    const { rows } = await tx.query<{ id: string }>(
      `select id from webhook_deliveries
        where status <> 'pending' and finished_at < $1::timestamptz
        order by finished_at, id limit $2::int`,
      [before, limit],
    );
    if (rows.length === 0) return 0;
    const ids = rows.map((r) => r.id);
    await tx.query('delete from webhook_attempts where delivery_id = any($1::bigint[])', [ids]);
    await tx.query('delete from webhook_deliveries where id = any($1::bigint[])', [ids]);
    return ids.length;
  });
}

/**
 * In: builds that finished before `before`, at most `limit` past the cursor. Out: how many builds had their events
 * removed (and with them their finished outbox rows, which point at the events), and the build it stopped at, if
 * any: one with a message still pending delivery or an event the analytics fold has not read yet waits, with every
 * build after it, for a later run (the cursor does not pass it). -1 when another process holds the lock. The batch's
 * builds are locked first (`for update`), so a replay of one (which reads its build `for share`) either commits
 * before and is seen pending, or waits and finds no events left. Errors: only the database's own.
 */
export async function pruneBuildEvents(
  db: Database,
  before: Date,
  limit: number,
): Promise<{ pruned: number; waitingFor?: string }> {
  const pruned = await underRetentionLock(db, 'build_events', async (tx) => {
    await allowPruning(tx);
    const batch = await tx.query<{ id: string }>(
      `with cur as (select finished_at, build_id from retention_cursors where kind = 'build_events')
       select b.id from builds b, cur
        where b.finished_at < $1::timestamptz
          and b.finished_at >= cur.finished_at and (b.finished_at > cur.finished_at or b.id > cur.build_id)
        order by b.finished_at, b.id
        limit $2::int
          for update of b`,
      [before, limit],
    );
    if (batch.rows.length === 0) return { n: 0 };
    // A statement of its own, so it sees what committed while the locks above were awaited.
    const { rows } = await tx.query<{ id: string; blocked: boolean }>(
      `with fold as (select xact, ref, n from analytics_fold_cursors where source = 'build_events')
       select b.id,
              exists (select 1 from webhook_deliveries d where d.build_id = b.id and d.status = 'pending')
              or exists (select 1 from build_events e, fold
                          where e.build_id = b.id and (e.xact, e.build_id, e.seq) > (fold.xact, fold.ref, fold.n))
                as blocked
         from builds b where b.id = any($1::text[])
        order by b.finished_at, b.id`,
      [batch.rows.map((r) => r.id)],
    );
    const blockedAt = rows.findIndex((r) => r.blocked);
    const done = blockedAt === -1 ? rows : rows.slice(0, blockedAt);
    const waitingFor = blockedAt === -1 ? undefined : rows[blockedAt].id;
    if (done.length === 0) return { n: 0, waitingFor };
    const ids = done.map((r) => r.id);
    await tx.query(
      `delete from webhook_attempts where delivery_id in (select id from webhook_deliveries where build_id = any($1::text[]))`,
      [ids],
    );
    await tx.query('delete from webhook_deliveries where build_id = any($1::text[])', [ids]);
    await tx.query('delete from build_events where build_id = any($1::text[])', [ids]);
    const last = done[done.length - 1];
    // The cursor takes the build's own finished_at (microseconds), not its round trip through a JS Date (ms).
    await tx.query(
      `update retention_cursors c set finished_at = b.finished_at, build_id = b.id
         from builds b where b.id = $1::text and c.kind = 'build_events'`,
      [last.id],
    );
    return { n: done.length, waitingFor };
  });
  return pruned === -1 ? { pruned: -1 } : { pruned: pruned.n, waitingFor: pruned.waitingFor };
}
