import { randomBytes } from 'node:crypto';
import {
  createKilnClient as createPackageClient,
  type KilnResponse,
  type KilnClientOptions as PackageClientOptions,
} from '../../packages/client/src/index';
import { type SignatureVersion, signV1, signV2 } from '../domain/signature';

export type { KilnResponse };

/**
 * Node-side helpers over the client package (packages/client, `@kiln/client`) for this repository's tests, tools
 * and benchmarks. The package is what callers use; what is here exists because a promise does not fit where it is
 * used: a synchronous signer (in-process `inject` tests, benchmarks that sign thousands of requests up front) and
 * the `call(method, path, body?, headers?)` shape the end-to-end tests are written in.
 */

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
 * The package's signRequest, synchronously: the same headers (`<prefix>-timestamp`, `<prefix>-nonce`,
 * `<prefix>-signature` and/or `<prefix>-sig-v2`), computed with the server's node:crypto HMAC over the package's
 * canonical request. Use a fresh nonce per request: Kiln accepts each nonce once.
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

export type KilnClientOptions = Pick<
  PackageClientOptions,
  'baseUrl' | 'secret' | 'prefix' | 'versions' | 'correlationId' | 'fetch' | 'onResponse'
>;

/**
 * `call(method, path, body?, extraHeaders?)` → `{status, headers, body, text}`, whatever the status: the package
 * client's `raw()`, sent once, with no Idempotency-Key unless the headers carry one (tests assert on exactly the
 * request they send). `extraHeaders` win over the signature headers, so a test can send a bad one.
 */
export function createKilnClient(options: KilnClientOptions) {
  const client = createPackageClient({ ...options, retry: false });
  return function call<T = unknown>(
    method: string,
    path: string,
    body?: unknown,
    extraHeaders: Record<string, string> = {},
  ): Promise<KilnResponse<T>> {
    return client.raw<T>(method, path, { body, headers: extraHeaders });
  };
}
