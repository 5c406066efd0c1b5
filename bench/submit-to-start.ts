// Submit-to-start latency (SPEC section 8: "201 → state building"), same run, same PostgreSQL:
// - Kiln: signed POST /v1/builds through the whole HTTP path, then its own runner claims the build;
// - graphile-worker 0.17 (LISTEN/NOTIFY built in) and pg-boss 10 (polling), each in its own fresh schema, with the
//   worker in a child process (as Kiln's runner is in a process other than the load generator's) and jobs added
//   from this process at the same rate / concurrency as Kiln's submissions.
// The headline figure is measured on the database's clock for all three: the claim's now() minus the insert
// transaction's now() (Kiln: builds.started_at − builds.created_at; graphile-worker: locked_at − created_at;
// pg-boss: started_on − created_on). Two client-side views on the host clock are printed next to it.
// This file is also the worker child: with BENCH_S2S_ROLE set it runs a graphile-worker or pg-boss worker instead.
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { makeWorkerUtils, run as runGraphileWorker } from 'graphile-worker';
import { Redis } from 'ioredis';
import pg from 'pg';
import PgBoss from 'pg-boss';
import { createKilnClient, signRequest } from '../src/client/sign';
import { BENCH_SECRET, DATABASE_URL, machine, REDIS_URL, startKiln, startProcess, writeSection } from './lib';

const THIS_FILE = fileURLToPath(import.meta.url);

const JOBS = Number(process.env.BENCH_S2S_JOBS ?? 1000);
const WARMUP = 50;
/** Fixed arrival rate of the open-loop scenario (submissions/s). */
const RATE = Number(process.env.BENCH_S2S_RATE ?? 100);
/** Submissions in flight in the closed-loop scenario. */
const IN_FLIGHT = 10;
const CONCURRENCY = 8;
const PGBOSS_BATCH = 8;
const PGBOSS_MIN_POLL_S = 0.5; // pg-boss 10 refuses less (attorney.js: MIN_POLLING_INTERVAL_MS = 500)
const PGBOSS_DEFAULT_POLL_S = 2;
const BUILD_COMMAND = `echo '{"type":"result","credits":1}'`;
const USERS = 10;
const QUEUE = 's2s';
const START_TIMEOUT_MS = 180_000;

type Load = { kind: 'rate'; perSecond: number } | { kind: 'inflight'; n: number };

/** One submission: `sentAt` just before the call, `ackAt` when it answered (host clock, ms). */
interface Submission {
  key: string;
  sentAt: number;
  ackAt: number;
}

/** One started item, times in ms: database clock for `createdAt`/`startedAt`. */
interface Started {
  key: string;
  createdAt: number;
  startedAt: number;
  dbLatency: number;
}

interface Row {
  system: string;
  load: string;
  count: number;
  achievedRate: number;
  ack: number[];
  db: number[];
  sendToStart: number[];
  ackToStart: number[];
  /** 1-minute load average of the machine when the row ended (the machine is shared). */
  loadAvg: number;
  note?: string;
}

const loadName = (load: Load) =>
  load.kind === 'rate' ? `${load.perSecond}/s fixed rate` : `${load.n} in flight (closed loop)`;

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];
}

const fmt = (ms: number) => (Number.isNaN(ms) ? '—' : ms >= 1000 ? ms.toFixed(0) : ms.toFixed(1));
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Drive `count` submissions at the given load; returns each one's host-clock times and the achieved rate. */
async function drive(
  count: number,
  load: Load,
  submit: (i: number) => Promise<string>,
): Promise<{ submissions: Submission[]; achievedRate: number }> {
  const submissions: Submission[] = [];
  const one = async (i: number) => {
    const sentAt = Date.now();
    const key = await submit(i);
    submissions.push({ key, sentAt, ackAt: Date.now() });
  };
  const t0 = Date.now();
  if (load.kind === 'rate') {
    const pending: Promise<void>[] = [];
    const gap = 1000 / load.perSecond;
    for (let i = 0; i < count; i++) {
      const wait = t0 + i * gap - Date.now();
      if (wait > 0) await sleep(wait);
      pending.push(one(i));
    }
    await Promise.all(pending);
  } else {
    let next = 0;
    await Promise.all(
      Array.from({ length: load.n }, async () => {
        while (next < count) await one(next++);
      }),
    );
  }
  const elapsed = (Math.max(...submissions.map((s) => s.sentAt)) - t0) / 1000;
  return { submissions, achievedRate: elapsed > 0 ? (count - 1) / elapsed : Number.NaN };
}

