import type { RequestFingerprint } from '../domain/fingerprint';
import type { NewBuild } from './builds';
import type { Actor, NewReservation, Resolution } from './credits';
import { type Database, type OpenTransaction, type Queryable, type Statement, sqlState } from './database';

/** A finished idempotent request as recorded (SPEC section 4). */
export interface IdempotencyRecord extends RequestFingerprint {
  key: string;
  statusCode: number;
  responseBody: string;
  responseHeaders: Record<string, string>;
  requestId: string;
  expiresAt: Date;
}

interface DbIdempotencyRecord {
  key: string;
  method: string;
  path: string;
  body_hash: string;
  status_code: number;
  response_body: string;
  response_headers: Record<string, string>;
  request_id: string;
  expires_at: Date;
}

function fromRow(row: DbIdempotencyRecord): IdempotencyRecord {
  return {
    key: row.key,
    method: row.method,
    path: row.path,
    bodyHash: row.body_hash,
    statusCode: row.status_code,
    responseBody: row.response_body,
    responseHeaders: row.response_headers,
    requestId: row.request_id,
    expiresAt: row.expires_at,
  };
}

/** How long a transaction holding a key may stay idle, or one statement of it run (SPEC section 4's lock lease). */
const lease = (seconds: number) => `${seconds}s`;

/**
 * The claim of a key (idempotency_claim, migration 0012): the key's transaction-scoped advisory lock, so that one
 * transaction (any process) runs a request with it at a time, and its live record looked up after the lock. The lock
 * ends with the transaction, or with its connection if the process dies, so a crashed request never wedges its key.
 * The transaction is bounded by the lease: PostgreSQL notices a dead client only when it next reads from or writes
 * to it, so a transaction left idle is ended after the lease, and a statement still running for a client that died
 * (waiting on a lock, say) is cancelled after it, after which the backend finds the client gone and ends.
 */
const claimStatement = (key: string, leaseSeconds: number): Statement => ({
  sql: `select outcome, method, path, body_hash, status_code, response_body, response_headers, request_id, expires_at
          from idempotency_claim($1::text, $2::text)`,
  params: [key, lease(leaseSeconds)],
});

/** Where a keyed request's effect begins in its transaction: an error undoes the effect and keeps its record. */
const EFFECT_START: Statement = { sql: 'savepoint kiln_effect' };
const UNDO_EFFECT: Statement = { sql: 'rollback to savepoint kiln_effect' };

/** What claiming a key found: the request runs in `tx`, or another one holds the key, or it has a record. */
export type KeyClaim = { claimed: OpenTransaction } | { locked: true } | { record: IdempotencyRecord };

/**
 * Open a keyed request's transaction in one round trip: BEGIN, the key's claim, and the savepoint where its effect
 * begins. In: the database, the key, the lock lease (s). Out: the open transaction when the request is to run;
 * `locked` when another transaction holds the key; its live record otherwise (the transaction then is over).
 * Errors: the database's own (nothing is left open).
 */
export async function claimKey(db: Database, key: string, leaseSeconds: number): Promise<KeyClaim> {
  const { tx, results } = await db.beginWith([claimStatement(key, leaseSeconds), EFFECT_START]);
  const row = results[0].rows[0] as unknown as DbIdempotencyRecord & { outcome: 'claimed' | 'locked' | 'recorded' };
  if (row.outcome === 'claimed') return { claimed: tx };
  await tx.rollback();
  return row.outcome === 'locked' ? { locked: true } : { record: fromRow({ ...row, key }) };
}

/**
 * As claimKey's lock, in a transaction already open (tests hold a key with it). True when the lock was taken (a
 * record may exist); false when another transaction holds it.
 */
export async function tryLockKey(tx: Queryable, key: string, leaseSeconds: number): Promise<boolean> {
  const { sql, params } = claimStatement(key, leaseSeconds);
  const { rows } = await tx.query<{ outcome: string }>(sql, params);
  return rows[0].outcome !== 'locked';
}

