/**
 * The error codes of SPEC section 2 and the one error type that carries them. Services throw ApiError with a
 * message that says what to do next; the HTTP layer's one handler turns it into the envelope.
 */
/** Every error code Kiln answers with, and its HTTP status. */
export const ERROR_STATUS = {
  VALIDATION_ERROR: 400,
  /** Not valid HTTP: a malformed request line, header, Content-Length, chunked body or URL encoding. */
  BAD_REQUEST: 400,
  INVALID_IDEMPOTENCY_KEY: 400,
  MISSING_SIGNATURE: 401,
  INVALID_SIGNATURE: 401,
  TIMESTAMP_OUT_OF_RANGE: 401,
  UNAUTHORIZED: 401,
  INSUFFICIENT_CREDITS: 402,
  NOT_FOUND: 404,
  BUILD_NOT_FOUND: 404,
  PROJECT_NOT_FOUND: 404,
  RESERVATION_NOT_FOUND: 404,
  METHOD_NOT_ALLOWED: 405,
  REQUEST_TIMEOUT: 408,
  INVALID_STATE_TRANSITION: 409,
  REPLAYED_NONCE: 409,
  IDEMPOTENCY_KEY_IN_USE: 409,
  RESERVATION_NOT_ACTIVE: 409,
  RESERVATION_HELD_BY_BUILD: 409,
  VERSION_CONFLICT: 409,
  PROJECT_ALREADY_EXISTS: 409,
  /** A project deletion while a build of it is queued or building. */
  PROJECT_HAS_ACTIVE_BUILDS: 409,
  BUILD_ALREADY_EXISTS: 409,
  /** A webhook operation (a secret rotation) on a project without webhookUrl. */
  WEBHOOK_NOT_SET: 409,
  PAYLOAD_TOO_LARGE: 413,
  URI_TOO_LONG: 414,
  UNSUPPORTED_MEDIA_TYPE: 415,
  EXPECTATION_FAILED: 417,
  IDEMPOTENCY_KEY_REUSED: 422,
  COMMIT_EXCEEDS_RESERVATION: 422,
  BUILD_ALREADY_RUNNING: 429,
  RATE_LIMITED: 429,
  HEADERS_TOO_LARGE: 431,
  INTERNAL_ERROR: 500,
  NOT_IMPLEMENTED: 501,
  SERVICE_UNAVAILABLE: 503,
  HTTP_VERSION_NOT_SUPPORTED: 505,
} as const;

export type ErrorCode = keyof typeof ERROR_STATUS;

/** An error meant for the client: code, message that says what to do next, and optional data. */
export class ApiError extends Error {
  readonly status: number;
  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly data?: Record<string, unknown>,
    /** Extra response headers, e.g. Retry-After. */
    readonly headers?: Record<string, string | number>,
  ) {
    super(message);
    this.name = 'ApiError';
    this.status = ERROR_STATUS[code];
  }
}
