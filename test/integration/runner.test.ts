import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { failLapsedBuilds } from '../../src/db/build-queue';
import { CommandExecutor } from '../../src/runner/executors/command';
import { Runner } from '../../src/runner/runner';
import { BuildSignals } from '../../src/store/signals';
import { startTestApp, type TestApp } from '../helpers/app';
import { signedInject } from '../helpers/signed';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The runner driven directly against the run's database (the API runs with the external executor). */
describe('runner edge cases', () => {
  let t: TestApp;
  let n = 0;
  // The runners' workspaces: a temp directory of this file's own, never ./.kiln.
  let workspaces: string;
  beforeAll(async () => {
    workspaces = await mkdtemp(join(tmpdir(), 'kiln-runner-test-'));
    t = await startTestApp({
      BUILD_EXECUTOR: 'external',
      RESERVATION_TTL_S: '2',
      BUILD_LEASE_S: '1',
      BUILD_TIMEOUT_S: '1',
    });
    await signedInject(t.app, {
      method: 'POST',
      url: '/v1/credits/grant',
      body: { userId: 'u_run', credits: 100_000, reason: 'test', source: 'test' },
    });
  });
  afterAll(async () => {
    await t.close();
    await rm(workspaces, { recursive: true, force: true });
  });

  const call = (method: 'GET' | 'POST' | 'PATCH', url: string, body?: unknown) =>
    signedInject(t.app, { method, url, body });
  const newBuild = async (userId = 'u_run') => {
    const projectId = `prj_edge_${++n}`;
    await call('POST', '/v1/projects', { id: projectId, ownerId: userId, name: 'edge' });
    const res = await call('POST', '/v1/builds', { projectId, userId, estimatedCredits: 10 });
    expect(res.statusCode).toBe(201);
    return res.json() as { id: string; reservationId: string };
  };
  const runnerWith = (command: string, leaseSeconds = 30) =>
    new Runner({
      db: t.database.db,
      signals: new BuildSignals(t.store.store, pino({ level: 'silent' })),
      logger: pino({ level: process.env.RUNNER_DEBUG ? 'debug' : 'silent' }),
      owner: `test_runner_${n}`,
      executor: new CommandExecutor(command),
      concurrency: 1,
      leaseSeconds,
      timeoutSeconds: 30,
      dataDir: workspaces,
      creditsPerMinute: 1,
      reservationTtlS: 60,
    });
  const stateOf = async (id: string) =>
    (await call('GET', `/v1/builds/${id}`)).json() as { state: string; reason: string | null };
  const until = async (id: string, state: string) => {
    for (let i = 0; i < 100; i++) {
      const build = await stateOf(id);
      if (build.state === state) return build;
      await sleep(50);
    }
    throw new Error(`build ${id} never became ${state}: ${JSON.stringify(await stateOf(id))}`);
  };

  it('holds again, then runs, a build whose hold lapsed while it waited', async () => {
    const build = await newBuild();
    await sleep(2_200); // RESERVATION_TTL_S=2 and no process renewed it
    const runner = runnerWith(`echo '{"type":"result","credits":3}'`);
    await runner.fill();
    await until(build.id, 'deployed');
    await runner.stop(1_000);
    const after = (await call('GET', `/v1/builds/${build.id}`)).json() as { reservationId: string };
    expect(after.reservationId).not.toBe(build.reservationId);
    expect((await call('GET', `/v1/credits/reservations/${build.reservationId}`)).json().state).toBe('expired');
    expect((await call('GET', `/v1/credits/reservations/${after.reservationId}`)).json()).toMatchObject({
      state: 'committed',
      charged: 3,
    });
  });

  it('fails, without running it, a build whose hold lapsed and whose user can no longer afford it', async () => {
    await call('POST', '/v1/credits/grant', { userId: 'u_run_poor', credits: 10, reason: 'test', source: 'test' });
    const build = await newBuild('u_run_poor');
    await sleep(2_200);
    // Meanwhile half the credits went to another hold.
    expect((await call('POST', '/v1/credits/reserve', { userId: 'u_run_poor', estimatedCredits: 5 })).statusCode).toBe(
      201,
    );
    const runner = runnerWith(`echo ran > "$KILN_WORKSPACE/ran"; echo '{"type":"result","credits":1}'`);
    await runner.fill();
    const failed = await until(build.id, 'failed');
    expect(failed.reason).toBe('hold_expired');
    await runner.stop(1_000);
    expect((await call('GET', '/v1/credits/balance/u_run_poor')).json()).toMatchObject({ balance: 10, reserved: 5 });
  });

  it('fails, without running or charging it, a build whose hold was committed through the credits API', async () => {
    const build = await newBuild();
    // The credits API refuses a live build's hold (409 RESERVATION_HELD_BY_BUILD) since migration 0008; a hold
    // resolved before that is simulated by detaching the build from its hold for the commit.
    const db = t.database.db;
    await db.query('update builds set reservation_id = null where id = $1', [build.id]);
    const committed = await call('POST', '/v1/credits/commit', {
      reservationId: build.reservationId,
      actualCredits: 4,
    });
    await db.query('update builds set reservation_id = $2 where id = $1', [build.id, build.reservationId]);
    expect(committed.statusCode).toBe(200);
    const before = (await call('GET', '/v1/credits/balance/u_run')).json().balance as number;
    const runner = runnerWith(`echo '{"type":"result","credits":9}'`);
    await runner.fill();
    const failed = await until(build.id, 'failed');
    expect(failed.reason).toBe('hold_resolved');
    await runner.stop(1_000);
    expect((await call('GET', '/v1/credits/balance/u_run')).json().balance).toBe(before);
  });

  it('ends a build when its command exits, even if a background child keeps stdout open', async () => {
    const build = await newBuild();
    const runner = runnerWith(`sleep 30 & echo '{"type":"result","credits":2}'`);
    const started = Date.now();
    await runner.fill();
    await until(build.id, 'deployed');
    expect(Date.now() - started).toBeLessThan(5_000);
    await runner.stop(1_000);
  });

  it('gives a build started through the API a lease, so an abandoned one is reaped and its hold released', async () => {
    const build = await newBuild();
    expect((await call('PATCH', `/v1/builds/${build.id}`, { state: 'building' })).statusCode).toBe(200);
    await sleep(1_100); // BUILD_TIMEOUT_S=1 is the lease of an API-started build
    const reaped = await t.database.db.transaction((tx) => failLapsedBuilds(tx, 0));
    expect(reaped.map((b) => b.id)).toContain(build.id);
    expect((await stateOf(build.id)).reason).toBe('worker_lost');
  });

  it('cancels a build a runner claims while the cancel is on its way (no false 409)', async () => {
    const build = await newBuild();
    // Claim it in a transaction held open, so the cancel reads "queued" and then waits for the row.
    const claim = await t.database.db.begin();
    const cancelled = (async () => {
      if (t.database.db.kind === 'postgres') await sleep(0);
      return call('POST', `/v1/builds/${build.id}/cancel`);
    })();
    await claim.query("update builds set state = 'building', started_at = now() where id = $1", [build.id]);
    await sleep(100);
    await claim.commit();
    const res = await cancelled;
    expect(res.statusCode).toBe(200);
    expect(res.json()).toMatchObject({ state: 'cancelled', previousState: 'building' });
  });

  it('stops a running build whose hold could not be kept, and fails it as hold_lost', async () => {
    const build = await newBuild();
    // A lease of 3 s: heartbeats (which renew the hold too) every second.
    const runner = runnerWith(`sleep 20; echo '{"type":"result","credits":2}'`, 3);
    await runner.fill();
    await until(build.id, 'building');
    await sleep(300); // the runner has renewed the hold it starts with
    const { reservationId } = (await call('GET', `/v1/builds/${build.id}`)).json() as { reservationId: string };
    // The hold lapses behind the runner's back (as after a database outage longer than RESERVATION_TTL_S).
    await t.database.db.query(`update credit_reservations set expires_at = now() - interval '1 second' where id = $1`, [
      reservationId,
    ]);
    const failed = await until(build.id, 'failed');
    expect(failed.reason).toBe('hold_lost');
    await runner.stop(1_000);
    // Nothing was charged for it: the lapsed hold was expired, not committed.
    const hold = (await call('GET', `/v1/credits/reservations/${reservationId}`)).json();
    expect(hold).toMatchObject({ state: 'expired', charged: null });
  });
});