function toRow(
  system: string,
  load: Load,
  submissions: Submission[],
  achievedRate: number,
  started: Map<string, Started>,
  note?: string,
): Row {
  const sorted = (xs: number[]) => xs.sort((a, b) => a - b);
  const missing = submissions.filter((s) => !started.has(s.key));
  if (missing.length) throw new Error(`${system}: ${missing.length} submissions never started`);
  const both = submissions.map((s) => ({ s, t: started.get(s.key)! }));
  return {
    system,
    load: loadName(load),
    count: submissions.length,
    achievedRate,
    ack: sorted(submissions.map((s) => s.ackAt - s.sentAt)),
    db: sorted(both.map(({ t }) => t.dbLatency)),
    sendToStart: sorted(both.map(({ s, t }) => t.startedAt - s.sentAt)),
    ackToStart: sorted(both.map(({ s, t }) => t.startedAt - s.ackAt)),
    loadAvg: loadavg()[0],
    note,
  };
}

function table(rows: Row[]): string {
  const lines = [
    '| system | load | n | achieved rate /s | submit ack p50 / p99 ms | **add→start p50** | **p95** | **p99** | **max** (ms, DB clock) | send→start p50 / p99 ms | ack→start p50 / p99 ms | load avg |',
    '| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
  ];
  for (const r of rows) {
    const pair = (xs: number[]) => `${fmt(percentile(xs, 50))} / ${fmt(percentile(xs, 99))}`;
    lines.push(
      `| ${r.system} | ${r.load} | ${r.count} | ${r.achievedRate.toFixed(0)} | ${pair(r.ack)} | ${fmt(percentile(r.db, 50))} | ${fmt(percentile(r.db, 95))} | ${fmt(percentile(r.db, 99))} | ${fmt(r.db[r.db.length - 1])} | ${pair(r.sendToStart)} | ${pair(r.ackToStart)} | ${r.loadAvg.toFixed(1)} |`,
    );
  }
  return lines.join('\n');
}

