// Signed GET /v1/ping through every layer (signature, nonce, rate limits, headers, log line) vs a bare Fastify
// GET returning a constant, in the same run. Target (SPEC section 8): at least 40 % of the baseline's throughput.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  compare,
  cycling,
  formatTable,
  load,
  machine,
  presignedGets,
  startBaseline,
  startKiln,
  writeSection,
} from './lib';

/** Kiln for the signed GET: embedded database, the in-process store or `redisUrl`, the IP quota lifted. */
export function signedGetEnv(dataDir: string, redisUrl: string): Record<string, string> {
  return {
    DATA_DIR: dataDir,
    DATABASE_URL: '',
    REDIS_URL: redisUrl,
    REDIS_PREFIX: `bench_${Date.now()}:`,
    // The load comes from one address and one process: lift the quotas so the limiter counts without refusing.
    RATE_LIMIT_IP_PER_MIN: '10000000',
  };
}

export async function benchSignedGet(): Promise<void> {
  const dataDir = await mkdtemp(join(tmpdir(), 'kiln-bench-'));
  const redisUrl = process.env.REDIS_URL ?? '';
  const kiln = await startKiln(signedGetEnv(dataDir, redisUrl));
  const baseline = await startBaseline('bench/baseline-server.ts');
  // Signed ahead of time so the load generator spends no CPU on HMACs during the measurement.
  const pool = presignedGets('/v1/ping', 400_000);
  const signed = cycling(pool);
  // The baseline gets the same request bytes (it ignores the headers): the generator's cost is equal on both sides.
  const same = cycling(pool, '/constant');
  try {
    await load('warm-up', { url: `${kiln.url}/v1/ping`, durationS: 2, setupRequest: signed });
    await load('warm-up', { url: `${baseline.url}/constant`, durationS: 2, setupRequest: same });
    const [base, ours] = await compare(
      { name: 'bare Fastify GET (constant)', url: `${baseline.url}/constant`, setupRequest: same },
      {
        name: `Kiln signed GET /v1/ping (${redisUrl ? 'Redis' : 'in-process store'})`,
        url: `${kiln.url}/v1/ping`,
        setupRequest: signed,
      },
    );
    // For reference: the same baseline sent one static request (the generator's cheapest case).
    const staticBase = await load('bare Fastify GET (constant), one static request, for reference', {
      url: `${baseline.url}/constant`,
    });
    const table = formatTable([base, ours, staticBase], base);
    process.stdout.write(`\n${table}\n`);
    await writeSection(
      `signed-get-${redisUrl ? 'redis' : 'memory'}`,
      `## Signed GET vs bare Fastify (${redisUrl ? 'Redis store' : 'in-process store'})\n\n${new Date().toISOString()} — ${machine()}. 20 connections, ${process.env.BENCH_DURATION_S ?? 8} s each (in quarters: bare, Kiln, Kiln, bare, twice); every request carries v1+v2 signatures and a fresh nonce (signed before the run), so Kiln checks the HMACs, stores the nonce and counts the IP quota; the baseline is sent the same requests and ignores their headers (the last row: the baseline sent one static request, as in runs before 2026-11-29 07:00). Target ≥ 40 %.\n\n${table}\n`,
    );
  } finally {
    await kiln.stop();
    await baseline.stop();
    await rm(dataDir, { recursive: true, force: true });
  }
}
