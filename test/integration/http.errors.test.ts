import { connect } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestApp, type TestApp } from '../helpers/app';
import { expectContextHeaders, expectEnvelopeBody } from '../helpers/envelope';
import { parseResponses } from '../helpers/raw-http';
import { signedInject } from '../helpers/signed';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function expectEnvelope(res: { headers: Record<string, unknown>; json(): Record<string, unknown> }, code: string) {
  const body = res.json();
  expectEnvelopeBody(body, code);
  expectContextHeaders(res.headers, body);
  return body;
}

describe('errors of every kind come in the envelope, with the context headers', () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await startTestApp({ BUILD_EXECUTOR: 'external' });
    const granted = await signedInject(t.app, {
      method: 'POST',
      url: '/v1/credits/grant',
      body: { userId: 'user_errors', credits: 100_000, reason: 'test budget', source: 'test' },
    });
    expect(granted.statusCode).toBe(200);
  });
  afterAll(() => t.close());

  it('a second build on a busy project: 429 with Retry-After, x-ratelimit-*, RateLimit and RateLimit-Policy', async () => {
    const projectId = `prj_busy_${Date.now()}`;
    const project = { id: projectId, ownerId: 'u', name: 'busy' };
    expect((await signedInject(t.app, { method: 'POST', url: '/v1/projects', body: project })).statusCode).toBe(201);
    const body = { projectId, userId: 'user_errors' };
    expect((await signedInject(t.app, { method: 'POST', url: '/v1/builds', body })).statusCode).toBe(201);
    const busy = await signedInject(t.app, { method: 'POST', url: '/v1/builds', body });
    expect(busy.statusCode).toBe(429);
    const envelope = expectEnvelope(busy, 'BUILD_ALREADY_RUNNING');
    const eta = (envelope.data as { etaSeconds: number }).etaSeconds;
    expect(eta).toBeGreaterThan(0);
    expect(busy.headers).toMatchObject({
      'retry-after': String(eta),
      'x-ratelimit-limit': '1',
      'x-ratelimit-remaining': '0',
      'x-ratelimit-reset': String(eta),
      ratelimit: `limit=1, remaining=0, reset=${eta}`,
      'ratelimit-policy': `1;w=${eta}`,
    });
  });

  it.each([
    ['DELETE', '/v1/builds/abc', ['GET', 'HEAD', 'PATCH']],
    ['PUT', '/v1/ping', ['GET', 'HEAD', 'POST']],
    ['POST', '/v1/credits/balance/u1?x=1', ['GET', 'HEAD']],
    ['PATCH', '/v1/builds', ['GET', 'HEAD', 'POST']],
  ] as const)('%s %s → 405 METHOD_NOT_ALLOWED with Allow and data.allowed', async (method, url, allowed) => {
    const res = await t.app.inject({ method, url, headers: { 'x-correlation-id': 'corr_405' } });
    expect(res.statusCode).toBe(405);
    expect(res.headers.allow).toBe(allowed.join(', '));
    const body = expectEnvelope(res, 'METHOD_NOT_ALLOWED');
    expect(body.data).toEqual({ method, path: url.split('?')[0], allowed });
    expect(body.correlationId).toBe('corr_405');
  });

  it('HEAD on a POST-only path → 405 with Allow and no body', async () => {
    const res = await t.app.inject({ method: 'HEAD', url: '/v1/credits/grant' });
    expect(res.statusCode).toBe(405);
    expect(res.headers.allow).toBe('POST');
    expect(res.headers['x-request-id']).toBeTruthy();
  });

  it('bad percent-encoding → 400 BAD_REQUEST in the envelope, with the headers', async () => {
    for (const url of ['/v1/builds/%zz', '/v1/builds/%c3%28', '/previews/%E0%A4%A/x']) {
      const res = await t.app.inject({ method: 'GET', url, headers: { 'x-correlation-id': 'corr_url' } });
      expect(res.statusCode, url).toBe(400);
      const body = expectEnvelope(res, 'BAD_REQUEST');
      expect(body.correlationId).toBe('corr_url');
      expect(body.data).toEqual({ path: url });
    }
  });

  it('a path parameter past 1024 characters → 414 URI_TOO_LONG; 1024 reach the schema', async () => {
    const long = await t.app.inject({ method: 'GET', url: `/v1/credits/balance/${'u'.repeat(1025)}` });
    expect(long.statusCode).toBe(414);
    expectEnvelope(long, 'URI_TOO_LONG');
    const bounded = await signedInject(t.app, { method: 'GET', url: `/v1/credits/balance/${'u'.repeat(1024)}` });
    expect(bounded.statusCode).toBe(400);
    expect(expectEnvelope(bounded, 'VALIDATION_ERROR').data).toMatchObject({
      issues: expect.arrayContaining([expect.objectContaining({ path: 'params.userId' })]),
    });
  });

  it('a valid 120-character userId reaches the signature check and, signed, the balance', async () => {
    const userId = `u${'1'.repeat(119)}`;
    const unsigned = await t.app.inject({ method: 'GET', url: `/v1/credits/balance/${userId}` });
    expect(unsigned.statusCode).toBe(401);
    expectEnvelope(unsigned, 'MISSING_SIGNATURE');
    const signed = await signedInject(t.app, { method: 'GET', url: `/v1/credits/balance/${userId}` });
    expect(signed.statusCode).toBe(200);
    expect(signed.json()).toMatchObject({ userId, balance: 0, plan: 'free' });
  });
});

describe('a request reaching a process that is shutting down', () => {
  it('gets 503 SERVICE_UNAVAILABLE in the envelope, with Connection: close', async () => {
    let release: () => void = () => {};
    const t = await startTestApp({}, (app) => {
      app.get('/probe/slow', () => new Promise((resolve) => (release = () => resolve({ slow: true }))));
    });
    let closed = false;
    try {
      await t.app.listen({ port: 0, host: '127.0.0.1' });
      const { port } = t.app.server.address() as { port: number };
      const socket = connect(port, '127.0.0.1');
      let text = '';
      socket.on('data', (chunk: Buffer) => {
        text += chunk.toString('latin1');
      });
      socket.write('GET /probe/slow HTTP/1.1\r\nHost: k\r\n\r\n');
      await sleep(100);
      const closing = t.app.close().then(() => {
        closed = true;
      });
      await sleep(100);
      // The connection is busy, so it stays open; its next request arrives while the server closes.
      socket.write('GET /healthz HTTP/1.1\r\nHost: k\r\n\r\n');
      await sleep(100);
      release();
      await closing;
      for (let i = 0; i < 50 && parseResponses(text).length < 2; i++) await sleep(20);
      socket.destroy();
      const [slow, refused] = parseResponses(text);
      expect(slow.status).toBe(200);
      expect(refused.status).toBe(503);
      expect(refused.headers.connection).toBe('close');
      expect(refused.headers['retry-after']).toBe('1');
      const body = JSON.parse(refused.body);
      expect(body).toMatchObject({ error: 'SERVICE_UNAVAILABLE', data: { dependency: 'server' } });
      expect(body.requestId).toBe(refused.headers['x-request-id']);
      expect(refused.headers['x-worker-version']).toBe('0.0.0-test');
      expect(refused.headers['x-processing-time-ms']).toMatch(/^\d+(\.\d+)?$/);
    } finally {
      release();
      if (!closed) await t.app.close();
      await t.close();
    }
  });
});
