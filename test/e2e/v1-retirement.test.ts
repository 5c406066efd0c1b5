import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createKilnClient } from '../../src/client/sign';
import { TEST_SECRET } from '../helpers/app';
import { runKilnExpectingFailure, type Shared, sharedEnvironment, spawnKiln } from '../helpers/kiln-process';

/** SPEC section 1: HMAC_V1_UNTIL, once passed, stays closed — a restart without it never reopens v1. */
describe('v1 retirement survives a restart', () => {
  let shared: Shared;
  beforeAll(async () => {
    shared = await sharedEnvironment();
  });
  afterAll(() => shared?.cleanup());

  const pingWith = async (url: string, version: 'v1' | 'v2') =>
    createKilnClient({ baseUrl: url, secret: TEST_SECRET, versions: [version] })<{ error?: string }>('GET', '/v1/ping');

  it('refuses v1 after HMAC_V1_UNTIL, and still after a restart without the variable', async () => {
    const first = await spawnKiln({ ...shared.env, HMAC_V1_UNTIL: '2026-01-01T00:00:00Z' });
    try {
      const refused = await pingWith(first.url, 'v1');
      expect(refused.status).toBe(401);
      expect(refused.body.error).toBe('MISSING_SIGNATURE');
      expect((await pingWith(first.url, 'v2')).status).toBe(200);
    } finally {
      await first.stop();
    }
    const second = await spawnKiln(shared.env);
    try {
      expect(second.output()).toContain('v1 signature retirement recorded in the database is in force');
      expect((await pingWith(second.url, 'v1')).status).toBe(401);
      expect((await pingWith(second.url, 'v2')).status).toBe(200);
    } finally {
      await second.stop();
    }
    // A later HMAC_V1_UNTIL does not reopen it either.
    const third = await spawnKiln({ ...shared.env, HMAC_V1_UNTIL: '2099-01-01T00:00:00Z' });
    try {
      expect((await pingWith(third.url, 'v1')).status).toBe(401);
    } finally {
      await third.stop();
    }
  }, 120_000);

  it('will not start in HMAC_MODE=v1 once v1 is retired, and says how to undo it deliberately', async () => {
    const { code, output } = await runKilnExpectingFailure({ ...shared.env, HMAC_MODE: 'v1', PORT: '0' });
    expect(code).not.toBe(0);
    expect(output).toMatch(/v1 signatures were retired at 2026-01-01T00:00:00.000Z/);
    expect(output).toMatch(/set HMAC_MODE=v2 or dual/);
  });
});
