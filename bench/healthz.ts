// GET /healthz through every layer of Kiln vs a bare Fastify route returning a constant, same run.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { formatTable, load, machine, startProcess, writeSection } from './lib';

export async function benchHealthz(): Promise<void> {
  const dataDir = await mkdtemp(join(tmpdir(), 'kiln-bench-'));
  const kiln = await startProcess(
    process.execPath,
    ['--import', 'tsx', 'src/main.ts'],
    { PORT: '0', DATA_DIR: dataDir, RUNNER_CONCURRENCY: '0', DATABASE_URL: '', REDIS_URL: '' },
    /"url":"(http:\/\/[^"]+)"/,
  );
  const baseline = await startProcess(
    process.execPath,
    ['--import', 'tsx', 'bench/baseline-server.ts'],
    {},
    /listening (http:\/\/\S+)/,
  );
  try {
    // Warm both up, then measure alternately so drift on a shared machine hits both.
    await load('warm-up', { url: `${kiln.match[1]}/healthz`, durationS: 2 });
    await load('warm-up', { url: `${baseline.match[1]}/constant`, durationS: 2 });
    const base = await load('bare Fastify GET (constant)', { url: `${baseline.match[1]}/constant` });
    const ours = await load('Kiln GET /healthz', { url: `${kiln.match[1]}/healthz` });
    const table = formatTable([base, ours], base);
    process.stdout.write(`\n${table}\n`);
    await writeSection(
      'healthz',
      `## GET /healthz vs bare Fastify\n\n${new Date().toISOString()} — ${machine()}. 20 connections, ${process.env.BENCH_DURATION_S ?? 8} s each, embedded mode, LOG_LEVEL=info (one log line per request).\n\n${table}\n`,
    );
  } finally {
    await kiln.stop();
    await baseline.stop();
    await rm(dataDir, { recursive: true, force: true });
  }
}
