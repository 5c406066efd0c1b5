// Capacity as processes are added (issue 20, README "Running it at scale"): 1, 2 and 4 Kiln processes on one
// PostgreSQL and one Redis (DATABASE_URL / REDIS_URL, else the local ones), one schema, quotas off, in the same run.
// Each process gets the same share of 24 connections of a mixed workload, signed as it is sent: signed
// GET /v1/builds/:id, POST /v1/credits/reserve over 200 users, keyed POST /v1/builds into 200 projects that allow
// concurrent builds (no runner: they queue), and a replayed keyed POST /v1/projects. The runs go 1, 2, 4, 4, 2, 1
// (drift falls on every count alike) and each count's two runs are averaged. Beside throughput, the CPU each part
// used over the run (Kiln processes, PostgreSQL's, Redis, the load generator) from /proc, and PostgreSQL's commits
// per second, say where the machine saturates.
import { mkdtemp, rm } from 'node:fs/promises';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { createKilnClient, signRequest } from '../src/client/sign';
import { cpuBetween, cpuByPid, cpuOf, machineCpu } from './cpu';
import {
  BENCH_SECRET,
  type BenchRequest,
  DATABASE_URL,
  deleteRedisKeys,
  load,
  type Measurement,
  machine,
  presignedPosts,
  REDIS_URL,
  realServicesEnv,
  type Started,
  startKiln,
  writeSection,
} from './lib';

const USERS = 200;
const CONNECTIONS = 24;
const COUNTS = [1, 2, 4];

interface Run {
  processes: number;
  requestsPerSec: number;
  perProcess: number[];
  p50: number;
  p95: number;
  errors: number;
  non2xx: number;
  /** Cores used over the run (CPU seconds / wall seconds). */
  kilnCores: number;
  postgresCores: number;
  redisCores: number;
  generatorCores: number;
  /** Every process on the machine, and the time its cores waited for the disk. */
  machineCores: number;
  iowaitCores: number;
  commitsPerSec: number;
}

