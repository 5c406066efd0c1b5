import * as crypto from 'node:crypto';

/**
 * HMAC-SHA256 (RFC 2104) in lowercase hex, for the request signatures: a signed request needs two of them, and
 * Node's createHmac spends most of a small message's cost building its objects (about 2.5 µs each here). With the
 * one-shot `crypto.hash` (Node 20.12+) and hex output, the two hashes of the construction cost about 0.8 µs in all.
 * Results are identical to createHmac's (test/unit/hmac.test.ts checks random keys and messages against it).
 */

const BLOCK = 64;
/** Messages up to this many bytes are hashed in place; longer ones (rare, and dominated by hashing) use createHmac. */
const SCRATCH_BYTES = 16 * 1024;

type OneShotHash = (algorithm: string, data: Buffer, outputEncoding: 'hex') => string;
const oneShot = (crypto as { hash?: OneShotHash }).hash;

interface Pads {
  /** The key XOR ipad: the first block of the inner hash. */
  inner: Buffer;
  /** The key XOR opad, followed by room for the inner digest: the whole outer message. */
  outer: Buffer;
}

// Pads per secret, derived once. Bounded, since a process holds a few secrets (rotation); others are derived per call.
const padsBySecret = new Map<string, Pads>();
function padsFor(secret: string): Pads {
  let pads = padsBySecret.get(secret);
  if (pads) return pads;
  let key = Buffer.from(secret, 'utf8');
  if (key.length > BLOCK) key = crypto.createHash('sha256').update(key).digest();
  const inner = Buffer.alloc(BLOCK);
  const outer = Buffer.alloc(BLOCK + 32);
  for (let i = 0; i < BLOCK; i++) {
    const k = i < key.length ? key[i] : 0;
    inner[i] = k ^ 0x36;
    outer[i] = k ^ 0x5c;
  }
  pads = { inner, outer };
  if (padsBySecret.size < 32) padsBySecret.set(secret, pads);
  return pads;
}

const scratch = Buffer.allocUnsafe(BLOCK + SCRATCH_BYTES);

function viaCreateHmac(secret: string, parts: readonly (string | Buffer)[]): string {
  const mac = crypto.createHmac('sha256', secret);
  for (const part of parts) mac.update(part);
  return mac.digest('hex');
}

/** Lowercase hex HMAC-SHA256 of the parts' concatenation (strings as UTF-8), keyed with the secret's UTF-8 bytes. */
export function hmacSha256Hex(secret: string, parts: readonly (string | Buffer)[]): string {
  if (!oneShot) return viaCreateHmac(secret, parts);
  const pads = padsFor(secret);
  pads.inner.copy(scratch, 0);
  let n = BLOCK;
  for (const part of parts) {
    const room = scratch.length - n;
    if (typeof part === 'string') {
      // A UTF-16 code unit is at most 3 bytes of UTF-8: a write that could be cut short goes the slow way instead.
      if (part.length * 3 > room) return viaCreateHmac(secret, parts);
      n += scratch.write(part, n, 'utf8');
    } else {
      if (part.length > room) return viaCreateHmac(secret, parts);
      n += part.copy(scratch, n);
    }
  }
  pads.outer.write(oneShot('sha256', scratch.subarray(0, n), 'hex'), BLOCK, 'hex');
  return oneShot('sha256', pads.outer, 'hex');
}

/**
 * Constant-time equality of a presented hex signature (either case) with an expected lowercase hex one: every
 * character is compared, whatever differs first, so the time does not say how much of a guess was right.
 */
export function hexSignatureEquals(presented: string, expected: string): boolean {
  if (presented.length !== expected.length) return false;
  let diff = 0;
  for (let i = 0; i < expected.length; i++) {
    let c = presented.charCodeAt(i);
    if (c >= 65 && c <= 70) c += 32; // A-F → a-f
    diff |= c ^ expected.charCodeAt(i);
  }
  return diff === 0;
}
