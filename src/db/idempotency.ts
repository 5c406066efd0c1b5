import type { RequestFingerprint } from '../domain/fingerprint';
import type { Queryable } from './database';

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

/**
 * Try to take the key's transaction-scoped advisory lock. False means another transaction (any process) is
 * running a request with this key right now. The lock ends with the transaction, or with its connection if the
 * process dies, so a crashed request never wedges its key.
 */
export async function tryLockKey(tx: Queryable, key: string, leaseSeconds: number): Promise<boolean> {
  // The same round trip bounds how long the key can be held by a request that will never finish (SPEC section 4's
  // lock lease). PostgreSQL notices a dead client only when it next reads from or writes to it: a transaction left
  // idle is ended after the lease (idle_in_transaction_session_timeout), and a statement still running for a client
  // that died (waiting on a lock, say) is cancelled after the lease (statement_timeout), after which the backend
  // finds the client gone and ends. Either way the lock, and the key, are free.
  const { rows } = await tx.query<{ locked: boolean }>(
    `select set_config('idle_in_transaction_session_timeout', $2::text, true),
            set_config('statement_timeout', $2::text, true),
            pg_try_advisory_xact_lock(hashtextextended('kiln.idempotency:' || current_schema() || ':' || $1::text, 0)) as locked`,
    [key, `${leaseSeconds}s`],
  );
  return rows[0].locked;
}

/**
 * The live (unexpired) record of a key, if any. Read it in a statement of its own after `tryLockKey`: a
 * statement's snapshot predates its own lock, so reading in the same statement could miss a record committed
 * by the previous holder and run the request twice.
 */
export async function findRecord(q: Queryable, key: string): Promise<IdempotencyRecord | undefined> {
  const { rows } = await q.query<DbIdempotencyRecord>(
    `select key, method, path, body_hash, status_code, response_body, response_headers, request_id, expires_at
       from idempotency_keys where key = $1::text and expires_at > now()`,
    [key],
  );
  return rows[0] ? fromRow(rows[0]) : undefined;
}

/** Record a finished request; an expired record of the same key is replaced. Call under the key's lock. */
export async function insertRecord(
  q: Queryable,
  record: Omit<IdempotencyRecord, 'expiresAt'>,
  ttlSeconds: number,
): Promise<Date> {
  const { rows } = await q.query<{ expires_at: Date }>(
    `insert into idempotency_keys
       (key, method, path, body_hash, status_code, response_body, response_headers, request_id, expires_at)
     values ($1::text, $2::text, $3::text, $4::text, $5::int, $6::text, $7::jsonb, $8::text, now() + make_interval(secs => $9::int))
     on conflict (key) do update set
       method = excluded.method, path = excluded.path, body_hash = excluded.body_hash,
       status_code = excluded.status_code, response_body = excluded.response_body,
       response_headers = excluded.response_headers, request_id = excluded.request_id,
       created_at = now(), expires_at = excluded.expires_at
     where idempotency_keys.expires_at <= now()
     returning expires_at`,
    [
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
  );
  if (!rows[0]) throw new Error(`idempotency key ${record.key} already has a live record`);
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
 * Mark where a keyed request's effect begins in its transaction, so that an error can undo the effect and still keep
 * the error's record (SPEC section 4). In: the request's open transaction. Out: nothing. Errors: the database's own.
 */
export async function markEffectStart(tx: Queryable): Promise<void> {
  await tx.query('savepoint kiln_effect');
}

/** Undo everything since markEffectStart, keeping the transaction (and the key's lock) open. Errors: the database's. */
export async function undoEffect(tx: Queryable): Promise<void> {
  await tx.query('rollback to savepoint kiln_effect');
}
