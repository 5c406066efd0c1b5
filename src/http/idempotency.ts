import type { FastifyReply, FastifyRequest } from 'fastify';
import type { OpenTransaction, Queryable } from '../db/database';
import { findRecord, type IdempotencyRecord, insertRecord, tryLockKey } from '../db/idempotency';
import {
  canonicalJson,
  fingerprintDifferences,
  parseIdempotencyKey,
  type RequestFingerprint,
  sha256,
} from '../domain/fingerprint';
import { canonicalPath } from '../domain/signature';
import { ApiError } from './errors';
import type { AppDeps } from './server';

declare module 'fastify' {
  interface FastifyRequest {
    /**
     * The transaction a mutating /v1 request runs in. The idempotency layer opens it before the handler and
     * commits it, with the request's record, before a byte of the response is sent.
     */
    tx?: OpenTransaction;
    idempotency?: { key: string; fingerprint: RequestFingerprint };
    /** Work to do once the request's transaction has committed (wake-ups); dropped if it rolls back. */
    afterCommit?: (() => void)[];
    /** For a single-statement route called without a key: the database itself, no transaction around it. */
    autocommit?: Queryable;
    /**
     * The store's copy of this request's idempotent response as the signature guard read it in its round trip
     * (null: no copy); undefined when the guard did not look.
     */
    storedResponse?: string | null;
  }
  interface FastifyContextConfig {
    /**
     * The handler sends exactly one statement (a credit function). Without an idempotency key it then runs in
     * autocommit — one round trip instead of BEGIN, statement, COMMIT — since one statement is atomic by itself.
     * With a key it still runs in the transaction that records the key.
     */
    singleStatement?: boolean;
  }
}

const MUTATING = new Set(['POST', 'PUT', 'PATCH']);
/** Response headers a replay repeats (the rest are per-response: ids, timing). */
const REPLAYED_HEADERS = ['content-type', 'etag', 'location'];
const IN_USE_RETRY_AFTER_S = 1;
const CACHE_PREFIX = 'idem:';
const CACHE_MARGIN_MS = 500;

/** Run `fn` after the request's transaction commits (never if it rolls back). */
export function afterCommit(request: FastifyRequest, fn: () => void): void {
  request.afterCommit ??= [];
  request.afterCommit.push(fn);
}

function runAfterCommit(request: FastifyRequest): void {
  for (const fn of request.afterCommit ?? []) {
    try {
      fn();
    } catch (error) {
      request.log.warn({ err: error }, 'after-commit work failed');
    }
  }
  request.afterCommit = undefined;
}

/** The transaction of a mutating /v1 request; route handlers pass it to their service. */
export function transactionOf(request: FastifyRequest): Queryable {
  const q = request.tx ?? request.autocommit;
  if (!q) throw new Error(`no transaction for ${request.method} ${request.url}: not a mutating /v1 route`);
  return q;
}

/** True for a method whose requests are idempotent through this layer (on a /v1 route). */
export function isMutatingMethod(method: string): boolean {
  return MUTATING.has(method);
}

/**
 * The store key of the copy of this request's response, for a mutation (on a /v1 route) whose key is valid;
 * undefined otherwise (an invalid key is refused later by the idempotency hook, with its reason).
 */
export function storedResponseKey(request: FastifyRequest): string | undefined {
  if (!MUTATING.has(request.method)) return undefined;
  try {
    const key = keyOf(request, false);
    return key === undefined ? undefined : CACHE_PREFIX + key;
  } catch {
    return undefined;
  }
}

function invalid(rule: string): ApiError {
  return new ApiError(
    'INVALID_IDEMPOTENCY_KEY',
    `Idempotency-Key is invalid: ${rule}. Send 1-255 printable ASCII characters.`,
    { rule },
  );
}

