import { execFile } from 'node:child_process';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createKilnClient, signRequest } from '../../src/client/sign';
import { TEST_SECRET } from '../helpers/app';
import { DATABASE_URL, REDIS_URL } from '../helpers/env';
import { type KilnProcess, type Shared, sharedEnvironment, spawnKiln } from '../helpers/kiln-process';
import { hasRedisServer, kilnOnPrivateRedis, startPrivateRedis } from '../helpers/redis-server';
import { awayFromWindowEdge } from '../helpers/window';

const run = promisify(execFile);
const ROOT = new URL('../..', import.meta.url).pathname;

// Two processes share nonces and counters through Redis, or without Redis through PostgreSQL (SPEC section 3). They
// must share a database to be one deployment: embedded PGlite is one process per directory, so this needs DATABASE_URL.
describe.skipIf(!DATABASE_URL).each([
  { store: 'Redis', redis: true },
  { store: 'PostgreSQL (no Redis)', redis: false },
])('signing across two Kiln processes, nonces and quotas in $store', ({ redis }) => {
  let shared: Shared;
  let privateRedis: Awaited<ReturnType<typeof startPrivateRedis>> | undefined;
  let a: KilnProcess;
  let b: KilnProcess;
  beforeAll(async () => {
    shared = await sharedEnvironment();
    const env: Record<string, string> = { ...shared.env, RATE_LIMIT_USER_PER_MIN: '10' };
    if (!redis) delete env.REDIS_URL;
    else if (!REDIS_URL) {
      privateRedis = await startPrivateRedis();
      Object.assign(env, { REDIS_URL: privateRedis.url, REDIS_PREFIX: 'signing:' });
    }
    const dirA = join(env.DATA_DIR, 'a');
    const dirB = join(env.DATA_DIR, 'b');
    await Promise.all([mkdir(dirA), mkdir(dirB)]);
    [a, b] = await Promise.all([spawnKiln({ ...env, DATA_DIR: dirA }), spawnKiln({ ...env, DATA_DIR: dirB })]);
    expect(a.output()).toContain(redis ? 'store: Redis' : 'store: nonces and rate limits in the database');
  });
  afterAll(async () => {
    await Promise.all([a?.stop(), b?.stop()]);
    await privateRedis?.stop();
    await shared?.cleanup();
  });

  it('refuses on process B a nonce first used on process A', async () => {
    const nonce = `cross-process-${Date.now()}`;
    const headers = signRequest({ secret: TEST_SECRET, method: 'GET', path: '/v1/ping', nonce });
    const first = await fetch(`${a.url}/v1/ping`, { headers });
    expect(first.status).toBe(200);
    const second = await fetch(`${b.url}/v1/ping`, { headers });
    expect(second.status).toBe(409);
    expect(((await second.json()) as { error: string }).error).toBe('REPLAYED_NONCE');
  });

  it('accepts exactly one of 20 concurrent uses of a nonce spread over both processes', async () => {
    const headers = signRequest({ secret: TEST_SECRET, method: 'GET', path: '/v1/ping', nonce: `race-${Date.now()}` });
    const statuses = await Promise.all(
      Array.from({ length: 20 }, (_, i) => fetch(`${(i % 2 ? a : b).url}/v1/ping`, { headers }).then((r) => r.status)),
    );
    expect(statuses.filter((s) => s === 200)).toHaveLength(1);
    expect(statuses.filter((s) => s === 409)).toHaveLength(19);
  });

  it('shares one user quota between the processes', async () => {
    await awayFromWindowEdge();
    const clients = [a, b].map((p) => createKilnClient({ baseUrl: p.url, secret: TEST_SECRET }));
    const userId = `quota_${Date.now()}`;
    const statuses = await Promise.all(
      Array.from({ length: 16 }, (_, i) => clients[i % 2]('POST', '/v1/ping', { userId }).then((r) => r.status)),
    );
    expect(statuses.filter((s) => s === 200)).toHaveLength(10);
    expect(statuses.filter((s) => s === 429)).toHaveLength(6);
  });
});

describe('kiln sign', () => {
  let shared: Shared;
  let kiln: KilnProcess;
  beforeAll(async () => {
    shared = await sharedEnvironment();
    kiln = await spawnKiln(shared.env);
  });
  afterAll(async () => {
    await kiln?.stop();
    await shared?.cleanup();
  });

  it('prints, with `kiln sign`, headers and a curl line that Kiln accepts', async () => {
    const port = new URL(kiln.url).port;
    const { stdout } = await run(
      process.execPath,
      ['bin/kiln.mjs', 'sign', 'POST', '/v1/ping?b=2&a=1', '{"hello":"wörld"}'],
      {
        cwd: ROOT,
        env: { PATH: process.env.PATH ?? '', HMAC_SECRET: TEST_SECRET, PORT: port },
      },
    );
    expect(stdout).toMatch(/^x-sheen-sig-v2: [0-9a-f]{64}$/m);
    const curl = stdout.trim().split('\n').at(-1)!;
    expect(curl.startsWith('curl ')).toBe(true);
    const { stdout: answer } = await run('bash', ['-c', curl]);
    expect(JSON.parse(answer)).toMatchObject({
      ok: true,
      signatureVersion: 'v2',
      bodyBytes: Buffer.byteLength('{"hello":"wörld"}'),
    });
  });
});

describe.skipIf(!hasRedisServer())('signed requests with Redis down', () => {
  let setup: Awaited<ReturnType<typeof kilnOnPrivateRedis>>;
  beforeAll(async () => {
    setup = await kilnOnPrivateRedis('down:');
  });
  afterAll(() => setup?.cleanup());

  it('refuses with 503 rather than skipping the nonce check', async () => {
    const client = createKilnClient({ baseUrl: setup.kiln.url, secret: TEST_SECRET });
    expect((await client('GET', '/v1/ping')).status).toBe(200);
    await setup.redis.stop();
    const res = await client<{ error: string; data: { dependency: string } }>('GET', '/v1/ping');
    expect(res.status).toBe(503);
    expect(res.headers.get('retry-after')).toBe('5');
    expect(res.body.error).toBe('SERVICE_UNAVAILABLE');
    expect(res.body.data.dependency).toBe('store');
  });
});
