import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll } from 'vitest';
import { NODE_FLAGS } from '../../src/runtime';
import { TEST_SECRET } from './app';
import { dropSchema } from './db';
import { DATABASE_URL, REDIS_URL, uniqueName } from './env';
import { deleteKeys } from './store';

const ROOT = new URL('../..', import.meta.url).pathname;

/**
 * How a Kiln process is started: with KILN_E2E_DIST=1 the compiled dist/main.js (`npm run build` first), as it runs in
 * production; otherwise src/main.ts through tsx. CI runs the end-to-end suite both ways.
 */
const DIST = process.env.KILN_E2E_DIST === '1';
if (DIST && !existsSync(join(ROOT, 'dist/main.js'))) {
  throw new Error('KILN_E2E_DIST=1 but dist/main.js is missing: run `npm run build` first');
}
const ENTRY = DIST ? [...NODE_FLAGS, 'dist/main.js'] : ['src/main.ts'];

/**
 * Every process spawned here checks each response it sends against the OpenAPI document (contract-preload.ts) and
 * writes what breaks it to a file in this directory; the test file fails at its end if any process wrote one.
 */
let contractLogs: string | undefined;
let spawned = 0;
/** The directory of this file's contract logs, made at the first spawn (a file whose tests are all skipped makes none). */
const contractLogDir = () => {
  contractLogs ??= mkdtempSync(join(tmpdir(), 'kiln-contract-'));
  return contractLogs;
};
afterAll(() => {
  if (contractLogs === undefined) return;
  const dir = contractLogs;
  const logs = Array.from({ length: spawned }, (_, i) => join(dir, `${i}.log`)).filter(existsSync);
  const violations = logs.flatMap((file) => readFileSync(file, 'utf8').split('\n').filter(Boolean));
  rmSync(dir, { recursive: true, force: true });
  contractLogs = undefined;
  if (violations.length) {
    throw new Error(`Responses that break the OpenAPI document:\n${violations.slice(0, 20).join('\n')}`);
  }
});

export interface KilnProcess {
  url: string;
  child: ChildProcess;
  /** Everything the process wrote to stdout and stderr so far. */
  output(): string;
  /** Resolves with the exit code once the process has ended. */
  exited: Promise<number | null>;
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

export interface Shared {
  env: Record<string, string>;
  cleanup(): Promise<void>;
}

/**
 * Environment for one or more Kiln processes that must share state: a fresh schema and Redis prefix when
 * real services are configured, else a fresh DATA_DIR (embedded PGlite allows one process per directory).
 */
export async function sharedEnvironment(): Promise<Shared> {
  const dataDir = await mkdtemp(join(tmpdir(), 'kiln-e2e-'));
  const schema = uniqueName('e2e');
  const prefix = `${schema}:`;
  const env: Record<string, string> = { DATA_DIR: dataDir, HMAC_SECRET: TEST_SECRET, LOG_LEVEL: 'info' };
  if (DATABASE_URL) Object.assign(env, { DATABASE_URL, DATABASE_SCHEMA: schema });
  if (REDIS_URL) Object.assign(env, { REDIS_URL, REDIS_PREFIX: prefix });
  return {
    env,
    async cleanup() {
      if (DATABASE_URL) await dropSchema(DATABASE_URL, schema);
      if (REDIS_URL) await deleteKeys(REDIS_URL, prefix);
      await rm(dataDir, { recursive: true, force: true });
    },
  };
}

/**
 * For one describe block: a shared environment made before its tests and cleaned after them, and `start()`, which
 * spawns a Kiln process on it with `env` added (every process started is killed with SIGKILL at the end).
 */
export function sharedKilns(env: Record<string, string> = {}): {
  /** The shared environment (available once the block's tests run). */
  readonly env: Record<string, string>;
  /** Spawn a process on the shared environment, with `env` and then `extra` added. */
  start(extra?: Record<string, string>): Promise<KilnProcess>;
} {
  let shared: Shared | undefined;
  const running: KilnProcess[] = [];
  beforeAll(async () => {
    shared = await sharedEnvironment();
    await mkdir(shared.env.DATA_DIR, { recursive: true });
  });
  afterAll(async () => {
    await Promise.all(running.map((k) => k.stop('SIGKILL')));
    await shared?.cleanup();
  });
  const current = () => {
    if (!shared) throw new Error('sharedKilns: used outside the tests of its describe block');
    return shared;
  };
  return {
    get env() {
      return current().env;
    },
    async start(extra = {}) {
      const kiln = await spawnKiln({ ...current().env, ...env, ...extra });
      running.push(kiln);
      return kiln;
    },
  };
}

/** Spawn Kiln (ENTRY: src/main.ts or dist/main.js) as a real process on a free port and wait until it listens. */
export function spawnKiln(env: Record<string, string>, timeoutMs = 40_000): Promise<KilnProcess> {
  const contractLog = join(contractLogDir(), `${spawned++}.log`);
  const child = spawn(
    process.execPath,
    // tsx loads the contract check (TypeScript) even in front of the compiled entry, which needs none of it.
    ['--import', 'tsx', '--import', './test/helpers/contract-preload.ts', ...ENTRY],
    {
      cwd: ROOT,
      env: {
        PATH: process.env.PATH ?? '',
        PORT: '0',
        HOST: '127.0.0.1',
        RUNNER_CONCURRENCY: '0',
        KILN_CONTRACT_LOG: contractLog,
        ...env,
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  let output = '';
  // 'close', not 'exit': the output is complete once stdout and stderr have closed.
  const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`Kiln did not start within ${timeoutMs} ms:\n${output}`));
    }, timeoutMs);
    const onData = (chunk: Buffer) => {
      output += chunk.toString();
      const match = /"url":"(http:\/\/[^"]+)"/.exec(output);
      if (match) {
        clearTimeout(timer);
        child.stdout?.off('data', onData);
        child.stdout?.on('data', (more: Buffer) => {
          output += more.toString();
        });
        resolve({
          url: match[1],
          child,
          output: () => output,
          exited,
          stop: async (signal = 'SIGTERM') => {
            if (child.exitCode === null && child.signalCode === null) child.kill(signal);
            return exited;
          },
        });
      }
    };
    child.stdout?.on('data', onData);
    child.stderr?.on('data', (chunk: Buffer) => {
      output += chunk.toString();
    });
    exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`Kiln exited with ${code} before listening:\n${output}`));
    });
  });
}

/** Run Kiln (ENTRY) expecting it to fail at start-up; resolves with its exit code and output. */
export function runKilnExpectingFailure(env: Record<string, string>): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [...(DIST ? [] : ['--import', 'tsx']), ...ENTRY], {
      cwd: ROOT,
      env: { PATH: process.env.PATH ?? '', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    child.stdout.on('data', (c: Buffer) => {
      output += c.toString();
    });
    child.stderr.on('data', (c: Buffer) => {
      output += c.toString();
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, output });
    });
  });
}
