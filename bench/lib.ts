import { type ChildProcess, spawn } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { Agent, request as httpRequest } from 'node:http';
import { createServer } from 'node:net';
import { cpus, tmpdir, totalmem, type } from 'node:os';
import { join } from 'node:path';
import autocannon from 'autocannon';
import { signRequest } from '../src/client/sign';
import { NODE_FLAGS } from '../src/runtime';

export interface Measurement {
  name: string;
  requestsPerSec: number;
  p50: number;
  p95: number;
  p99: number;
  errors: number;
  non2xx: number;
}

/** Work running beside a measurement slice (a scrape loop): started before it, stopped (awaited) after it. */
export type During = () => () => Promise<void>;

export interface LoadOptions {
  url: string;
  during?: During;
  method?: 'GET' | 'POST' | 'PUT' | 'PATCH';
  connections?: number;
  durationS?: number;
  /** Builds each request's headers/body (signed requests need a fresh nonce each time). */
  setupRequest?: (request: { method: string; path: string; headers: Record<string, string>; body?: string }) => {
    method: string;
    path: string;
    headers: Record<string, string>;
    body?: string;
  };
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}

const round = (ms: number) => Math.round(ms * 100) / 100;

const DEFAULT_DURATION_S = Number(process.env.BENCH_DURATION_S ?? 8);

interface Sampled {
  measurement: Measurement;
  /** Every response's latency (ms), sorted. */
  latencies: number[];
}

/** Drive load with autocannon; percentiles (ms) come from every response's own latency, not a coarse histogram. */
export async function load(name: string, options: LoadOptions): Promise<Measurement> {
  return (await sample(name, options)).measurement;
}

async function sample(name: string, options: LoadOptions): Promise<Sampled> {
  const stop = options.during?.();
  try {
    return await sampleLoad(name, options);
  } finally {
    await stop?.();
  }
}

async function sampleLoad(name: string, options: LoadOptions): Promise<Sampled> {
  const latencies: number[] = [];
  let done!: (result: autocannon.Result) => void;
  const finished = new Promise<autocannon.Result>((resolve) => {
    done = resolve;
  });
  const instance = autocannon(
    {
      url: options.url,
      method: options.method ?? 'GET',
      connections: options.connections ?? 20,
      duration: options.durationS ?? DEFAULT_DURATION_S,
      ...(options.setupRequest
        ? { requests: [{ setupRequest: options.setupRequest as unknown as autocannon.Request['setupRequest'] }] }
        : {}),
    },
    (error, result) => {
      if (error) throw error;
      done(result);
    },
  );
  instance.on('response', (_client: unknown, _status: number, _bytes: number, responseTime: number) => {
    latencies.push(responseTime);
  });
  const result = await finished;
  latencies.sort((a, b) => a - b);
  return {
    latencies,
    measurement: {
      name,
      requestsPerSec: result.requests.average,
      p50: round(percentile(latencies, 50)),
      p95: round(percentile(latencies, 95)),
      p99: round(percentile(latencies, 99)),
      errors: result.errors + result.timeouts,
      non2xx: result.non2xx,
    },
  };
}

/** One measurement from several equal-length runs: mean throughput, percentiles over all their responses. */
function merge(parts: Sampled[]): Measurement {
  const latencies = parts.flatMap((p) => p.latencies).sort((a, b) => a - b);
  const sum = (pick: (m: Measurement) => number) => parts.reduce((total, p) => total + pick(p.measurement), 0);
  return {
    name: parts[0].measurement.name,
    requestsPerSec: sum((m) => m.requestsPerSec) / parts.length,
    p50: round(percentile(latencies, 50)),
    p95: round(percentile(latencies, 95)),
    p99: round(percentile(latencies, 99)),
    errors: sum((m) => m.errors),
    non2xx: sum((m) => m.non2xx),
  };
}

/** Slices each side of a comparison is measured in (see `alternate`). */
const SLICES = 4;

/**
 * The baseline and Kiln measured in alternating slices, each a quarter of the duration, in the order baseline,
 * Kiln, Kiln, baseline, baseline, Kiln, Kiln, baseline, and merged: drift on a shared machine (another tenant, a
 * vacuum, a slower minute) then weighs on both sides alike, where one run each in a row let it fall on one side
 * only (and two halves each still let a slow half swing a ratio by 20 points here).
 */
