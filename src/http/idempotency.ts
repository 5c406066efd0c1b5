import { randomBytes } from 'node:crypto';
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { OpenTransaction, Queryable } from '../db/database';
import { bodyHashOf, earlierBodyHashOf, fingerprintDifferences, type RequestFingerprint } from '../domain/fingerprint';
import { canonicalPath } from '../domain/signature';
import { countIdempotency } from '../metrics';
import { claimKey, commitRecord, OnceGroups, type OnceWrite } from '../services/idempotency';
import { Tally } from '../services/tally';
import type { AppDeps } from './app';
import { ApiError, envelope } from './errors';
import { type CachedRecord, decodeCopy, encodeCopy, RAW_BODY_COPY_MAX } from './idempotency-copy';
import type { KeyRead } from './idempotency-key';

declare module 'fastify' {
  interface FastifyRequest {
    /**
     * The transaction a mutating /v1 request runs in. The idempotency layer opens it before the handler and
     * commits it, with the request's record, before a byte of the response is sent.
     */
    tx?: OpenTransaction;
    /** The request's key; its fingerprint once computed (see fingerprintOf: a replay may not need it). */
    idempotency?: KeyState;
    /** Work to do once the request's transaction has committed (wake-ups); dropped if it rolls back. */
    afterCommit?: (() => void)[];
    /** For a single-statement route called without a key: the database itself, no transaction around it. */
    autocommit?: Queryable;
    /** What the request's transaction moved (credits, builds), counted on /metrics once it commits. */
    tally?: Tally;
  }
  interface FastifyContextConfig {
    /**
     * The handler writes with exactly one statement (a credit function, build_create), which writes nothing when it
     * refuses; reads before or after it need no snapshot shared with it. Without an idempotency key it then runs in
     * autocommit — one round trip instead of BEGIN, statement, COMMIT — since one statement is atomic by itself.
     * With a key it still runs in the transaction that records the key.
     */
    singleStatement?: boolean;
    /**
     * The handler runs a keyed request's write as one statement with its record when it can (sendOnce): its key is
     * then not claimed before the handler, and a write that succeeds takes one round trip in all. A handler of such
     * a route calls sendOnce before anything else that writes.
     */
    once?: boolean;
  }
}

/** What the idempotency layer knows of a keyed request. */
interface KeyState {
  key: string;
  fingerprint?: RequestFingerprint;
  /** A route with `once`: the key is not claimed yet; sendOnce (or, if the handler never gets there, onSend) will. */
  deferred?: boolean;
  /** What sendOnce recorded and committed: kept in the store and counted once the response is on its way. */
  sent?: { record: CachedRecord; expiresAt: Date };
}

/** A mutating request whose Idempotency-Key has been read. */
type KeyedRequest = FastifyRequest & { idempotency: KeyState };

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

/** The tally of the request's transaction: services note what they moved in it (see services/tally.ts). */
export function tallyOf(request: FastifyRequest): Tally {
  request.tally ??= new Tally();
  return request.tally;
}

