import { createHmac } from 'node:crypto';
import { createServer, type IncomingHttpHeaders, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  createKilnClient,
  isKilnError,
  isKilnNetworkError,
  isRetryable,
  type KilnClientOptions,
  KilnError,
  KilnNetworkError,
  parseRetryAfter,
  type ResponseInfo,
  type RetryInfo,
  stringToSignV2,
} from '../src/index';

const SECRET = 'client-test-secret';

interface Received {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
  body: string;
}

/** What the scripted server does with one request: answer it, or drop the connection (a network error). */
type Step = ((res: ServerResponse, req: Received) => void) | 'drop';

/** A real HTTP server that answers each request with the next step of the script (the last one repeats). */
let server: Server;
let baseUrl: string;
let script: Step[] = [];
let received: Received[] = [];

beforeAll(async () => {
  server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const got = {
        method: req.method ?? '',
        url: req.url ?? '',
        headers: req.headers,
        body: Buffer.concat(chunks).toString(),
      };
      received.push(got);
      const step = script[Math.min(received.length - 1, script.length - 1)];
      if (step === 'drop') req.socket.destroy();
      else step(res, got);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(() => new Promise<void>((resolve) => server.close(() => resolve())));
afterEach(() => {
  script = [];
  received = [];
});

const json =
  (status: number, body: unknown, headers: Record<string, string> = {}) =>
  (res: ServerResponse) => {
    res.writeHead(status, { 'content-type': 'application/json', 'x-request-id': 'req_header', ...headers });
    res.end(JSON.stringify(body));
  };
const envelope = (error: string, message: string, data?: unknown) => ({
  error,
  message,
  data,
  requestId: 'req_envelope',
  correlationId: 'corr_1',
  timestamp: '2026-01-15T10:30:00.000Z',
});

/** Retries recorded, and no real waiting unless a test wants it (baseDelayMs 1). */
function client(extra: Partial<KilnClientOptions> = {}) {
  const retries: RetryInfo[] = [];
  const responses: ResponseInfo[] = [];
  const kiln = createKilnClient({
    baseUrl,
    secret: SECRET,
    correlationId: 'corr_1',
    retry: { baseDelayMs: 1, maxDelayMs: 10_000, onRetry: (info) => retries.push(info) },
    onResponse: (info) => responses.push(info),
    ...extra,
  });
  return { kiln, retries, responses };
}

/** The server's check of one request's v2 signature (computed independently with node:crypto). */
function signedCorrectly(r: Received): boolean {
  const timestamp = String(r.headers['x-sheen-timestamp']);
  const nonce = String(r.headers['x-sheen-nonce']);
  const v2 = createHmac('sha256', SECRET)
    .update(stringToSignV2(r.method, r.url, timestamp, nonce))
    .update(r.body)
    .digest('hex');
  const v1 = createHmac('sha256', SECRET).update(timestamp).update(r.body).digest('hex');
  return r.headers['x-sheen-sig-v2'] === v2 && r.headers['x-sheen-signature'] === v1;
}

async function failure(promise: Promise<unknown>): Promise<KilnError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  if (!isKilnError(error)) throw new Error(`expected a KilnError, got ${String(error)}`);
  return error;
}

describe('request(): idempotency keys and retries', () => {
  it('keys a POST once and sends the same key on every retry, each attempt signed afresh', async () => {
    script = [
      json(503, envelope('SERVICE_UNAVAILABLE', 'Retry after 0 s'), { 'retry-after': '0' }),
      'drop',
      json(201, { id: 'bld_1', state: 'queued' }),
    ];
    const { kiln, retries, responses } = client();
    const build = await kiln.request<{ id: string }>('POST', '/v1/builds?b=2&a=1', { body: { projectId: 'p' } });
    expect(build).toEqual({ id: 'bld_1', state: 'queued' });
    expect(received).toHaveLength(3);
    const keys = received.map((r) => r.headers['idempotency-key']);
    expect(keys[0]).toMatch(/^[0-9a-f-]{36}$/);
    expect(new Set(keys).size).toBe(1);
    expect(new Set(received.map((r) => r.headers['x-sheen-nonce'])).size).toBe(3);
    expect(received.every(signedCorrectly)).toBe(true);
    expect(received.every((r) => r.body === '{"projectId":"p"}')).toBe(true);
    expect(received.every((r) => r.headers['content-type'] === 'application/json')).toBe(true);
    expect(received.every((r) => r.headers['x-correlation-id'] === 'corr_1')).toBe(true);
    expect(retries.map((r) => [r.attempt, r.status, r.reason.slice(0, 19)])).toEqual([
      [1, 503, 'SERVICE_UNAVAILABLE'],
      [2, undefined, expect.any(String)],
    ]);
    // onResponse sees every answer received, the retried one included (the dropped attempt had none).
    expect(responses.map((r) => [r.attempt, r.status])).toEqual([
      [1, 503],
      [3, 201],
    ]);
    expect(responses[1]).toMatchObject({ method: 'POST', path: '/v1/builds?b=2&a=1', body: { id: 'bld_1' } });
  });

  it('gives a new key to each call (each call is one logical operation)', async () => {
    script = [json(201, {})];
    const { kiln } = client();
    await kiln.request('POST', '/v1/projects', { body: { name: 'a' } });
    await kiln.request('POST', '/v1/projects', { body: { name: 'a' } });
    expect(received[0].headers['idempotency-key']).not.toBe(received[1].headers['idempotency-key']);
  });

  it("uses the caller's key, or the body's idempotencyKey (a different header key would be a 400)", async () => {
    script = [json(200, {})];
    const { kiln } = client();
    await kiln.request('PUT', '/v1/projects/p', { body: { name: 'a' }, idempotencyKey: 'mine-1' });
    await kiln.request('POST', '/v1/credits/grant', { body: { userId: 'u', idempotencyKey: 'body-1' } });
    await kiln.request('PATCH', '/v1/builds/b', { body: {}, headers: { 'Idempotency-Key': 'header-1' } });
    await kiln.request('GET', '/v1/ping');
    expect(received.map((r) => r.headers['idempotency-key'])).toEqual(['mine-1', 'body-1', 'header-1', undefined]);
  });

  it('honours Retry-After in seconds on a 503', async () => {
    script = [json(503, envelope('SERVICE_UNAVAILABLE', 'Retry after 1 s'), { 'retry-after': '1' }), json(200, {})];
    const { kiln, retries } = client();
    const started = Date.now();
    await kiln.request('GET', '/v1/builds/b');
    expect(Date.now() - started).toBeGreaterThanOrEqual(950);
    expect(retries.map((r) => r.delayMs)).toEqual([1000]);
  });

  it('waits what Retry-After says (seconds or an HTTP date), and gives up at once when that is over maxDelayMs', async () => {
    const soon = new Date(Math.ceil(Date.now() / 1000) * 1000 + 1_000).toUTCString();
    script = [
      json(503, envelope('SERVICE_UNAVAILABLE', 'later'), { 'retry-after': '0' }),
      json(503, envelope('SERVICE_UNAVAILABLE', 'later'), { 'retry-after': soon }),
      json(200, { ok: true }),
    ];
    const { kiln, retries } = client({ retry: { maxDelayMs: 3_000, onRetry: (i) => retries.push(i) } });
    expect(await kiln.request('GET', '/v1/ping')).toEqual({ ok: true });
    expect(retries[0].delayMs).toBe(0);
    expect(retries[1].delayMs).toBeGreaterThan(0);
    expect(retries[1].delayMs).toBeLessThanOrEqual(2_000);

    // Asked to come back in 30 s with a cap of 40 ms: no early retry that would be refused again.
    received.length = 0;
    script = [json(429, envelope('RATE_LIMITED', 'slow down'), { 'retry-after': '30' }), json(200, { ok: true })];
    const early: RetryInfo[] = [];
    const capped = client({ retry: { maxDelayMs: 40, onRetry: (i) => early.push(i) } });
    const error = await failure(capped.kiln.request('GET', '/v1/ping'));
    expect(error).toMatchObject({ status: 429, error: 'RATE_LIMITED', retryAfterSeconds: 30, attempts: 1 });
    expect(received).toHaveLength(1);
    expect(early).toEqual([]);
  });

  it('reads Retry-After strictly: delta-seconds or an HTTP date, nothing else', () => {
    const now = Date.parse('2026-12-05T12:00:00Z');
    expect(parseRetryAfter('12', now)).toBe(12);
    expect(parseRetryAfter('Sat, 05 Dec 2026 12:00:30 GMT', now)).toBe(30);
    for (const junk of ['1.5', '-5', 'soon', '2026-12-05T12:00:30Z', ''])
      expect(parseRetryAfter(junk, now)).toBeUndefined();
  });

  it('backs off exponentially with jitter when there is no Retry-After, capped', async () => {
    script = [json(502, { oops: true })];
    const { kiln, retries } = client({
      retry: { maxAttempts: 5, baseDelayMs: 20, maxDelayMs: 50, onRetry: (i) => retries.push(i) },
    });
    const error = await failure(kiln.request('GET', '/v1/ping'));
    expect(error.attempts).toBe(5);
    expect(received).toHaveLength(5);
    const [first, second, third, fourth] = retries.map((r) => r.delayMs);
    expect(first).toBeGreaterThanOrEqual(10);
    expect(first).toBeLessThanOrEqual(20);
    expect(second).toBeGreaterThanOrEqual(20);
    expect(second).toBeLessThanOrEqual(40);
    for (const capped of [third, fourth]) {
      expect(capped).toBeGreaterThanOrEqual(25);
      expect(capped).toBeLessThanOrEqual(50);
    }
  });

  it('retries 409 IDEMPOTENCY_KEY_IN_USE (the first is still running) with the same key', async () => {
    script = [
      json(409, envelope('IDEMPOTENCY_KEY_IN_USE', 'Retry after 0 s', { key: 'k' }), { 'retry-after': '0' }),
      json(201, { reservationId: 'res_1' }),
    ];
    const { kiln } = client();
    const result = await kiln.reserveCredits({ userId: 'u', estimatedCredits: 5 });
    expect(result).toEqual({ reservationId: 'res_1' });
    expect(received).toHaveLength(2);
    expect(received[0].headers['idempotency-key']).toBe(received[1].headers['idempotency-key']);
  });

  it('retries 429 RATE_LIMITED, but not 429 BUILD_ALREADY_RUNNING (the caller decides to wait or cancel)', async () => {
    script = [json(429, envelope('RATE_LIMITED', 'Retry after 0 s'), { 'retry-after': '0' }), json(200, { n: 1 })];
    expect(await client().kiln.request('DELETE', '/v1/projects/p')).toEqual({ n: 1 });
    expect(received).toHaveLength(2);

    received = [];
    script = [
      json(429, envelope('BUILD_ALREADY_RUNNING', 'Retry after 120 s', { activeBuildId: 'bld_0' }), {
        'retry-after': '120',
      }),
    ];
    const error = await failure(client().kiln.createBuild({ projectId: 'p', userId: 'u' }));
    expect(received).toHaveLength(1);
    expect(error).toMatchObject({ status: 429, error: 'BUILD_ALREADY_RUNNING', retryAfterSeconds: 120, attempts: 1 });
    expect(error.data).toEqual({ activeBuildId: 'bld_0' });
  });

  it.each([
    [400, 'VALIDATION_ERROR', { issues: [{ path: '/userId', message: 'is required' }] }],
    [401, 'INVALID_SIGNATURE', { reason: 'signature' }],
    [402, 'INSUFFICIENT_CREDITS', { required: 500, available: 350, shortfall: 150 }],
    [404, 'BUILD_NOT_FOUND', { id: 'bld_x' }],
    [409, 'INVALID_STATE_TRANSITION', { currentState: 'deployed' }],
    [409, 'REPLAYED_NONCE', undefined],
    [422, 'IDEMPOTENCY_KEY_REUSED', { key: 'k' }],
  ])('never retries a %i %s, and throws it typed', async (status, code, data) => {
    script = [json(status, envelope(code, `${code}: do something`, data))];
    const { kiln, retries } = client();
    const error = await failure(kiln.request('POST', '/v1/builds', { body: { projectId: 'p' } }));
    expect(received).toHaveLength(1);
    expect(retries).toEqual([]);
    expect(error).toBeInstanceOf(KilnError);
    expect(error).toBeInstanceOf(Error);
    expect(error).toMatchObject({
      name: 'KilnError',
      status,
      error: code,
      message: `${code}: do something`,
      requestId: 'req_envelope',
      correlationId: 'corr_1',
      attempts: 1,
      method: 'POST',
      path: '/v1/builds',
    });
    expect(error.data).toEqual(data);
    expect(isKilnError(error, code)).toBe(true);
    expect(isKilnError(error, 'SOMETHING_ELSE')).toBe(false);
  });

  it('types an answer that is not Kiln’s envelope too (a proxy’s page), with the x-request-id header', async () => {
    script = [
      (res) => {
        res.writeHead(502, { 'content-type': 'text/html', 'x-request-id': 'req_from_header' });
        res.end('<html>Bad gateway</html>');
      },
    ];
    const error = await failure(client({ retry: false }).kiln.request('GET', '/v1/ping'));
    expect(error).toMatchObject({
      status: 502,
      error: 'HTTP_502',
      message: '<html>Bad gateway</html>',
      requestId: 'req_from_header',
      body: '<html>Bad gateway</html>',
    });
  });
});

describe('request(): network errors and 5xx only when repeating is harmless', () => {
  it('retries a GET whose connection dropped', async () => {
    script = ['drop', json(200, { pong: true })];
    expect(await client().kiln.request('GET', '/v1/ping')).toEqual({ pong: true });
    expect(received).toHaveLength(2);
  });

  it('retries a keyed POST whose connection dropped, with the same key', async () => {
    script = ['drop', 'drop', json(201, { id: 'p' })];
    expect(await client().kiln.createProject({ ownerId: 'u', name: 'n' })).toEqual({ id: 'p' });
    expect(new Set(received.map((r) => r.headers['idempotency-key'])).size).toBe(1);
  });

  it('does not retry a DELETE (not keyed under /v1: a lost answer retried would say 404 for a deletion done)', async () => {
    script = ['drop'];
    const error = await client()
      .kiln.request('DELETE', '/v1/projects/p')
      .catch((e: unknown) => e);
    expect(error).toBeInstanceOf(KilnNetworkError);
    expect(isKilnNetworkError(error)).toBe(true);
    expect(error).toMatchObject({ attempts: 1, method: 'DELETE', path: '/v1/projects/p' });
    expect((error as Error).cause).toBeInstanceOf(Error);
    expect(received).toHaveLength(1);

    received = [];
    script = [json(503, envelope('SERVICE_UNAVAILABLE', 'later'), { 'retry-after': '0' })];
    expect((await failure(client().kiln.request('DELETE', '/v1/projects/p'))).status).toBe(503);
    expect(received).toHaveLength(1);
  });

  it('gives up after maxAttempts with a KilnNetworkError', async () => {
    script = ['drop'];
    const error = await client({ retry: { maxAttempts: 2, baseDelayMs: 1 } })
      .kiln.request('GET', '/v1/ping')
      .catch((e: unknown) => e);
    expect(error).toMatchObject({ name: 'KilnNetworkError', attempts: 2 });
    expect(received).toHaveLength(2);
  });

  it('the decision table', () => {
    expect(isRetryable({}, 'GET', false)).toBe(true);
    expect(isRetryable({}, 'POST', false)).toBe(false);
    expect(isRetryable({}, 'POST', true)).toBe(true);
    expect(isRetryable({ status: 500 }, 'PATCH', true)).toBe(true);
    expect(isRetryable({ status: 504 }, 'DELETE', false)).toBe(false);
    expect(isRetryable({ status: 501 }, 'GET', false)).toBe(false);
    expect(isRetryable({ status: 429 }, 'POST', false)).toBe(true);
    expect(isRetryable({ status: 409, error: 'VERSION_CONFLICT' }, 'PUT', true)).toBe(false);
    expect(parseRetryAfter('12')).toBe(12);
    expect(parseRetryAfter('Thu, 01 Jan 2026 00:00:10 GMT', Date.parse('2026-01-01T00:00:00Z'))).toBe(10);
    expect(parseRetryAfter('Thu, 01 Jan 2026 00:00:10 GMT', Date.parse('2026-01-02T00:00:00Z'))).toBe(0);
    expect(parseRetryAfter('soon')).toBeUndefined();
    expect(parseRetryAfter(null)).toBeUndefined();
  });
});

describe('raw()', () => {
  it('answers whatever the status, once, without a key unless given', async () => {
    script = [json(503, envelope('SERVICE_UNAVAILABLE', 'later'), { 'retry-after': '0' })];
    const { kiln, responses } = client();
    const res = await kiln.raw<{ error: string }>('POST', '/v1/builds', { body: { projectId: 'p' } });
    expect(res.status).toBe(503);
    expect(res.body.error).toBe('SERVICE_UNAVAILABLE');
    expect(JSON.parse(res.text)).toEqual(res.body);
    expect(res.headers.get('retry-after')).toBe('0');
    expect(received).toHaveLength(1);
    expect(received[0].headers['idempotency-key']).toBeUndefined();
    expect(responses).toHaveLength(1);
  });

  it('retries when asked, keyed so that it may', async () => {
    script = [json(503, envelope('SERVICE_UNAVAILABLE', 'later'), { 'retry-after': '0' }), json(201, { id: 'x' })];
    const res = await client().kiln.raw('POST', '/v1/builds', { body: '{"projectId":"p"}', retry: true });
    expect(res.status).toBe(201);
    expect(received).toHaveLength(2);
    expect(received[0].headers['idempotency-key']).toBe(received[1].headers['idempotency-key']);
    expect(received[1].body).toBe('{"projectId":"p"}');
  });

  it('lets headers override the signature (tests of refusals), sends bytes as given, and uses the given fetch', async () => {
    script = [json(401, envelope('INVALID_SIGNATURE', 'bad'))];
    const fetched: string[] = [];
    const { kiln } = client({
      fetch: (input, init) => {
        fetched.push(String(input));
        return fetch(input, init);
      },
    });
    const bytes = new TextEncoder().encode('{"a":"é"}');
    const res = await kiln.raw('PUT', '/v1/projects/p', { body: bytes, headers: { 'X-Sheen-Sig-V2': 'f'.repeat(64) } });
    expect(res.status).toBe(401);
    expect(fetched).toEqual([`${baseUrl}/v1/projects/p`]);
    expect(received[0].headers['x-sheen-sig-v2']).toBe('f'.repeat(64));
    expect(received[0].body).toBe('{"a":"é"}');
  });

  it('rejects only when there is no answer', async () => {
    script = ['drop'];
    await expect(client().kiln.raw('GET', '/v1/ping')).rejects.toBeInstanceOf(KilnNetworkError);
    expect(received).toHaveLength(1);
  });
});
