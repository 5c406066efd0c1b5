import { createHash } from 'node:crypto';

/** JSON text with object keys sorted at every level: equal for bodies that mean the same. */
export function canonicalJson(value: unknown): string {
  if (value === undefined) return '';
  if (value === null || typeof value !== 'object') return JSON.stringify(value);
  if (Array.isArray(value))
    return `[${value.map((item) => (item === undefined ? 'null' : canonicalJson(item))).join(',')}]`;
  const entries = Object.keys(value)
    .sort()
    .filter((key) => (value as Record<string, unknown>)[key] !== undefined)
    .map((key) => `${JSON.stringify(key)}:${canonicalJson((value as Record<string, unknown>)[key])}`);
  return `{${entries.join(',')}}`;
}

export function sha256(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}

/**
 * The hash of a body's meaning as an idempotency key is bound to it: canonical JSON, without a top-level
 * `idempotencyKey` (the key itself, which may travel in the header or the body with the same meaning).
 */
export function bodyHashOf(body: unknown): string {
  if (body !== null && typeof body === 'object' && !Array.isArray(body) && 'idempotencyKey' in body) {
    const { idempotencyKey: _key, ...rest } = body as Record<string, unknown>;
    return sha256(canonicalJson(rest));
  }
  return sha256(canonicalJson(body));
}

/**
 * The body hash that records written before bodyHashOf left out `idempotencyKey` (Kiln before 2026-12-01) carry,
 * or undefined when it is the same as bodyHashOf's. A retry whose first attempt was recorded by such a process
 * still matches it; such records are gone IDEMPOTENCY_TTL_S after every process runs the newer code.
 */
export function earlierBodyHashOf(body: unknown): string | undefined {
  const keyed = body !== null && typeof body === 'object' && !Array.isArray(body) && 'idempotencyKey' in body;
  return keyed ? sha256(canonicalJson(body)) : undefined;
}

/** What an idempotency key is bound to: the method, the path (query sorted) and the body's meaning. */
export interface RequestFingerprint {
  method: string;
  path: string;
  bodyHash: string;
}

/** Which parts of two fingerprints differ, in the order a client would want to read them. */
export function fingerprintDifferences(a: RequestFingerprint, b: RequestFingerprint): ('method' | 'path' | 'body')[] {
  const differs: ('method' | 'path' | 'body')[] = [];
  if (a.method !== b.method) differs.push('method');
  if (a.path !== b.path) differs.push('path');
  if (a.bodyHash !== b.bodyHash) differs.push('body');
  return differs;
}

const PRINTABLE = /^[\x20-\x7e]{1,255}$/;

/** The outcome of reading an Idempotency-Key header value. */
export type KeyParse = { ok: true; key: string } | { ok: false; rule: string };

/**
 * An Idempotency-Key: 1-255 printable ASCII characters, or the same inside RFC 8941 quotes ("…",
 * with \\" and \\\\ escapes).
 */
export function parseIdempotencyKey(raw: string): KeyParse {
  let key = raw;
  if (raw.length >= 2 && raw.startsWith('"') && raw.endsWith('"')) {
    const inner = raw.slice(1, -1);
    if (/(^|[^\\])"/.test(inner.replaceAll('\\\\', '')))
      return { ok: false, rule: 'a quoted key must escape inner quotes as \\"' };
    key = inner.replace(/\\(["\\])/g, '$1');
  }
  if (key.length === 0) return { ok: false, rule: 'the key must not be empty' };
  if (key.length > 255) return { ok: false, rule: 'the key must be at most 255 characters' };
  if (!PRINTABLE.test(key)) return { ok: false, rule: 'the key must be printable ASCII (0x20-0x7E)' };
  return { ok: true, key };
}
