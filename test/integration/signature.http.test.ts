import { createHash } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { signRequest } from '../../src/client/sign';
import { registry } from '../../src/metrics';
import { startTestApp, TEST_SECRET, type TestApp } from '../helpers/app';
import { signedInject } from '../helpers/signed';
import { awayFromWindowEdge } from '../helpers/window';

const now = () => Math.floor(Date.now() / 1000);

function expectError(
  res: { statusCode: number; json(): Record<string, unknown>; headers: Record<string, unknown> },
  status: number,
  code: string,
) {
  expect(res.statusCode).toBe(status);
  const body = res.json();
  expect(body.error).toBe(code);
  expect(typeof body.message).toBe('string');
  expect(body.requestId).toBe(res.headers['x-request-id']);
  expect(body.correlationId).toBeTruthy();
  expect(body.timestamp).toBeTruthy();
  return body as { error: string; message: string; data: Record<string, unknown> };
}

describe('signed requests (dual mode)', () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await startTestApp({ HMAC_SECRETS: `${TEST_SECRET},rotated-secret-0123456789` });
  });
  afterAll(() => t.close());

  it('accepts both signatures and prefers v2', async () => {
    const res = await signedInject(t.app, { method: 'GET', url: '/v1/ping' });
    expect(res.statusCode).toBe(200);
    expect(res.json()).toMatchObject({ ok: true, signatureVersion: 'v2', bodyBytes: 0 });
    expect(Math.abs(res.json().serverTime - now())).toBeLessThanOrEqual(2);
  });

  it('accepts v1 alone and v2 alone', async () => {
    for (const version of ['v1', 'v2'] as const) {
      // v1 remembers a request by timestamp and body: a second no other empty-body request of this file signed.
      const timestamp = version === 'v1' ? now() - 30 : undefined;
      const res = await signedInject(t.app, {
        method: 'GET',
        url: '/v1/ping',
        sign: { versions: [version], timestamp },
      });
      expect(res.statusCode).toBe(200);
      expect(res.json().signatureVersion).toBe(version);
    }
  });

  it('verifies a query string signed in another order (sorted on both sides)', async () => {
    const headers = signRequest({ secret: TEST_SECRET, method: 'GET', path: '/v1/ping?a=1&b=2', versions: ['v2'] });
    const res = await t.app.inject({ method: 'GET', url: '/v1/ping?b=2&a=1', headers });
    expect(res.statusCode).toBe(200);
  });

  it('verifies with a rotated secret', async () => {
    const res = await signedInject(t.app, {
      method: 'GET',
      url: '/v1/ping',
      sign: { secret: 'rotated-secret-0123456789' },
    });
    expect(res.statusCode).toBe(200);
  });

  it('says which header is missing', async () => {
    const none = expectError(await t.app.inject({ method: 'GET', url: '/v1/ping' }), 401, 'MISSING_SIGNATURE');
    expect(none.data).toMatchObject({ reason: 'missing_signature', header: 'x-sheen-sig-v2' });
    expect(none.message).toContain('x-sheen-sig-v2');
    const every = ['x-sheen-sig-v2', 'x-sheen-signature', 'x-sheen-timestamp', 'x-sheen-nonce'];
    expect(none.data.expected).toEqual(every);
    for (const name of every) expect(none.message).toContain(name);
    const full = signRequest({ secret: TEST_SECRET, method: 'GET', path: '/v1/ping' });
    for (const [drop, reason] of [
      ['x-sheen-timestamp', 'missing_timestamp'],
      ['x-sheen-nonce', 'missing_nonce'],
    ]) {
      const headers = { ...full };
      delete headers[drop];
      const body = expectError(
        await t.app.inject({ method: 'GET', url: '/v1/ping', headers }),
        401,
        'MISSING_SIGNATURE',
      );
      expect(body.data).toMatchObject({ reason, header: drop, expected: every });
    }
  });

  it.each([
    ['method', { method: 'POST' }],
    ['path', { path: '/v1/ping?x=1' }],
    ['timestamp', { timestamp: now() - 5 }],
    ['nonce', { nonce: 'another-nonce-123' }],
    ['body', { body: '{"a":1}' }],
    ['secret', { secret: 'wrong-secret-0123456789' }],
  ])('refuses a request whose %s differs from what was signed', async (_part, change) => {
    const sent = { method: 'GET', path: '/v1/ping', body: '', timestamp: now(), nonce: 'fixed-nonce-abcdef' };
    const headers = signRequest({ secret: TEST_SECRET, ...sent, ...change, versions: ['v2'] });
    headers['x-sheen-nonce'] = sent.nonce;
    headers['x-sheen-timestamp'] = String(sent.timestamp);
    const res = await t.app.inject({ method: 'GET', url: '/v1/ping', headers });
    const body = expectError(res, 401, 'INVALID_SIGNATURE');
    expect(body.data).toMatchObject({ reason: 'signature', header: 'x-sheen-sig-v2' });
    // What the server signed, whichever part the client got wrong: the request as it arrived.
    expect(body.data.signed).toEqual({
      method: 'GET',
      path: '/v1/ping',
      timestamp: String(sent.timestamp),
      nonce: sent.nonce,
      bodyLength: 0,
      bodySha256: createHash('sha256').update('').digest('hex'),
      v2StringToSignWithoutBody: `GET\n/v1/ping\n${sent.timestamp}\n${sent.nonce}\n`,
    });
  });

  it('shows, on a 401, the canonical path and query and the body it signed, and nothing secret', async () => {
    const body = '{"name":"Café"}';
    const url = '/v1/ping?z=1&ids=a,b&q=two words';
    // Signed the way a hand-written client might get wrong: the query as sent, not re-encoded and sorted.
    const headers = signRequest({ secret: TEST_SECRET, method: 'POST', path: '/v1/ping', body, versions: ['v2'] });
    const res = await t.app.inject({
      method: 'POST',
      url: encodeURI(url),
      headers: { ...headers, 'content-type': 'application/json' },
      payload: body,
    });
    const refused = expectError(res, 401, 'INVALID_SIGNATURE');
    const signed = refused.data.signed as Record<string, unknown>;
    expect(signed.path).toBe('/v1/ping?ids=a%2Cb&q=two+words&z=1');
    expect(signed.bodyLength).toBe(Buffer.byteLength(body));
    expect(signed.bodySha256).toBe(createHash('sha256').update(body).digest('hex'));
    expect(refused.message).toContain('data.signed');
    expect(JSON.stringify(refused)).not.toContain(TEST_SECRET);
  });

  it('accepts timestamps just inside the window and refuses those just outside', async () => {
    for (const offset of [-118, 118]) {
      const res = await signedInject(t.app, { method: 'GET', url: '/v1/ping', sign: { timestamp: now() + offset } });
      expect(res.statusCode).toBe(200);
    }
    for (const offset of [-122, 122]) {
      const res = await signedInject(t.app, { method: 'GET', url: '/v1/ping', sign: { timestamp: now() + offset } });
      const body = expectError(res, 401, 'TIMESTAMP_OUT_OF_RANGE');
      expect(Math.abs((body.data.serverTime as number) - now())).toBeLessThanOrEqual(2);
    }
    const garbage = signRequest({ secret: TEST_SECRET, method: 'GET', path: '/v1/ping' });
    garbage['x-sheen-timestamp'] = 'yesterday';
    expectError(
      await t.app.inject({ method: 'GET', url: '/v1/ping', headers: garbage }),
      401,
      'TIMESTAMP_OUT_OF_RANGE',
    );
  });

  it('refuses a replayed nonce with 409, and a bad signature does not burn the nonce', async () => {
    const nonce = `nonce-${Date.now()}-replay`;
    const forged = signRequest({ secret: 'wrong-secret-0123456789', method: 'GET', path: '/v1/ping', nonce });
    expectError(await t.app.inject({ method: 'GET', url: '/v1/ping', headers: forged }), 401, 'INVALID_SIGNATURE');
    const first = await signedInject(t.app, { method: 'GET', url: '/v1/ping', sign: { nonce } });
    expect(first.statusCode).toBe(200);
    const again = await signedInject(t.app, { method: 'GET', url: '/v1/ping', sign: { nonce } });
    expect(expectError(again, 409, 'REPLAYED_NONCE').data).toEqual({ header: 'x-sheen-nonce' });
  });

  it('judges the signature before the body: unsigned garbage is 401, signed garbage is 400', async () => {
    const garbage = '{"not json';
    const unsigned = await t.app.inject({
      method: 'POST',
      url: '/v1/ping',
      payload: garbage,
      headers: { 'content-type': 'application/json' },
    });
    expectError(unsigned, 401, 'MISSING_SIGNATURE');
    expectError(await signedInject(t.app, { method: 'POST', url: '/v1/ping', body: garbage }), 400, 'VALIDATION_ERROR');
  });

  it('signs the raw bytes: spacing and non-ASCII are covered as sent', async () => {
    const body = '{ "name": "Café ✓ 项目",   "n": 1 }';
    const res = await signedInject(t.app, { method: 'POST', url: '/v1/ping', body });
    expect(res.statusCode).toBe(200);
    expect(res.json().bodyBytes).toBe(Buffer.byteLength(body));
  });

  it('accepts a signed body of almost 1 MB and refuses one over the limit with 413', async () => {
    const big = JSON.stringify({ blob: 'x'.repeat(1_048_576 - 20) });
    expect(Buffer.byteLength(big)).toBeLessThanOrEqual(1_048_576);
    const ok = await signedInject(t.app, { method: 'POST', url: '/v1/ping', body: big });
    expect(ok.statusCode).toBe(200);
    expect(ok.json().bodyBytes).toBe(Buffer.byteLength(big));
    const tooBig = JSON.stringify({ blob: 'x'.repeat(1_048_576) });
    expectError(await signedInject(t.app, { method: 'POST', url: '/v1/ping', body: tooBig }), 413, 'PAYLOAD_TOO_LARGE');
  });

  it('signs HEAD like GET and answers OPTIONS with an envelope, burning no nonce', async () => {
    const head = await signedInject(t.app, { method: 'HEAD', url: '/v1/ping' });
    expect(head.statusCode).toBe(200);
    expect(head.body).toBe('');
    expect(head.headers['x-request-id']).toBeTruthy();
    const unsignedHead = await t.app.inject({ method: 'HEAD', url: '/v1/ping' });
    expect(unsignedHead.statusCode).toBe(401);
    const nonce = `options-nonce-${Date.now()}`;
    const options = await signedInject(t.app, { method: 'OPTIONS', url: '/v1/ping', sign: { nonce } });
    expect(options.statusCode).toBe(405); // /v1/ping answers GET, HEAD and POST
    expect(options.json().error).toBe('METHOD_NOT_ALLOWED');
    expect(options.headers.allow).toBe('GET, HEAD, POST');
    expect((await signedInject(t.app, { method: 'GET', url: '/v1/ping', sign: { nonce } })).statusCode).toBe(200);
  });

  it('counts verification outcomes for the metrics endpoint', async () => {
    const mismatch = signRequest({ secret: TEST_SECRET, method: 'GET', path: '/v1/ping' });
    mismatch['x-sheen-signature'] = '0'.repeat(64);
    expect((await t.app.inject({ method: 'GET', url: '/v1/ping', headers: mismatch })).statusCode).toBe(200);
    const text = await registry.metrics();
    for (const outcome of [
      'both',
      'v1',
      'v2',
      'mismatch',
      'failure_signature',
      'failure_timestamp',
      'failure_missing_signature',
      'failure_replayed_nonce',
    ]) {
      expect(text).toMatch(new RegExp(`kiln_signature_verifications_total\\{outcome="${outcome}"\\} [1-9]`));
    }
  });
});

