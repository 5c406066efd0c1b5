import { KilnError, KilnNetworkError } from './errors.js';
import { concatBytes, type SignatureVersion, signRequest } from './sign.js';
import type {
  Build,
  CommitResult,
  CreateBuildInput,
  CreateProjectInput,
  CreditAccount,
  GrantInput,
  Project,
  ReleaseResult,
  Reservation,
  ReserveInput,
} from './types.js';

/**
 * A signing HTTP client for Kiln: every attempt signed afresh (new nonce and timestamp), mutating requests keyed
 * (one Idempotency-Key per logical operation, the same on every retry), retries only where SPEC section 4 says a
 * retry may succeed and cannot do a thing twice, and every non-2xx answer turned into a KilnError.
 */

export interface RetryOptions {
  /** Attempts in all, the first included; default 3. 1 turns retries off. */
  maxAttempts?: number;
  /** First backoff step without a Retry-After, doubled on each retry (with jitter); default 250 ms. */
  baseDelayMs?: number;
  /** No wait is longer than this, a Retry-After included; default 10 000 ms. */
  maxDelayMs?: number;
  /** Called before each wait (logging, metrics). */
  onRetry?: (info: RetryInfo) => void;
}

export interface RetryInfo {
  method: string;
  path: string;
  /** The attempt that failed (1 for the first). */
  attempt: number;
  delayMs: number;
  /** The answer's status, or undefined when there was none (a network error). */
  status?: number;
  /** The answer's error code, or the transport error's message. */
  reason: string;
}

/** One answer, as `onResponse` sees it: every answer received, each retried attempt's included. */
export interface ResponseInfo {
  method: string;
  /** The path and query as sent. */
  path: string;
  status: number;
  headers: Headers;
  /** The body parsed as JSON, or its text when it is not JSON (undefined when empty). */
  body: unknown;
  text: string;
  attempt: number;
}

export interface KilnClientOptions {
  /** Where Kiln listens, e.g. `http://127.0.0.1:8081` (no trailing path: the signed path is the request's). */
  baseUrl: string;
  /** The shared HMAC secret (HMAC_SECRET), used as its UTF-8 bytes. */
  secret: string;
  /** Signature header prefix (SIGNATURE_HEADER_PREFIX); default `x-sheen`. */
  prefix?: string;
  /** Signatures to send; default both v1 and v2. */
  versions?: readonly SignatureVersion[];
  /** Sent as x-correlation-id on every request. */
  correlationId?: string;
  /** The fetch to use (a runtime's own, a mock); default globalThis.fetch. */
  fetch?: typeof fetch;
  /** Retry policy of `request()` and the typed methods; `false` sends every request once. */
  retry?: RetryOptions | false;
  /** Called with every answer received, before it is returned or retried; what it throws fails the request. */
  onResponse?: (info: ResponseInfo) => void;
}

export interface RequestOptions {
  /** JSON-serialised unless it is a string or bytes, which are sent exactly as given. */
  body?: unknown;
  /** Extra headers; they win over the client's own (signature headers included, for tests of refusals). */
  headers?: Record<string, string>;
  /**
   * The operation's Idempotency-Key. Default for POST, PUT and PATCH: the body's `idempotencyKey` when it has one,
   * else a new random UUID per call, reused by every retry of that call.
   */
  idempotencyKey?: string;
  signal?: AbortSignal;
}

export interface RawOptions extends RequestOptions {
  /** `raw()` sends once unless told otherwise: `true` for the client's policy, or a policy of its own. */
  retry?: boolean | RetryOptions;
}

/** An answer as it came: whatever its status. */
export interface KilnResponse<T = unknown> {
  status: number;
  headers: Headers;
  /** Parsed JSON, or the text when the body is not JSON (undefined when empty). */
  body: T;
  text: string;
}