/** The statement that records a finished request (idempotency_record: an expired record of the key is replaced). */
function recordStatement(record: Omit<IdempotencyRecord, 'expiresAt'>, ttlSeconds: number): Statement {
  return {
    sql: `select idempotency_record($1::text, $2::text, $3::text, $4::text, $5::int, $6::text, $7::jsonb, $8::text,
                                    $9::int) as expires_at`,
    params: [
      record.key,
      record.method,
      record.path,
      record.bodyHash,
      record.statusCode,
      record.responseBody,
      JSON.stringify(record.responseHeaders),
      record.requestId,
      ttlSeconds,
    ],
  };
}

/**
 * Record a finished request and commit, in one round trip; an error response (`undo`) first undoes the effect to
 * the savepoint claimKey set, keeping the transaction and its lock. In: the claimed transaction, the record, its
 * time to live (s). Out: when the record expires. Errors: KI001 if the key has a live record (not under its lock),
 * and the database's own; then nothing is committed and the caller rolls back.
 */
export async function commitRecord(
  tx: OpenTransaction,
  record: Omit<IdempotencyRecord, 'expiresAt'>,
  ttlSeconds: number,
  undo: boolean,
): Promise<Date> {
  const results = await tx.commitAfter([...(undo ? [UNDO_EFFECT] : []), recordStatement(record, ttlSeconds)]);
  return results[results.length - 1].rows[0].expires_at as Date;
}

/** Record a finished request in `q` (tests write old records with it); see commitRecord. */
export async function insertRecord(
  q: Queryable,
  record: Omit<IdempotencyRecord, 'expiresAt'>,
  ttlSeconds: number,
): Promise<Date> {
  const { sql, params } = recordStatement(record, ttlSeconds);
  const { rows } = await q.query<{ expires_at: Date }>(sql, params);
  return rows[0].expires_at;
}

/** Delete up to `limit` expired records; returns how many went. */
export async function purgeExpired(q: Queryable, limit = 1000): Promise<number> {
  const result = await q.query(
    `delete from idempotency_keys where key in (
       select key from idempotency_keys where expires_at <= now() order by expires_at limit $1::int)`,
    [limit],
  );
  return result.rowCount;
}

/**
 * A keyed write idempotency_once (migration 0013) runs whole, with its effect function's input as the other functions
 * of this layer take it: a hold (credit_reserve), a commit or release of one (credit_resolve), or a queued build with
 * its hold (build_create).
 */
export type OnceEffect =
  | { op: 'reserve'; args: NewReservation & Actor }
  | { op: 'resolve'; args: Resolution & Actor }
  | { op: 'build'; args: NewBuild };

/** What idempotency_once did: answered (the body as recorded, with the effect's row), or declined (nothing done). */
export type OnceOutcome =
  | { sent: { body: string; expiresAt: Date; result: Record<string, unknown> } }
  | { declined: string };

/**
 * The SQL states with which idempotency_once declines, leaving nothing: the key is held (KI409) or recorded (KI200),
 * the effect refused (KI300: a busy project, short credits, a hold not active…), or raised a refusal of its own (KB402:
 * short credits for a build; 23505: a build id taken).
 */
const DECLINED = new Set(['KI409', 'KI200', 'KI300', 'KB402', '23505']);

/**
 * The SQL states of a keyed write of a group to run again alone: it would have waited for a lock longer than a group
 * lets it (55P03), or lost a deadlock or a serialization conflict.
 */
const RETRYABLE = new Set(['55P03', '40P01', '40001']);

/** How long a keyed write of a group may wait for a lock (see idempotency_once_batch, migration 0016). */
export const GROUP_LOCK_WAIT_MS = 200;

/** A keyed write for runOnce or runOnceGroup: its record (the body with its figures' placeholders) and its effect. */
export interface OnceItem {
  record: Omit<IdempotencyRecord, 'expiresAt'>;
  effect: OnceEffect;
}

/**
 * What runOnceGroup says of one item: as runOnce; `retry` when it would have waited for a lock longer than
 * GROUP_LOCK_WAIT_MS, or lost a deadlock or a serialization conflict (nothing of it was done; run alone, with the
 * full lease, it may succeed); `error` for any other error it raised (nothing of it done).
 */
