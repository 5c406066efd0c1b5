import type { FastifyRequest } from 'fastify';
import { randomToken } from '../services/ids';
import type { App } from './server';

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

/**
 * Request id, correlation id, version and timing headers on every response (errors, 404s and health checks
 * included); logs carry both ids.
 */
export function registerContext(app: App, version: string): void {
  app.decorateRequest('correlationId', '');
  // Callback-style hooks (not async): they run on every response, and a promise per hook per request is measurable.
  app.addHook('onRequest', (request: FastifyRequest, reply, done) => {
    const given = request.headers['x-correlation-id'];
    request.correlationId = typeof given === 'string' && SANE_ID.test(given) ? given : request.id;
    if (request.correlationId !== request.id) {
      request.log = request.log.child({ correlationId: request.correlationId });
    }
    reply.header('x-request-id', request.id);
    reply.header('x-correlation-id', request.correlationId);
    reply.header('x-worker-version', version);
    done();
  });
  app.addHook('onSend', (_request, reply, payload, done) => {
    reply.header('x-processing-time-ms', reply.elapsedTime.toFixed(2));
    done(null, payload);
  });
}
