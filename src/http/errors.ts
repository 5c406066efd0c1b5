import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify';
import { DatabaseUnavailableError } from '../db/database';
import { ApiError, type ErrorCode } from '../domain/errors';
import { StoreUnavailableError } from '../store/store';
import type { App } from './server';

export { ApiError, ERROR_STATUS, type ErrorCode } from '../domain/errors';

/** The one error envelope of SPEC section 2. */
export interface ErrorEnvelope {
  error: ErrorCode;
  message: string;
  data?: Record<string, unknown>;
  requestId: string;
  correlationId: string;
  timestamp: string;
}

export function envelope(request: FastifyRequest, error: ApiError): ErrorEnvelope {
  return {
    error: error.code,
    message: error.message,
    ...(error.data === undefined ? {} : { data: error.data }),
    requestId: request.id,
    correlationId: request.correlationId ?? request.id,
    timestamp: new Date().toISOString(),
  };
}

const positive = (value: unknown): number | undefined => {
  const n = typeof value === 'string' ? Number(value) : value;
  return typeof n === 'number' && Number.isFinite(n) && n > 0 ? Math.ceil(n) : undefined;
};

/**
 * The headers every 429 carries (SPEC section 2), whatever refused the request: `Retry-After`, `x-ratelimit-limit`,
 * `x-ratelimit-remaining: 0`, `x-ratelimit-reset` (seconds, = Retry-After), `RateLimit` and `RateLimit-Policy`.
 * Those the error gives are kept; the others are derived from them and its data (a limit of 1 when none is said:
 * one active build per project).
 */
export function tooManyHeaders(error: ApiError): Record<string, string | number> {
  const given = Object.fromEntries(Object.entries(error.headers ?? {}).map(([k, v]) => [k.toLowerCase(), v]));
  const data = error.data ?? {};
  const reset =
    positive(given['retry-after']) ??
    positive(given['x-ratelimit-reset']) ??
    positive(data.retryAfterSeconds) ??
    positive(data.etaSeconds) ??
    1;
  const limit = positive(given['x-ratelimit-limit']) ?? positive(data.limit) ?? 1;
  const window = positive(data.windowSeconds) ?? reset;
  return {
    'retry-after': reset,
    'x-ratelimit-limit': limit,
    'x-ratelimit-remaining': 0,
    'x-ratelimit-reset': reset,
    ratelimit: `limit=${limit}, remaining=0, reset=${reset}`,
    'ratelimit-policy': `${limit};w=${window}`,
    ...given,
  };
}

export function sendError(request: FastifyRequest, reply: FastifyReply, error: ApiError): FastifyReply {
  if (error.status === 429) reply.headers(tooManyHeaders(error));
  else if (error.headers) reply.headers(error.headers);
  return reply.code(error.status).type('application/json; charset=utf-8').send(envelope(request, error));
}

const RETRY_AFTER_S = 5;

/** 503 naming the dependency; the cause's text (host names, SQL states, …) goes to the log, not to the client. */
function unavailable(dependency: 'database' | 'store'): ApiError {
  const name = dependency === 'database' ? 'The database' : 'The ephemeral store (Redis)';
  return new ApiError(
    'SERVICE_UNAVAILABLE',
    `${name} is not answering; nothing was changed. Retry after ${RETRY_AFTER_S} s.`,
    { dependency },
    { 'retry-after': RETRY_AFTER_S },
  );
}

/** AJV paths look like "/name" or "/items/0"; the client gets "body.name", "query.limit", … */
function validationIssues(error: FastifyError): { path: string; message: string }[] {
  // Fastify says "querystring"; the client reads "query.limit", as the hand-made issues say.
  const context = error.validationContext === 'querystring' ? 'query' : (error.validationContext ?? 'body');
  return (error.validation ?? []).map((issue) => {
    const params = issue.params as Record<string, unknown>;
    const base = `${context}${issue.instancePath.replaceAll('/', '.')}`;
    if (issue.keyword === 'additionalProperties') {
      return { path: `${base}.${String(params.additionalProperty)}`, message: 'is not an allowed field' };
    }
    if (issue.keyword === 'required') {
      return { path: `${base}.${String(params.missingProperty)}`, message: 'is required' };
    }
    return { path: base, message: issue.message ?? 'is invalid' };
  });
}

/** Turn anything thrown while handling a request into an ApiError; unknown errors become a bare 500. */
export function toApiError(error: unknown, bodyLimit: number): ApiError {
  if (error instanceof ApiError) return error;
  if (error instanceof DatabaseUnavailableError) return unavailable('database');
  if (error instanceof StoreUnavailableError) return unavailable('store');
  const fastifyError = error as FastifyError;
  if (fastifyError.validation) {
    const issues = validationIssues(fastifyError);
    return new ApiError(
      'VALIDATION_ERROR',
      `The request has ${issues.length} invalid field${issues.length === 1 ? '' : 's'}: fix them and send it again.`,
      { issues },
    );
  }
  switch (fastifyError.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return new ApiError('PAYLOAD_TOO_LARGE', `The body is larger than ${bodyLimit} bytes; send a smaller one.`, {
        limit: bodyLimit,
      });
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return new ApiError('UNSUPPORTED_MEDIA_TYPE', 'Send the body as JSON with Content-Type: application/json.', {
        expected: 'application/json',
      });
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
    case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
      return new ApiError('VALIDATION_ERROR', 'The body is not valid JSON; send a JSON object.', {
        issues: [{ path: 'body', message: fastifyError.message }],
      });
  }
  if (typeof fastifyError.statusCode === 'number' && fastifyError.statusCode >= 400 && fastifyError.statusCode < 500) {
    return new ApiError('VALIDATION_ERROR', `The request was refused: ${fastifyError.message}`, {
      issues: [{ path: 'request', message: fastifyError.message }],
    });
  }
  return new ApiError(
    'INTERNAL_ERROR',
    'Something went wrong on our side; retry, and quote the requestId if it persists.',
  );
}

/**
 * A 503 may name the dependency, never echo its error text (hosts, SQL, driver messages): a `reason` some layer put
 * into the data is kept for the log only.
 */
function withoutRawReason(error: ApiError): ApiError {
  if (error.code !== 'SERVICE_UNAVAILABLE' || error.data?.reason === undefined) return error;
  const { reason: _reason, ...data } = error.data;
  return Object.assign(new ApiError(error.code, error.message, data, error.headers), { cause: error });
}

/** Install the one error handler and the 404 handler. */
export function registerErrorHandling(app: App, bodyLimit: number): void {
  app.setErrorHandler((error, request, reply) => {
    const apiError = withoutRawReason(toApiError(error, bodyLimit));
    if (apiError.code === 'INTERNAL_ERROR') {
      request.log.error({ err: error, code: apiError.code }, 'request failed');
    } else if (apiError.status >= 500) {
      request.log.warn(
        { code: apiError.code, reason: apiError.message, data: apiError.data, err: error },
        'dependency unavailable',
      );
    } else {
      request.log.info({ code: apiError.code, reason: apiError.message }, 'request refused');
    }
    return sendError(request, reply, apiError);
  });
  app.setNotFoundHandler((request, reply) =>
    sendError(
      request,
      reply,
      new ApiError('NOT_FOUND', `No route ${request.method} ${request.url.split('?')[0]}; see /docs for the API.`, {
        method: request.method,
        path: request.url.split('?')[0],
      }),
    ),
  );
}
