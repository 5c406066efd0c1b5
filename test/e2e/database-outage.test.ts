import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createKilnClient, signRequest } from '../../src/client/sign';
import { TEST_SECRET } from '../helpers/app';
import { type KilnProcess, spawnKiln } from '../helpers/kiln-process';
import { hasPostgresBinaries, type PrivatePostgres, startPrivatePostgres } from '../helpers/private-postgres';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

type Build = { id: string; state: string; reason: string | null; actualCredits: number | null };

/**
 * SPEC section 6: "A build that finished while the database was briefly unreachable is recorded with its real outcome
 * when it answers again, not reaped as lost." A private PostgreSQL cluster is stopped while three builds run, for
 * three times their lease; their commands finish meanwhile. A second process reaps lost builds all along.
 */
describe.skipIf(!hasPostgresBinaries())('builds that finish while PostgreSQL is down', () => {
  let pg: PrivatePostgres;
  let dataDir: string;
  const kilns: KilnProcess[] = [];
  beforeAll(async () => {
    pg = await startPrivatePostgres();
    dataDir = await mkdtemp(join(tmpdir(), 'kiln-outage-'));
  });
  afterAll(async () => {
    await Promise.all(kilns.map((k) => k.stop('SIGKILL')));
    await pg?.cleanup();
    await rm(dataDir, { recursive: true, force: true });
  });

  it('are recorded deployed and charged once it is back, not failed as worker_lost', async () => {
    const env = {
      DATABASE_URL: pg.url,
      DATABASE_SCHEMA: 'kiln_outage',
      HMAC_SECRET: TEST_SECRET,
      LOG_LEVEL: 'info',
      BUILD_LEASE_S: '3',
      RATE_LIMIT_USER_PER_MIN: '0',
      RATE_LIMIT_IP_PER_MIN: '0',
    };
    const runner = await spawnKiln({
      ...env,
      DATA_DIR: join(dataDir, 'runner'),
      RUNNER_CONCURRENCY: '3',
      BUILD_COMMAND: `sleep 3; echo '{"type":"result","credits":7}'`,
    });
    kilns.push(runner);
    kilns.push(await spawnKiln({ ...env, DATA_DIR: join(dataDir, 'reaper'), RUNNER_CONCURRENCY: '0' }));
    const api = createKilnClient({ baseUrl: runner.url, secret: TEST_SECRET });
    expect(
      (await api('POST', '/v1/credits/grant', { userId: 'u_out', credits: 1000, reason: 't', source: 't' })).status,
    ).toBe(200);
    const builds: Build[] = [];
    for (let i = 0; i < 3; i++) {
      expect((await api('POST', '/v1/projects', { id: `prj_out_${i}`, ownerId: 'o', name: 'outage' })).status).toBe(
        201,
      );
      const res = await api<Build>('POST', '/v1/builds', {
        projectId: `prj_out_${i}`,
        userId: 'u_out',
        estimatedCredits: 20,
      });
      expect(res.status).toBe(201);
      builds.push(res.body);
    }
    for (let i = 0; i < 100; i++) {
      const states = await Promise.all(
        builds.map(async (b) => (await api<Build>('GET', `/v1/builds/${b.id}`)).body.state),
      );
      if (states.every((s) => s === 'building')) break;
      await sleep(100);
    }

    // A grant captured before the outage (its nonce is in PostgreSQL: no Redis here), replayed after it.
    const grantBody = JSON.stringify({ userId: 'u_out_replay', credits: 5, reason: 't', source: 't' });
    const captured: Record<string, string> = {
      ...signRequest({ secret: TEST_SECRET, method: 'POST', path: '/v1/credits/grant', body: grantBody }),
      'content-type': 'application/json',
    };
    const sendCaptured = () =>
      fetch(`${runner.url}/v1/credits/grant`, { method: 'POST', headers: captured, body: grantBody });
    expect((await sendCaptured()).status).toBe(200);

    await pg.stop('fast');
    await sleep(9_000); // three leases; every command finishes meanwhile
    await pg.start();

    const ended: Build[] = [];
    for (const build of builds) {
      for (let i = 0; i < 300; i++) {
        const res = await api<Build>('GET', `/v1/builds/${build.id}`);
        if (res.status === 200 && ['deployed', 'failed', 'cancelled'].includes(res.body.state)) {
          ended.push(res.body);
          break;
        }
        await sleep(100);
      }
    }
    expect(ended.map((b) => [b.state, b.reason, b.actualCredits])).toEqual(builds.map(() => ['deployed', null, 7]));
    const balance = await api<{ balance: number; reserved: number }>('GET', '/v1/credits/balance/u_out');
    expect(balance.body).toMatchObject({ balance: 1000 - 3 * 7, reserved: 0 });
    expect((await api<{ ok: boolean }>('GET', '/v1/credits/audit')).body.ok).toBe(true);
    expect(runner.output()).toContain('retrying until it answers');
    // Requests signed before the server restarted are refused: its asynchronous commits may have lost their nonces.
    const replay = await sendCaptured();
    expect(replay.status).toBe(401);
    expect(((await replay.json()) as { data: { reason: string } }).data.reason).toBe('signed_before_store_epoch');
    expect((await api<{ balance: number }>('GET', '/v1/credits/balance/u_out_replay')).body.balance).toBe(5);
  }, 90_000);
});
