import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createKilnClient, signRequest } from '../../src/client/sign';
import { TEST_SECRET } from '../helpers/app';
import { type KilnProcess, type Shared, sharedEnvironment, spawnKiln } from '../helpers/kiln-process';
import { hasRedisServer, kilnOnPrivateRedis, startPrivateRedis } from '../helpers/redis-server';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Send until Kiln has reconnected to the restarted Redis (until then signed requests are refused with 503). */
async function onceReconnected(send: () => Promise<Response>): Promise<Response> {
  let response = await send();
  for (let i = 0; i < 50 && response.status === 503; i++) {
    await sleep(200);
    response = await send();
  }
  return response;
}

/**
 * SPEC section 3: replay protection must not disappear when the store loses its data. A Redis restarted without
 * persistence forgets every nonce; a captured signed request sent again afterwards, with the exact bytes it was sent
 * with the first time, must be refused — and a request signed after the restart still passes.
 */
describe.skipIf(!hasRedisServer())('a captured request replayed after Redis lost its data', () => {
  let setup: Awaited<ReturnType<typeof kilnOnPrivateRedis>>;
  beforeAll(async () => {
    setup = await kilnOnPrivateRedis('restart:');
  });
  afterAll(() => setup?.cleanup());

  it('is refused, and nothing is granted twice', async () => {
    const { kiln, redis } = setup;
    const client = createKilnClient({ baseUrl: kiln.url, secret: TEST_SECRET });
    const body = JSON.stringify({ userId: 'u_restart', credits: 40, reason: 'top-up', source: 'purchase' });
    // Captured: the exact headers and body of a grant without an Idempotency-Key.
    const headers: Record<string, string> = {
      ...signRequest({ secret: TEST_SECRET, method: 'POST', path: '/v1/credits/grant', body }),
      'content-type': 'application/json',
    };
    const send = () => fetch(`${kiln.url}/v1/credits/grant`, { method: 'POST', headers, body });
    expect((await send()).status).toBe(200);
    expect((await send()).status).toBe(409); // while Redis remembers it

    await redis.restart();
    // Kiln reconnects by itself; until then signed requests are refused with 503.
    const replay = await onceReconnected(send);
    expect(replay.status).toBe(401);
    const refused = (await replay.json()) as { error: string; data: { reason: string; notBefore: number } };
    expect(refused).toMatchObject({ error: 'TIMESTAMP_OUT_OF_RANGE', data: { reason: 'signed_before_store_epoch' } });
    expect(refused.data.notBefore).toBeGreaterThan(Number(headers['x-sheen-timestamp']));
    const balance = await client<{ balance: number }>('GET', '/v1/credits/balance/u_restart');
    if (balance.status === 401) {
      // Signed in the very second the store found its data lost: the next second's requests pass.
      await sleep(1_000);
    }
    await sleep(Math.max(0, refused.data.notBefore * 1000 - Date.now()));
    const after = await client<{ balance: number }>('GET', '/v1/credits/balance/u_restart');
    expect(after.status).toBe(200);
    expect(after.body.balance).toBe(40);
    // A grant signed now (after the restart) passes as usual.
    const fresh = await client('POST', '/v1/credits/grant', { ...JSON.parse(body), credits: 2 });
    expect(fresh.status).toBe(200);
  });
});

/**
 * A Redis that reloads a snapshot after a crash brings the old epoch back without the nonces written since. The epoch
 * is kept with the run id of the server that set it, so a new server process moves it forward all the same.
 */
describe.skipIf(!hasRedisServer())('a captured request replayed after Redis reloaded an older snapshot', () => {
  let dir: string;
  let redis: Awaited<ReturnType<typeof startPrivateRedis>>;
  let shared: Shared;
  let kiln: KilnProcess;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'kiln-rdb-'));
    redis = await startPrivateRedis(undefined, dir);
    shared = await sharedEnvironment();
    kiln = await spawnKiln({ ...shared.env, REDIS_URL: redis.url, REDIS_PREFIX: 'snapshot:' });
  });
  afterAll(async () => {
    await kiln?.stop();
    await redis?.stop();
    await shared?.cleanup();
    await rm(dir, { recursive: true, force: true });
  });

  it('is refused, and nothing is granted twice', async () => {
    const admin = new Redis(redis.url);
    // The snapshot holds the epoch Kiln set at start; the grant's nonce comes after it.
    await admin.save();
    admin.disconnect();
    const body = JSON.stringify({ userId: 'u_snapshot', credits: 25, reason: 'top-up', source: 'purchase' });
    const headers: Record<string, string> = {
      ...signRequest({ secret: TEST_SECRET, method: 'POST', path: '/v1/credits/grant', body }),
      'content-type': 'application/json',
    };
    const send = () => fetch(`${kiln.url}/v1/credits/grant`, { method: 'POST', headers, body });
    expect((await send()).status).toBe(200);
    await redis.restart();
    const replay = await onceReconnected(send);
    expect(replay.status).toBe(401);
    const refused = (await replay.json()) as { data: { reason: string } };
    expect(refused.data.reason).toBe('signed_before_store_epoch');
    await sleep(1_100);
    const client = createKilnClient({ baseUrl: kiln.url, secret: TEST_SECRET });
    expect((await client<{ balance: number }>('GET', '/v1/credits/balance/u_snapshot')).body.balance).toBe(25);
  });
});