export interface KilnClient {
  /** Send a request (retried per the policy); resolves to the parsed body of a 2xx, rejects with a KilnError or KilnNetworkError. */
  request<T = unknown>(method: string, path: string, options?: RequestOptions): Promise<T>;
  /** Send a request once (by default) and resolve to the answer whatever its status; rejects only without one. */
  raw<T = unknown>(method: string, path: string, options?: RawOptions): Promise<KilnResponse<T>>;
  createProject(input: CreateProjectInput, options?: RequestOptions): Promise<Project>;
  getProject(id: string, options?: RequestOptions): Promise<Project>;
  /** 204 whether it deletes now or was deleted before; 409 PROJECT_HAS_ACTIVE_BUILDS while a build is active. */
  deleteProject(id: string, options?: RequestOptions): Promise<void>;
  createBuild(input: CreateBuildInput, options?: RequestOptions): Promise<Build>;
  getBuild(id: string, options?: RequestOptions): Promise<Build>;
  cancelBuild(id: string, options?: RequestOptions): Promise<Build>;
  grantCredits(input: GrantInput, options?: RequestOptions): Promise<CreditAccount>;
  getBalance(userId: string, options?: RequestOptions): Promise<CreditAccount>;
  reserveCredits(input: ReserveInput, options?: RequestOptions): Promise<Reservation>;
  commitCredits(
    input: { reservationId: string; actualCredits: number; buildId?: string },
    options?: RequestOptions,
  ): Promise<CommitResult>;
  releaseCredits(input: { reservationId: string; reason: string }, options?: RequestOptions): Promise<ReleaseResult>;
}

interface Policy {
  maxAttempts: number;
  baseDelayMs: number;
  maxDelayMs: number;
  onRetry?: (info: RetryInfo) => void;
}

const DEFAULT_POLICY: Policy = { maxAttempts: 3, baseDelayMs: 250, maxDelayMs: 10_000 };
const KEYED_METHODS = new Set(['POST', 'PUT', 'PATCH']);
/** Requests that change nothing: sending one twice is harmless whatever happened to the first. */
const SAFE_METHODS = new Set(['GET', 'HEAD', 'OPTIONS']);
const RETRYABLE_5XX = new Set([500, 502, 503, 504]);

function policyOf(retry: RetryOptions | boolean | undefined, base: Policy | undefined): Policy | undefined {
  if (retry === false || retry === undefined) return undefined;
  const from = base ?? DEFAULT_POLICY;
  if (retry === true) return from;
  return {
    maxAttempts: Math.max(1, Math.floor(retry.maxAttempts ?? from.maxAttempts)),
    baseDelayMs: Math.max(0, retry.baseDelayMs ?? from.baseDelayMs),
    maxDelayMs: Math.max(0, retry.maxDelayMs ?? from.maxDelayMs),
    onRetry: retry.onRetry ?? from.onRetry,
  };
}

/**
 * Whether another attempt may succeed without doing anything twice (SPEC section 4):
 * - 429 `RATE_LIMITED` (or a 429 without Kiln's envelope, e.g. from a proxy): refused before anything ran, so any
 *   method. Not 429 `BUILD_ALREADY_RUNNING`: its Retry-After is the running build's ETA (minutes, far beyond the
 *   cap), and whether to wait, cancel or give up is the caller's decision; the error carries activeBuildId.
 * - 409 `IDEMPOTENCY_KEY_IN_USE`: the first request with this key is still running; the retry gets its answer.
 * - 500, 502, 503, 504 and network errors: the outcome of the attempt is unknown, so only when repeating it is
 *   harmless: a read (GET, HEAD, OPTIONS), or a request with an Idempotency-Key (Kiln replays the recorded answer,
 *   or runs it if nothing was recorded; the record commits with the effect). DELETE is not keyed under /v1, so a
 *   retry of one whose answer was lost would report 404 for a deletion that happened: it is left to the caller.
 * Never: 400, 401, 402 (a top-up must come first), 404, 409 others, 413, 415, 422 — the same request fails again.
 */
export function isRetryable(attempt: { status?: number; error?: string }, method: string, keyed: boolean): boolean {
  const repeatable = SAFE_METHODS.has(method) || keyed;
  if (attempt.status === undefined) return repeatable;
  if (attempt.status === 429) return attempt.error !== 'BUILD_ALREADY_RUNNING';
  if (attempt.status === 409) return attempt.error === 'IDEMPOTENCY_KEY_IN_USE';
  return RETRYABLE_5XX.has(attempt.status) && repeatable;
}