export async function benchScale(): Promise<void> {
  const durationS = Number(process.env.BENCH_SCALE_S ?? 10);
  const schema = `bench_scale_${Date.now().toString(36)}`;
  const dataDirs: string[] = [];
  const kilns: Started[] = [];
  const admin = new pg.Client({ connectionString: DATABASE_URL });
  await admin.connect();
  try {
    for (let i = 0; i < Math.max(...COUNTS); i++) {
      const dataDir = await mkdtemp(join(tmpdir(), 'kiln-bench-scale-'));
      dataDirs.push(dataDir);
      // One at a time: the first migrates the schema.
      kilns.push(await startKiln({ ...realServicesEnv(DATABASE_URL, REDIS_URL, schema), DATA_DIR: dataDir }));
    }
    // Users with credits, projects that take builds side by side, a queued build to read, a project to replay.
    const call = createKilnClient({ baseUrl: kilns[0].url, secret: BENCH_SECRET });
    const projects: string[] = [];
    for (let u = 0; u < USERS; u++) {
      const userId = `scale_u${u}`;
      await call('POST', '/v1/credits/grant', { userId, credits: 1_000_000_000, reason: 'bench', source: 'bench' });
      const project = await call<{ id: string }>('POST', '/v1/projects', {
        ownerId: userId,
        name: `scale ${u}`,
        allowConcurrentBuilds: true,
      });
      if (project.status !== 201) throw new Error(`setup failed: ${project.status} ${JSON.stringify(project.body)}`);
      projects.push(project.body.id);
    }
    const build = await call<{ id: string }>('POST', '/v1/builds', { projectId: projects[0], userId: 'scale_u0' });
    if (build.status !== 201) throw new Error(`setup failed: ${build.status}`);
    const getPath = `/v1/builds/${build.body.id}`;
    const replayBody = JSON.stringify({ ownerId: 'scale_u0', name: 'Replayed' });
    const replayed = presignedPosts(
      '/v1/projects',
      1,
      () => replayBody,
      () => 'scale-replayed',
    )[0];
    const created = await fetch(`${kilns[0].url}/v1/projects`, {
      method: 'POST',
      headers: replayed.headers,
      body: replayBody,
    });
    if (created.status !== 201) throw new Error(`setup failed: ${created.status}`);

    let turn = 0;
    const next = (): BenchRequest => {
      turn += 1;
      // Each kind of request goes round all the users in turn.
      const user = Math.floor(turn / 4) % USERS;
      switch (turn % 4) {
        case 0:
          return {
            method: 'GET',
            path: getPath,
            headers: signRequest({ secret: BENCH_SECRET, method: 'GET', path: getPath }),
          };
        case 1:
          return presignedPosts('/v1/credits/reserve', 1, () =>
            JSON.stringify({ userId: `scale_u${user}`, estimatedCredits: 1 }),
          )[0];
        case 2:
          return presignedPosts(
            '/v1/builds',
            1,
            () => JSON.stringify({ projectId: projects[user], userId: `scale_u${user}` }),
            () => `scale-${turn}-${Date.now().toString(36)}`,
          )[0];
        default:
          return presignedPosts(
            '/v1/projects',
            1,
            () => replayBody,
            () => 'scale-replayed',
          )[0];
      }
    };

    const commits = async () =>
      Number(
        (
          await admin.query<{ n: string }>(
            'select xact_commit::text as n from pg_stat_database where datname = current_database()',
          )
        ).rows[0].n,
      );

    const measure = async (n: number): Promise<Run> => {
      const used = kilns.slice(0, n);
      const before = {
        kiln: await cpuOf(used.map((k) => k.pid)),
        postgres: await cpuByPid('postgres'),
        redis: await cpuByPid('redis-server'),
        generator: process.cpuUsage(),
        commits: await commits(),
        machine: await machineCpu(),
        at: performance.now(),
      };
      const results: Measurement[] = await Promise.all(
        used.map((k, i) =>
          load(`${n} processes, #${i + 1}`, {
            url: k.url,
            connections: CONNECTIONS / n,
            durationS,
            setupRequest: () => next(),
          }),
        ),
      );
      const wall = (performance.now() - before.at) / 1000;
      const generator = process.cpuUsage(before.generator);
      return {
        processes: n,
        requestsPerSec: results.reduce((a, r) => a + r.requestsPerSec, 0),
        perProcess: results.map((r) => r.requestsPerSec),
        p50: Math.max(...results.map((r) => r.p50)),
        p95: Math.max(...results.map((r) => r.p95)),
        errors: results.reduce((a, r) => a + r.errors, 0),
        non2xx: results.reduce((a, r) => a + r.non2xx, 0),
        kilnCores: ((await cpuOf(used.map((k) => k.pid))) - before.kiln) / wall,
        postgresCores: cpuBetween(before.postgres, await cpuByPid('postgres')) / wall,
        redisCores: cpuBetween(before.redis, await cpuByPid('redis-server')) / wall,
        generatorCores: (generator.user + generator.system) / 1e6 / wall,
        commitsPerSec: ((await commits()) - before.commits) / wall,
        ...(await machineCpu().then((m) => ({
          machineCores: (m.busy - before.machine.busy) / wall,
          iowaitCores: (m.iowait - before.machine.iowait) / wall,
        }))),
      };
    };

    // Warm every process up, then 1, 2, 4, 4, 2, 1.
    await Promise.all(
      kilns.map((k) => load('warm-up', { url: k.url, connections: 4, durationS: 2, setupRequest: () => next() })),
    );
    const runs: Run[] = [];
    for (const n of [...COUNTS, ...[...COUNTS].reverse()]) {
      const run = await measure(n);
      process.stdout.write(`${n} process(es): ${run.requestsPerSec.toFixed(0)} req/s\n`);
      runs.push(run);
    }
    const mean = (xs: number[]) => xs.reduce((a, x) => a + x, 0) / xs.length;
    const rows = COUNTS.map((n) => {
      const mine = runs.filter((r) => r.processes === n);
      const pick = (f: (r: Run) => number) => mean(mine.map(f));
      return {
        n,
        rps: pick((r) => r.requestsPerSec),
        perProcess: pick((r) => r.requestsPerSec) / n,
        p50: Math.max(...mine.map((r) => r.p50)),
        p95: Math.max(...mine.map((r) => r.p95)),
        bad: mine.reduce((a, r) => a + r.errors + r.non2xx, 0),
        kiln: pick((r) => r.kilnCores),
        postgres: pick((r) => r.postgresCores),
        redis: pick((r) => r.redisCores),
        generator: pick((r) => r.generatorCores),
        machine: pick((r) => r.machineCores),
        iowait: pick((r) => r.iowaitCores),
        commits: pick((r) => r.commitsPerSec),
        each: mine.map((r) => r.requestsPerSec.toFixed(0)).join(', '),
      };
    });
    const one = rows[0].rps;
    const table = [
      '| processes | req/s (both runs) | mean req/s | vs 1 process | per process | worst p50 ms | worst p95 ms | errors + non-2xx | Kiln cores | PostgreSQL cores | Redis cores | load generator cores | machine busy cores | iowait cores | commits/s |',
      '| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
      ...rows.map(
        (r) =>
          `| ${r.n} | ${r.each} | ${r.rps.toFixed(0)} | ${(r.rps / one).toFixed(2)} × | ${r.perProcess.toFixed(0)} | ${r.p50} | ${r.p95} | ${r.bad} | ${r.kiln.toFixed(2)} | ${r.postgres.toFixed(2)} | ${r.redis.toFixed(2)} | ${r.generator.toFixed(2)} | ${r.machine.toFixed(2)} | ${r.iowait.toFixed(2)} | ${r.commits.toFixed(0)} |`,
      ),
    ].join('\n');
    process.stdout.write(`\n${table}\n`);
    await writeSection(
      'scale',
      `## Capacity as processes are added\n\n${new Date().toISOString()} — ${machine()} (${cpus().length} cores for everything below: Kiln, PostgreSQL, Redis and the load generator). Kiln (${process.env.BENCH_ENTRY === 'dist' ? 'compiled' : 'through tsx'}) on PostgreSQL and Redis, one schema, quotas off, no runner. ${CONNECTIONS} connections shared equally by the processes, ${durationS} s a run, in the order 1, 2, 4, 4, 2, 1 processes; a mixed workload signed as it is sent: signed GET /v1/builds/:id, POST /v1/credits/reserve over ${USERS} users, keyed POST /v1/builds into ${USERS} projects, a replayed keyed POST /v1/projects, a quarter each. Cores: CPU seconds each part used during the run over its wall time (from /proc).\n\n${table}\n`,
    );
  } finally {
    await Promise.all(kilns.map((k) => k.stop()));
    await admin.query(`drop schema if exists "${schema}" cascade`);
    await deleteRedisKeys(REDIS_URL, `${schema}:`);
    await admin.end();
    for (const dir of dataDirs) await rm(dir, { recursive: true, force: true });
  }
}

if (process.argv[1]?.endsWith('scale.ts')) await benchScale();
