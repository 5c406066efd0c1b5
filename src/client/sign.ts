import { randomBytes } from 'node:crypto';
import { type SignatureVersion, signV1, signV2 } from '../domain/signature';

export interface SignOptions {
  secret: string;
  method: string;
  /** Path with its query string, exactly as it will be sent. */
  path: string;
  /** The body exactly as it will be sent ('' for none). */
  body?: string | Buffer;
  /** Which signatures to send; the default sends both, which passes every HMAC_MODE. */
  versions?: SignatureVersion[];
  prefix?: string;
  /** Unix seconds; defaults to now. */
  timestamp?: number;
  nonce?: string;
}

/**
 * Headers that sign one request for Kiln: `<prefix>-timestamp`, `<prefix>-nonce`, and `<prefix>-signature` (v1)
 * and/or `<prefix>-sig-v2` (v2). Use a fresh nonce per request: Kiln accepts each nonce once.
 */
export function signRequest(options: SignOptions): Record<string, string> {
  const prefix = (options.prefix ?? 'x-sheen').toLowerCase();
  const timestamp = String(options.timestamp ?? Math.floor(Date.now() / 1000));
  const nonce = options.nonce ?? randomBytes(16).toString('hex');
  const body = options.body ?? '';
  const versions = options.versions ?? ['v1', 'v2'];
  const headers: Record<string, string> = {
    [`${prefix}-timestamp`]: timestamp,
    [`${prefix}-nonce`]: nonce,
  };
  if (versions.includes('v1')) headers[`${prefix}-signature`] = signV1(options.secret, timestamp, body);
  if (versions.includes('v2')) {
    headers[`${prefix}-sig-v2`] = signV2(options.secret, options.method, options.path, timestamp, nonce, body);
  }
  return headers;
}

export interface KilnClientOptions {
  baseUrl: string;
  secret: string;
  prefix?: string;
  versions?: SignatureVersion[];
  /** Sent as x-correlation-id on every request when given. */
  correlationId?: string;
}

export interface KilnResponse<T = unknown> {
  status: number;
  headers: Headers;
  body: T;
  text: string;
}

/** A minimal signing HTTP client for Kiln (used by the end-to-end tests and by hand). */
export function createKilnClient(options: KilnClientOptions) {
  return async function call<T = unknown>(
    method: string,
    path: string,
    body?: unknown,
    extraHeaders: Record<string, string> = {},
  ): Promise<KilnResponse<T>> {
    const text = body === undefined ? '' : typeof body === 'string' ? body : JSON.stringify(body);
    const headers: Record<string, string> = {
      ...signRequest({
        secret: options.secret,
        method,
        path,
        body: text,
        prefix: options.prefix,
        versions: options.versions,
      }),
      ...(text ? { 'content-type': 'application/json' } : {}),
      ...(options.correlationId ? { 'x-correlation-id': options.correlationId } : {}),
      ...extraHeaders,
    };
    const response = await fetch(`${options.baseUrl}${path}`, { method, headers, body: text || undefined });
    const responseText = await response.text();
    let parsed: unknown = responseText;
    try {
      parsed = responseText ? JSON.parse(responseText) : undefined;
    } catch {
      // not JSON (e.g. an event stream); keep the text
    }
    return { status: response.status, headers: response.headers, body: parsed as T, text: responseText };
  };
}
