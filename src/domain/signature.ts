import { hexSignatureEquals, hmacSha256Hex } from './hmac';

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
  // The 'en' collation, not the process's locale: a server started with LANG=da_DK or lt_LT would sort otherwise.
  const sorted = new URLSearchParams([...params.entries()].sort(([a], [b]) => a.localeCompare(b, 'en')));
  const query = sorted.toString();
  return query ? `${path}?${query}` : path;
}

type Body = string | Buffer;

/** v1: hex HMAC-SHA256 over `timestamp + body`. */
export function signV1(secret: string, timestamp: string, body: Body): string {
  return hmacSha256Hex(secret, [timestamp, body]);
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
  return hmacSha256Hex(secret, [
    `${method.toUpperCase()}\n${canonicalPath(pathWithQuery)}\n${timestamp}\n${nonce}\n`,
    body,
  ]);
}

const HEX_SHA256 = /^[0-9a-f]{64}$/i;

/** Constant-time comparison of a presented hex signature (either case) with the expected hex one. */
export function signatureMatches(presented: string, expected: string): boolean {
  return HEX_SHA256.test(presented) && hexSignatureEquals(presented, expected.toLowerCase());
}

/**
 * True when any of the secrets produces the presented hex signature (rotation: old and new both verify). `sign`
 * gives the lowercase hex signature for a secret.
 */
export function verifiesWithAny(
  presented: string,
  secrets: readonly string[],
  sign: (secret: string) => string,
): boolean {
  // A signature is 64 hex digits: anything else fails without computing one (the comparison itself checks the digits).
  if (presented.length !== 64) return false;
  let ok = false;
  // Check every secret so the time taken does not reveal which one matched.
  for (const secret of secrets) ok = hexSignatureEquals(presented, sign(secret)) || ok;
  return ok;
}