/** The request's key, from the Idempotency-Key header or the body's idempotencyKey (which must agree). */
function keyOf(request: FastifyRequest, required: boolean): string | undefined {
  const header = request.headers['idempotency-key'];
  const body = request.body as Record<string, unknown> | undefined;
  const bodyKey = body && typeof body === 'object' && !Array.isArray(body) ? body.idempotencyKey : undefined;
  let key: string | undefined;
  if (header !== undefined) {
    if (typeof header !== 'string') throw invalid('send the header once');
    const parsed = parseIdempotencyKey(header);
    if (!parsed.ok) throw invalid(parsed.rule);
    key = parsed.key;
  }
  if (bodyKey !== undefined) {
    const parsed =
      typeof bodyKey === 'string' ? parseIdempotencyKey(bodyKey) : { ok: false as const, rule: 'must be a string' };
    if (!parsed.ok) throw invalid(`body.idempotencyKey ${parsed.rule}`);
    if (key !== undefined && key !== parsed.key)
      throw invalid('the header and body.idempotencyKey differ; send one key');
    key = parsed.key;
  }
  if (key === undefined && required) {
    throw invalid('this server requires an Idempotency-Key on every POST, PUT and PATCH (IDEMPOTENCY_REQUIRED=true)');
  }
  return key;
}

function fingerprintOf(request: FastifyRequest): RequestFingerprint {
  return { method: request.method, path: canonicalPath(request.url), bodyHash: sha256(canonicalJson(request.body)) };
}

/** SPEC section 4: 2xx and deterministic errors are recorded; 402, 429, 5xx and IDEMPOTENCY_KEY_IN_USE are not. */
export function isRecordable(statusCode: number, errorCode: string | undefined): boolean {
  if (statusCode < 300) return true;
  if (statusCode === 409) return errorCode === 'INVALID_STATE_TRANSITION';
  return statusCode === 400 || statusCode === 404 || statusCode === 422;
}

function errorCodeOf(payload: unknown): string | undefined {
  if (typeof payload !== 'string' || !payload.startsWith('{')) return undefined;
  try {
    return (JSON.parse(payload) as { error?: string }).error;
  } catch {
    return undefined;
  }
}

type CachedRecord = Omit<IdempotencyRecord, 'expiresAt'>;

/** Answer with the recorded response, or 422 when the key was first used for a different request. */
function replay(request: FastifyRequest, reply: FastifyReply, record: CachedRecord, from: 'store' | 'database') {
  const fingerprint = request.idempotency!.fingerprint;
  const differs = fingerprintDifferences(record, fingerprint);
  if (differs.length > 0) {
    throw new ApiError(
      'IDEMPOTENCY_KEY_REUSED',
      `This Idempotency-Key was first used for a different request (its ${differs.join(', ')} differ${differs.length === 1 ? 's' : ''}); use a new key for a new request.`,
      { key: record.key, differs, originalMethod: record.method, originalPath: record.path },
    );
  }
  // Said on the request's one log line (see logFields): a replay is then one line, not two.
  request.logFields = {
    idempotentReplay: true,
    idempotencyKey: record.key,
    originalRequestId: record.requestId,
    replayedFrom: from,
  };
  return reply
    .code(record.statusCode)
    .headers({ ...record.responseHeaders, 'idempotent-replayed': 'true' })
    .send(record.responseBody);
}

export interface IdempotencyHooks {
  preValidation(singleStatement: boolean): (request: FastifyRequest, reply: FastifyReply) => Promise<unknown>;
  onSend(request: FastifyRequest, reply: FastifyReply, payload: unknown): Promise<unknown>;
  onResponse(request: FastifyRequest): Promise<void>;
}

/**
 * Idempotency for every POST, PUT and PATCH under /v1 (SPEC section 4), as hooks the server attaches to every
 * such route, so no route can forget it:
 * - preValidation: read and check the key; replay from the store's copy without touching the database; else open
 *   the request's transaction, take the key's advisory lock (busy → 409 IN_USE), replay a committed record, or
 *   set a savepoint so an error can undo the effect but keep its record;
 * - onSend: record the serialized response in that same transaction and commit, before the response leaves.
 */
