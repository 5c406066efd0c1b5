import { execFile } from 'node:child_process';
import { mkdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createKilnClient } from '../../src/client/sign';
import { TEST_SECRET } from '../helpers/app';
import { DATABASE_URL } from '../helpers/env';
import { type KilnProcess, type Shared, sharedEnvironment, spawnKiln } from '../helpers/kiln-process';
import { readEventStream } from '../helpers/sse';
import { alive, waitFor } from '../helpers/wait';

const ROOT = new URL('../..', import.meta.url).pathname;
const run = promisify(execFile);
const SLOW_BUILD = `sh ${join(ROOT, 'test/fixtures/slow-build.sh')}`;

type Build = {
  id: string;
  state: string;
  reservationId: string | null;
  reason: string | null;
  error: string | null;
  previewUrl: string | null;
  actualCredits: number | null;
};

describe('the runner (command executor)', () => {
  let shared: Shared;
  const processes: KilnProcess[] = [];
  let projectCount = 0;
  const start = async (env: Record<string, string> = {}, dir?: string) => {
    const dataDir = dir ?? join(shared.env.DATA_DIR, `p${processes.length}`);
    await mkdir(dataDir, { recursive: true });
    const kiln = await spawnKiln({ ...shared.env, DATA_DIR: dataDir, RUNNER_CONCURRENCY: '2', ...env });
    processes.push(kiln);
    return kiln;
  };
  /** With DATABASE_URL every process shares one queue: stop the others so only this test's runners claim. */
  const stopAll = () => Promise.all(processes.map((p) => p.stop('SIGTERM')));
  const api = (kiln: KilnProcess) => createKilnClient({ baseUrl: kiln.url, secret: TEST_SECRET });
  const grantCredits = async (kiln: KilnProcess, userId: string) => {
    const body = { userId, credits: 100_000, reason: 'test budget', source: 'test' };
    expect((await api(kiln)('POST', '/v1/credits/grant', body)).status).toBe(200);
  };
  const newBuild = async (
    kiln: KilnProcess,
    metadata: Record<string, unknown> = {},
    allowConcurrentBuilds = false,
    estimatedCredits?: number,
  ) => {
    await grantCredits(kiln, 'user_run');
    const projectId = `prj_run_${++projectCount}_${Date.now()}`;
    expect(
      (await api(kiln)('POST', '/v1/projects', { id: projectId, ownerId: 'u', name: 'run', allowConcurrentBuilds }))
        .status,
    ).toBe(201);
    const res = await api(kiln)<Build>('POST', '/v1/builds', {
      projectId,
      userId: 'user_run',
      metadata,
      estimatedCredits,
    });
    expect(res.status).toBe(201);
    return res.body;
  };
  const getBuild = async (kiln: KilnProcess, id: string) => (await api(kiln)<Build>('GET', `/v1/builds/${id}`)).body;
  const untilState = (kiln: KilnProcess, id: string, states: string[], timeoutMs?: number) =>
    waitFor(
      `build ${id} to be ${states.join('/')}`,
      async () => {
        const build = await getBuild(kiln, id);
        return states.includes(build.state) ? build : undefined;
      },
      timeoutMs,
    );

  beforeAll(async () => {
    shared = await sharedEnvironment();
  });
  afterAll(async () => {
    await Promise.all(processes.map((p) => p.stop('SIGKILL')));
    await shared.cleanup();
  });

  it('runs the bundled sample: queued → building → deployed, with progress events, credits and a served preview', async () => {
    const kiln = await start();
    const build = await newBuild(kiln, { sampleStepMs: 50, sampleCredits: 17 });
    const { events, ended } = await readEventStream(kiln.url, `/v1/builds/${build.id}/events/stream`);
    expect(ended).toBe(true);
    const types = events.map((e) => e.data.type);
    expect(types[0]).toBe('queued');
    expect(types[1]).toBe('started');
    expect(types.at(-1)).toBe('deployed');
    expect(types.filter((t) => t === 'progress').length).toBeGreaterThanOrEqual(4);
    expect(events.map((e) => e.id)).toEqual(events.map((_, i) => i + 1));
    const done = await getBuild(kiln, build.id);
    expect(done).toMatchObject({ state: 'deployed', actualCredits: 17, previewUrl: `/previews/${build.id}/` });
    // The hold of 100 (default estimate) became a charge of the 17 credits the command reported.
    const audit = await api(kiln)<{ ok: boolean }>('GET', '/v1/credits/audit?userId=user_run');
    expect(audit.body.ok).toBe(true);
    const ledger = await api(kiln)<{ entries: { type: string; amount: number; buildId: string | null }[] }>(
      'GET',
      '/v1/credits/ledger/user_run',
    );
    expect(ledger.body.entries.find((e) => e.type === 'commit' && e.buildId === build.id)?.amount).toBe(-17);
    const preview = await fetch(`${kiln.url}${done.previewUrl}`);
    expect(preview.status).toBe(200);
    expect(await preview.text()).toContain(build.id);
    expect((await fetch(`${kiln.url}/previews/${build.id}/../../hmac-secret`)).status).toBe(404);
  });

  it('`kiln demo` shows a whole build against the running process', async () => {
    const kiln = processes[0];
    const { stdout } = await run(process.execPath, ['bin/kiln.mjs', 'demo'], {
      cwd: ROOT,
      env: { PATH: process.env.PATH ?? '', HMAC_SECRET: TEST_SECRET, PORT: new URL(kiln.url).port },
    });
    expect(stdout).toContain('POST /v1/builds → 201');
    expect(stdout).toMatch(/#1 queued/);
    expect(stdout).toMatch(/#\d+ deployed/);
    expect(stdout).toMatch(/preview: http:\/\/127\.0\.0\.1:\d+\/previews\//);
  });

  it('fails a build whose command exits non-zero, with the tail of its stderr', async () => {
    const kiln = processes[0];
    const build = await newBuild(kiln, { sampleStepMs: 20, sampleFail: true });
    const failed = await untilState(kiln, build.id, ['failed']);
    expect(failed.reason).toBe('exit_code');
    expect(failed.error).toContain('exited with code 1');
    expect(failed.error).toContain('asked to fail');
  });

  it('resumes a stream from Last-Event-ID without gaps or repeats', async () => {
    const kiln = processes[0];
    const build = await newBuild(kiln, { sampleStepMs: 150 });
    const first = await readEventStream(kiln.url, `/v1/builds/${build.id}/events/stream`, { stopAfter: 3 });
    expect(first.events.map((e) => e.id)).toEqual([1, 2, 3]);
    const rest = await readEventStream(kiln.url, `/v1/builds/${build.id}/events/stream`, { lastEventId: 3 });
    expect(rest.ended).toBe(true);
    const all = [...first.events, ...rest.events].map((e) => e.id);
    expect(all).toEqual(all.map((_, i) => i + 1));
    const listed = (await api(kiln)<{ events: { seq: number }[] }>('GET', `/v1/builds/${build.id}/events?limit=1000`))
      .body.events;
    expect(
      listed.map((e) => e.seq),
      JSON.stringify(listed),
    ).toEqual(all);
    // Resuming after the final event ends at once.
    const after = await readEventStream(kiln.url, `/v1/builds/${build.id}/events/stream`, { lastEventId: all.at(-1) });
    expect(after).toEqual({ events: [], ended: true });
  });

  it('cancel during a running command stops its whole process tree', async () => {
    await stopAll();
    const kiln = await start({ BUILD_COMMAND: SLOW_BUILD });
    const build = await newBuild(kiln);
    const workspace = join(shared.env.DATA_DIR, `p${processes.length - 1}`, 'builds', build.id);
    const pids = await waitFor('the command to record its pids', async () => {
      const text = await readFile(join(workspace, 'pids'), 'utf8').catch(() => '');
      return text.trim() ? text.trim().split(' ').map(Number) : undefined;
    });
    expect(pids.every(alive)).toBe(true);
    // The command's output is read as it comes: wait for its lines to be events before cancelling (an event that
    // would follow the cancellation is dropped, as it must be).
    const eventsOf = async () =>
      (await api(kiln)<{ events: { type: string; message?: string }[] }>('GET', `/v1/builds/${build.id}/events`)).body
        .events;
    await waitFor('the non-JSON line as a log event', async () =>
      (await eventsOf()).some((e) => e.type === 'log' && e.message === 'not json at all') ? true : undefined,
    );
    const cancelled = await api(kiln)<Build>('POST', `/v1/builds/${build.id}/cancel`, {
      reason: 'user clicked cancel',
    });
    expect(cancelled.status).toBe(200);
    expect(cancelled.body.state).toBe('cancelled');
    await waitFor('the process tree to be gone', async () => (pids.some(alive) ? undefined : true), 10_000);
    expect((await eventsOf()).at(-1)?.type).toBe('cancelled');
  });

  it('times a build out after BUILD_TIMEOUT_S and stops its process tree', async () => {
    await stopAll();
    const kiln = await start({ BUILD_COMMAND: SLOW_BUILD, BUILD_TIMEOUT_S: '2' });
    const build = await newBuild(kiln);
    const failed = await untilState(kiln, build.id, ['failed'], 15_000);
    expect(failed.reason).toBe('timeout');
    const workspace = join(shared.env.DATA_DIR, `p${processes.length - 1}`, 'builds', build.id);
    const pids = (await readFile(join(workspace, 'pids'), 'utf8')).trim().split(' ').map(Number);
    await waitFor('the process tree to be gone', async () => (pids.some(alive) ? undefined : true), 10_000);
  });

  it("keeps a running build's hold alive past RESERVATION_TTL_S with its lease, and charges it from that hold", async () => {
    await stopAll();
    // Holds live 2 s; the build runs about 4 s; heartbeats every BUILD_LEASE_S / 3 renew its lease and its hold.
    const kiln = await start({ RESERVATION_TTL_S: '2', BUILD_LEASE_S: '1' });
    // A hold of 50 (not the estimate, which other tests' builds move) covers the 17 credits the build reports.
    const build = await newBuild(kiln, { sampleStepMs: 1_000, sampleCredits: 17 }, false, 50);
    const done = await untilState(kiln, build.id, ['deployed', 'failed'], 20_000);
    expect(done).toMatchObject({ state: 'deployed', actualCredits: 17 });
    const hold = await api(kiln)<{ state: string; charged: number }>(
      'GET',
      `/v1/credits/reservations/${build.reservationId}`,
    );
    expect(hold.body).toMatchObject({ state: 'committed', charged: 17 });
    const ledger = await api(kiln)<{
      entries: { type: string; reservationId: string | null; buildId: string | null }[];
    }>('GET', '/v1/credits/ledger/user_run');
    const ofBuild = ledger.body.entries.filter((e) => e.buildId === build.id).map((e) => e.type);
    // Reserved then committed: never expired, and nothing had to be charged beyond the hold.
    expect(ofBuild.sort()).toEqual(['commit', 'reserve']);
  });

  it('fails as worker_lost, from another live process, a build whose runner was killed', async () => {
    await stopAll();
    // Embedded mode: "another process" is the next one on the same directory. PostgreSQL: a second process.
    const dir = join(shared.env.DATA_DIR, 'lost');
    const a = await start({ BUILD_COMMAND: SLOW_BUILD, BUILD_LEASE_S: '2' }, dir);
    const build = await newBuild(a);
    await untilState(a, build.id, ['building']);
    const pidsFile = join(dir, 'builds', build.id, 'pids');
    await waitFor('the command to start', async () =>
      (await readFile(pidsFile, 'utf8').catch(() => '')) ? true : undefined,
    );
    a.child.kill('SIGKILL');
    await a.exited;
    const b = await start({ RUNNER_CONCURRENCY: '0', BUILD_LEASE_S: '2' }, DATABASE_URL ? undefined : dir);
    const lost = await untilState(b, build.id, ['failed'], 30_000);
    expect(lost.reason).toBe('worker_lost');
    const events = (
      await api(b)<{ events: { type: string; data?: { reason?: string } }[] }>('GET', `/v1/builds/${build.id}/events`)
    ).body.events;
    expect(events.at(-1)).toMatchObject({
      type: 'failed',
      data: { reason: 'worker_lost', runner: expect.any(String) },
    });
    // The on-call engineer is told which runner was lost (the one that started the build), in the event and the log.
    const runner = (events.find((e) => e.type === 'started') as { data?: { runner?: string } }).data?.runner;
    expect(runner).toMatch(/^kiln_/);
    expect((events.at(-1) as { data?: { runner?: string } }).data?.runner).toBe(runner);
    await waitFor('the worker_lost log line', async () =>
      b.output().includes(`"lastOwner":"${runner}"`) ? true : undefined,
    );
    const hold = await api(b)<{ state: string }>('GET', `/v1/credits/reservations/${lost.reservationId}`);
    expect(hold.body.state).toBe('released');
    // The orphaned command outlived its runner; the test cleans it up.
    for (const pid of (await readFile(pidsFile, 'utf8')).trim().split(' ').map(Number)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {}
    }
  });

  it.skipIf(!DATABASE_URL)('two runner processes never run the same build', async () => {
    await stopAll();
    const log = join(shared.env.DATA_DIR, 'ran.txt');
    await rm(log, { force: true });
    const command = `echo "$KILN_BUILD_ID" >> ${log}; echo '{"type":"result","credits":1}'`;
    const [a, b] = await Promise.all([
      start({ BUILD_COMMAND: command, RUNNER_CONCURRENCY: '4' }),
      start({ BUILD_COMMAND: command, RUNNER_CONCURRENCY: '4' }),
    ]);
    await grantCredits(a, 'u');
    const projectId = `prj_pair_${Date.now()}`;
    await api(a)('POST', '/v1/projects', { id: projectId, ownerId: 'u', name: 'pair', allowConcurrentBuilds: true });
    const ids = await Promise.all(
      Array.from(
        { length: 30 },
        async (_, i) => (await api(i % 2 ? a : b)<Build>('POST', '/v1/builds', { projectId, userId: 'u' })).body.id,
      ),
    );
    for (const id of ids) await untilState(a, id, ['deployed']);
    const ran = (await readFile(log, 'utf8')).trim().split('\n').sort();
    expect(ran).toEqual([...ids].sort());
    for (const id of ids) {
      const events = (await api(a)<{ events: { type: string }[] }>('GET', `/v1/builds/${id}/events`)).body.events;
      expect(events.filter((e) => e.type === 'started')).toHaveLength(1);
    }
  });
});
