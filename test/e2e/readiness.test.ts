import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type KilnProcess, type Shared, sharedEnvironment, spawnKiln } from '../helpers/kiln-process';
import { hasRedisServer, startPrivateRedis } from '../helpers/redis-server';

describe.skipIf(!hasRedisServer())('readiness with Redis stopped', () => {
  let shared: Shared;
  let redis: Awaited<ReturnType<typeof startPrivateRedis>>;
  let kiln: KilnProcess;
  beforeAll(async () => {
    shared = await sharedEnvironment();
    redis = await startPrivateRedis();
    kiln = await spawnKiln({ ...shared.env, REDIS_URL: redis.url, REDIS_PREFIX: 'readyz:' });
  });
  afterAll(async () => {
    await kiln?.stop();
    await redis?.stop();
    await shared?.cleanup();
  });

  it('answers /readyz 503 naming Redis while /healthz stays 200', async () => {
    expect((await fetch(`${kiln.url}/readyz`)).status).toBe(200);
    await redis.stop();
    const down = await fetch(`${kiln.url}/readyz`);
    expect(down.status).toBe(503);
    expect(down.headers.get('retry-after')).toBe('5');
    expect(down.headers.get('x-request-id')).toBeTruthy();
    const body = (await down.json()) as {
      error: string;
      message: string;
      data: { dependency: string; checks: Record<string, string> };
    };
    expect(body.error).toBe('SERVICE_UNAVAILABLE');
    expect(body.message).toContain('Redis');
    expect(body.data.dependency).toBe('store');
    expect(body.data.checks.database).toBe('ok');
    expect(body.data.checks.store).toMatch(/^down/);
    const health = await fetch(`${kiln.url}/healthz`);
    expect(health.status).toBe(200);
  });
});
