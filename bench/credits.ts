// Credit operations (SPEC sections 6 and 8), Kiln on PostgreSQL + Redis, same run:
// - reserve, commit and release through Kiln's signed HTTP path vs a bare Fastify route calling the same plpgsql
//   function once (bench/baseline-credits.ts);
// - p95 of reserve at a fixed 500 req/s.
import pg from 'pg';
import {
  compare,
  comparePaced,
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

/** Users the load is spread over (each operation locks its user's account row). */
export const BENCH_USERS = 100;

/** Create `count` holds with ids `${prefix}N`, hold N for user `${userPrefix}${N % BENCH_USERS}` (setup, not measured). */
async function createHolds(client: pg.Client, prefix: string, userPrefix: string, count: number): Promise<void> {
  await client.query(
    `select credit_reserve($1::text || g, $2::text || (g % $4::int), 10::bigint, null::text, 7200, 'setup', 'setup', 'bench')
       from generate_series(0, $3::int - 1) g`,
    [prefix, userPrefix, count, BENCH_USERS],
  );
}

export async function benchCredits(): Promise<void> {
  const schema = `bench_credits_${Date.now().toString(36)}`;
  const durationS = Number(process.env.BENCH_DURATION_S ?? 8);
  const kiln = await startKiln(realServicesEnv(DATABASE_URL, REDIS_URL, schema));
  const admin = new pg.Client({ connectionString: DATABASE_URL, options: `-c search_path="${schema}"` });
  await admin.connect();
  const baseline = await startBaseline('bench/baseline-credits.ts', { DATABASE_URL, DATABASE_SCHEMA: schema });
  const url = kiln.url;
  const base = baseline.url;
  try {
    // Plenty of credits, and holds for every commit and release either side may send (a hold resolves once; the
    // baseline answers 404 once its holds run out, which the non-2xx column would show).
    const pool = Math.max(40_000, durationS * 12_000);
    await admin.query(
      `select credit_grant(u || (g % $1::int), 1000000000000::bigint, null, 'bench', 'bench', 'setup', 'setup')
         from generate_series(0, $1::int - 1) g, unnest(array['bench_user_', 'bench_base_']) u`,
      [BENCH_USERS],
    );
    await createHolds(admin, 'kiln_c_', 'bench_user_', pool);
    await createHolds(admin, 'kiln_r_', 'bench_user_', pool);
    await createHolds(admin, 'base_c_', 'bench_base_', pool);
    await createHolds(admin, 'base_r_', 'bench_base_', pool);

    const reserveBody = (i: number) =>
      JSON.stringify({ userId: `bench_user_${i % BENCH_USERS}`, estimatedCredits: 10 });
    const reservePool = presignedPosts('/v1/credits/reserve', durationS * 8_000, reserveBody);
    const commitPool = presignedPosts('/v1/credits/commit', pool, (i) =>
      JSON.stringify({ reservationId: `kiln_c_${i}`, actualCredits: 5 }),
    );
    const releasePool = presignedPosts('/v1/credits/release', pool, (i) =>
      JSON.stringify({ reservationId: `kiln_r_${i}`, reason: 'bench' }),
    );
    const reserves = cycling(reservePool);
    const commits = cycling(commitPool);
    const releases = cycling(releasePool);
    // The baseline gets the same request bytes (it ignores headers and body): the generator's cost is equal.
    const baseReserves = cycling(reservePool, '/reserve');
    await load('warm-up', { url: `${base}/reserve`, durationS: 2, setupRequest: baseReserves });
    await load('warm-up', { url, durationS: 2, setupRequest: reserves });

    const rows = [];
    const [baseReserve, kilnReserve] = await compare(
      { name: 'bare Fastify: credit_reserve()', url: `${base}/reserve`, setupRequest: baseReserves },
      { name: 'Kiln POST /v1/credits/reserve (signed)', url, setupRequest: reserves },
    );
    const [baseCommit, kilnCommit] = await compare(
      {
        name: 'bare Fastify: credit_resolve(commit)',
        url: `${base}/commit`,
        setupRequest: cycling(commitPool, '/commit'),
      },
      { name: 'Kiln POST /v1/credits/commit (signed)', url, setupRequest: commits },
    );
    const [baseRelease, kilnRelease] = await compare(
      {
        name: 'bare Fastify: credit_resolve(release)',
        url: `${base}/release`,
        setupRequest: cycling(releasePool, '/release'),
      },
      { name: 'Kiln POST /v1/credits/release (signed)', url, setupRequest: releases },
    );
    const [baseFixed, fixed] = await comparePaced(
      {
        name: 'bare Fastify: credit_reserve() at 500 req/s, evenly spaced',
        url: `${base}/reserve`,
        rate: 500,
        next: baseReserves,
      },
      { name: 'Kiln reserve at 500 req/s, evenly spaced', url, rate: 500, next: reserves },
    );
    rows.push(baseReserve, kilnReserve, baseCommit, kilnCommit, baseRelease, kilnRelease, baseFixed, fixed);
    const table = formatTable(rows, baseReserve);
    const ratio = (a: { requestsPerSec: number }, b: { requestsPerSec: number }) =>
      `${((a.requestsPerSec / b.requestsPerSec) * 100).toFixed(0)} %`;
    const { rows: auditRows } = await admin.query<{ n: string }>(
      `select count(*) as n from credit_accounts a
        where a.balance <> (select coalesce(sum(amount), 0) from credit_ledger l where l.user_id = a.user_id)`,
    );
    const summary = `Kiln / bare: reserve ${ratio(kilnReserve, baseReserve)}, commit ${ratio(kilnCommit, baseCommit)}, release ${ratio(kilnRelease, baseRelease)}; reserve p95 at 500 req/s: Kiln ${fixed.p95} ms, bare ${baseFixed.p95} ms; accounts whose balance differs from the ledger afterwards: ${auditRows[0].n}`;
    process.stdout.write(`\n${table}\n\n${summary}\n`);
    await writeSection(
      'credits',
      `## Credits: reserve, commit, release\n\n${new Date().toISOString()} — ${machine()}. Kiln on PostgreSQL and Redis with rate limits off (\`RATE_LIMIT_*=0\`: the load comes from one address), 20 connections, ${durationS} s each (each pair in quarters: bare, Kiln, Kiln, bare, twice), load spread over ${BENCH_USERS} users (each operation locks its user's account), every request signed before the run with a fresh nonce and no Idempotency-Key; the baseline is sent the same requests and ignores them. Baseline: a bare Fastify route calling the same plpgsql function once on a pg pool (bench/baseline-credits.ts), unprepared. Without a key Kiln runs each credit function in autocommit (one statement, atomic by itself) as a prepared statement; commits and releases resolve distinct holds created before the run. The 500 req/s rows are an open loop with requests evenly spaced (2 ms apart), latency counted from each request's slot, also in quarters.\n\n${table}\n\n- ${summary}.\n`,
    );
  } finally {
    await kiln.stop();
    await baseline.stop();
    await admin.query(`drop schema if exists "${schema}" cascade`);
    await admin.end();
  }
}