/** Poll until `check` says done, or fail after `timeoutMs`. */
async function until(what: string, timeoutMs: number, check: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Kiln

interface KilnSettings {
  logLevel: 'info' | 'warn';
}

async function kilnRun(admin: pg.Client, load: Load, settings: KilnSettings): Promise<Row> {
  const schema = `bench_s2s_kiln_${Date.now().toString(36)}_${randomBytes(2).toString('hex')}`;
  const dataDir = await mkdtemp(join(tmpdir(), 'kiln-s2s-'));
  const kiln = await startKiln({
    DATABASE_URL,
    DATABASE_SCHEMA: schema,
    REDIS_URL,
    REDIS_PREFIX: `${schema}:`,
    DATA_DIR: dataDir,
    HMAC_SECRET: BENCH_SECRET,
    RATE_LIMIT_IP_PER_MIN: '0',
    RATE_LIMIT_USER_PER_MIN: '0',
    RUNNER_CONCURRENCY: String(CONCURRENCY),
    BUILD_EXECUTOR: 'command',
    BUILD_COMMAND,
    LOG_LEVEL: settings.logLevel,
  });
  try {
    const call = createKilnClient({ baseUrl: kiln.url, secret: BENCH_SECRET });
    const project = await call<{ id: string }>('POST', '/v1/projects', {
      ownerId: 'bench_owner',
      name: 'Submit-to-start bench',
      allowConcurrentBuilds: true,
    });
    if (project.status !== 201) throw new Error(`project: ${project.status} ${project.text}`);
    const users = Array.from({ length: USERS }, (_, u) => `bench_s2s_user_${u}`);
    // Grant generously up front: builds may reserve credits in their create transaction (404: no credits yet).
    for (const userId of users) {
      const granted = await call('POST', '/v1/credits/grant', {
        userId,
        credits: 1_000_000,
        reason: 'submit-to-start bench',
        source: 'adjustment',
      });
      if (granted.status !== 200 && granted.status !== 201 && granted.status !== 404) {
        throw new Error(`grant: ${granted.status} ${granted.text}`);
      }
    }
    const projectId = project.body.id;
    const submit = async (i: number) => {
      const body = JSON.stringify({ projectId, userId: users[i % USERS], estimatedCredits: 1 });
      const path = '/v1/builds';
      const response = await fetch(`${kiln.url}${path}`, {
        method: 'POST',
        headers: {
          ...signRequest({ secret: BENCH_SECRET, method: 'POST', path, body }),
          'content-type': 'application/json',
          'idempotency-key': `s2s-${randomBytes(8).toString('hex')}`,
        },
        body,
      });
      const text = await response.text();
      if (response.status !== 201) throw new Error(`POST /v1/builds: ${response.status} ${text}`);
      return (JSON.parse(text) as { id: string }).id;
    };
    const startedIds = async (ids: string[]) => {
      const { rows } = await admin.query<{ n: number }>(
        `select count(*)::int as n from "${schema}".builds where id = any($1::text[]) and started_at is not null`,
        [ids],
      );
      return rows[0].n === ids.length;
    };
    const warm = await drive(WARMUP, { kind: 'inflight', n: IN_FLIGHT }, submit);
    await until('warm-up builds to start', START_TIMEOUT_MS, () => startedIds(warm.submissions.map((s) => s.key)));
    await sleep(1000);
    const { submissions, achievedRate } = await drive(JOBS, load, submit);
    const ids = submissions.map((s) => s.key);
    await until('Kiln builds to start', START_TIMEOUT_MS, () => startedIds(ids));
    // Let the last builds finish (so shutdown does not cut them and run times are known).
    await until('Kiln builds to end', 60_000, async () => {
      const { rows: active } = await admin.query<{ n: number }>(
        `select count(*)::int as n from "${schema}".builds where state in ('queued', 'building')`,
      );
      return active[0].n === 0;
    }).catch(() => undefined);
    // busy: builds holding a runner slot when this one was created (RUNNER_CONCURRENCY of them = runner full).
    const { rows } = await admin.query<{ id: string; c: number; s: number; d: number; r: number | null; busy: number }>(
      `select b.id, extract(epoch from b.created_at) * 1000 as c, extract(epoch from b.started_at) * 1000 as s,
              extract(epoch from b.started_at - b.created_at) * 1000 as d,
              extract(epoch from b.finished_at - b.started_at) * 1000 as r,
              (select count(*)::int from "${schema}".builds o
                where o.started_at <= b.created_at and (o.finished_at is null or o.finished_at > b.created_at)) as busy
         from "${schema}".builds b where b.id = any($1::text[])`,
      [ids],
    );
    const started = new Map(
      rows.map((r) => [r.id, { key: r.id, createdAt: Number(r.c), startedAt: Number(r.s), dbLatency: Number(r.d) }]),
    );
    const sorted = (xs: number[]) => xs.sort((a, b) => a - b);
    const free = sorted(rows.filter((r) => r.busy < CONCURRENCY).map((r) => Number(r.d)));
    const full = rows.length - free.length;
    const runs = sorted(rows.filter((r) => r.r !== null).map((r) => Number(r.r)));
    const note = `runner full (${CONCURRENCY} building) when ${full} of ${rows.length} builds were created; add→start of the ${free.length} others p50 ${fmt(percentile(free, 50))}, p99 ${fmt(percentile(free, 99))} ms; a build's run (started→finished: spawn \`sh -c\`, read its output, end transaction) p50 ${fmt(percentile(runs, 50))}, p99 ${fmt(percentile(runs, 99))} ms`;
    return toRow(`Kiln (LOG_LEVEL=${settings.logLevel})`, load, submissions, achievedRate, started, note);
  } finally {
    await kiln.stop();
    await admin.query(`drop schema if exists "${schema}" cascade`);
    await rm(dataDir, { recursive: true, force: true });
    await deleteRedisKeys(`${schema}:`);
  }
}

async function deleteRedisKeys(prefix: string): Promise<void> {
  const redis = new Redis(REDIS_URL, { lazyConnect: true, maxRetriesPerRequest: 1 });
  try {
    await redis.connect();
    let cursor = '0';
    do {
      const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000);
      cursor = next;
      if (keys.length) await redis.unlink(...keys);
    } while (cursor !== '0');
  } finally {
    redis.disconnect();
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Job queues: the worker runs in a child process (this file with BENCH_S2S_ROLE), jobs are added from here.

interface WorkerReport {
  /** The submission key (`data.key`), and the handler's call time (host clock). */
  key: string;
  calledAt: number;
  /** graphile-worker only: read in the handler before the job row is deleted on completion. */
  createdAt?: number;
  startedAt?: number;
  dbLatency?: number;
}

async function startWorkerChild(role: string, env: Record<string, string>) {
  const worker = await startProcess(
    process.execPath,
    ['--import', 'tsx', THIS_FILE],
    { ...env, BENCH_S2S_ROLE: role, DATABASE_URL },
    /S2S ready/,
  );
  const reports = new Map<string, WorkerReport>();
  let buffer = '';
  worker.child.stdout?.on('data', (chunk: Buffer) => {
    buffer += chunk.toString();
    const lines = buffer.split('\n');
    buffer = lines.pop() ?? '';
    for (const line of lines) {
      if (!line.startsWith('S2S job ')) continue;
      const report = JSON.parse(line.slice('S2S job '.length)) as WorkerReport;
      reports.set(report.key, report);
    }
  });
  return { ...worker, reports };
}

async function graphileRun(admin: pg.Client, load: Load): Promise<Row> {
  const schema = `bench_s2s_gw_${Date.now().toString(36)}_${randomBytes(2).toString('hex')}`;
  const utils = await makeWorkerUtils({ connectionString: DATABASE_URL, schema });
  let worker: Awaited<ReturnType<typeof startWorkerChild>> | undefined;
  try {
    await utils.migrate();
    worker = await startWorkerChild('graphile-worker', { BENCH_S2S_SCHEMA: schema });
    await sleep(500);
    const reports = worker.reports;
    const submit = async (i: number) => {
      const key = `j${i}_${randomBytes(4).toString('hex')}`;
      await utils.addJob(QUEUE, { key, i });
      return key;
    };
    const warm = await drive(WARMUP, { kind: 'inflight', n: IN_FLIGHT }, submit);
    await until('warm-up jobs to start', START_TIMEOUT_MS, async () =>
      warm.submissions.every((s) => reports.has(s.key)),
    );
    await sleep(1000);
    const { submissions, achievedRate } = await drive(JOBS, load, submit);
    await until('graphile-worker jobs to start', START_TIMEOUT_MS, async () =>
      submissions.every((s) => reports.has(s.key)),
    );
    const started = new Map<string, Started>();
    for (const s of submissions) {
      const r = reports.get(s.key)!;
      started.set(s.key, { key: s.key, createdAt: r.createdAt!, startedAt: r.startedAt!, dbLatency: r.dbLatency! });
    }
    return toRow('graphile-worker 0.17', load, submissions, achievedRate, started);
  } finally {
    await worker?.stop();
    await utils.release();
    await admin.query(`drop schema if exists "${schema}" cascade`);
  }
}

async function pgBossRun(admin: pg.Client, load: Load, pollS: number): Promise<Row> {
  const schema = `bench_s2s_pb_${Date.now().toString(36)}_${randomBytes(2).toString('hex')}`;
  const boss = new PgBoss({ connectionString: DATABASE_URL, schema, supervise: false, schedule: false });
  boss.on('error', (error) => process.stderr.write(`pg-boss (adder): ${error.message}\n`));
  let worker: Awaited<ReturnType<typeof startWorkerChild>> | undefined;
  try {
    await boss.start();
    await boss.createQueue(QUEUE);
    worker = await startWorkerChild('pg-boss', { BENCH_S2S_SCHEMA: schema, BENCH_S2S_POLL_S: String(pollS) });
    await sleep(500);
    const submit = async (i: number) => {
      const key = `j${i}_${randomBytes(4).toString('hex')}`;
      const id = await boss.send(QUEUE, { key, i });
      if (!id) throw new Error('pg-boss send returned no id');
      return key;
    };
    const startedKeys = async (keys: string[]) => {
      const { rows } = await admin.query<{ n: number }>(
        `select count(*)::int as n from "${schema}".job where name = $1 and data->>'key' = any($2::text[]) and started_on is not null`,
        [QUEUE, keys],
      );
      return rows[0].n === keys.length;
    };
    const warm = await drive(WARMUP, { kind: 'inflight', n: IN_FLIGHT }, submit);
    await until('warm-up jobs to start', START_TIMEOUT_MS, () => startedKeys(warm.submissions.map((s) => s.key)));
    await sleep(1000);
    const { submissions, achievedRate } = await drive(JOBS, load, submit);
    const keys = submissions.map((s) => s.key);
    await until('pg-boss jobs to start', START_TIMEOUT_MS, () => startedKeys(keys));
    const { rows } = await admin.query<{ k: string; c: number; s: number; d: number }>(
      `select data->>'key' as k, extract(epoch from created_on) * 1000 as c, extract(epoch from started_on) * 1000 as s,
              extract(epoch from started_on - created_on) * 1000 as d
         from "${schema}".job where name = $1 and data->>'key' = any($2::text[])`,
      [QUEUE, keys],
    );
    const started = new Map(
      rows.map((r) => [r.k, { key: r.k, createdAt: Number(r.c), startedAt: Number(r.s), dbLatency: Number(r.d) }]),
    );
    const label = pollS === PGBOSS_DEFAULT_POLL_S ? 'default' : 'minimum';
    return toRow(`pg-boss 10 (poll ${pollS} s, ${label})`, load, submissions, achievedRate, started);
  } finally {
    await worker?.stop();
    await boss.stop({ graceful: false, wait: true }).catch(() => undefined);
    await admin.query(`drop schema if exists "${schema}" cascade`);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Worker child roles

function report(r: WorkerReport): void {
  process.stdout.write(`S2S job ${JSON.stringify(r)}\n`);
}

async function graphileChild(schema: string): Promise<void> {
  const runner = await runGraphileWorker({
    connectionString: DATABASE_URL,
    schema,
    concurrency: CONCURRENCY,
    noHandleSignals: true,
    taskList: {
      [QUEUE]: async (payload, helpers) => {
        const calledAt = Date.now();
        // The job row is deleted on completion, and Job's Dates carry only milliseconds: read the claim here.
        const { rows } = await helpers.query<{ c: number; s: number; d: number }>(
          `select extract(epoch from created_at) * 1000 as c, extract(epoch from locked_at) * 1000 as s,
                  extract(epoch from locked_at - created_at) * 1000 as d
             from "${schema}"._private_jobs where id = $1`,
          [helpers.job.id],
        );
        const row = rows[0];
        report({
          key: (payload as { key: string }).key,
          calledAt,
          createdAt: Number(row.c),
          startedAt: Number(row.s),
          dbLatency: Number(row.d),
        });
      },
    },
  });
  process.on('SIGTERM', () => {
    void runner.stop().finally(() => process.exit(0));
  });
  process.stdout.write('S2S ready\n');
}

async function pgBossChild(schema: string, pollS: number): Promise<void> {
  const boss = new PgBoss({ connectionString: DATABASE_URL, schema });
  boss.on('error', (error) => process.stderr.write(`pg-boss (worker): ${error.message}\n`));
  await boss.start();
  // pg-boss 10 has no `teamSize`: each work() call is one polling worker; 8 of them, each fetching a batch.
  for (let w = 0; w < CONCURRENCY; w++) {
    await boss.work<{ key: string }>(
      QUEUE,
      { pollingIntervalSeconds: pollS, batchSize: PGBOSS_BATCH },
      async (jobs) => {
        const calledAt = Date.now();
        for (const job of jobs) report({ key: job.data.key, calledAt });
      },
    );
  }
  process.on('SIGTERM', () => {
    void boss
      .stop({ graceful: true, wait: true })
      .catch(() => undefined)
      .finally(() => process.exit(0));
  });
  process.stdout.write('S2S ready\n');
}

// ---------------------------------------------------------------------------------------------------------------

export async function benchSubmitToStart(): Promise<void> {
  const admin = new pg.Client({ connectionString: DATABASE_URL });
  await admin.connect();
  const rows: Row[] = [];
  try {
    // PostgreSQL and this process read the same host clock; show how far apart they are seen.
    const before = Date.now();
    const { rows: clock } = await admin.query<{ t: number }>(
      'select extract(epoch from clock_timestamp()) * 1000 as t',
    );
    const after = Date.now();
    const skew = Number(clock[0].t) - (before + after) / 2;
    const loads: Load[] = [
      { kind: 'rate', perSecond: RATE },
      { kind: 'inflight', n: IN_FLIGHT },
    ];
    for (const load of loads) {
      const run = async (row: Promise<Row>) => {
        const r = await row;
        rows.push(r);
        process.stdout.write(`${table([r]).split('\n')[2]}\n${r.note ? `   ${r.note}\n` : ''}`);
      };
      process.stdout.write(`\n-- ${loadName(load)}\n`);
      await run(kilnRun(admin, load, { logLevel: 'info' }));
      await run(kilnRun(admin, load, { logLevel: 'warn' }));
      await run(graphileRun(admin, load));
      await run(pgBossRun(admin, load, PGBOSS_MIN_POLL_S));
      if (load.kind === 'rate') await run(pgBossRun(admin, load, PGBOSS_DEFAULT_POLL_S));
    }
    const text = table(rows);
    const notes = rows
      .filter((r) => r.note)
      .map((r) => `- ${r.system}, ${r.load}: ${r.note}.`)
      .join('\n');
    process.stdout.write(
      `\n${text}\n\n${notes}\n\nhost clock vs PostgreSQL clock_timestamp(): ${skew.toFixed(2)} ms\n`,
    );
    await writeSection(
      'submit-to-start',
      `## Submit-to-start: Kiln vs graphile-worker and pg-boss

${new Date().toISOString()} — ${machine()}. PostgreSQL and Redis on the same machine as everything else. Target (SPEC section 8): Kiln p50 ≤ 10 ms, p99 ≤ 50 ms, ahead of both.

${text}

Where Kiln's time goes (from the builds table of each run):
${notes}

How it is measured:
- **add→start (the headline, PostgreSQL's clock for all three)**: the claim's \`now()\` minus the \`now()\` of the transaction that inserted the item. Kiln: \`builds.started_at − builds.created_at\`; graphile-worker: \`locked_at − created_at\` of \`_private_jobs\` (read by the handler before completion deletes the row); pg-boss: \`started_on − created_on\` of its \`job\` table. Kiln's \`created_at\` is the start of the request's transaction, opened before the handler runs, so its figure also covers the rest of the request (idempotency lock, project check, insert, credit reservation if any, idempotency record, commit); the queues' figure starts at their one-statement insert.
- **send→start**: the claim time minus the host-clock instant the submission was sent (Kiln: before the signed HTTP request; queues: before \`addJob\`/\`send\`), i.e. what a caller waits, including Kiln's HTTP, signature, nonce and idempotency work. **ack→start**: the claim time minus the instant the 201 (or the add) returned; negative means the build was already building when the 201 arrived. PostgreSQL and the bench read the same host clock (measured offset ${skew.toFixed(2)} ms). **submit ack**: the submission's own round trip. **load avg**: the machine's 1-minute load average as the row ended — this machine is shared with other work (test suites, other benchmarks) during the run, so rows run minutes apart saw different contention.
- ${JOBS} measured submissions per row after ${WARMUP} warm-up ones; "fixed rate" is an open loop (each submission sent at its slot whatever the others do), "in flight" a closed loop of ${IN_FLIGHT} concurrent submitters (each system then sees the rate it can absorb, so rows differ in offered load).

Settings:
- Kiln: \`node --import tsx src/main.ts\` child, fresh \`DATABASE_SCHEMA\`, Redis with a fresh \`REDIS_PREFIX\` (wake-ups by Redis pub/sub), \`RUNNER_CONCURRENCY=${CONCURRENCY}\`, \`BUILD_COMMAND=${BUILD_COMMAND}\`, rate limits off, logs written to a file at the stated \`LOG_LEVEL\` (info: one line per request plus two per build). One project with \`allowConcurrentBuilds: true\`; builds spread over ${USERS} users granted 1,000,000 credits each up front, \`estimatedCredits: 1\`; every \`POST /v1/builds\` signed (v1+v2) with a fresh nonce and a fresh \`Idempotency-Key\`, over keep-alive \`fetch\`.
- graphile-worker 0.17 (\`run()\` in a child process): fresh schema, \`concurrency: ${CONCURRENCY}\`, \`pollInterval\` default (2 s; new jobs arrive by LISTEN/NOTIFY), default logger (one line per job); jobs added with \`makeWorkerUtils().addJob\` from the bench process.
- pg-boss 10 (child process): fresh schema, ${CONCURRENCY} \`work()\` workers (v10 has no \`teamSize\`) each with \`batchSize: ${PGBOSS_BATCH}\`, \`pollingIntervalSeconds\` at its minimum ${PGBOSS_MIN_POLL_S} (pg-boss refuses less) and at its default ${PGBOSS_DEFAULT_POLL_S} s; pg-boss has no LISTEN/NOTIFY, so a new job waits for the next poll; a pg-boss worker also waits out the rest of its interval after each batch, so its capacity is at most ${CONCURRENCY} × ${PGBOSS_BATCH} jobs per interval. Jobs sent with \`boss.send\` from the bench process.
- Handlers record their call time and return at once; Kiln's runner spawns the build command per build (\`sh -c\`), which the queues' handlers do not.
`,
    );
  } finally {
    await admin.end();
  }
}

const role = process.env.BENCH_S2S_ROLE;
if (role) {
  const schema = process.env.BENCH_S2S_SCHEMA ?? '';
  const started =
    role === 'graphile-worker'
      ? graphileChild(schema)
      : pgBossChild(schema, Number(process.env.BENCH_S2S_POLL_S ?? PGBOSS_MIN_POLL_S));
  started.catch((error: unknown) => {
    process.stderr.write(`worker child failed: ${(error as Error).stack}\n`);
    process.exit(1);
  });
}
