import pg from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import { createKilnClient } from '../../src/client/sign';
import { TEST_SECRET } from '../helpers/app';
import { DATABASE_URL } from '../helpers/env';
import { sharedKilns } from '../helpers/kiln-process';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

type Build = { id: string; state: string; reason: string | null };

/**
 * One pool for everything let slow requests starve the lease heartbeat: a live build was reaped by another process
 * while its command kept running. Requests now have a pool of their own (every statement bounded, a full pool
 * answered 503 at once) and background work another. Here every request connection of the runner's process waits on
 * a row lock for longer than a lease, while its build runs and a second process reaps lost builds.
 */
describe.skipIf(!DATABASE_URL)('a request pool held by slow requests (PostgreSQL)', () => {
  const kilns = sharedKilns({ BUILD_LEASE_S: '2', RATE_LIMIT_USER_PER_MIN: '0', RATE_LIMIT_IP_PER_MIN: '0' });
  let locker: pg.Client | undefined;
  afterAll(async () => {
    await locker?.end().catch(() => {});
  });

  it('starves neither the heartbeat nor the answer: 503 at once, statements bounded, the build deploys', async () => {
    const runner = await kilns.start({
      RUNNER_CONCURRENCY: '1',
      DATABASE_POOL_SIZE: '2',
      DATABASE_POOL_TIMEOUT_MS: '300',
      DATABASE_STATEMENT_TIMEOUT_S: '4',
      BUILD_COMMAND: `sleep 7; echo '{"type":"result","credits":3}'`,
    });
    await kilns.start({ RUNNER_CONCURRENCY: '0' });
    const api = createKilnClient({ baseUrl: runner.url, secret: TEST_SECRET });
    for (const userId of ['u_pool', 'u_blocked']) {
      expect((await api('POST', '/v1/credits/grant', { userId, credits: 100, reason: 't', source: 't' })).status).toBe(
        200,
      );
    }
    expect((await api('POST', '/v1/projects', { id: 'prj_pool', ownerId: 'o', name: 'pool' })).status).toBe(201);
    const build = (
      await api<Build>('POST', '/v1/builds', { projectId: 'prj_pool', userId: 'u_pool', estimatedCredits: 10 })
    ).body;
    for (let i = 0; i < 100 && (await api<Build>('GET', `/v1/builds/${build.id}`)).body.state !== 'building'; i++) {
      await sleep(100);
    }

    locker = new pg.Client({ connectionString: DATABASE_URL, options: `-c search_path=${kilns.env.DATABASE_SCHEMA}` });
    await locker.connect();
    await locker.query('begin');
    await locker.query("select 1 from credit_accounts where user_id = 'u_blocked' for update");
    // Both request connections now wait on the lock.
    const blocked = [1, 2].map(() =>
      api<{ error: string }>('POST', '/v1/credits/grant', {
        userId: 'u_blocked',
        credits: 1,
        reason: 't',
        source: 't',
      }),
    );
    await sleep(500);
    const started = Date.now();
    const refused = await api<{ error: string; data: { dependency: string } }>('GET', `/v1/builds/${build.id}`);
    const waited = Date.now() - started;
    expect(refused.status).toBe(503);
    expect(refused.body).toMatchObject({ error: 'SERVICE_UNAVAILABLE', data: { dependency: 'database' } });
    expect(refused.headers.get('retry-after')).toBeTruthy();
    expect(waited).toBeLessThan(2_500); // the pool's wait (300 ms), not the lock's

    await sleep(4_500); // past the statement limit, and more than two leases
    const answers = await Promise.all(blocked);
    expect(answers.map((a) => [a.status, a.body.error])).toEqual([
      [503, 'SERVICE_UNAVAILABLE'],
      [503, 'SERVICE_UNAVAILABLE'],
    ]);
    await locker.query('rollback');

    let ended: Build | undefined;
    for (let i = 0; i < 150 && !ended; i++) {
      const res = await api<Build>('GET', `/v1/builds/${build.id}`);
      if (res.status === 200 && res.body.state !== 'building') ended = res.body;
      else await sleep(100);
    }
    expect(ended).toMatchObject({ state: 'deployed', reason: null });
    // Nothing of the refused grants happened.
    expect((await api<{ balance: number }>('GET', '/v1/credits/balance/u_blocked')).body.balance).toBe(100);
  }, 60_000);
});
