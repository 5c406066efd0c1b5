import { type IncomingMessage, type ServerResponse, STATUS_CODES } from 'node:http';
import type { Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import type { FastifyBaseLogger, FastifyError, FastifyReply, FastifyRequest } from 'fastify';
import { DatabaseUnavailableError } from '../db/database';
import { ApiError, type ErrorCode } from '../domain/errors';
import { issuesFrom, type SchemaError } from '../domain/validation-issues';
import { StoreUnavailableError } from '../store/store';
import type { App } from './app';
import { contextHeaders, correlationIdFrom, newRequestId, requestIdFrom } from './context';

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
  return envelopeOf(error, request.id, request.correlationId || request.id);
}

function envelopeOf(error: ApiError, requestId: string, correlationId: string): ErrorEnvelope {
  return {
    error: error.code,
    message: error.message,
    ...(error.data === undefined ? {} : { data: error.data }),
    requestId,
    correlationId,
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
export function validationIssues(error: FastifyError): { path: string; message: string }[] {
  // Fastify says "querystring"; the client reads "query.limit", as the hand-made issues say.
  const context = error.validationContext === 'querystring' ? 'query' : (error.validationContext ?? 'body');
  return issuesFrom((error.validation ?? []) as SchemaError[], context);
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
      issues.length === 1
        ? `The request has 1 invalid field (${issues[0].path} ${issues[0].message}): fix it and send it again.`
        : `The request has ${issues.length} invalid fields: fix them and send it again (data.issues lists each).`,
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

/** Methods listed in an Allow header in this order; any others a route uses come after, sorted. */
const METHOD_ORDER = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'];

/** Install the one error handler, and the 404 handler (405 with Allow for a known path and another method). */
export function registerErrorHandling(app: App, bodyLimit: number): void {
  const methods = new Set(METHOD_ORDER);
  app.addHook('onRoute', (route) => {
    for (const method of Array.isArray(route.method) ? route.method : [route.method]) methods.add(method);
  });
  const rank = (method: string) => (METHOD_ORDER.includes(method) ? METHOD_ORDER.indexOf(method) : METHOD_ORDER.length);
  /** The methods some route answers for this URL (HEAD wherever GET is), in METHOD_ORDER. */
  const allowedMethods = (url: string): string[] => {
    const allowed = [...methods].filter((method) => app.findRoute({ method: method as 'GET', url }) !== null);
    if (allowed.includes('GET') && !allowed.includes('HEAD')) allowed.push('HEAD');
    return allowed.sort((a, b) => rank(a) - rank(b) || a.localeCompare(b));
  };

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
  app.setNotFoundHandler((request, reply) => {
    const path = request.url.split('?')[0];
    const allowed = allowedMethods(request.url);
    if (allowed.length > 0) {
      return sendError(
        request,
        reply,
        new ApiError(
          'METHOD_NOT_ALLOWED',
          `${request.method} is not allowed on ${path}; use ${allowed.join(', ')} (see /docs for the API).`,
          { method: request.method, path, allowed },
          { allow: allowed.join(', ') },
        ),
      );
    }
    return sendError(
      request,
      reply,
      new ApiError('NOT_FOUND', `No route ${request.method} ${path}; see /docs for the API.`, {
        method: request.method,
        path,
      }),
    );
  });
}

/** What a route parameter may hold at most (Fastify's default of 100 refused valid 128-character ids). */
export const MAX_PARAM_LENGTH = 1024;

/** The errors Fastify's router raises before any route (and its hooks) is chosen, as ApiErrors. */
export function frameworkApiError(error: FastifyError, url: string, bodyLimit: number): ApiError {
  const path = url.split('?')[0].slice(0, 256);
  switch (error.code) {
    case 'FST_ERR_BAD_URL':
      return new ApiError(
        'BAD_REQUEST',
        'The URL is not valid percent-encoding (a % must be followed by two hex digits, and encode UTF-8); encode it with encodeURIComponent and send it again.',
        { path },
      );
    case 'FST_ERR_MAX_PARAM_LENGTH':
      return new ApiError(
        'URI_TOO_LONG',
        `A path segment is longer than ${MAX_PARAM_LENGTH} characters (ids are at most 128); send a shorter one.`,
        { path: `${path.slice(0, 128)}…`, limit: MAX_PARAM_LENGTH },
      );
    case 'FST_ERR_ASYNC_CONSTRAINT':
      return new ApiError(
        'INTERNAL_ERROR',
        'Something went wrong on our side; retry, and quote the requestId if it persists.',
      );
    default:
      return toApiError(error, bodyLimit);
  }
}

/**
 * Fastify's `frameworkErrors`: a malformed URL, an over-long path parameter, a failing route constraint. The
 * request never reaches a route, so no hook adds the context headers: they are set here.
 */
export function frameworkErrorHandler(version: string, bodyLimit: number) {
  return (error: FastifyError, request: FastifyRequest, reply: FastifyReply): void => {
    request.correlationId = correlationIdFrom(request.headers, request.id);
    const apiError = frameworkApiError(error, request.url, bodyLimit);
    if (apiError.code === 'INTERNAL_ERROR') request.log.error({ err: error }, 'request failed');
    else
      request.log.info({ code: apiError.code, reason: error.code, url: request.url.slice(0, 256) }, 'request refused');
    reply.headers(contextHeaders(request.id, request.correlationId, version, reply.elapsedTime));
    void sendError(request, reply, apiError);
  };
}

/** An error of Node's HTTP parser (llhttp) or server, as the 'clientError' event gives it. */
export type ClientError = Error & { code?: string; reason?: string; rawPacket?: unknown };

const REQUEST_LINE_START = /^[A-Z][A-Z_-]* /;

/** What to answer a request Node's HTTP parser refused, by the parser's error code. */
export function clientApiError(error: ClientError): ApiError {
  const code = error.code ?? 'unknown';
  const reason = (error.reason ?? error.message ?? '').slice(0, 200);
  const data = { parserError: code, reason };
  const packet = Buffer.isBuffer(error.rawPacket) ? error.rawPacket.toString('latin1', 0, 16_384) : '';
  switch (code) {
    case 'HPE_HEADER_OVERFLOW':
      // The request line alone did not fit (no line end in the packet that starts it): the URL is too long.
      if (REQUEST_LINE_START.test(packet) && !packet.includes('\n')) {
        return new ApiError(
          'URI_TOO_LONG',
          'The URL is too long; send a shorter one (at most 16 KB with the headers).',
          data,
        );
      }
      return new ApiError(
        'HEADERS_TOO_LARGE',
        'The request line and headers are larger than 16 KB; send fewer or shorter headers.',
        data,
      );
    case 'ERR_HTTP_REQUEST_TIMEOUT':
      return new ApiError('REQUEST_TIMEOUT', 'The request did not arrive in time; send it again, all at once.', data);
    case 'HPE_CHUNK_EXTENSIONS_OVERFLOW':
      return new ApiError(
        'PAYLOAD_TOO_LARGE',
        'The chunk extensions of the body are too large; send the body without them.',
        data,
      );
    case 'HPE_INVALID_METHOD':
      if (REQUEST_LINE_START.test(packet)) {
        return new ApiError(
          'NOT_IMPLEMENTED',
          'Kiln does not implement this method; use GET, HEAD, POST, PUT, PATCH or DELETE (see /docs for the API).',
          data,
        );
      }
      break;
    case 'HPE_INVALID_VERSION':
      if (!/version/i.test(reason) || /CRLF|LF/.test(reason)) break;
      return new ApiError(
        'HTTP_VERSION_NOT_SUPPORTED',
        'Kiln speaks HTTP/1.0 and HTTP/1.1; send the request as HTTP/1.1.',
        data,
      );
    case 'HPE_PAUSED_H2_UPGRADE':
      return new ApiError(
        'HTTP_VERSION_NOT_SUPPORTED',
        'Kiln speaks HTTP/1.1, not HTTP/2 with prior knowledge; send the request as HTTP/1.1.',
        data,
      );
    case 'HPE_INVALID_CONTENT_LENGTH':
    case 'HPE_UNEXPECTED_CONTENT_LENGTH':
      return new ApiError(
        'BAD_REQUEST',
        'Content-Length must be one non-negative decimal number, sent once, and not with Transfer-Encoding; fix it and send the request again.',
        data,
      );
    case 'HPE_INVALID_CHUNK_SIZE':
    case 'HPE_INVALID_TRANSFER_ENCODING':
    case 'HPE_STRICT':
      return new ApiError(
        'BAD_REQUEST',
        'The body is not valid chunked encoding (Transfer-Encoding must end in chunked; each chunk is a hex size, CRLF, the bytes, CRLF); fix it and send the request again.',
        data,
      );
    case 'HPE_INVALID_HEADER_TOKEN':
      return new ApiError(
        'BAD_REQUEST',
        'A header holds a character HTTP does not allow (a NUL or control character, or a space or colon in its name); fix it and send the request again.',
        data,
      );
    case 'HPE_INVALID_URL':
      return new ApiError(
        'BAD_REQUEST',
        'The request target is not a valid URL: percent-encode spaces and non-ASCII characters (encodeURIComponent) and send it again.',
        data,
      );
  }
  return new ApiError(
    'BAD_REQUEST',
    `The request is not valid HTTP/1.1 (${reason || code}); fix the client and send it again.`,
    data,
  );
}

/** An HTTP/1.1 response written as bytes: the envelope, the four context headers, and Connection: close. */
export function rawErrorResponse(
  error: ApiError,
  ids: { requestId: string; correlationId: string },
  version: string,
  elapsedMs: number,
): string {
  const body = JSON.stringify(envelopeOf(error, ids.requestId, ids.correlationId));
  const headers: Record<string, string | number> = {
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(body),
    ...contextHeaders(ids.requestId, ids.correlationId, version, elapsedMs),
    ...(error.status === 429 ? tooManyHeaders(error) : error.headers),
    date: new Date().toUTCString(),
    connection: 'close',
  };
  const lines = Object.entries(headers).map(([name, value]) => `${name}: ${value}\r\n`);
  return `HTTP/1.1 ${error.status} ${STATUS_CODES[error.status] ?? 'Error'}\r\n${lines.join('')}\r\n${body}`;
}

/** Node's private view of a server socket: the parser's current request, and the response being written. */
type ServerSocket = Socket & {
  parser?: { incoming?: IncomingMessage | null } | null;
  _httpMessage?: ServerResponse | null;
};

const LINGER_MS = 1_000;
const BUSY_WAIT_MS = 10_000;

/** Half-close (what was written is flushed first), then close for good shortly after. */
function endSoon(socket: Socket, bytes?: string): void {
  if (bytes === undefined) socket.end();
  else socket.end(bytes);
  const timer = setTimeout(() => socket.destroy(), LINGER_MS);
  timer.unref();
  socket.once('close', () => clearTimeout(timer));
}

/** Run `then` once no earlier response on the socket is still being written (pipelined requests go first). */
function whenIdle(socket: ServerSocket, then: () => void): void {
  const timer = setTimeout(() => socket.destroy(), BUSY_WAIT_MS);
  timer.unref();
  const check = () => {
    const busy = socket._httpMessage;
    if (socket.destroyed) return clearTimeout(timer);
    if (!busy || busy.writableFinished) {
      clearTimeout(timer);
      return then();
    }
    busy.once('finish', () => setImmediate(check));
  };
  check();
}

/**
 * Fastify's `clientErrorHandler` (Node's 'clientError'): a request Node's parser refused — a NUL in a header, raw
 * non-ASCII in the path, a bad Content-Length, broken chunked encoding, oversized headers — gets the envelope and
 * the four headers (a fresh request id) written on the socket, which then closes. Earlier pipelined requests are
 * answered first; a request already answered (its body broke after the answer) gets no second answer.
 */
export function clientErrorHandler(version: string, log: FastifyBaseLogger) {
  const answered = new WeakSet<Socket>();
  return (error: ClientError, socket: Socket): void => {
    if (error.code === 'ECONNRESET' || socket.destroyed || answered.has(socket)) return;
    answered.add(socket);
    const started = performance.now();
    const requestId = newRequestId();
    const apiError = clientApiError(error);
    log.info(
      { requestId, code: apiError.code, parserError: error.code, reason: error.reason ?? error.message },
      'client error',
    );
    const server = socket as ServerSocket;
    const answer = () => {
      if (!socket.writable) {
        socket.destroy();
        return;
      }
      const ids = { requestId, correlationId: requestId };
      endSoon(socket, rawErrorResponse(apiError, ids, version, performance.now() - started));
    };
    const incoming = server.parser?.incoming;
    if (incoming && !incoming.complete) {
      // The body of a request the app already has broke: answer in its place, unless it was answered already.
      const response = server._httpMessage;
      if (response && response.req === incoming && !response.headersSent) answer();
      else endSoon(socket);
      return;
    }
    whenIdle(server, answer);
  };
}

/** CONNECT (Node hands it to 'connect', not to Fastify): Kiln is no proxy. */
export function connectHandler(version: string, log: FastifyBaseLogger) {
  return (request: IncomingMessage, socket: Socket): void => {
    socket.on('error', () => {});
    const requestId = requestIdFrom(request);
    const ids = { requestId, correlationId: correlationIdFrom(request.headers, requestId) };
    const error = new ApiError(
      'NOT_IMPLEMENTED',
      'Kiln is not a proxy: CONNECT is not implemented. Use GET, HEAD, POST, PUT, PATCH or DELETE (see /docs for the API).',
      { method: 'CONNECT' },
    );
    log.info({ requestId, code: error.code }, 'client error');
    endSoon(socket, rawErrorResponse(error, ids, version, 0));
  };
}

/** An `Expect` other than 100-continue (Node answers a bare 417 itself otherwise). */
export function expectationHandler(version: string, log: FastifyBaseLogger) {
  return (request: IncomingMessage, response: ServerResponse): void => {
    const requestId = requestIdFrom(request);
    const ids = { requestId, correlationId: correlationIdFrom(request.headers, requestId) };
    const expect = String(request.headers.expect ?? '').slice(0, 100);
    const error = new ApiError(
      'EXPECTATION_FAILED',
      `Kiln cannot meet "Expect: ${expect}" (only 100-continue is understood); send the request without it.`,
      { header: 'expect', value: expect },
    );
    log.info({ requestId, code: error.code }, 'request refused');
    const body = JSON.stringify(envelopeOf(error, ids.requestId, ids.correlationId));
    response.writeHead(error.status, {
      'content-type': 'application/json; charset=utf-8',
      'content-length': Buffer.byteLength(body),
      ...contextHeaders(ids.requestId, ids.correlationId, version, 0),
    });
    response.end(body);
  };
}
