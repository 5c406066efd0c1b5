import { request } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runKilnExpectingFailure, type Shared, sharedEnvironment, spawnKiln } from '../helpers/kiln-process';

describe('Kiln as a process', () => {
  let shared: Shared;
  beforeAll(async () => {
    shared = await sharedEnvironment();
  });
  afterAll(() => shared.cleanup());

  it('starts, says where it listens and which stores it uses, and serves with the context headers', async () => {
    const kiln = await spawnKiln(shared.env);
    try {
      expect(kiln.output()).toMatch(/Kiln listening on http:\/\/127\.0\.0\.1:\d+ — database: .+; store: .+/);
      const res = await fetch(`${kiln.url}/healthz`, { headers: { 'x-correlation-id': 'nextjs_1_abc' } });
      expect(res.status).toBe(200);
      expect(res.headers.get('x-correlation-id')).toBe('nextjs_1_abc');
      expect(res.headers.get('x-worker-version')).toMatch(/^\d+\.\d+\.\d+/);
      expect(res.headers.get('x-processing-time-ms')).toMatch(/^\d+(\.\d+)?$/);
      const ready = await fetch(`${kiln.url}/readyz`);
      expect(ready.status).toBe(200);
      // Logs are written asynchronously: the request's line arrives shortly after its response.
      const requestId = res.headers.get('x-request-id') ?? 'missing';
      for (let i = 0; i < 50 && !kiln.output().includes(requestId); i++) await new Promise((r) => setTimeout(r, 100));
      expect(kiln.output()).toContain(requestId);
    } finally {
      expect(await kiln.stop('SIGTERM')).toBe(0);
    }
  });

  it.each([
    ['PORT', 'abc'],
    ['REDIS_URL', 'nonsense'],
    ['HMAC_MODE', 'both'],
  ])('refuses to start with %s=%s and names the variable', async (name, value) => {
    const { code, output } = await runKilnExpectingFailure({ ...shared.env, [name]: value });
    expect(code).not.toBe(0);
    expect(output).toContain(name);
    expect(output.trim().split('\n')).toHaveLength(1);
  });

  it('lets an in-flight request finish on SIGTERM, then exits 0', async () => {
    const kiln = await spawnKiln(shared.env);
    const url = new URL(kiln.url);
    // A slow upload keeps a request in flight: headers now, the body after the signal.
    const response = new Promise<{ status: number; body: string }>((resolve, reject) => {
      const req = request(
        {
          host: url.hostname,
          port: url.port,
          method: 'POST',
          path: '/healthz',
          headers: { 'content-type': 'application/json', 'content-length': '2' },
        },
        (res) => {
          let body = '';
          res.on('data', (c: Buffer) => {
            body += c.toString();
          });
          res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
        },
      );
      req.on('error', reject);
      req.write('{');
      setTimeout(() => {
        kiln.child.kill('SIGTERM');
        setTimeout(() => req.end('}'), 700);
      }, 300);
    });
    const { status, body } = await response;
    expect(status).toBe(405); // /healthz answers GET and HEAD only
    expect(JSON.parse(body).error).toBe('METHOD_NOT_ALLOWED');
    expect(await kiln.exited).toBe(0);
    expect(kiln.output()).toContain('SIGTERM received');
    expect(kiln.output()).toContain('stopped cleanly');
    await expect(fetch(`${kiln.url}/healthz`)).rejects.toThrow();
  });
});
