import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createKilnClient } from '../../src/client/sign';
import { TEST_SECRET } from '../helpers/app';
import { expectContextHeaders, expectEnvelopeBody } from '../helpers/envelope';
import { type KilnProcess, type Shared, sharedEnvironment, spawnKiln } from '../helpers/kiln-process';
import { type RawResponse, rawExchange, rawRequest } from '../helpers/raw-http';

/** The envelope with exactly its keys, and the four context headers matching it. */
function expectEnvelope(res: RawResponse, status: number, code: string) {
  expect(res.status, res.text.slice(0, 400)).toBe(status);
  expect(res.headers['content-type']).toBe('application/json; charset=utf-8');
  const body = JSON.parse(res.body) as Record<string, unknown>;
  expectEnvelopeBody(body, code);
  expectContextHeaders(res.headers, body, /^\d+\.\d+\.\d+/);
  return body as {
    error: string;
    message: string;
    data?: Record<string, unknown>;
    requestId: string;
    correlationId: string;
  };
}

const request = (head: string, body = '') => `${head}\r\n\r\n${body}`;

describe('errors Node and Fastify raise themselves come in the envelope, with the four headers', () => {
  let shared: Shared;
  let kiln: KilnProcess;
  beforeAll(async () => {
    shared = await sharedEnvironment();
    kiln = await spawnKiln({ ...shared.env, BUILD_EXECUTOR: 'external' });
  });
  afterAll(async () => {
    await kiln?.stop('SIGKILL');
    await shared?.cleanup();
  });

  // What Node's parser refuses before there is a request: answered on the socket, a fresh request id, then closed.
  it.each([
    ['a NUL byte in a header', 'GET /healthz HTTP/1.1\r\nHost: k\r\nX-A: a\x00b', 400, 'BAD_REQUEST'],
    ['a control character in a header', 'GET /healthz HTTP/1.1\r\nHost: k\r\nX-A: a\x01b', 400, 'BAD_REQUEST'],
    ['a space in a header name', 'GET /healthz HTTP/1.1\r\nHost: k\r\nBad Header: 1', 400, 'BAD_REQUEST'],
    ['raw non-ASCII bytes in the path', 'GET /v1/builds/caf\xc3\xa9 HTTP/1.1\r\nHost: k', 400, 'BAD_REQUEST'],
    ['a space in the path', 'GET /v1/builds/a b HTTP/1.1\r\nHost: k', 400, 'BAD_REQUEST'],
    ['a non-numeric Content-Length', 'POST /v1/ping HTTP/1.1\r\nHost: k\r\nContent-Length: abc', 400, 'BAD_REQUEST'],
    ['a negative Content-Length', 'POST /v1/ping HTTP/1.1\r\nHost: k\r\nContent-Length: -1', 400, 'BAD_REQUEST'],
    [
      'a Content-Length past 2^64',
      'POST /v1/ping HTTP/1.1\r\nHost: k\r\nContent-Length: 99999999999999999999999',
      400,
      'BAD_REQUEST',
    ],
    [
      'two Content-Lengths',
      'POST /v1/ping HTTP/1.1\r\nHost: k\r\nContent-Length: 2\r\nContent-Length: 3',
      400,
      'BAD_REQUEST',
    ],
    [
      'Content-Length with Transfer-Encoding',
      'POST /v1/ping HTTP/1.1\r\nHost: k\r\nContent-Length: 2\r\nTransfer-Encoding: chunked',
      400,
      'BAD_REQUEST',
    ],
    ['an unknown method', 'FOO /v1/ping HTTP/1.1\r\nHost: k', 501, 'NOT_IMPLEMENTED'],
    ['an unknown HTTP version', 'GET /healthz HTTP/9.9\r\nHost: k', 505, 'HTTP_VERSION_NOT_SUPPORTED'],
    ['bare LF line ends', 'GET /healthz HTTP/1.1\nHost: k\n', 400, 'BAD_REQUEST'],
    ['a folded header', 'GET /healthz HTTP/1.1\r\nHost: k\r\nX-A: a\r\n b', 400, 'BAD_REQUEST'],
    ['not HTTP at all', 'hello there', 400, 'BAD_REQUEST'],
    ['the HTTP/2 preface', 'PRI * HTTP/2.0\r\n\r\nSM', 505, 'HTTP_VERSION_NOT_SUPPORTED'],
    ['an over-long URL', `GET /healthz?q=${'a'.repeat(20_000)} HTTP/1.1\r\nHost: k`, 414, 'URI_TOO_LONG'],
    ['over-long headers', `GET /healthz HTTP/1.1\r\nHost: k\r\nX-Big: ${'a'.repeat(20_000)}`, 431, 'HEADERS_TOO_LARGE'],
    [
      'many headers',
      `GET /healthz HTTP/1.1\r\nHost: k\r\n${'X-H: 1234567890\r\n'.repeat(2000)}X-End: 1`,
      431,
      'HEADERS_TOO_LARGE',
    ],
  ])('%s, then the connection closes', async (_what, head, status, code) => {
    const res = await rawRequest(kiln.url, request(head));
    const body = expectEnvelope(res, status, code);
    expect(res.headers['x-correlation-id']).toBe(body.requestId);
    expect(res.headers.connection).toBe('close');
    expect(res.closed).toBe(true);
    expect(body.data?.parserError).toMatch(/^HPE_/);
  });

  it.each([
    [
      'malformed chunked encoding',
      'POST /v1/ping HTTP/1.1\r\nHost: k\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked',
      'zz\r\n{}\r\n0\r\n\r\n',
      400,
      'BAD_REQUEST',
    ],
    [
      'a chunk broken after a good one',
      'POST /v1/ping HTTP/1.1\r\nHost: k\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked',
      '2\r\n{}\r\nzz\r\n',
      400,
      'BAD_REQUEST',
    ],
    [
      'over-long chunk extensions',
      'POST /v1/ping HTTP/1.1\r\nHost: k\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked',
      `2;${'e'.repeat(20_000)}\r\n{}\r\n0\r\n\r\n`,
      413,
      'PAYLOAD_TOO_LARGE',
    ],
  ])('a body with %s, then the connection closes', async (_what, head, body, status, code) => {
    const res = await rawRequest(kiln.url, request(head, body));
    expectEnvelope(res, status, code);
    expect(res.closed).toBe(true);
  });

  it('answers earlier pipelined requests first, then the malformed one, then closes', async () => {
    const bytes =
      'GET /healthz HTTP/1.1\r\nHost: k\r\n\r\nGET /readyz HTTP/1.1\r\nHost: k\r\n\r\nGET /healthz HTTP/1.1\r\nHost: k\r\nX: a\x00\r\n\r\n';
    const { responses, closed } = await rawExchange(kiln.url, bytes);
    expect(responses.map((r) => r.status)).toEqual([200, 200, 400]);
    expectEnvelope(responses[2], 400, 'BAD_REQUEST');
    expect(new Set(responses.map((r) => r.headers['x-request-id'])).size).toBe(3);
    expect(closed).toBe(true);
  });

  it('a request already answered (415) whose body then breaks gets no second answer', async () => {
    const head = 'POST /v1/ping HTTP/1.1\r\nHost: k\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked';
    const { responses, closed } = await rawExchange(kiln.url, request(head, 'zz\r\n'));
    expect(responses).toHaveLength(1);
    expectEnvelope(responses[0], 415, 'UNSUPPORTED_MEDIA_TYPE');
    expect(closed).toBe(true);
  });

  it.each([
    ['an HTTP/1.1 request without Host', 'GET /healthz HTTP/1.1', 400, 'BAD_REQUEST'],
    ['an Expect it cannot meet', 'GET /healthz HTTP/1.1\r\nHost: k\r\nExpect: the-moon', 417, 'EXPECTATION_FAILED'],
    ['CONNECT', 'CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443', 501, 'NOT_IMPLEMENTED'],
    ['bad percent-encoding in the path', 'GET /v1/builds/%zz HTTP/1.1\r\nHost: k', 400, 'BAD_REQUEST'],
    ['bad percent-encoding (not UTF-8)', 'GET /v1/builds/%c3%28 HTTP/1.1\r\nHost: k', 400, 'BAD_REQUEST'],
    [
      'a path parameter past 1024 characters',
      `GET /v1/builds/${'b'.repeat(1025)} HTTP/1.1\r\nHost: k`,
      414,
      'URI_TOO_LONG',
    ],
  ])('%s', async (_what, head, status, code) => {
    const res = await rawRequest(kiln.url, request(`${head}\r\nConnection: close\r\nX-Correlation-Id: corr_raw_1`));
    const body = expectEnvelope(res, status, code);
    if (!head.startsWith('CONNECT')) expect(body.correlationId).toBe('corr_raw_1');
  });

  it('keeps the caller’s sane x-request-id on framework errors', async () => {
    const res = await rawRequest(
      kiln.url,
      request('GET /v1/builds/%zz HTTP/1.1\r\nHost: k\r\nConnection: close\r\nX-Request-Id: req_from_client_7'),
    );
    expect(expectEnvelope(res, 400, 'BAD_REQUEST').requestId).toBe('req_from_client_7');
  });

  it.each([
    ['DELETE', '/v1/builds/abc', 'GET, HEAD, PATCH'],
    ['PUT', '/v1/ping', 'GET, HEAD, POST'],
    ['HEAD', '/v1/credits/grant', 'POST'],
    ['GET', '/v1/builds/abc/cancel', 'POST'],
    ['POST', '/v1/projects/p1', 'GET, HEAD, PUT, PATCH, DELETE'],
    ['OPTIONS', '/v1/builds', 'GET, HEAD, POST'],
    ['PROPFIND', '/healthz', 'GET, HEAD'],
    ['POST', '/previews/bld_1/index.html', 'GET, HEAD'],
  ])('%s %s → 405 METHOD_NOT_ALLOWED, Allow: %s', async (method, path, allow) => {
    const res = await rawRequest(kiln.url, request(`${method} ${path} HTTP/1.1\r\nHost: k\r\nConnection: close`));
    expect(res.headers.allow).toBe(allow);
    if (method === 'HEAD') {
      expect(res.status).toBe(405);
      return; // no body
    }
    const body = expectEnvelope(res, 405, 'METHOD_NOT_ALLOWED');
    expect(body.data).toEqual({ method, path, allowed: allow.split(', ') });
  });

  it('a path no route has stays 404', async () => {
    const res = await rawRequest(kiln.url, request('DELETE /v1/nothing/here HTTP/1.1\r\nHost: k\r\nConnection: close'));
    expectEnvelope(res, 404, 'NOT_FOUND');
  });

  it('a 120-character userId reaches the signature check, and signed, the balance', async () => {
    const userId = `u${'x'.repeat(119)}`;
    const unsigned = await rawRequest(
      kiln.url,
      request(`GET /v1/credits/balance/${userId} HTTP/1.1\r\nHost: k\r\nConnection: close`),
    );
    expectEnvelope(unsigned, 401, 'MISSING_SIGNATURE');
    const api = createKilnClient({ baseUrl: kiln.url, secret: TEST_SECRET });
    const signed = await api<{ userId: string; balance: number }>('GET', `/v1/credits/balance/${userId}`);
    expect(signed.status).toBe(200);
    expect(signed.body).toMatchObject({ userId, balance: 0 });
    const tooLong = await api<{ error: string; data: { issues: { path: string }[] } }>(
      'GET',
      `/v1/credits/balance/${'y'.repeat(129)}`,
    );
    expect(tooLong.status).toBe(400);
    expect([...new Set(tooLong.body.data.issues.map((i) => i.path))]).toEqual(['params.userId']);
  });

  it('a second build on a busy project: 429 with every rate-limit header', async () => {
    const api = createKilnClient({ baseUrl: kiln.url, secret: TEST_SECRET });
    const grant = { userId: 'user_busy', credits: 1000, reason: 'test budget', source: 'test' };
    expect((await api('POST', '/v1/credits/grant', grant)).status).toBe(200);
    const projectId = `prj_busy_${Date.now()}`;
    expect((await api('POST', '/v1/projects', { id: projectId, ownerId: 'u', name: 'busy' })).status).toBe(201);
    expect((await api('POST', '/v1/builds', { projectId, userId: 'user_busy' })).status).toBe(201);
    const busy = await api<{ error: string; data: { etaSeconds: number } }>('POST', '/v1/builds', {
      projectId,
      userId: 'user_busy',
    });
    expect(busy.status).toBe(429);
    expect(busy.body.error).toBe('BUILD_ALREADY_RUNNING');
    const eta = busy.body.data.etaSeconds;
    expect(Object.fromEntries(busy.headers)).toMatchObject({
      'retry-after': String(eta),
      'x-ratelimit-limit': '1',
      'x-ratelimit-remaining': '0',
      'x-ratelimit-reset': String(eta),
      ratelimit: `limit=1, remaining=0, reset=${eta}`,
      'ratelimit-policy': `1;w=${eta}`,
    });
  });

  it('logs each client error with the request id it answered', async () => {
    const res = await rawRequest(kiln.url, request('GET /healthz HTTP/1.1\r\nHost: k\r\nX-A: \x00'));
    const { requestId } = expectEnvelope(res, 400, 'BAD_REQUEST');
    for (let i = 0; i < 50 && !kiln.output().includes(requestId); i++) await new Promise((r) => setTimeout(r, 20));
    const line = kiln
      .output()
      .split('\n')
      .find((l) => l.includes(requestId));
    expect(JSON.parse(line ?? '{}')).toMatchObject({
      msg: 'client error',
      code: 'BAD_REQUEST',
      parserError: 'HPE_INVALID_HEADER_TOKEN',
    });
  });
});
