import { createHmac } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { signatureVectors } from '../../../test/helpers/vectors';
import { canonicalPath, newNonce, signRequest, signV1, signV2, stringToSignV2 } from '../src/index';

// The repository's signature vectors (SPEC section 3), as every signer in it is tested against them.
const vectors = signatureVectors;

describe('the signature vectors', () => {
  it('are all there', () => {
    expect(vectors.length).toBeGreaterThanOrEqual(10);
  });

  it.each(vectors.map((v) => [v.name, v] as const))('%s', async (_name, v) => {
    expect(canonicalPath(v.path)).toBe(v.signedPath);
    expect(stringToSignV2(v.method.toLowerCase(), v.path, v.timestamp, v.nonce)).toBe(
      `${v.method.toUpperCase()}\n${v.signedPath}\n${v.timestamp}\n${v.nonce}\n`,
    );
    expect(await signV1(v.secret, v.timestamp, v.body)).toBe(v.v1);
    expect(await signV2(v.secret, v.method, v.path, v.timestamp, v.nonce, v.body)).toBe(v.v2);
    // Raw bytes sign as the text they encode (the HMAC reads bytes, non-ASCII included).
    const bytes = new TextEncoder().encode(v.body);
    expect(await signV2(v.secret, v.method, v.path, v.timestamp, v.nonce, bytes)).toBe(v.v2);
    const headers = await signRequest({
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

describe('signRequest', () => {
  it('sends only the versions asked for, under the prefix asked for', async () => {
    const v = vectors[0];
    const base = { secret: v.secret, method: v.method, path: v.path, body: v.body, timestamp: v.timestamp };
    const only2 = await signRequest({ ...base, nonce: v.nonce, versions: ['v2'], prefix: 'X-Acme' });
    expect(only2).toEqual({ 'x-acme-timestamp': v.timestamp, 'x-acme-nonce': v.nonce, 'x-acme-sig-v2': v.v2 });
    const only1 = await signRequest({ ...base, nonce: v.nonce, versions: ['v1'] });
    expect(Object.keys(only1).sort()).toEqual(['x-sheen-nonce', 'x-sheen-signature', 'x-sheen-timestamp']);
  });

  it('defaults to now and a fresh 16-byte hex nonce', async () => {
    const a = await signRequest({ secret: 's', method: 'GET', path: '/v1/ping' });
    const b = await signRequest({ secret: 's', method: 'GET', path: '/v1/ping' });
    expect(a['x-sheen-nonce']).toMatch(/^[0-9a-f]{32}$/);
    expect(a['x-sheen-nonce']).not.toBe(b['x-sheen-nonce']);
    expect(Math.abs(Number(a['x-sheen-timestamp']) - Date.now() / 1000)).toBeLessThan(5);
    expect(newNonce()).toMatch(/^[0-9a-f]{32}$/);
  });

  it('agrees with node:crypto on random secrets, bodies and paths (long keys hashed, long bodies)', async () => {
    for (let i = 0; i < 40; i++) {
      const secret = 'k'.repeat(i * 3) + String(i);
      const body = `{"n":${i},"text":"${'é✓'.repeat(i * 50)}"}`;
      const path = `/v1/builds?z=${i}&a=${i % 3}&m=%20x`;
      const expected = createHmac('sha256', secret)
        .update(`POST\n${canonicalPath(path)}\n1700000000\nnonce-${i}\n`)
        .update(body)
        .digest('hex');
      expect(await signV2(secret, 'post', path, '1700000000', `nonce-${i}`, body)).toBe(expected);
    }
  });
});

describe('the package sources', () => {
  const SRC = new URL('../src', import.meta.url).pathname;
  const sources = readdirSync(SRC).map((name) => [name, readFileSync(join(SRC, name), 'utf8')] as const);

  it('use no Node module or Node global: Web Crypto, fetch and TextEncoder only, so edge runtimes can run them', () => {
    const nodeOnly = sources.filter(([, text]) =>
      /from '(node:|fs|path|crypto|http|https|buffer|util)['/]|\b(Buffer|process|require)\b[.(]/.test(text),
    );
    expect(nodeOnly.map(([name]) => name)).toEqual([]);
  });

  it('import only each other (no dependency, nothing of the repository)', () => {
    const outside = sources.flatMap(([name, text]) =>
      [...text.matchAll(/from '([^']+)'/g)]
        .filter((m) => !/^\.\/[\w-]+\.js$/.test(m[1]))
        .map((m) => `${name}: ${m[1]}`),
    );
    expect(outside).toEqual([]);
  });
});
