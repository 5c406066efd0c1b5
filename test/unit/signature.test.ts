import { describe, expect, it } from 'vitest';
import { signRequest } from '../../src/client/sign';
import { canonicalPath, signatureMatches, signV1, signV2, verifiesWithAny } from '../../src/domain/signature';
import { signatureVectors } from '../helpers/vectors';

const vectors = signatureVectors;

describe('signature vectors (shared with the existing client)', () => {
  it('has the cases the SPEC names', () => {
    const names = vectors.map((v) => v.name).join(' | ');
    expect(names).toMatch(/unsorted query/);
    expect(names).toMatch(/non-ASCII/);
    expect(vectors.length).toBeGreaterThanOrEqual(10);
  });

  it.each(vectors.map((v) => [v.name, v] as const))('%s', (_name, v) => {
    expect(canonicalPath(v.path)).toBe(v.signedPath);
    expect(signV1(v.secret, v.timestamp, v.body)).toBe(v.v1);
    expect(signV2(v.secret, v.method, v.path, v.timestamp, v.nonce, v.body)).toBe(v.v2);
    // Raw bytes sign the same as the string they encode (non-ASCII included).
    expect(signV2(v.secret, v.method, v.path, v.timestamp, v.nonce, Buffer.from(v.body, 'utf8'))).toBe(v.v2);
    // The bundled client produces exactly these headers.
    const headers = signRequest({
      secret: v.secret,
      method: v.method,
      path: v.path,
      body: v.body,
      timestamp: Number(v.timestamp),
      nonce: v.nonce,
    });
    expect(headers).toEqual({
      'x-sheen-timestamp': v.timestamp,
      'x-sheen-nonce': v.nonce,
      'x-sheen-signature': v.v1,
      'x-sheen-sig-v2': v.v2,
    });
  });
});

describe('signature checks', () => {
  const v = vectors.find((x) => x.method === 'POST')!;

  it.each([
    ['method', () => signV2(v.secret, 'PUT', v.path, v.timestamp, v.nonce, v.body)],
    ['path', () => signV2(v.secret, v.method, `${v.path}x`, v.timestamp, v.nonce, v.body)],
    ['timestamp', () => signV2(v.secret, v.method, v.path, String(Number(v.timestamp) + 1), v.nonce, v.body)],
    ['nonce', () => signV2(v.secret, v.method, v.path, v.timestamp, `${v.nonce}1`, v.body)],
    ['body', () => signV2(v.secret, v.method, v.path, v.timestamp, v.nonce, `${v.body} `)],
    ['secret', () => signV2(`${v.secret}x`, v.method, v.path, v.timestamp, v.nonce, v.body)],
  ])('a change of %s changes the v2 signature', (_part, tampered) => {
    expect(signatureMatches(tampered(), v.v2)).toBe(false);
  });

  it('compares hex case-insensitively and refuses malformed input', () => {
    expect(signatureMatches(v.v2.toUpperCase(), v.v2)).toBe(true);
    expect(signatureMatches(v.v2.slice(0, 63), v.v2)).toBe(false);
    expect(signatureMatches(`${v.v2.slice(0, 63)}z`, v.v2)).toBe(false);
    expect(signatureMatches('', v.v2)).toBe(false);
  });

  it('verifies with any of the rotated secrets', () => {
    const sign = (secret: string) => signV1(secret, v.timestamp, v.body);
    expect(verifiesWithAny(v.v1, ['new-secret-0123456789', v.secret], sign)).toBe(true);
    expect(verifiesWithAny(v.v1, ['new-secret-0123456789'], sign)).toBe(false);
  });

  it('keeps repeated keys in order and drops an empty query', () => {
    expect(canonicalPath('/a?z=1&b=2&b=1')).toBe('/a?b=2&b=1&z=1');
    expect(canonicalPath('/a?')).toBe('/a');
    expect(canonicalPath('/a')).toBe('/a');
  });
});