/** Retry-After in seconds: delta-seconds or an HTTP date (RFC 9110 section 10.2.3); undefined when absent or bad. */
export function parseRetryAfter(value: string | null | undefined, now = Date.now()): number | undefined {
  if (!value) return undefined;
  const text = value.trim();
  if (/^\d+$/.test(text)) return Number(text);
  // Only the HTTP date form (IMF-fixdate, e.g. "Sun, 06 Nov 1994 08:49:37 GMT"): Date.parse would take "1.5" or "-5"
  // as dates in 2001 and retry at once.
  if (!/^[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT$/.test(text)) return undefined;
  const at = Date.parse(text);
  return Number.isNaN(at) ? undefined : Math.max(0, Math.ceil((at - now) / 1000));
}

/** The wait before the next attempt: the answer's Retry-After when it gave one (never over the cap: see send), else exponential backoff with jitter, capped. */
function delayBefore(nextAttempt: number, policy: Policy, retryAfterSeconds: number | undefined): number {
  if (retryAfterSeconds !== undefined) return Math.min(retryAfterSeconds * 1000, policy.maxDelayMs);
  const step = Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** (nextAttempt - 2));
  // Half fixed, half random: clients that failed together do not come back together, and none retries at once.
  return Math.round(step / 2 + (Math.random() * step) / 2);
}

function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

function parseBody(text: string): unknown {
  if (!text) return undefined;
  try {
    return JSON.parse(text);
  } catch {
    return text; // not JSON (an event stream, a proxy's page): the text itself
  }
}

/** The body's bytes or text, serialised once so that every attempt signs and sends the same thing. */
function serialise(body: unknown): string | Uint8Array<ArrayBuffer> {
  if (body === undefined) return '';
  if (typeof body === 'string') return body;
  // A copy: fetch and Web Crypto want bytes over an ArrayBuffer, and the caller's may be a view of a shared one.
  if (body instanceof Uint8Array) return concatBytes([body]);
  return JSON.stringify(body);
}

function headerIn(headers: Record<string, string> | undefined, name: string): string | undefined {
  if (!headers) return undefined;
  return Object.entries(headers).find(([key]) => key.toLowerCase() === name)?.[1];
}

function bodyKey(body: unknown): string | undefined {
  if (body === null || typeof body !== 'object' || body instanceof Uint8Array) return undefined;
  const key = (body as { idempotencyKey?: unknown }).idempotencyKey;
  return typeof key === 'string' ? key : undefined;
}

function errorFrom(
  response: KilnResponse,
  method: string,
  path: string,
  attempts: number,
  now = Date.now(),
): KilnError {
  const envelope =
    response.body !== null && typeof response.body === 'object' ? (response.body as Record<string, unknown>) : {};
  const text = (name: string) => (typeof envelope[name] === 'string' ? (envelope[name] as string) : undefined);
  const data = envelope.data;
  const dataRetry = (data as { retryAfterSeconds?: unknown } | undefined)?.retryAfterSeconds;
  return new KilnError({
    status: response.status,
    error: text('error') ?? `HTTP_${response.status}`,
    message: text('message') ?? (response.text.slice(0, 200) || `${method} ${path} answered ${response.status}`),
    data,
    requestId: text('requestId') ?? response.headers.get('x-request-id') ?? undefined,
    correlationId: text('correlationId') ?? response.headers.get('x-correlation-id') ?? undefined,
    retryAfterSeconds:
      parseRetryAfter(response.headers.get('retry-after'), now) ??
      (typeof dataRetry === 'number' ? dataRetry : undefined),
    attempts,
    method,
    path,
    headers: response.headers,
    body: response.body,
  });
}

