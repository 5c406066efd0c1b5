import { createHmac, createSecretKey, type Hmac, type KeyObject, timingSafeEqual } from 'node:crypto';

/**
 * The request-signing scheme of SPEC section 3, shared by the server's check and the bundled client.
 * Pure: no I/O, no clock (callers pass the time).
 */

export type SignatureVersion = 'v1' | 'v2';

/**
 * The PATH that v2 signs: the path as sent, with its query parameters sorted by name the way the existing
 * client does it (URLSearchParams, localeCompare on keys, stable for repeated keys), and a bare `?` dropped.
 */
export function canonicalPath(pathWithQuery: string): string {
  const mark = pathWithQuery.indexOf('?');
  if (mark === -1) return pathWithQuery;
  const path = pathWithQuery.slice(0, mark);
  const params = new URLSearchParams(pathWithQuery.slice(mark + 1));
  const sorted = new URLSearchParams([...params.entries()].sort(([a], [b]) => a.localeCompare(b)));
  const query = sorted.toString();
  return query ? `${path}?${query}` : path;
}

type Body = string | Buffer;

// Secrets turned into KeyObjects once: createHmac with a raw string re-imports the key on every call. Bounded, since a
// process only ever holds a few secrets (rotation); any other secret is used as given.
const keys = new Map<string, KeyObject>();
function hmacSha256(secret: string): Hmac {
  let key = keys.get(secret);
  if (!key) {
    key = createSecretKey(Buffer.from(secret, 'utf8'));
    if (keys.size < 32) keys.set(secret, key);
  }
  return createHmac('sha256', key);
}

/** v1 as raw bytes: HMAC-SHA256 over `timestamp + body`. */
export function digestV1(secret: string, timestamp: string, body: Body): Buffer {
  return hmacSha256(secret).update(timestamp).update(body).digest();
}

/** v1: hex HMAC-SHA256 over `timestamp + body`. */
export function signV1(secret: string, timestamp: string, body: Body): string {
  return digestV1(secret, timestamp, body).toString('hex');
}

/** v2 as raw bytes: HMAC-SHA256 over `METHOD\nPATH\ntimestamp\nnonce\nbody` with PATH from `canonicalPath`. */
export function digestV2(
  secret: string,
  method: string,
  pathWithQuery: string,
  timestamp: string,
  nonce: string,
  body: Body,
): Buffer {
  return hmacSha256(secret)
    .update(`${method.toUpperCase()}\n${canonicalPath(pathWithQuery)}\n${timestamp}\n${nonce}\n`)
    .update(body)
    .digest();
}

/** v2: hex HMAC-SHA256 over `METHOD\nPATH\ntimestamp\nnonce\nbody` with PATH from `canonicalPath`. */
export function signV2(
  secret: string,
  method: string,
  pathWithQuery: string,
  timestamp: string,
  nonce: string,
  body: Body,
): string {
  return digestV2(secret, method, pathWithQuery, timestamp, nonce, body).toString('hex');
}

const HEX_SHA256 = /^[0-9a-f]{64}$/i;

/** Constant-time comparison of a presented hex signature with the expected one (hex, or the raw digest). */
export function signatureMatches(presented: string, expected: string | Buffer): boolean {
  if (!HEX_SHA256.test(presented)) return false;
  return timingSafeEqual(
    Buffer.from(presented, 'hex'),
    typeof expected === 'string' ? Buffer.from(expected, 'hex') : expected,
  );
}

/**
 * True when any of the secrets produces the presented hex signature (rotation: old and new both verify). `sign`
 * may give the hex signature or, cheaper, the raw digest.
 */
export function verifiesWithAny(
  presented: string,
  secrets: readonly string[],
  sign: (secret: string) => string | Buffer,
): boolean {
  if (!HEX_SHA256.test(presented)) return false;
  const given = Buffer.from(presented, 'hex');
  let ok = false;
  // Check every secret so the time taken does not reveal which one matched.
  for (const secret of secrets) {
    const expected = sign(secret);
    ok = timingSafeEqual(given, typeof expected === 'string' ? Buffer.from(expected, 'hex') : expected) || ok;
  }
  return ok;
}