async function alternate<O extends { durationS?: number }>(
  run: (name: string, options: O) => Promise<Sampled>,
  base: { name: string } & O,
  ours: { name: string } & O,
): Promise<[Measurement, Measurement]> {
  const slice = (o: O): O => ({ ...o, durationS: (o.durationS ?? DEFAULT_DURATION_S) / SLICES });
  const b: Sampled[] = [];
  const o: Sampled[] = [];
  for (let i = 0; i < SLICES / 2; i++) {
    b.push(await run(base.name, slice(base)));
    o.push(await run(ours.name, slice(ours)));
    o.push(await run(ours.name, slice(ours)));
    b.push(await run(base.name, slice(base)));
  }
  return [merge(b), merge(o)];
}

/** Throughput and latency of Kiln against its baseline, under closed-loop load, in alternating slices. */
export function compare(
  base: { name: string } & LoadOptions,
  ours: { name: string } & LoadOptions,
): Promise<[Measurement, Measurement]> {
  return alternate(sample, base, ours);
}

export interface PacedOptions {
  url: string;
  during?: During;
  /** Requests per second, evenly spaced: request i leaves at start + i / rate. */
  rate: number;
  durationS?: number;
  /** As for `load`: builds each request (path, headers, body). */
  next: () => { method: string; path: string; headers: Record<string, string>; body?: string };
}

/**
 * An open loop at a fixed rate: each request is sent at its own slot, evenly spaced, whether or not earlier ones
 * have answered (keep-alive connections are opened as needed). autocannon's fixed rate sends each second's quota
 * in a burst at the start of the second, which measures queueing behind the burst rather than the latency at that
 * rate. Latency is measured from the slot, so a late send (a stalled load generator) counts against the result too.
 */
export async function paced(name: string, options: PacedOptions): Promise<Measurement> {
  return (await pacedSample(name, options)).measurement;
}

/** As `compare`, for two open loops at a fixed rate, in the same alternating slices. */
export function comparePaced(
  base: { name: string } & PacedOptions,
  ours: { name: string } & PacedOptions,
): Promise<[Measurement, Measurement]> {
  return alternate(pacedSample, base, ours);
}

async function pacedSample(name: string, options: PacedOptions): Promise<Sampled> {
  const stop = options.during?.();
  try {
    return await pacedLoad(name, options);
  } finally {
    await stop?.();
  }
}

async function pacedLoad(name: string, options: PacedOptions): Promise<Sampled> {
  const durationMs = (options.durationS ?? DEFAULT_DURATION_S) * 1000;
  const total = Math.floor((durationMs / 1000) * options.rate);
  const target = new URL(options.url);
  const agent = new Agent({ keepAlive: true, maxSockets: 256 });
  const latencies: number[] = [];
  let errors = 0;
  let non2xx = 0;
  let sent = 0;
  const start = performance.now();
  const inFlight = new Set<Promise<void>>();
  const send = (slot: number) => {
    const request = options.next();
    const done = new Promise<void>((resolve) => {
      const req = httpRequest(
        {
          host: target.hostname,
          port: target.port,
          method: request.method,
          path: request.path,
          headers:
            request.body === undefined
              ? request.headers
              : { ...request.headers, 'content-length': Buffer.byteLength(request.body) },
          agent,
        },
        (res) => {
          res.resume();
          res.on('end', () => {
            latencies.push(performance.now() - slot);
            if ((res.statusCode ?? 0) >= 300) non2xx++;
            resolve();
          });
        },
      );
      req.on('error', () => {
        errors++;
        resolve();
      });
      req.end(request.body);
    });
    inFlight.add(done);
    void done.then(() => inFlight.delete(done));
  };
  while (sent < total) {
    const now = performance.now();
    // Every slot that has come (several when the timer fired late) leaves now; latency still counts from its slot.
    while (sent < total && start + (sent * 1000) / options.rate <= now) {
      send(start + (sent * 1000) / options.rate);
      sent++;
    }
    const wait = start + (sent * 1000) / options.rate - performance.now();
    await new Promise((resolve) => setTimeout(resolve, Math.max(0, wait)));
  }
  await Promise.all(inFlight);
  const elapsedS = (performance.now() - start) / 1000;
  agent.destroy();
  latencies.sort((a, b) => a - b);
  return {
    latencies,
    measurement: {
      name,
      requestsPerSec: latencies.length / elapsedS,
      p50: round(percentile(latencies, 50)),
      p95: round(percentile(latencies, 95)),
      p99: round(percentile(latencies, 99)),
      errors,
      non2xx,
    },
  };
}

/** The PostgreSQL and Redis the benchmarks that need them use: DATABASE_URL / REDIS_URL, else the local ones. */
export const DATABASE_URL = process.env.DATABASE_URL || 'postgres://postgres@127.0.0.1:5432/test';
export const REDIS_URL = process.env.REDIS_URL || 'redis://127.0.0.1:6379';

