// GET /healthz through every layer of Kiln vs a bare Fastify route returning a constant, same run.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { compare, formatTable, load, machine, startBaseline, startKiln, writeSection } from './lib';

export async function benchHealthz(): Promise<void> {
  const dataDir = await mkdtemp(join(tmpdir(), 'kiln-bench-'));
  const kiln = await startKiln({ DATA_DIR: dataDir, DATABASE_URL: '', REDIS_URL: '' });
  const baseline = await startBaseline('bench/baseline-server.ts');
  try {
    // Warm both up, then measure alternately (bare, Kiln, Kiln, bare) so drift on a shared machine hits both.
    await load('warm-up', { url: `${kiln.url}/healthz`, durationS: 2 });
    await load('warm-up', { url: `${baseline.url}/constant`, durationS: 2 });
    const [base, ours] = await compare(
      { name: 'bare Fastify GET (constant)', url: `${baseline.url}/constant` },
      { name: 'Kiln GET /healthz', url: `${kiln.url}/healthz` },
    );
    const table = formatTable([base, ours], base);
    process.stdout.write(`\n${table}\n`);
    await writeSection(
      'healthz',
      `## GET /healthz vs bare Fastify\n\n${new Date().toISOString()} — ${machine()}. 20 connections, ${process.env.BENCH_DURATION_S ?? 8} s each (in quarters: bare, Kiln, Kiln, bare, twice), embedded mode, LOG_LEVEL=info (one log line per request).\n\n${table}\n`,
    );
  } finally {
    await kiln.stop();
    await baseline.stop();
    await rm(dataDir, { recursive: true, force: true });
  }
}