describe('signature modes', () => {
  it('v2 mode refuses v1 alone; v1 mode refuses v2 alone', async () => {
    const v2only = await startTestApp({ HMAC_MODE: 'v2' });
    const v1only = await startTestApp({ HMAC_MODE: 'v1' });
    try {
      const refused = await signedInject(v2only.app, { method: 'GET', url: '/v1/ping', sign: { versions: ['v1'] } });
      expect(expectError(refused, 401, 'MISSING_SIGNATURE').data).toMatchObject({ reason: 'version_not_accepted' });
      expect((await signedInject(v2only.app, { method: 'GET', url: '/v1/ping' })).json().signatureVersion).toBe('v2');
      expectError(
        await signedInject(v1only.app, { method: 'GET', url: '/v1/ping', sign: { versions: ['v2'] } }),
        401,
        'MISSING_SIGNATURE',
      );
      expect((await signedInject(v1only.app, { method: 'GET', url: '/v1/ping' })).json().signatureVersion).toBe('v1');
    } finally {
      await v2only.close();
      await v1only.close();
    }
  });

  it('dual mode refuses v1 after HMAC_V1_UNTIL, and a custom header prefix is honoured', async () => {
    const t = await startTestApp({ HMAC_V1_UNTIL: '2020-01-01T00:00:00Z', SIGNATURE_HEADER_PREFIX: 'x-kiln' });
    try {
      const v1 = await signedInject(t.app, {
        method: 'GET',
        url: '/v1/ping',
        sign: { versions: ['v1'], prefix: 'x-kiln' },
      });
      const body = expectError(v1, 401, 'MISSING_SIGNATURE');
      expect(body.message).toContain('HMAC_V1_UNTIL');
      const v2 = await signedInject(t.app, { method: 'GET', url: '/v1/ping', sign: { prefix: 'x-kiln' } });
      expect(v2.statusCode).toBe(200);
      expectError(await signedInject(t.app, { method: 'GET', url: '/v1/ping' }), 401, 'MISSING_SIGNATURE');
    } finally {
      await t.close();
    }
  });
});

