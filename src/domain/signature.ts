import { createHmac, timingSafeEqual } from 'node:crypto';

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

/** v1: hex HMAC-SHA256 over `timestamp + body`. */
export function signV1(secret: string, timestamp: string, body: Body): string {
  return createHmac('sha256', secret).update(timestamp).update(body).digest('hex');
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
  return createHmac('sha256', secret)
    .update(`${method.toUpperCase()}\n${canonicalPath(pathWithQuery)}\n${timestamp}\n${nonce}\n`)
    .update(body)
    .digest('hex');
}

const HEX_SHA256 = /^[0-9a-f]{64}$/i;

/** Constant-time comparison of a presented hex signature with the expected one. */
export function signatureMatches(presented: string, expected: string): boolean {
  if (!HEX_SHA256.test(presented)) return false;
  return timingSafeEqual(Buffer.from(presented.toLowerCase(), 'hex'), Buffer.from(expected, 'hex'));
}

/** True when any of the secrets produces the presented signature (rotation: old and new both verify). */
export function verifiesWithAny(
  presented: string,
  secrets: readonly string[],
  sign: (secret: string) => string,
): boolean {
  let ok = false;
  // Check every secret so the time taken does not reveal which one matched.
  for (const secret of secrets) ok = signatureMatches(presented, sign(secret)) || ok;
  return ok;
}
