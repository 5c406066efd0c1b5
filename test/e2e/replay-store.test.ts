import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createKilnClient, signRequest } from '../../src/client/sign';
import { TEST_SECRET } from '../helpers/app';
import { hasRedisServer, kilnOnPrivateRedis } from '../helpers/redis-server';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

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
    let replay: Response | undefined;
    for (let i = 0; i < 50; i++) {
      replay = await send();
      if (replay.status !== 503) break;
      await sleep(200);
    }
    expect(replay?.status).toBe(401);
    const refused = (await replay?.json()) as { error: string; data: { reason: string; notBefore: number } };
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
