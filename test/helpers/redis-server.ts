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

/** A private, disposable redis-server on a free port, so a test can stop it without touching anyone else's. */
export async function startPrivateRedis(): Promise<{ url: string; stop(): Promise<void> }> {
  const port = await freePort();
  const child: ChildProcess = spawn(
    'redis-server',
    ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
    {
      stdio: ['ignore', 'pipe', 'ignore'],
    },
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
  return {
    url: `redis://127.0.0.1:${port}`,
    stop: () =>
      new Promise((resolve) => {
        if (child.exitCode !== null || child.signalCode !== null) return resolve();
        child.once('exit', () => resolve());
        child.kill('SIGKILL');
      }),
  };
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