/** The HMAC secret every benchmark's Kiln runs with (requests are signed with it before the run). */
export const BENCH_SECRET = 'bench-secret-0123456789abcdef';

export type BenchRequest = { method: string; path: string; headers: Record<string, string>; body?: string };

/**
 * `count` signed JSON POSTs to `path`, each with a fresh nonce, made before the run so the load generator spends its
 * CPU on sending, not on HMACs. `body(i)` is request i's body; `key(i)`, when it gives one, its Idempotency-Key.
 */
export function presignedPosts(
  path: string,
  count: number,
  body: (i: number) => string,
  key: (i: number) => string | undefined = () => undefined,
): BenchRequest[] {
  return Array.from({ length: count }, (_, i) => {
    const text = body(i);
    const k = key(i);
    return {
      method: 'POST',
      path,
      body: text,
      headers: {
        ...signRequest({ secret: BENCH_SECRET, method: 'POST', path, body: text }),
        'content-type': 'application/json',
        ...(k ? { 'idempotency-key': k } : {}),
      },
    };
  });
}

/** `count` signed GETs of `path`, each with a fresh nonce, made before the run (as presignedPosts). */
export function presignedGets(path: string, count: number): BenchRequest[] {
  return Array.from({ length: count }, () => ({
    method: 'GET',
    path,
    headers: signRequest({ secret: BENCH_SECRET, method: 'GET', path }),
  }));
}

/**
 * The requests in turn, forever (one cursor: a nonce is accepted once, so warm-up and run must not repeat one).
 * With `path`, the same requests sent to that path instead: a baseline gets the very bytes Kiln gets (headers,
 * body) and ignores them, so the load generator spends the same on both sides of a comparison.
 */
export function cycling(requests: BenchRequest[], path?: string): () => BenchRequest {
  let next = 0;
  if (path === undefined) return () => requests[next++ % requests.length];
  const moved = requests.map((r) => ({ ...r, path }));
  return () => moved[next++ % moved.length];
}

export interface Started {
  url: string;
  pid: number;
  stop(): Promise<void>;
}

/**
 * Kiln (src/main.ts, or dist/main.js: `entry`) as a child process on a free port, running no builds, with the bench secret; `env` adds to
 * or overrides that. `nodeArgs` go before the script (e.g. --cpu-prof); `root` is the checkout to run (default:
 * this one). Ready once /readyz answers 200, so it works at any LOG_LEVEL.
 */
export async function startKiln(
  env: Record<string, string>,
  nodeArgs: string[] = [],
  root?: string,
  /** src/main.ts through tsx, or the compiled dist/main.js (`npm run build` first); BENCH_ENTRY=dist by default. */
  entry: 'src' | 'dist' = process.env.BENCH_ENTRY === 'dist' ? 'dist' : 'src',
): Promise<Started> {
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const base = root ?? '.';
  return startServer(
    process.execPath,
    entry === 'dist'
      ? [...NODE_FLAGS, ...nodeArgs, join(base, 'dist/main.js')]
      : [...nodeArgs, '--import', 'tsx', join(base, 'src/main.ts')],
    { RUNNER_CONCURRENCY: '0', HMAC_SECRET: BENCH_SECRET, ...env, PORT: String(port), HOST: '127.0.0.1' },
    async () =>
      (await fetch(`${url}/readyz`).then(
        (r) => r.ok,
        () => false,
      ))
        ? url
        : undefined,
  );
}

/** A baseline server (bench/baseline-*.ts) as a child process; ready when it prints `listening <url>`. */
export async function startBaseline(file: string, env: Record<string, string> = {}): Promise<Started> {
  return startServer(
    process.execPath,
    ['--import', 'tsx', file],
    env,
    async (output) => /listening (http:\/\/\S+)/.exec(await output())?.[1],
  );
}

/** A free TCP port on 127.0.0.1 (closed again, for a child to listen on). */
export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  await new Promise((resolve) => server.close(resolve));
  if (!address || typeof address === 'string') throw new Error('no port');
  return address.port;
}

/**
 * A server as a child process whose output goes straight to a file, as under a supervisor that writes logs to
 * disk: the load generator, in this process, spends no CPU draining a server's log lines (it did when they came
 * through a pipe, and only for the servers that log). `ready` polls until it gives the server's URL.
 */
