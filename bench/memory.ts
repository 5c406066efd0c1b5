// Process memory under sustained load (SPEC section 8: RSS ≤ 200 MB, flat over 10 minutes). Kiln on the real
// PostgreSQL and Redis (DATABASE_URL / REDIS_URL, else the local ones) takes a steady mix for BENCH_MEMORY_S seconds
// (default 600): signed GET /v1/builds/:id, signed POST /v1/credits/reserve and replayed POST /v1/projects, each
// with a fresh nonce, 10 connections as fast as they go. Kiln's RSS is read from /proc every 5 s.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { signRequest } from '../src/client/sign';
import {
  BENCH_SECRET,
  type BenchRequest,
  DATABASE_URL,
  deleteRedisKeys,
  load,
  machine,
  presignedPosts,
  REDIS_URL,
  realServicesEnv,
  rssMb,
  startKiln,
  writeSection,
} from './lib';
import { queuedBuildPath } from './signed-get-build';

const SAMPLE_MS = 5_000;

/** Least-squares slope of (t minutes, y MB). */
function slopePerMinute(points: { t: number; rss: number }[]): number {
  const n = points.length;
  const mt = points.reduce((a, p) => a + p.t, 0) / n;
  const my = points.reduce((a, p) => a + p.rss, 0) / n;
  const cov = points.reduce((a, p) => a + (p.t - mt) * (p.rss - my), 0);
  const vt = points.reduce((a, p) => a + (p.t - mt) ** 2, 0);
  return vt === 0 ? 0 : cov / vt;
}

export async function benchMemory(): Promise<void> {
  const durationS = Number(process.env.BENCH_MEMORY_S ?? 600);
  const schema = `bench_memory_${Date.now().toString(36)}`;
  const dataDir = await mkdtemp(join(tmpdir(), 'kiln-bench-'));
  const kiln = await startKiln({ ...realServicesEnv(DATABASE_URL, REDIS_URL, schema), DATA_DIR: dataDir });
  const admin = new pg.Client({ connectionString: DATABASE_URL });
  await admin.connect();
  try {
    const getPath = await queuedBuildPath(kiln.url, 'mem_user', 1_000_000_000);
    const replayBody = JSON.stringify({ ownerId: 'mem_user', name: 'Replayed' });
    const [original] = presignedPosts(
      '/v1/projects',
      1,
      () => replayBody,
      () => 'memory-replayed-key',
    );
    const created = await fetch(`${kiln.url}/v1/projects`, {
      method: 'POST',
      headers: original.headers,
      body: replayBody,
    });
    if (created.status !== 201) throw new Error(`setup failed: ${created.status}`);
    // Requests are signed on the fly (a fresh nonce each, for as long as the run lasts), in the bench process.
    const reserveBody = JSON.stringify({ userId: 'mem_user', estimatedCredits: 1 });
    let turn = 0;
    const next = (): BenchRequest => {
      turn = (turn + 1) % 3;
      if (turn === 0)
        return {
          method: 'GET',
          path: getPath,
          headers: signRequest({ secret: BENCH_SECRET, method: 'GET', path: getPath }),
        };
      const [path, body, key] =
        turn === 1
          ? ['/v1/credits/reserve', reserveBody, undefined]
          : ['/v1/projects', replayBody, 'memory-replayed-key'];
      return presignedPosts(
        path,
        1,
        () => body,
        () => key,
      )[0];
    };
    const samples: { t: number; rss: number }[] = [];
    const started = performance.now();
    const sampler = setInterval(() => {
      void rssMb(kiln.pid).then((rss) => samples.push({ t: (performance.now() - started) / 60_000, rss }));
    }, SAMPLE_MS);
    const before = await rssMb(kiln.pid);
    const result = await load('sustained mix', {
      url: kiln.url,
      connections: 10,
      durationS,
      setupRequest: () => next(),
    });
    clearInterval(sampler);
    const after = await rssMb(kiln.pid);
    const rss = samples.map((s) => s.rss);
    const half = samples.filter((s) => s.t >= samples[samples.length - 1].t / 2);
    const fmt = (mb: number) => mb.toFixed(1);
    const summary = `${result.requestsPerSec.toFixed(0)} req/s for ${durationS} s (${result.non2xx} non-2xx, ${result.errors} errors); RSS before ${fmt(before)} MB, min ${fmt(Math.min(...rss))}, max ${fmt(Math.max(...rss))}, at the end ${fmt(after)} MB; slope over the second half ${slopePerMinute(half).toFixed(2)} MB/min (target: ≤ 200 MB, flat)`;
    process.stdout.write(`\n${summary}\n`);
    const table = [
      '| minute | RSS MB |',
      '| ---: | ---: |',
      ...samples
        .filter((_, i) => i % 12 === 0 || i === samples.length - 1)
        .map((s) => `| ${s.t.toFixed(1)} | ${fmt(s.rss)} |`),
    ].join('\n');
    await writeSection(
      'memory',
      `## Process memory under sustained load\n\n${new Date().toISOString()} — ${machine()}. Kiln (${process.env.BENCH_ENTRY === 'dist' ? 'compiled: `node dist/main.js`' : '`node --import tsx src/main.ts`'}) on PostgreSQL and Redis with rate limits off, 10 connections as fast as they go for ${durationS} s, a steady mix of signed GET /v1/builds/:id, POST /v1/credits/reserve and replayed POST /v1/projects (each signed with a fresh nonce as it is sent). RSS read from /proc every ${SAMPLE_MS / 1000} s. Target (SPEC section 8): RSS ≤ 200 MB, flat over 10 minutes.\n\n${table}\n\n- ${summary}.\n`,
    );
  } finally {
    await kiln.stop();
    await admin.query(`drop schema if exists "${schema}" cascade`);
    await deleteRedisKeys(REDIS_URL, `${schema}:`);
    await admin.end();
    await rm(dataDir, { recursive: true, force: true });
  }
}