export function idempotencyHooks(deps: AppDeps): IdempotencyHooks {
  const { db, store, config } = deps;
  const ttlMs = config.idempotencyTtlS * 1000;

  const preValidation = (singleStatement: boolean) => async (request: FastifyRequest, reply: FastifyReply) => {
    if (!MUTATING.has(request.method)) return;
    const key = keyOf(request, config.idempotencyRequired);
    if (key !== undefined) {
      request.idempotency = { key, fingerprint: fingerprintOf(request) };
      // Normally read by the signature guard in its one store round trip; read here only if it did not.
      const cached =
        request.storedResponse !== undefined
          ? request.storedResponse
          : await store.get(CACHE_PREFIX + key).catch((error: unknown) => {
              request.log.warn({ err: error }, 'idempotency cache unavailable; using the database');
              return null;
            });
      if (cached) return replay(request, reply, JSON.parse(cached) as CachedRecord, 'store');
    }
    if (key === undefined && singleStatement) {
      request.autocommit = db;
      return;
    }
    const tx = await db.begin();
    try {
      if (key !== undefined) {
        if (!(await tryLockKey(tx, key, config.idempotencyLockS))) {
          throw new ApiError(
            'IDEMPOTENCY_KEY_IN_USE',
            `A request with this Idempotency-Key is still running; retry after ${IN_USE_RETRY_AFTER_S} s to get its result.`,
            { key },
            { 'retry-after': IN_USE_RETRY_AFTER_S },
          );
        }
        const record = await findRecord(tx, key);
        if (record) {
          await tx.rollback();
          return replay(request, reply, record, 'database');
        }
        await tx.query('savepoint kiln_effect');
      }
    } catch (error) {
      await tx.rollback();
      throw error;
    }
    request.tx = tx;
  };

  const onSend = async (request: FastifyRequest, reply: FastifyReply, payload: unknown) => {
    const tx = request.tx;
    if (!tx) return payload;
    request.tx = undefined;
    const status = reply.statusCode;
    const idempotency = request.idempotency;
    try {
      if (!idempotency) {
        if (status < 400) {
          await tx.commit();
          runAfterCommit(request);
        } else await tx.rollback();
        return payload;
      }
      // An error keeps its record (when recordable) but never its effect.
      if (status >= 400) await tx.query('rollback to savepoint kiln_effect');
      const errorCode = status >= 400 ? errorCodeOf(payload) : undefined;
      if (!isRecordable(status, errorCode) || typeof payload !== 'string') {
        await tx.rollback();
        return payload;
      }
      const responseHeaders: Record<string, string> = {};
      for (const name of REPLAYED_HEADERS) {
        const value = reply.getHeader(name);
        if (value !== undefined) responseHeaders[name] = String(value);
      }
      const record: CachedRecord = {
        key: idempotency.key,
        ...idempotency.fingerprint,
        statusCode: status,
        responseBody: payload,
        responseHeaders,
        requestId: request.id,
      };
      const expiresAt = await insertRecord(tx, record, config.idempotencyTtlS);
      await tx.commit();
      if (status < 400) runAfterCommit(request);
      // The copy must not outlive the record (an expired key is free for a new request).
      const cacheMs = Math.min(ttlMs, expiresAt.getTime() - Date.now()) - CACHE_MARGIN_MS;
      if (cacheMs > 0) {
        store.set(CACHE_PREFIX + idempotency.key, JSON.stringify(record), cacheMs).catch((error: unknown) => {
          request.log.warn({ err: error }, 'could not cache the idempotent response; replays will read the database');
        });
      }
      return payload;
    } catch (error) {
      await tx.rollback();
      throw error;
    }
  };

  // Safety net: a request that ends without passing onSend (client gone mid-way) must not keep its transaction.
  // A handler still running on it gets "transaction already ended" on its next query, so nothing half-done commits.
  const onResponse = async (request: FastifyRequest) => {
    const tx = request.tx;
    if (!tx) return;
    request.tx = undefined;
    await tx.rollback();
  };
  return { preValidation, onSend, onResponse };
}
