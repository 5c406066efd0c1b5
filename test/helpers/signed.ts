import type { InjectOptions, LightMyRequestResponse } from 'fastify';
import { type SignOptions, signRequest } from '../../src/client/sign';
import type { App } from '../../src/http/server';
import { TEST_SECRET } from './app';

export interface SignedInject {
  method: 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE' | 'HEAD' | 'OPTIONS';
  url: string;
  /** Sent as given when a string, else JSON-encoded. */
  body?: unknown;
  /** An array sends the header once per value, as a client repeating it would. */
  headers?: Record<string, string | string[]>;
  sign?: Partial<SignOptions>;
}

/** Inject a request signed the way the existing client signs (both versions unless told otherwise). */
export function signedInject(app: App, request: SignedInject): Promise<LightMyRequestResponse> {
  const body =
    request.body === undefined ? '' : typeof request.body === 'string' ? request.body : JSON.stringify(request.body);
  const headers = {
    ...signRequest({ secret: TEST_SECRET, method: request.method, path: request.url, body, ...request.sign }),
    ...(body ? { 'content-type': 'application/json' } : {}),
    ...request.headers,
  };
  const options: InjectOptions = {
    method: request.method,
    url: request.url,
    headers,
    ...(body ? { payload: body } : {}),
  };
  return app.inject(options);
}
