// The SPEC section 8 row for reads: signed GET /v1/builds/:id through every layer (signature, nonce, IP quota, the
// build read from PostgreSQL, serialization, log line) vs a bare Fastify GET returning a constant, same run. Kiln on
// the real PostgreSQL and Redis (DATABASE_URL / REDIS_URL, else the local ones). Target: at least 40 %.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { createKilnClient } from '../src/client/sign';
import {
  BENCH_SECRET,
  compare,
  cycling,
  DATABASE_URL,
  formatTable,
  load,
  machine,
  presignedGets,
  REDIS_URL,
  realServicesEnv,
  startBaseline,
  startKiln,
  writeSection,
} from './lib';

/**
 * The path of a queued build (a Kiln running no builds leaves it queued), created through the signed API for `userId`,
 * who is granted `credits` first.
 */
export async function queuedBuildPath(url: string, userId = 'bench_user', credits = 1000): Promise<string> {
  const call = createKilnClient({ baseUrl: url, secret: BENCH_SECRET });
  const granted = await call('POST', '/v1/credits/grant', {
    userId,
    credits,
    reason: 'bench',
    source: 'bench',
  });
  const project = await call<{ id: string }>('POST', '/v1/projects', { ownerId: userId, name: 'Bench' });
  const build = await call<{ id: string }>('POST', '/v1/builds', {
    projectId: project.body.id,
    userId,
    estimatedCredits: 10,
  });
  if (granted.status !== 200 || project.status !== 201 || build.status !== 201) {
    throw new Error(`setup failed: ${granted.status} ${project.status} ${build.status} ${build.text}`);
  }
  return `/v1/builds/${build.body.id}`;
}

export async function benchSignedGetBuild(): Promise<void> {
  const schema = `bench_getbuild_${Date.now().toString(36)}`;
  const dataDir = await mkdtemp(join(tmpdir(), 'kiln-bench-'));
  const kiln = await startKiln({
    ...realServicesEnv(DATABASE_URL, REDIS_URL, schema),
    DATA_DIR: dataDir,
    // Counted as in production, with a quota the single load generator cannot reach.
    RATE_LIMIT_IP_PER_MIN: '10000000',
  });
  const baseline = await startBaseline('bench/baseline-server.ts');
  const admin = new pg.Client({ connectionString: DATABASE_URL });
  await admin.connect();
  try {
    const path = await queuedBuildPath(kiln.url);
    const pool = presignedGets(path, 300_000);
    const signed = cycling(pool);
    // The baseline gets the same request bytes (it ignores the headers): the generator's cost is equal on both sides.
    const same = cycling(pool, '/constant');
    await load('warm-up', { url: `${kiln.url}${path}`, durationS: 2, setupRequest: signed });
    await load('warm-up', { url: `${baseline.url}/constant`, durationS: 2, setupRequest: same });
    const [base, ours] = await compare(
      { name: 'bare Fastify GET (constant)', url: `${baseline.url}/constant`, setupRequest: same },
      { name: 'Kiln signed GET /v1/builds/:id (PostgreSQL, Redis)', url: `${kiln.url}${path}`, setupRequest: signed },
    );
    // For reference: the same baseline sent one static request (the generator's cheapest case).
    const staticBase = await load('bare Fastify GET (constant), one static request, for reference', {
      url: `${baseline.url}/constant`,
    });
    const table = formatTable([base, ours, staticBase], base);
    process.stdout.write(`\n${table}\n`);
    await writeSection(
      'signed-get-build',
      `## Signed GET /v1/builds/:id vs bare Fastify (PostgreSQL and Redis)\n\n${new Date().toISOString()} — ${machine()}. 20 connections, ${process.env.BENCH_DURATION_S ?? 8} s each (in quarters: bare, Kiln, Kiln, bare, twice); every request carries v1+v2 signatures and a fresh nonce (signed before the run): Kiln checks the HMACs, stores the nonce, counts the IP quota and reads the build (one query on a prepared statement); the baseline is sent the same requests and ignores their headers (the last row: the baseline sent one static request, as in runs before 2026-11-29 07:00). Target (SPEC section 8) ≥ 40 %.\n\n${table}\n`,
    );
  } finally {
    await kiln.stop();
    await baseline.stop();
    await admin.query(`drop schema if exists "${schema}" cascade`);
    await admin.end();
    await rm(dataDir, { recursive: true, force: true });
  }
}
