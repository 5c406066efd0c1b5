import { canonicalPath, stringToSignV2 } from '../../packages/client/src/canonical';
import { hexSignatureEquals, hmacSha256Hex } from './hmac';

/**
 * The request-signing scheme of SPEC section 3 on the server's side. What a request's canonical form is comes from
 * the client package (packages/client/src/canonical.ts), so the server and every client built on the package read
 * one rule; the HMACs stay here, synchronous on node:crypto, since the package's Web Crypto ones are async and
 * slower for the per-request check. Pure: no I/O, no clock (callers pass the time).
 */

export { canonicalPath, stringToSignV2 };

export type SignatureVersion = 'v1' | 'v2';

type Body = string | Buffer;

/** v1: hex HMAC-SHA256 over `timestamp + body`. */
export function signV1(secret: string, timestamp: string, body: Body): string {
  return hmacSha256Hex(secret, [timestamp, body]);
}

/** v2: hex HMAC-SHA256 over `METHOD\nPATH\ntimestamp\nnonce\nbody` (stringToSignV2, then the body). */
export function signV2(
  secret: string,
  method: string,
  pathWithQuery: string,
  timestamp: string,
  nonce: string,
  body: Body,
): string {
  return hmacSha256Hex(secret, [stringToSignV2(method, pathWithQuery, timestamp, nonce), body]);
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