describe('rate limits', () => {
  const rateLimitedBy = async (scope: string) =>
    Number(
      new RegExp(`^kiln_rate_limited_total\\{scope="${scope}"\\} (\\S+)$`, 'm').exec(await registry.metrics())?.[1],
    );

  it('limits per user and per IP with the figures and headers', async () => {
    await awayFromWindowEdge();
    const t = await startTestApp({ RATE_LIMIT_USER_PER_MIN: '3', RATE_LIMIT_IP_PER_MIN: '8' });
    try {
      const ping = (userId: string) => signedInject(t.app, { method: 'POST', url: '/v1/ping', body: { userId } });
      for (let i = 0; i < 3; i++) expect((await ping('user_a')).statusCode).toBe(200);
      const limited = await ping('user_a');
      const body = expectError(limited, 429, 'RATE_LIMITED');
      expect(body.data).toMatchObject({ limit: 3, used: 4, windowSeconds: 60, scope: 'user', userId: 'user_a' });
      const retry = body.data.retryAfterSeconds as number;
      expect(retry).toBeGreaterThanOrEqual(1);
      expect(retry).toBeLessThanOrEqual(60);
      expect(limited.headers['retry-after']).toBe(String(retry));
      expect(limited.headers['x-ratelimit-limit']).toBe('3');
      expect(limited.headers['x-ratelimit-remaining']).toBe('0');
      expect(limited.headers['x-ratelimit-reset']).toBe(String(retry));
      expect(limited.headers.ratelimit).toBe(`limit=3, remaining=0, reset=${retry}`);
      expect(limited.headers['ratelimit-policy']).toBe('3;w=60');
      expect(body.message).toContain(`Retry after ${retry} s`);
      // Another user still passes, until the address's own quota (8) is spent.
      expect((await ping('user_b')).statusCode).toBe(200);
      const results = [];
      for (let i = 0; i < 4; i++) results.push((await ping(`user_c${i}`)).statusCode);
      expect(results.slice(0, 3)).toEqual([200, 200, 200]);
      const refusedBefore = await rateLimitedBy('ip');
      const ipLimited = await ping('user_d');
      expect(expectError(ipLimited, 429, 'RATE_LIMITED').data).toMatchObject({ scope: 'ip', limit: 8 });
      // Counted on /metrics by scope.
      expect(await rateLimitedBy('ip')).toBe(refusedBefore + 1);
      expect(await rateLimitedBy('user')).toBeGreaterThanOrEqual(1);
    } finally {
      await t.close();
    }
  });
});
