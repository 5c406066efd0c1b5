import { createServer, type IncomingHttpHeaders, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseRetryAfter, type SendRequest, sendWebhook } from '../../src/delivery/sender';
import { parseNetworkList } from '../../src/domain/ip-ranges';

/** A receiver on 127.0.0.1 that records what reached it and answers by path. */
interface Receiver {
  server: Server;
  port: number;
  requests: { path: string; headers: IncomingHttpHeaders; body: string }[];
}

async function receiver(answer: (path: string, res: ServerResponse) => void): Promise<Receiver> {
  const requests: Receiver['requests'] = [];
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => {
      requests.push({ path: req.url ?? '', headers: req.headers, body: Buffer.concat(chunks).toString() });
      answer((req.url ?? '').split('?')[0], res);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { server, port: (server.address() as AddressInfo).port, requests };
}

async function close(server: Server) {
  server.closeAllConnections();
  await new Promise((resolve) => server.close(resolve));
}

const LOCAL = parseNetworkList('127.0.0.1/32').networks;

describe('sendWebhook', () => {
  let main: Receiver;
  let second: Receiver;
  let closedPort: number;

  beforeAll(async () => {
    second = await receiver((_path, res) => res.end('second'));
    main = await receiver((path, res) => {
      if (path === '/ok') res.end('x'.repeat(5000));
      else if (path === '/accents') res.end('ééé');
      else if (path === '/fail') res.writeHead(500).end('boom');
      else if (path === '/busy') res.writeHead(429, { 'retry-after': '7' }).end();
      else if (path === '/busy-until')
        res.writeHead(503, { 'retry-after': new Date(Date.now() + 60_000).toUTCString() }).end();
      else if (path === '/silent')
        return; // never answers at all
      else if (path === '/stall') res.writeHead(200).write('started, never ended');
      else if (path === '/endless') {
        // A body without end: the sender must stop reading at its limit rather than buffer it.
        const chunk = Buffer.alloc(64 * 1024, 'y');
        res.writeHead(200);
        const pump = () => {
          while (!res.destroyed && res.write(chunk));
          if (!res.destroyed) res.once('drain', pump);
        };
        pump();
      } else if (path === '/metadata') res.writeHead(302, { location: 'http://169.254.169.254/' }).end();
      else if (path === '/elsewhere') res.writeHead(307, { location: `http://127.0.0.1:${second.port}/` }).end();
      else res.writeHead(404).end();
    });
    const gone = await receiver(() => {});
    closedPort = gone.port;
    await close(gone.server);
  });

  afterAll(async () => {
    await close(main.server);
    await close(second.server);
  });

  const base = (path: string, extra: Partial<SendRequest> = {}): SendRequest => ({
    url: `http://127.0.0.1:${main.port}${path}`,
    headers: { 'webhook-id': 'msg_1', 'Content-Type': 'text/plain' },
    body: '{"type":"build.finished"}',
    timeoutMs: 5000,
    allowHttp: true,
    allowedNetworks: LOCAL,
    ...extra,
  });

  it('delivers on 2xx, keeps at most maxResponseBytes of the body, and sends the headers it owns', async () => {
    const before = main.requests.length;
    const result = await sendWebhook(base('/ok'));
    expect(result).toMatchObject({ delivered: true, status: 200, failure: null, detail: null, address: '127.0.0.1' });
    expect(result.responseBody).toBe('x'.repeat(1024));
    expect(result.durationMs).toBeGreaterThan(0);
    const got = main.requests[before];
    expect(got.body).toBe('{"type":"build.finished"}');
    expect(got.headers).toMatchObject({
      'content-type': 'application/json',
      'user-agent': 'Kiln-Webhooks/1',
      'webhook-id': 'msg_1',
      host: `127.0.0.1:${main.port}`,
    });
    const named = await sendWebhook(base('/ok', { headers: { 'User-Agent': 'mine' }, maxResponseBytes: 3 }));
    expect(named.responseBody).toBe('xxx');
    expect(main.requests.at(-1)?.headers['user-agent']).toBe('mine');
  });

  it('cuts the body on a character boundary', async () => {
    expect((await sendWebhook(base('/accents', { maxResponseBytes: 5 }))).responseBody).toBe('éé');
    expect((await sendWebhook(base('/accents', { maxResponseBytes: 6 }))).responseBody).toBe('ééé');
  });

  it('stops reading a body that never ends', async () => {
    const result = await sendWebhook(base('/endless', { maxResponseBytes: 100 }));
    expect(result).toMatchObject({ delivered: true, status: 200, responseBody: 'y'.repeat(100) });
  });

  it('reports a non-2xx status with its body', async () => {
    expect(await sendWebhook(base('/fail'))).toMatchObject({
      delivered: false,
      status: 500,
      failure: 'http_status',
      detail: 'HTTP 500 Internal Server Error',
      responseBody: 'boom',
      retryAfterS: null,
    });
  });

  it('reads Retry-After as delta seconds and as an HTTP-date', async () => {
    expect(await sendWebhook(base('/busy'))).toMatchObject({ status: 429, failure: 'http_status', retryAfterS: 7 });
    const until = await sendWebhook(base('/busy-until'));
    expect(until.status).toBe(503);
    expect(until.retryAfterS).toBeGreaterThanOrEqual(58);
    expect(until.retryAfterS).toBeLessThanOrEqual(61);
  });

  it.each([
    ['7', 7],
    [' 0 ', 0],
    ['Sun, 06 Nov 1994 08:49:40 GMT', 3],
    ['Sunday, 06-Nov-94 08:49:40 GMT', 3],
    ['Sun Nov  6 08:49:40 1994', 3],
    ['Sun, 06 Nov 1994 08:00:00 GMT', 0],
    ['7.5', null],
    ['-1', null],
    ['Sun, 31 Feb 1994 08:49:40 GMT', null],
    ['soon', null],
    [undefined, null],
  ])('parses Retry-After %j as %j', (value, seconds) => {
    expect(parseRetryAfter(value, Date.UTC(1994, 10, 6, 8, 49, 37))).toBe(seconds);
  });

  it.each([
    ['never answers', '/silent', null],
    ['sends a 2xx status but never ends its body', '/stall', 200],
  ])('times out a receiver that %s', async (_what, path, status) => {
    const result = await sendWebhook(base(path, { timeoutMs: 300 }));
    expect(result).toMatchObject({ delivered: false, failure: 'timeout', status, address: '127.0.0.1' });
    expect(result.durationMs).toBeGreaterThanOrEqual(290);
    expect(result.durationMs).toBeLessThan(2000);
  });

  it('reports a closed port as connect_failed', async () => {
    const result = await sendWebhook({ ...base('/'), url: `http://127.0.0.1:${closedPort}/` });
    expect(result).toMatchObject({ delivered: false, status: null, failure: 'connect_failed' });
    expect(result.detail).toContain('ECONNREFUSED');
  });

  it('reports a receiver that does not speak TLS as tls_failed', async () => {
    const before = main.requests.length;
    const result = await sendWebhook(base('/ok', { url: `https://127.0.0.1:${main.port}/ok` }));
    expect(result).toMatchObject({ delivered: false, status: null, failure: 'tls_failed' });
    expect(main.requests.length).toBe(before);
  });

  it.each([
    ['http: when allowHttp is false', (port: number) => `http://127.0.0.1:${port}/ok`, false],
    ['another scheme', () => 'ftp://127.0.0.1/ok', true],
    ['credentials in the URL', (port: number) => `http://user:pass@127.0.0.1:${port}/ok`, true],
    ['no URL at all', () => 'not a url', true],
  ])('refuses %s as invalid_url', async (_what, url, allowHttp) => {
    const before = main.requests.length;
    const result = await sendWebhook(base('/ok', { url: url(main.port), allowHttp }));
    expect(result).toMatchObject({ delivered: false, failure: 'invalid_url', address: null });
    expect(main.requests.length).toBe(before);
  });

  it('refuses loopback without an allow-list, by literal or by name, and sends nothing', async () => {
    const before = main.requests.length;
    const literal = await sendWebhook(base('/ok', { allowedNetworks: [] }));
    expect(literal).toMatchObject({ failure: 'blocked_address', detail: '127.0.0.1 is loopback', address: null });
    const named = await sendWebhook(base('/ok', { url: `http://localhost:${main.port}/ok`, allowedNetworks: [] }));
    expect(named).toMatchObject({ failure: 'blocked_address', address: null });
    expect(named.detail).toMatch(/^localhost → .* is loopback$/);
    const mapped = await sendWebhook(
      base('/ok', { url: `http://[::ffff:127.0.0.1]:${main.port}/ok`, allowedNetworks: [] }),
    );
    expect(mapped).toMatchObject({ failure: 'blocked_address', detail: '::ffff:7f00:1 (127.0.0.1) is loopback' });
    expect(main.requests.length).toBe(before);
  });

  it.each([
    ['10.0.0.5', 'private'],
    ['169.254.169.254', 'link-local'],
    ['::ffff:127.0.0.1', 'loopback'],
    ['fd00::1', 'unique-local'],
  ])('refuses a name resolving to %s (%s) without connecting', async (address, range) => {
    const before = main.requests.length;
    const result = await sendWebhook(
      base('/ok', {
        url: `http://hooks.example.test:${main.port}/ok`,
        allowedNetworks: [],
        lookup: async () => [{ address, family: address.includes(':') ? 6 : 4 }],
      }),
    );
    expect(result).toMatchObject({ delivered: false, failure: 'blocked_address', address: null });
    expect(result.detail).toContain(`hooks.example.test → ${address}`);
    expect(result.detail).toContain(`is ${range}`);
    expect(main.requests.length).toBe(before);
  });

  it('refuses a name when any one of its addresses is refused, even if the first is allowed', async () => {
    const before = main.requests.length;
    const result = await sendWebhook(
      base('/ok', {
        url: `http://hooks.example.test:${main.port}/ok`,
        lookup: async () => [
          { address: '127.0.0.1', family: 4 },
          { address: '10.0.0.5', family: 4 },
        ],
      }),
    );
    expect(result).toMatchObject({ failure: 'blocked_address', detail: 'hooks.example.test → 10.0.0.5 is private' });
    expect(main.requests.length).toBe(before);
  });

  it('reports a name that does not resolve as dns_failed', async () => {
    const result = await sendWebhook(
      base('/ok', {
        url: 'https://nowhere.example.test/',
        lookup: async () => {
          throw Object.assign(new Error('getaddrinfo ENOTFOUND nowhere.example.test'), { code: 'ENOTFOUND' });
        },
      }),
    );
    expect(result).toMatchObject({ failure: 'dns_failed', address: null });
    expect(result.detail).toContain('ENOTFOUND');
  });

  it('never follows a redirect, to a refused address or an allowed one', async () => {
    const before = main.requests.length;
    const metadata = await sendWebhook(base('/metadata'));
    expect(metadata).toMatchObject({ delivered: false, status: 302, failure: 'redirect' });
    expect(metadata.detail).toContain('http://169.254.169.254/');
    const elsewhere = await sendWebhook(base('/elsewhere'));
    expect(elsewhere).toMatchObject({ delivered: false, status: 307, failure: 'redirect' });
    expect(elsewhere.detail).toContain(`http://127.0.0.1:${second.port}/`);
    expect(main.requests.length).toBe(before + 2);
    expect(second.requests.length).toBe(0);
  });

  it('connects to the address the lookup gave, naming the URL host in the Host header', async () => {
    const before = main.requests.length;
    const asked: string[] = [];
    const result = await sendWebhook(
      base('/ok', {
        url: `http://hooks.example.test:${main.port}/ok?attempt=1`,
        lookup: async (hostname) => {
          asked.push(hostname);
          return [{ address: '127.0.0.1', family: 4 }];
        },
      }),
    );
    expect(result).toMatchObject({ delivered: true, status: 200, address: '127.0.0.1' });
    expect(asked).toEqual(['hooks.example.test']);
    expect(main.requests.length).toBe(before + 1);
    expect(main.requests[before]).toMatchObject({
      path: '/ok?attempt=1',
      headers: { host: `hooks.example.test:${main.port}` },
    });
  });
});
