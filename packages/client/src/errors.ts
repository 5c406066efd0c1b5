/**
 * Typed failures. Kiln answers every error with one envelope (SPEC section 2):
 * `{error, message, data?, requestId, correlationId, timestamp}`; a KilnError carries it, and a KilnNetworkError is
 * a request that got no answer at all.
 */

/** The error envelope, as far as the client relies on it. */
export interface KilnErrorBody {
  error: string;
  message: string;
  data?: unknown;
  requestId?: string;
  correlationId?: string;
  timestamp?: string;
}

export interface KilnErrorInit {
  status: number;
  error: string;
  message: string;
  data?: unknown;
  requestId?: string;
  correlationId?: string;
  retryAfterSeconds?: number;
  attempts: number;
  method: string;
  path: string;
  headers: Headers;
  body: unknown;
}

/** An answer from Kiln that is not a 2xx: the envelope's fields, and what the client knows around them. */
export class KilnError extends Error {
  /** The HTTP status. */
  readonly status: number;
  /** The error code (`INSUFFICIENT_CREDITS`, `VALIDATION_ERROR`, …); `HTTP_<status>` when the body was no envelope. */
  readonly error: string;
  /** What the envelope's `data` carries for this code (issues, shortfall, the running build, …). */
  readonly data: unknown;
  /** The request's id (the envelope's, else the x-request-id header): quote it when asking about a request. */
  readonly requestId: string | undefined;
  readonly correlationId: string | undefined;
  /** The Retry-After the answer carried, in seconds (what it said, before the client's cap). */
  readonly retryAfterSeconds: number | undefined;
  /** How many times the request was sent, the last one included. */
  readonly attempts: number;
  readonly method: string;
  readonly path: string;
  readonly headers: Headers;
  /** The parsed body (the envelope), or its text when it was not JSON. */
  readonly body: unknown;

  constructor(init: KilnErrorInit) {
    super(init.message);
    this.name = 'KilnError';
    this.status = init.status;
    this.error = init.error;
    this.data = init.data;
    this.requestId = init.requestId;
    this.correlationId = init.correlationId;
    this.retryAfterSeconds = init.retryAfterSeconds;
    this.attempts = init.attempts;
    this.method = init.method;
    this.path = init.path;
    this.headers = init.headers;
    this.body = init.body;
  }
}

/**
 * A request that got no HTTP answer (connection refused or reset, DNS); a fetch aborted through `signal` rejects with the signal's reason instead on its last attempt. The
 * transport's own error is `cause`. Whether the request took effect is unknown unless it was keyed or read-only.
 */
export class KilnNetworkError extends Error {
  readonly attempts: number;
  readonly method: string;
  readonly path: string;

  constructor(init: { method: string; path: string; attempts: number; cause: unknown }) {
    const reason = init.cause instanceof Error ? init.cause.message : String(init.cause);
    super(`${init.method} ${init.path}: no answer after ${init.attempts} attempt(s): ${reason}`, { cause: init.cause });
    this.name = 'KilnNetworkError';
    this.attempts = init.attempts;
    this.method = init.method;
    this.path = init.path;
  }
}

/** True for a KilnError, and, when `code` is given, only one with that error code. */
export function isKilnError(value: unknown, code?: string): value is KilnError {
  return value instanceof KilnError && (code === undefined || value.error === code);
}

/** True for a KilnNetworkError. */
export function isKilnNetworkError(value: unknown): value is KilnNetworkError {
  return value instanceof KilnNetworkError;
}