/** A Kiln client bound to one server and secret. */
export function createKilnClient(options: KilnClientOptions): KilnClient {
  const baseUrl = options.baseUrl.replace(/\/+$/, '');
  const clientPolicy = policyOf(options.retry === false ? false : (options.retry ?? true), undefined);

  async function send(
    rawMethod: string,
    path: string,
    request: RequestOptions,
    policy: Policy | undefined,
    keyByDefault: boolean,
  ): Promise<{ response: KilnResponse; attempts: number }> {
    if (!path.startsWith('/')) throw new TypeError(`path "${path}" must start with / (the path and query, no host)`);
    const method = rawMethod.toUpperCase();
    const doFetch = options.fetch ?? globalThis.fetch;
    const payload = serialise(request.body);
    const key =
      request.idempotencyKey ??
      headerIn(request.headers, 'idempotency-key') ??
      (KEYED_METHODS.has(method) && keyByDefault
        ? // The body's own key, when it has one: a header key that differed from it would be a 400.
          (bodyKey(request.body) ?? globalThis.crypto.randomUUID())
        : undefined);
    const maxAttempts = policy?.maxAttempts ?? 1;
    for (let attempt = 1; ; attempt++) {
      const headers = new Headers(
        await signRequest({
          secret: options.secret,
          method,
          path,
          body: payload,
          prefix: options.prefix,
          versions: options.versions,
        }),
      );
      if (payload.length > 0) headers.set('content-type', 'application/json');
      if (options.correlationId) headers.set('x-correlation-id', options.correlationId);
      if (key !== undefined) headers.set('idempotency-key', key);
      for (const [name, value] of Object.entries(request.headers ?? {})) headers.set(name, value);

      let response: KilnResponse;
      try {
        const answer = await doFetch(`${baseUrl}${path}`, {
          method,
          headers,
          body: payload.length > 0 ? payload : undefined,
          signal: request.signal,
        });
        // Reading the body is part of the exchange: a connection reset half-way is a network error too.
        const text = await answer.text();
        response = { status: answer.status, headers: answer.headers, body: parseBody(text), text };
      } catch (error) {
        if (request.signal?.aborted) throw error;
        if (attempt < maxAttempts && policy && isRetryable({}, method, key !== undefined)) {
          const delayMs = delayBefore(attempt + 1, policy, undefined);
          policy.onRetry?.({ method, path, attempt, delayMs, reason: (error as Error).message ?? String(error) });
          await sleep(delayMs, request.signal);
          continue;
        }
        throw new KilnNetworkError({ method, path, attempts: attempt, cause: error });
      }
      options.onResponse?.({ method, path, ...response, attempt });

      const code = (response.body as { error?: unknown } | undefined)?.error;
      const error = typeof code === 'string' ? code : undefined;
      if (
        response.status < 400 ||
        !policy ||
        attempt >= maxAttempts ||
        !isRetryable({ status: response.status, error }, method, key !== undefined)
      ) {
        return { response, attempts: attempt };
      }
      const retryAfter = parseRetryAfter(response.headers.get('retry-after'));
      // A server that asks for a longer wait than the cap is not retried early (it would refuse again): the caller
      // gets the error, with retryAfterSeconds, and decides.
      if (retryAfter !== undefined && retryAfter * 1000 > policy.maxDelayMs) return { response, attempts: attempt };
      const delayMs = delayBefore(attempt + 1, policy, retryAfter);
      policy.onRetry?.({ method, path, attempt, delayMs, status: response.status, reason: error ?? 'HTTP_ERROR' });
      await sleep(delayMs, request.signal);
    }
  }

  async function request<T>(method: string, path: string, request: RequestOptions = {}): Promise<T> {
    const { response, attempts } = await send(method, path, request, clientPolicy, true);
    if (response.status >= 200 && response.status < 300) return response.body as T;
    throw errorFrom(response, method.toUpperCase(), path, attempts);
  }

  async function raw<T>(method: string, path: string, request: RawOptions = {}): Promise<KilnResponse<T>> {
    const policy = policyOf(request.retry, clientPolicy ?? DEFAULT_POLICY);
    // Keyed by default only when retrying: a key is what makes the retry safe, and a single send stays exactly
    // what the caller asked for (tests of refusals send the request they mean to).
    const { response } = await send(method, path, request, policy, policy !== undefined);
    return response as KilnResponse<T>;
  }

  const id = (value: string) => encodeURIComponent(value);
  return {
    request,
    raw,
    createProject: (input, o) => request('POST', '/v1/projects', { ...o, body: input }),
    getProject: (projectId, o) => request('GET', `/v1/projects/${id(projectId)}`, o),
    deleteProject: async (projectId, o) => {
      await request('DELETE', `/v1/projects/${id(projectId)}`, o);
    },
    createBuild: (input, o) => request('POST', '/v1/builds', { ...o, body: input }),
    getBuild: (buildId, o) => request('GET', `/v1/builds/${id(buildId)}`, o),
    cancelBuild: (buildId, o) => request('POST', `/v1/builds/${id(buildId)}/cancel`, o),
    grantCredits: (input, o) => request('POST', '/v1/credits/grant', { ...o, body: input }),
    getBalance: (userId, o) => request('GET', `/v1/credits/balance/${id(userId)}`, o),
    reserveCredits: (input, o) => request('POST', '/v1/credits/reserve', { ...o, body: input }),
    commitCredits: (input, o) => request('POST', '/v1/credits/commit', { ...o, body: input }),
    releaseCredits: (input, o) => request('POST', '/v1/credits/release', { ...o, body: input }),
  };
}
