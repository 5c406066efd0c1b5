import type { FastifyRequest } from 'fastify';
import { ApiError } from '../domain/errors';
import { randomToken } from '../services/ids';
import type { App } from './app';

declare module 'fastify' {
  interface FastifyRequest {
    /** The x-correlation-id given by the caller, else the request id. */
    correlationId: string;
    /** What a layer has to say about this request, added to its one "request completed" log line. */
    logFields?: Record<string, unknown>;
  }
}

const SANE_ID = /^[\w.:@/+=-]{1,128}$/;

/** Request ids: 10 random bytes in hex. */
export function newRequestId(): string {
  return `req_${randomToken(10, 'hex')}`;
}

/** Fastify's genReqId: keep the caller's x-request-id when it is a sane token, else make one. */
export function requestIdFrom(request: { headers: Record<string, string | string[] | undefined> }): string {
  const given = request.headers['x-request-id'];
  return typeof given === 'string' && SANE_ID.test(given) ? given : newRequestId();
}

/** The caller's x-correlation-id when it is a sane token, else the request id. */
export function correlationIdFrom(headers: Record<string, string | string[] | undefined>, requestId: string): string {
  const given = headers['x-correlation-id'];
  return typeof given === 'string' && SANE_ID.test(given) ? given : requestId;
}

/**
 * The four headers of every response, for the paths that write a response without Fastify's hooks (framework
 * errors, and errors Node's HTTP parser raises before there is a request).
 */
export function contextHeaders(
  requestId: string,
  correlationId: string,
  version: string,
  elapsedMs: number,
): Record<string, string> {
  return {
    'x-request-id': requestId,
    'x-correlation-id': correlationId,
    'x-worker-version': version,
    'x-processing-time-ms': elapsedMs.toFixed(2),
  };
}

/** 503 for a request that reaches a process already shutting down (Fastify's own 503 is not in the envelope). */
function shuttingDown(): ApiError {
  return new ApiError(
    'SERVICE_UNAVAILABLE',
    'This Kiln process is shutting down; send the request again (another process, or this one restarted, answers).',
    { dependency: 'server' },
    { 'retry-after': 1, connection: 'close' },
  );
}

function missingHost(): ApiError {
  return new ApiError(
    'BAD_REQUEST',
    'An HTTP/1.1 request must carry a Host header; add it and send the request again.',
    { header: 'host' },
    { connection: 'close' },
  );
}

/**
 * Request id, correlation id, version and timing headers on every response (errors, 404s and health checks
 * included); logs carry both ids. Also answers, in the envelope, what Node and Fastify would otherwise answer in
 * their own shape: an HTTP/1.1 request without Host, and a request arriving while the process shuts down.
 */
export function registerContext(app: App, version: string): void {
  app.decorateRequest('correlationId', '');
  let closing = false;
  app.addHook('preClose', (done) => {
    closing = true;
    done();
  });
  // Callback-style hooks (not async): they run on every response, and a promise per hook per request is measurable.
  app.addHook('onRequest', (request: FastifyRequest, reply, done) => {
    request.correlationId = correlationIdFrom(request.headers, request.id);
    if (request.correlationId !== request.id) {
      request.log = request.log.child({ correlationId: request.correlationId });
    }
    reply.header('x-request-id', request.id);
    reply.header('x-correlation-id', request.correlationId);
    reply.header('x-worker-version', version);
    if (closing) return done(shuttingDown());
    if (
      request.headers.host === undefined &&
      request.raw.httpVersionMinor === 1 &&
      request.raw.httpVersionMajor === 1
    ) {
      return done(missingHost());
    }
    done();
  });
  app.addHook('onSend', (_request, reply, payload, done) => {
    reply.header('x-processing-time-ms', reply.elapsedTime.toFixed(2));
    done(null, payload);
  });
}
