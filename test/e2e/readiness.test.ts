import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hasRedisServer, kilnOnPrivateRedis } from '../helpers/redis-server';

describe.skipIf(!hasRedisServer())('readiness with Redis stopped', () => {
  let setup: Awaited<ReturnType<typeof kilnOnPrivateRedis>>;
  beforeAll(async () => {
    setup = await kilnOnPrivateRedis('readyz:');
  });
  afterAll(() => setup?.cleanup());

  it('answers /readyz 503 naming Redis while /healthz stays 200', async () => {
    expect((await fetch(`${setup.kiln.url}/readyz`)).status).toBe(200);
    await setup.redis.stop();
    const down = await fetch(`${setup.kiln.url}/readyz`);
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
    expect(body.data.checks.store).toMatch(/^(down|timeout)$/); // the error text itself is only logged
    const health = await fetch(`${setup.kiln.url}/healthz`);
    expect(health.status).toBe(200);
  });
});
