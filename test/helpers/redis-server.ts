import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { type KilnProcess, sharedEnvironment, spawnKiln } from './kiln-process';

/** True when a redis-server binary is installed (tests that stop Redis run their own). */
export function hasRedisServer(): boolean {
  try {
    execFileSync('redis-server', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() =>
        typeof address === 'object' && address ? resolve(address.port) : reject(new Error('no port')),
      );
    });
  });
}

/**
 * A private, disposable redis-server on a free port (or `port`), so a test can stop it without touching anyone else's.
 * With `dir` it loads and saves its snapshot there (only when told to SAVE), as a Redis with persistence would.
 */
export async function startPrivateRedis(
  port?: number,
  dir?: string,
): Promise<{ url: string; port: number; stop(): Promise<void>; restart(): Promise<void> }> {
  const chosen = port ?? (await freePort());
  let child = await spawnRedis(chosen, dir);
  const stop = () =>
    new Promise<void>((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) return resolve();
      child.once('exit', () => resolve());
      child.kill('SIGKILL');
    });
  return {
    url: `redis://127.0.0.1:${chosen}`,
    port: chosen,
    stop,
    /** Kill it and start a new one on the same port: all data gone, or with `dir` back to the last SAVE. */
    async restart() {
      await stop();
      child = await spawnRedis(chosen, dir);
    },
  };
}

async function spawnRedis(port: number, dir?: string): Promise<ChildProcess> {
  const child: ChildProcess = spawn(
    'redis-server',
    ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', ...(dir ? ['--dir', dir] : [])],
    { stdio: ['ignore', 'pipe', 'ignore'] },
  );
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('redis-server did not start')), 10_000);
    child.stdout?.on('data', (chunk: Buffer) => {
      if (chunk.toString().includes('Ready to accept connections')) {
        clearTimeout(timer);
        resolve();
      }
    });
  });
  return child;
}

/**
 * A Kiln process on a private redis-server the test may stop (own DATA_DIR or schema too). Call `cleanup` in
 * afterAll: it stops Kiln, then Redis, then removes the shared environment.
 */
export async function kilnOnPrivateRedis(prefix: string): Promise<{
  kiln: KilnProcess;
  redis: Awaited<ReturnType<typeof startPrivateRedis>>;
  cleanup(): Promise<void>;
}> {
  const shared = await sharedEnvironment();
  const redis = await startPrivateRedis();
  const kiln = await spawnKiln({ ...shared.env, REDIS_URL: redis.url, REDIS_PREFIX: prefix });
  return {
    kiln,
    redis,
    async cleanup() {
      await kiln.stop();
      await redis.stop();
      await shared.cleanup();
    },
  };
}