export type OnceGroupOutcome = OnceOutcome | { retry: string } | { error: Error };

/**
 * Several keyed writes in one statement, one transaction and one round trip (idempotency_once_batch, migration
 * 0016): each item runs as runOnce would, in a subtransaction of its own, so each is whole or absent whatever the
 * others do, but waits for a lock at most GROUP_LOCK_WAIT_MS. In: the database; the items; the records' TTL (s); the
 * mark. Out: one outcome per
 * item, in their order (see OnceGroupOutcome; an item's `error` carries its SQL state as `code`). Errors: a
 * cancellation (statement timeout, shutdown) or the connection's loss ends the whole statement, and the database's
 * error is thrown: nothing of it committed, or (the connection lost at commit) the caller cannot tell, as with any
 * statement.
 */
export async function runOnceGroup(
  db: Queryable,
  items: readonly OnceItem[],
  ttlSeconds: number,
  mark: string,
): Promise<OnceGroupOutcome[]> {
  const { rows } = await db.query<{
    n: number;
    body: string | null;
    expires_at: Date | null;
    result: Record<string, unknown> | null;
    state: string | null;
    message: string | null;
  }>(
    'select n, body, expires_at, result, state, message from idempotency_once_batch($1::jsonb, $2::text, $3::int, $4::text)',
    [
      JSON.stringify(
        items.map(({ record, effect }) => ({
          key: record.key,
          method: record.method,
          path: record.path,
          bodyHash: record.bodyHash,
          requestId: record.requestId,
          status: record.statusCode,
          headers: record.responseHeaders,
          body: record.responseBody,
          op: effect.op,
          args: effect.args,
        })),
      ),
      `${GROUP_LOCK_WAIT_MS}ms`,
      ttlSeconds,
      mark,
    ],
  );
  const outcomes: OnceGroupOutcome[] = new Array(items.length);
  for (const row of rows) {
    const state = row.state;
    outcomes[row.n - 1] =
      state === null
        ? { sent: { body: row.body as string, expiresAt: row.expires_at as Date, result: row.result ?? {} } }
        : DECLINED.has(state)
          ? { declined: state }
          : RETRYABLE.has(state)
            ? { retry: state }
            : { error: Object.assign(new Error(row.message ?? `keyed write failed (${state})`), { code: state }) };
  }
  return outcomes;
}

/**
 * Claim a key, apply its effect, record the response and commit, in one statement (autocommit) and one round trip.
 * In: the database; the record, whose body is the response serialized with `"@<mark>:<figure>@"` for each figure only
 * the effect knows (see migration 0013); its TTL (s); the lock lease (s); the mark; the effect. Out: the body as
 * recorded (figures written in), when the record expires, and the effect's row; or `declined` with the SQL state,
 * when nothing was done and the request is to run the general way (claimKey, the effect, commitRecord), which tells
 * each case apart. Errors: the database's own (nothing is written).
 */
export async function runOnce(
  db: Queryable,
  record: Omit<IdempotencyRecord, 'expiresAt'>,
  ttlSeconds: number,
  leaseSeconds: number,
  mark: string,
  effect: OnceEffect,
): Promise<OnceOutcome> {
  try {
    const { rows } = await db.query<{ body: string; expires_at: Date; result: Record<string, unknown> }>(
      `select body, expires_at, result
         from idempotency_once($1::text, $2::text, $3::text, $4::text, $5::text, $6::text, $7::int, $8::int,
                               $9::jsonb, $10::text, $11::text, $12::text, $13::jsonb)`,
      [
        record.key,
        lease(leaseSeconds),
        record.method,
        record.path,
        record.bodyHash,
        record.requestId,
        ttlSeconds,
        record.statusCode,
        JSON.stringify(record.responseHeaders),
        record.responseBody,
        mark,
        effect.op,
        JSON.stringify(effect.args),
      ],
    );
    const row = rows[0];
    return { sent: { body: row.body, expiresAt: row.expires_at, result: row.result } };
  } catch (error) {
    const state = sqlState(error);
    if (state && DECLINED.has(state)) return { declined: state };
    throw error;
  }
}