async function startServer(
  command: string,
  args: string[],
  env: Record<string, string>,
  ready: (output: () => Promise<string>) => Promise<string | undefined>,
): Promise<Started> {
  const logDir = await mkdtemp(join(tmpdir(), 'kiln-bench-log-'));
  const logFile = join(logDir, 'output.log');
  const fd = openSync(logFile, 'w');
  const child = spawn(command, args, { env: { ...process.env, ...env }, stdio: ['ignore', fd, fd] });
  closeSync(fd);
  const output = () => readFile(logFile, 'utf8');
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      await exited;
    }
    await rm(logDir, { recursive: true, force: true });
  };
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) {
      const text = await output();
      await stop();
      throw new Error(`${args.at(-1)} exited with ${child.exitCode ?? child.signalCode}:\n${text.slice(-4000)}`);
    }
    const url = await ready(output);
    if (url) return { url, pid: child.pid ?? 0, stop };
    if (Date.now() > deadline) {
      const text = await output();
      await stop();
      throw new Error(`${args.at(-1)} did not start within 60 s:\n${text.slice(-4000)}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** Kiln's environment on the real PostgreSQL and Redis, in a schema and key prefix of its own, quotas off. */
export function realServicesEnv(databaseUrl: string, redisUrl: string, schema: string): Record<string, string> {
  return {
    DATABASE_URL: databaseUrl,
    DATABASE_SCHEMA: schema,
    REDIS_URL: redisUrl,
    REDIS_PREFIX: `${schema}:`,
    RATE_LIMIT_IP_PER_MIN: '0',
    RATE_LIMIT_USER_PER_MIN: '0',
  };
}

/** A process's resident memory (VmRSS from /proc), in MB. */
export async function rssMb(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+) kB/.exec(status)?.[1] ?? Number.NaN) / 1024;
}

/** Delete every Redis key under a prefix (what a Kiln on realServicesEnv left there): the tests' own helper. */
export { deleteKeys as deleteRedisKeys } from '../test/helpers/store';

/** Start a process and resolve once a line of its output matches `ready`. */
export function startProcess(command: string, args: string[], env: Record<string, string>, ready: RegExp) {
  const child: ChildProcess = spawn(command, args, {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  return new Promise<{ child: ChildProcess; match: RegExpExecArray; stop(): Promise<void> }>((resolve, reject) => {
    let output = '';
    const timer = setTimeout(() => reject(new Error(`did not start:\n${output}`)), 60_000);
    const onData = (chunk: Buffer) => {
      output += chunk.toString();
      const match = ready.exec(output);
      if (match) {
        clearTimeout(timer);
        output = '';
        child.stdout?.removeListener('data', onData);
        child.stdout?.resume(); // keep draining logs so the process never blocks on a full pipe
        resolve({
          child,
          match,
          stop: () =>
            new Promise((done) => {
              if (child.exitCode !== null || child.signalCode !== null) return done();
              child.once('exit', () => done());
              child.kill('SIGTERM');
            }),
        });
      }
    };
    child.stdout?.on('data', onData);
    child.stderr?.on('data', (chunk: Buffer) => {
      output += chunk.toString();
    });
    child.once('exit', (code) => reject(new Error(`exited with ${code}:\n${output}`)));
  });
}

export function formatTable(rows: Measurement[], baseline: Measurement): string {
  const lines = [
    '| run | req/s | p50 ms | p95 ms | p99 ms | errors | non-2xx | throughput vs baseline |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
  ];
  for (const r of rows) {
    const ratio = `${((r.requestsPerSec / baseline.requestsPerSec) * 100).toFixed(1)} %`;
    lines.push(
      `| ${r.name} | ${r.requestsPerSec.toFixed(0)} | ${r.p50} | ${r.p95} | ${r.p99} | ${r.errors} | ${r.non2xx} | ${ratio} |`,
    );
  }
  return lines.join('\n');
}

export function machine(): string {
  const cpu = cpus();
  return `${type()} ${process.arch}, ${cpu.length} × ${cpu[0]?.model ?? 'unknown CPU'}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.version}`;
}

const REPORT = new URL('../docs/BENCHMARKS.md', import.meta.url);

/** Replace (or add) one benchmark's section in docs/BENCHMARKS.md, leaving the others as they were. */
export async function writeSection(id: string, markdown: string): Promise<void> {
  let text = '';
  try {
    text = await readFile(REPORT, 'utf8');
  } catch {
    text =
      '# Benchmarks\n\nWritten by `npm run bench` (`bench/run.ts`). Each section compares Kiln with its baseline in the same run on the same machine; the figures are what that run saw, on a shared and noisy machine.\n';
  }
  const start = `<!-- bench:${id} -->`;
  const end = `<!-- /bench:${id} -->`;
  const block = `${start}\n${markdown.trim()}\n${end}`;
  const pattern = new RegExp(`${start}[\\s\\S]*?${end}`);
  text = pattern.test(text) ? text.replace(pattern, block) : `${text.trimEnd()}\n\n${block}\n`;
  await writeFile(REPORT, text);
}
