import { stringToSignV2 } from './canonical.js';

/**
 * Request signing (SPEC section 3) with Web Crypto only, so the same code runs on Node 20, Deno, Bun, Cloudflare
 * Workers and Vercel's edge runtime. Signatures are lowercase hex HMAC-SHA256 keyed with the secret's UTF-8 bytes:
 * v1 over `timestamp + body`, v2 over `stringToSignV2(...) + body`.
 */

export type SignatureVersion = 'v1' | 'v2';

/** A request body as it goes over the wire: text (sent as UTF-8) or the exact bytes. */
export type SignableBody = string | Uint8Array;

const encoder = new TextEncoder();

/**
 * Web Crypto's types, named through the global rather than the DOM library's names, so that this code typechecks
 * both with DOM types (the package's own build) and with Node's (the repository, which imports it).
 */
type Subtle = typeof globalThis.crypto.subtle;
export type HmacKey = Awaited<ReturnType<Subtle['importKey']>>;

function subtle(): Subtle {
  const webCrypto = globalThis.crypto;
  if (!webCrypto?.subtle)
    throw new Error('@kiln/client needs Web Crypto (globalThis.crypto.subtle): Node 20+ or an edge runtime');
  return webCrypto.subtle;
}

// Importing a key costs more than a small HMAC: keep the few a process uses (one, or two during a rotation).
const keys = new Map<string, Promise<HmacKey>>();
function hmacKey(secret: string): Promise<HmacKey> {
  let key = keys.get(secret);
  if (!key) {
    key = subtle().importKey('raw', encoder.encode(secret), { name: 'HMAC', hash: 'SHA-256' }, false, ['sign']);
    if (keys.size < 16) keys.set(secret, key);
  }
  return key;
}

/** The UTF-8 bytes of the parts, one after the other, in a fresh buffer (what the HMAC reads). */
export function concatBytes(parts: readonly SignableBody[]): Uint8Array<ArrayBuffer> {
  const chunks = parts.map((part) => (typeof part === 'string' ? encoder.encode(part) : part));
  const out = new Uint8Array(chunks.reduce((n, chunk) => n + chunk.length, 0));
  let offset = 0;
  for (const chunk of chunks) {
    out.set(chunk, offset);
    offset += chunk.length;
  }
  return out;
}

function toHex(bytes: Uint8Array): string {
  let hex = '';
  for (const byte of bytes) hex += byte.toString(16).padStart(2, '0');
  return hex;
}

/** Lowercase hex HMAC-SHA256 of the parts' concatenation (strings as UTF-8), keyed with the secret's UTF-8 bytes. */
export async function hmacSha256Hex(secret: string, parts: readonly SignableBody[]): Promise<string> {
  const mac = await subtle().sign('HMAC', await hmacKey(secret), concatBytes(parts));
  return toHex(new Uint8Array(mac));
}

/** v1: hex HMAC-SHA256 over `timestamp + body`. */
export function signV1(secret: string, timestamp: string, body: SignableBody = ''): Promise<string> {
  return hmacSha256Hex(secret, [timestamp, body]);
}

/** v2: hex HMAC-SHA256 over `METHOD\nPATH\ntimestamp\nnonce\n` + body, PATH canonical (see canonicalPath). */
export function signV2(
  secret: string,
  method: string,
  pathWithQuery: string,
  timestamp: string,
  nonce: string,
  body: SignableBody = '',
): Promise<string> {
  return hmacSha256Hex(secret, [stringToSignV2(method, pathWithQuery, timestamp, nonce), body]);
}

/** 16 random bytes in hex: Kiln accepts a nonce once, so every request (and every retry of one) gets its own. */
export function newNonce(): string {
  return toHex(globalThis.crypto.getRandomValues(new Uint8Array(16)));
}

export interface SignOptions {
  secret: string;
  method: string;
  /** The path with its query string, exactly as it will be sent (without scheme and host). */
  path: string;
  /** The body exactly as it will be sent; '' or omitted for none. */
  body?: SignableBody;
  /** Which signatures to send; the default sends both, which every HMAC_MODE accepts. */
  versions?: readonly SignatureVersion[];
  /** Prefix of the header names (Kiln's SIGNATURE_HEADER_PREFIX); default `x-sheen`. */
  prefix?: string;
  /** Unix seconds; defaults to now. */
  timestamp?: number | string;
  /** Defaults to 16 random bytes in hex. Never reuse one: the second request would be refused as a replay. */
  nonce?: string;
}

/**
 * The headers that sign one request: `<prefix>-timestamp`, `<prefix>-nonce`, and `<prefix>-signature` (v1)
 * and/or `<prefix>-sig-v2` (v2).
 */
export async function signRequest(options: SignOptions): Promise<Record<string, string>> {
  const prefix = (options.prefix ?? 'x-sheen').toLowerCase();
  const timestamp = String(options.timestamp ?? Math.floor(Date.now() / 1000));
  const nonce = options.nonce ?? newNonce();
  const body = options.body ?? '';
  const versions = options.versions ?? ['v1', 'v2'];
  const headers: Record<string, string> = { [`${prefix}-timestamp`]: timestamp, [`${prefix}-nonce`]: nonce };
  const [v1, v2] = await Promise.all([
    versions.includes('v1') ? signV1(options.secret, timestamp, body) : undefined,
    versions.includes('v2') ? signV2(options.secret, options.method, options.path, timestamp, nonce, body) : undefined,
  ]);
  if (v1 !== undefined) headers[`${prefix}-signature`] = v1;
  if (v2 !== undefined) headers[`${prefix}-sig-v2`] = v2;
  return headers;
}