function runAfterCommit(request: FastifyRequest): void {
  request.tally?.commit();
  request.tally = undefined;
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

/** The store key of the copy of the response recorded under an idempotency key. */
export function storedResponseKey(key: string): string {
  return CACHE_PREFIX + key;
}

/** The request's fingerprint, computed once (the body's canonical hash is the costly part). */
function fingerprintOf(request: KeyedRequest): RequestFingerprint {
  request.idempotency.fingerprint ??= {
    method: request.method,
    path: canonicalPath(request.url),
    bodyHash: bodyHashOf(request.body),
  };
  return request.idempotency.fingerprint;
}

/** The store's copy, or undefined when it cannot be read (the database then answers; the copy is only a copy). */
function readCopy(request: FastifyRequest, text: string): CachedRecord | undefined {
  try {
    return decodeCopy(text);
  } catch (error) {
    request.log.warn({ err: error }, 'unreadable idempotency copy in the store; using the database');
    return undefined;
  }
}

/** The request body's text when it is small enough to keep in (or compare with) a store copy. */
function smallRawBody(request: FastifyRequest): string | undefined {
  if (!request.rawBody) return '';
  return request.rawBody.length <= RAW_BODY_COPY_MAX ? request.rawBody.toString('utf8') : undefined;
}

/**
 * What differs between the request and the one first recorded under its key. A retry that repeats the recorded
 * bytes exactly (the store's copy keeps them for small bodies) means the same body without canonicalising it.
 */
function differencesFrom(request: KeyedRequest, record: CachedRecord) {
  if (
    record.rawBody !== undefined &&
    record.method === request.method &&
    record.path === canonicalPath(request.url) &&
    record.rawBody === smallRawBody(request)
  ) {
    return [];
  }
  const differs = fingerprintDifferences(record, fingerprintOf(request));
  if (differs.includes('body') && record.bodyHash === earlierBodyHashOf(request.body)) {
    return differs.filter((part) => part !== 'body');
  }
  return differs;
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

/**
 * The text a recorded response replays: its serialized body, or '' for none (a 204). A keyed response of another
 * kind (a stream) cannot be recorded, so its effect must not commit either: it fails as a 500, rolled back.
 */
function recordableBody(payload: unknown): string {
  if (typeof payload === 'string') return payload;
  if (payload === undefined || payload === null) return '';
  if (Buffer.isBuffer(payload)) return payload.toString('utf8');
  throw new Error('a response to a request with an Idempotency-Key must be text or empty to be recorded');
}

/**
 * The recorded response a retry gets: said on the request's log line, counted. 422 IDEMPOTENCY_KEY_REUSED (thrown)
 * when the key was first used for a different request.
 */
function replayOf(request: KeyedRequest, record: CachedRecord, from: 'store' | 'database'): CachedRecord {
  const differs = differencesFrom(request, record);
  if (differs.length > 0) {
    countIdempotency('key_reused');
    throw new ApiError(
      'IDEMPOTENCY_KEY_REUSED',
      `This Idempotency-Key was first used for a different request (its ${differs.join(', ')} differ${differs.length === 1 ? 's' : ''}); use a new key for a new request.`,
      { key: record.key, differs, originalMethod: record.method, originalPath: record.path },
    );
  }
  countIdempotency(from === 'store' ? 'replayed_store' : 'replayed_database');
  // Said on the request's one log line (see logFields): a replay is then one line, not two.
  request.logFields = {
    idempotentReplay: true,
    idempotencyKey: record.key,
    originalRequestId: record.requestId,
    replayedFrom: from,
  };
  return record;
}

/** Set the reply's status and headers to those of a recorded response; its body is the caller's to send. */
function answerAs(reply: FastifyReply, record: CachedRecord): void {
  reply.code(record.statusCode);
  // A handler may have set its own (a new resource's location) before it found the key recorded.
  for (const name of REPLAYED_HEADERS) reply.removeHeader(name);
  for (const name in record.responseHeaders) reply.header(name, record.responseHeaders[name]);
  reply.header('idempotent-replayed', 'true');
}

/** Answer with the recorded response, or 422 when the key was first used for a different request. */
function replay(request: KeyedRequest, reply: FastifyReply, record: CachedRecord, from: 'store' | 'database') {
  const replayed = replayOf(request, record, from);
  answerAs(reply, replayed);
  return reply.send(replayed.responseBody);
}

export interface IdempotencyHooks {
  /**
   * The idempotency layer of a mutating route, after the signature guard: `read` is the request's key (readIdempotencyKey),
   * `stored` the store's copy under its key as the guard read it (null: none; undefined: not read).
   */
  preValidation(route: {
    singleStatement: boolean;
    once: boolean;
  }): (
    request: FastifyRequest,
    reply: FastifyReply,
    read: KeyRead,
    stored: string | null | undefined,
  ) => Promise<unknown>;
  onSend(
    request: FastifyRequest,
    reply: FastifyReply,
    payload: unknown,
    done: (error: Error | null, payload?: unknown) => void,
  ): void;
  onResponse(request: FastifyRequest, reply: FastifyReply, done: (error?: Error) => void): void;
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
  const preValidation: IdempotencyHooks['preValidation'] =
    ({ singleStatement, once }) =>
    async (request, reply, read, stored) => {
      if (read.error) throw read.error;
      const key = read.key;
      if (key === undefined) {
        if (singleStatement) request.autocommit = deps.db;
        else request.tx = await deps.db.begin();
        return;
      }
      const keyed = Object.assign(request, { idempotency: { key } }) as KeyedRequest;
      const copy = await storedCopy(deps, keyed, stored);
      if (copy) return replay(keyed, reply, copy, 'store');
      // The fingerprint the record keeps is taken now, before validation (which may fill in defaults) and the handler
      // see the body, as a replay's is: the two compare the same thing.
      fingerprintOf(keyed);
      if (once) {
        keyed.idempotency.deferred = true;
        return;
      }
      const opened = await openKeyedTransaction(deps, keyed);
      if ('record' in opened) return replay(keyed, reply, opened.record, 'database');
      countIdempotency('executed');
      request.tx = opened.tx;
    };

  // Callback-style hooks: most requests that pass them (replays, reads of a key's store copy) have no
  // transaction, and need no promise.
  const onSend: IdempotencyHooks['onSend'] = (request, reply, payload, done) => {
    const tx = request.tx;
    const keyed = request.idempotency;
    if (keyed?.sent) {
      const { record, expiresAt } = keyed.sent;
      keyed.sent = undefined;
      runAfterCommit(request);
      keepCopy(deps, request, record, expiresAt);
      return done(null, payload);
    }
    if (keyed?.deferred) {
      // A route with `once` whose handler did not run its write (the body was refused, say): claim the key now.
      keyed.deferred = false;
      settleDeferred(deps, request as KeyedRequest, reply, payload).then((sent) => done(null, sent), done);
      return;
    }
    if (!tx) {
      // A single statement in autocommit has committed whatever it wrote, even when its answer is an error (a
      // 402 reserve may have expired lapsed holds first): its tally is counted either way.
      if (request.autocommit) {
        request.tally?.commit();
        if (reply.statusCode < 400) runAfterCommit(request);
      }
      return done(null, payload);
    }
    request.tx = undefined;
    finish(deps, request, reply, tx, payload).then((sent) => done(null, sent), done);
  };

  // Safety net: a request that ends without passing onSend (client gone mid-way) must not keep its transaction.
  // A handler still running on it gets "transaction already ended" on its next query, so nothing half-done commits.
  const onResponse: IdempotencyHooks['onResponse'] = (request, _reply, done) => {
    const tx = request.tx;
    if (!tx) return done();
    request.tx = undefined;
    tx.rollback().then(() => done(), done);
  };
  return { preValidation, onSend, onResponse };
}

/**
 * The store's copy of the key's record: as the signature guard read it in its one store round trip (`stored`), or
 * read now if it did not. Undefined when there is none or it cannot be read (the database then answers).
 */
async function storedCopy(
  deps: AppDeps,
  request: KeyedRequest,
  stored: string | null | undefined,
): Promise<CachedRecord | undefined> {
  const cached =
    stored !== undefined
      ? stored
      : await deps.store.get(CACHE_PREFIX + request.idempotency.key).catch((error: unknown) => {
          request.log.warn({ err: error }, 'idempotency cache unavailable; using the database');
          return null;
        });
  return cached ? readCopy(request, cached) : undefined;
}

/**
 * Open a keyed request's transaction, in one round trip (claimKey): take its key's lock (held elsewhere → 409
 * IDEMPOTENCY_KEY_IN_USE), answer the committed record if there is one (the transaction is then over), else mark
 * where the effect begins.
 */
async function openKeyedTransaction(
  deps: AppDeps,
  request: KeyedRequest,
  /** How long a lock on the key may be waited for before 409 (see sendOnce); 0: not at all. */
  graceMs = 0,
): Promise<{ tx: OpenTransaction } | { record: CachedRecord }> {
  const { key } = request.idempotency;
  const until = Date.now() + graceMs;
  let claim = await claimKey(deps.db, key, deps.config.idempotencyLockS);
  while ('locked' in claim && Date.now() < until) {
    await new Promise((resolve) => setTimeout(resolve, 5));
    claim = await claimKey(deps.db, key, deps.config.idempotencyLockS);
  }
  if ('claimed' in claim) return { tx: claim.claimed };
  if ('record' in claim) return { record: claim.record };
  countIdempotency('key_in_use');
  throw new ApiError(
    'IDEMPOTENCY_KEY_IN_USE',
    `A request with this Idempotency-Key is still running; retry after ${IN_USE_RETRY_AFTER_S} s to get its result.`,
    { key },
    { 'retry-after': IN_USE_RETRY_AFTER_S },
  );
}

/** How long sendOnce waits for the lock its own declined statement held to be let go (see there). */
const LOCK_RELEASE_GRACE_MS = 200;

const onceGroups = new WeakMap<AppDeps, OnceGroups>();

/** The app's keyed-write groups, made on its first keyed write from its configuration. */
function onceGroupsOf(deps: AppDeps): OnceGroups {
  let groups = onceGroups.get(deps);
  if (!groups) {
    groups = new OnceGroups(deps.db, {
      ttlSeconds: deps.config.idempotencyTtlS,
      leaseSeconds: deps.config.idempotencyLockS,
      mark: FIGURE_MARK,
      groupMax: deps.config.keyedGroupMax,
    });
    onceGroups.set(deps, groups);
  }
  return groups;
}

/** Text no client can guess, around each figure of a response serialized before its write ran (runOnce). */
const FIGURE_MARK = randomBytes(12).toString('base64url');

/** The placeholder of a figure in a response body serialized before the write that knows it (see sendOnce). */
function figure(name: string): string {
  return `@${FIGURE_MARK}:${name}@`;
}

/**
 * A keyed write in one round trip (a route with `once`): claim the key, apply the effect, record the response and
 * commit, in one statement (runOnce), shared with the other keyed writes of this event-loop turn (OnceGroups).
 * `view` makes the response body, given a placeholder for each figure only the effect knows (see the OnceWrite of the
 * service); the reply's status and headers are set before. The body is serialized here, written into by the
 * statement and sent as it was recorded.
 * Out: true when the reply has been sent (a replay too: the handler then returns the reply); false when the request
 * is to run the general way, in its own transaction (transactionOf): unkeyed, or the statement declined (a refusal,
 * a key held or recorded by now), in which case the key has been claimed as any route claims it. (Not the reply
 * itself: a reply is thenable, and a promise resolved with it waits for the response to end.) Errors: 409 IDEMPOTENCY_KEY_IN_USE, 422
 * IDEMPOTENCY_KEY_REUSED, and the database's own.
 */
export async function sendOnce(
  deps: AppDeps,
  request: FastifyRequest,
  reply: FastifyReply,
  write: OnceWrite,
  view: (figure: (name: string) => string) => unknown,
): Promise<boolean> {
  if (!request.idempotency?.deferred) return false;
  const keyed = request as KeyedRequest;
  keyed.idempotency.deferred = false;
  reply.type('application/json; charset=utf-8');
  const template = recordOf(keyed, reply, JSON.stringify(view(figure)));
  const outcome = await onceGroupsOf(deps).run({ record: template, effect: write.effect });
  if ('sent' in outcome) {
    countIdempotency('executed');
    write.settle(outcome.sent.result);
    const record = { ...template, responseBody: outcome.sent.body };
    keyed.idempotency.sent = { record, expiresAt: outcome.sent.expiresAt };
    reply.send(record.responseBody);
    return true;
  }
  // A statement that declined for any reason but another holder (KI409) held the key's lock itself: PostgreSQL
  // sends its error before the aborted transaction lets the lock go, so the claim below, on another connection, may
  // find it still held for a moment. That moment is waited out (up to LOCK_RELEASE_GRACE_MS), not answered 409.
  const opened = await openKeyedTransaction(deps, keyed, outcome.declined === 'KI409' ? 0 : LOCK_RELEASE_GRACE_MS);
  if ('record' in opened) {
    replay(keyed, reply, opened.record, 'database');
    return true;
  }
  countIdempotency('executed');
  request.tx = opened.tx;
  return false;
}

/**
 * The answer of a request on a route with `once` whose key was never claimed, because its handler did not reach
 * sendOnce (a refused body, an error before the write): claim the key now and record the answer as any route does.
 * When the key turns out to be held, or recorded, the answer becomes 409 IDEMPOTENCY_KEY_IN_USE, or the replay, as
 * it would have been had the key been claimed first.
 */
async function settleDeferred(
  deps: AppDeps,
  request: KeyedRequest,
  reply: FastifyReply,
  payload: unknown,
): Promise<unknown> {
  const status = reply.statusCode;
  if (!isRecordable(status, status >= 400 ? errorCodeOf(payload) : undefined)) return payload;
  try {
    const opened = await openKeyedTransaction(deps, request);
    if ('record' in opened) {
      const replayed = replayOf(request, opened.record, 'database');
      answerAs(reply, replayed);
      return replayed.responseBody;
    }
    countIdempotency('executed');
    return await finish(deps, request, reply, opened.tx, payload);
  } catch (error) {
    if (!(error instanceof ApiError)) throw error;
    reply.code(error.status).headers(error.headers ?? {});
    reply.type('application/json; charset=utf-8');
    return JSON.stringify(envelope(request, error));
  }
}

/** Commit (or roll back) the request's transaction, with its record when it has a key; the payload goes out unchanged. */
async function finish(
  deps: AppDeps,
  request: FastifyRequest,
  reply: FastifyReply,
  tx: OpenTransaction,
  payload: unknown,
): Promise<unknown> {
  const status = reply.statusCode;
  try {
    if (!request.idempotency) {
      if (status < 400) {
        await tx.commit();
        runAfterCommit(request);
      } else await tx.rollback();
      return payload;
    }
    if (!isRecordable(status, status >= 400 ? errorCodeOf(payload) : undefined)) {
      await tx.rollback();
      return payload;
    }
    // The record and COMMIT in one round trip; an error keeps its record but never its effect.
    const record = recordOf(request as KeyedRequest, reply, payload);
    const expiresAt = await commitRecord(tx, record, deps.config.idempotencyTtlS, status >= 400);
    if (status < 400) runAfterCommit(request);
    keepCopy(deps, request, record, expiresAt);
    return payload;
  } catch (error) {
    await tx.rollback();
    throw error;
  }
}

/** The record of a finished keyed request: its fingerprint, status, serialized body and replayed headers. */
function recordOf(request: KeyedRequest, reply: FastifyReply, payload: unknown): CachedRecord {
  const responseHeaders: Record<string, string> = {};
  for (const name of REPLAYED_HEADERS) {
    const value = reply.getHeader(name);
    if (value !== undefined) responseHeaders[name] = String(value);
  }
  return {
    key: request.idempotency.key,
    ...fingerprintOf(request),
    statusCode: reply.statusCode,
    responseBody: recordableBody(payload),
    responseHeaders,
    requestId: request.id,
  };
}

/** Keep a copy of a committed record in the store, for replays without the database; never longer than the record. */
function keepCopy(deps: AppDeps, request: FastifyRequest, record: CachedRecord, expiresAt: Date): void {
  // The copy must not outlive the record (an expired key is free for a new request).
  const cacheMs = Math.min(deps.config.idempotencyTtlS * 1000, expiresAt.getTime() - Date.now()) - CACHE_MARGIN_MS;
  if (cacheMs <= 0) return;
  deps.store
    .set(CACHE_PREFIX + record.key, encodeCopy(record, smallRawBody(request)), cacheMs)
    .catch((error: unknown) => {
      request.log.warn({ err: error }, 'could not cache the idempotent response; replays will read the database');
    });
}
