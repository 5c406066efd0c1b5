// Idempotency costs (SPEC section 8), Kiln on PostgreSQL + Redis, same run:
// - a replayed request (served from the store's copy) vs a bare Fastify route doing one Redis GET, with the
//   database's transaction counter read around the replay load to show the replay path does not touch it;
// - POST /v1/projects with a fresh Idempotency-Key per request vs without one.
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import {
  compare,
  cycling,
  DATABASE_URL,
  formatTable,
  load,
  machine,
  presignedPosts,
  REDIS_URL,
  realServicesEnv,
  startBaseline,
  startKiln,
  writeSection,
} from './lib';

async function databaseCommits(client: pg.Client): Promise<number> {
  const { rows } = await client.query<{ n: string }>(
    'select xact_commit + xact_rollback as n from pg_stat_database where datname = current_database()',
  );
  return Number(rows[0].n);
}

export async function benchIdempotency(): Promise<void> {
  const schema = `bench_${Date.now().toString(36)}`;
  const admin = new pg.Client({ connectionString: DATABASE_URL });
  await admin.connect();
  const kiln = await startKiln(realServicesEnv(DATABASE_URL, REDIS_URL, schema));
  const baseline = await startBaseline('bench/baseline-redis.ts', { REDIS_URL });
  const url = kiln.url;
  const body = JSON.stringify({ ownerId: 'bench_owner', name: 'Bench project', settings: { region: 'eu' } });
  const durationS = Number(process.env.BENCH_DURATION_S ?? 8);
  try {
    // The one request every replay repeats.
    const [original] = presignedPosts(
      '/v1/projects',
      1,
      () => body,
      () => 'bench-replayed-key',
    );
    const created = await fetch(`${url}/v1/projects`, { method: 'POST', headers: original.headers, body });
    if (created.status !== 201) throw new Error(`setup failed: ${created.status} ${await created.text()}`);

    const replays = presignedPosts(
      '/v1/projects',
      250_000,
      () => body,
      () => 'bench-replayed-key',
    );
    const withKey = presignedPosts(
      '/v1/projects',
      120_000,
      () => body,
      () => `bench-${randomBytes(8).toString('hex')}`,
    );
    const withoutKey = presignedPosts('/v1/projects', 120_000, () => body);

    // One cursor per pool across warm-up and measurement: a nonce is accepted once.
    const nextReplay = cycling(replays);
    // The baseline gets the same request bytes (it ignores headers and body): the generator's cost is equal.
    const same = cycling(replays, '/redis-get');
    await load('warm-up', { url: `${baseline.url}/redis-get`, durationS: 2, setupRequest: same });
    await load('warm-up', { url, durationS: 2, setupRequest: nextReplay });
    // The transaction count is read around the whole comparison: the bare route never touches the database.
    const before = await databaseCommits(admin);
    const [base, replay] = await compare(
      { name: 'bare Fastify POST doing one Redis GET', url: `${baseline.url}/redis-get`, setupRequest: same },
      { name: 'Kiln replayed POST /v1/projects (signed)', url, setupRequest: nextReplay },
    );
    const replayCommits = (await databaseCommits(admin)) - before;
    const noKey = await load('Kiln POST /v1/projects, no key', { url, setupRequest: cycling(withoutKey) });
    const keyed = await load('Kiln POST /v1/projects, fresh key', { url, setupRequest: cycling(withKey) });
    // For reference: the same baseline sent one static request (the generator's cheapest case).
    const staticBase = await load('bare Fastify POST doing one Redis GET, one static request, for reference', {
      url: `${baseline.url}/redis-get`,
      method: 'POST',
    });
    const table = formatTable([base, replay, staticBase, noKey, keyed], base);
    const keyCost = `${((1 - keyed.requestsPerSec / noKey.requestsPerSec) * 100).toFixed(1)} %`;
    process.stdout.write(
      `\n${table}\n\ndatabase transactions during the replay run: ${replayCommits}; throughput cost of a key on create: ${keyCost}\n`,
    );
    await writeSection(
      'idempotency',
      `## Idempotency: replays and the cost of a key\n\n${new Date().toISOString()} — ${machine()}. Kiln on PostgreSQL and Redis with rate limits off (\`RATE_LIMIT_*=0\`: the load comes from one address), 20 connections, ${durationS} s each (the replay and its baseline in quarters: bare, Kiln, Kiln, bare, twice), every request signed before the run with a fresh nonce; the baseline is sent the same requests and ignores them (the reference row: the baseline sent one static request, as in runs before 2026-11-29 07:00). Target: a replay ≥ 80 % of a bare route doing one Redis GET, with no database query.\n\n${table}\n\n- Database transactions (all sessions, this database) counted during the replay runs (${replay.requestsPerSec.toFixed(0)} req/s): **${replayCommits}** (the process's own 15 s heartbeat and pool checks included).\n- Cost of an Idempotency-Key on \`POST /v1/projects\`: ${keyCost} of throughput (no key ${noKey.requestsPerSec.toFixed(0)} req/s, fresh key ${keyed.requestsPerSec.toFixed(0)} req/s; p95 ${noKey.p95} → ${keyed.p95} ms).\n`,
    );
  } finally {
    await kiln.stop();
    await baseline.stop();
    await admin.query(`drop schema if exists "${schema}" cascade`);
    await admin.end();
  }
}
