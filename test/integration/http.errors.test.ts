import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestApp, type TestApp } from '../helpers/app';
import { signedInject } from '../helpers/signed';

const ENVELOPE_KEYS = ['correlationId', 'error', 'message', 'requestId', 'timestamp'];

function expectEnvelope(res: { headers: Record<string, unknown>; json(): Record<string, unknown> }, code: string) {
  const body = res.json();
  expect(body.error).toBe(code);
  expect(
    Object.keys(body)
      .filter((k) => k !== 'data')
      .sort(),
  ).toEqual(ENVELOPE_KEYS);
  expect(res.headers['x-request-id']).toBe(body.requestId);
  expect(res.headers['x-correlation-id']).toBe(body.correlationId);
  expect(res.headers['x-worker-version']).toBe('0.0.0-test');
  expect(String(res.headers['x-processing-time-ms'])).toMatch(/^\d+(\.\d+)?$/);
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
});
