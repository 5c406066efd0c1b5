// Keyed writes (SPEC section 8, first row; issue 18), Kiln on PostgreSQL + Redis, same run, alternating slices:
// - keyed POST /v1/builds with everything on (signature, nonce, rate limits checked, Idempotency-Key, hold, first
//   event, wake-up) vs the bare composite most idempotency middlewares are (one Redis SET NX + one credit_reserve());
// - keyed POST /v1/credits/reserve, commit and release vs a bare route doing one SET NX + the same SQL once;
// - p95 of keyed builds and keyed reserves at a fixed 500 req/s, against the bare routes at the same rate;
// - the same keyed builds and reserves with KEYED_GROUP_MAX=1 (each write its own statement, as before issue 18's
//   groups), against the same baseline, and the CPU each part spent per request (Kiln or the baseline, PostgreSQL,
//   Redis, the load generator) in every closed-loop run.
// Load spread over many users, and one project per build, so no row lock is shared. The schema first gets a history
// (builds and idempotency records of a service that has run a while) and is analyzed, so PostgreSQL plans as it does
// in service; see SEEDED below. `npx tsx bench/run.ts keyed-writes`.
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { type CpuUse, cpuMeter, perRequestUs } from './cpu';
import {
  compare,
  comparePaced,
  cycling,
  DATABASE_URL,
  deleteRedisKeys,
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

/** Users the load is spread over (each credit operation locks its user's account row). */
const USERS = 200;
/** A limit per minute no run reaches: the limits are checked (a store round trip) but never refuse. */
const UNREACHED_LIMIT = '10000000';
/** More requests a second than any side of a closed loop has served here (the pools are sized by it). */
const CLOSED_LOOP_MAX = 6_000;
const WARM_S = 2;

const key = () => `bench-${randomBytes(12).toString('base64url')}`;

/**
 * The history the schema gets before the run: finished builds and live idempotency records, as a service that has run
 * a while has them, then `vacuum analyze`. Without it, PostgreSQL plans the lookups of builds and records on tables it
 * believes empty (sequential scans), keeps those plans on each connection, and the tables grow by tens of thousands
 * of rows during the run: the keyed builds, the only side that reads builds, then paid for a scan that grew with every
 * request (seen 2026-12-06: up to 8 ms per statement). In service, autovacuum analyzes growing tables and the plans
 * follow.
 */
const SEEDED = { builds: 100_000, records: 100_000 };

export async function benchKeyedWrites(): Promise<void> {
  const schema = `bench_keyed_${Date.now().toString(36)}`;
  const durationS = Number(process.env.BENCH_DURATION_S ?? 8);
  const rate = Number(process.env.BENCH_RATE ?? 500);
  const env = {
    ...realServicesEnv(DATABASE_URL, REDIS_URL, schema),
    RATE_LIMIT_IP_PER_MIN: UNREACHED_LIMIT,
    RATE_LIMIT_USER_PER_MIN: UNREACHED_LIMIT,
    // Every request is signed before the run, which lasts longer than the default 120 s window: the last ones (the
    // 500 req/s runs) would all be refused as too old.
    TIMESTAMP_TOLERANCE_S: '1800',
    NONCE_TTL_S: '3600',
  };
  const kiln = await startKiln(env);
  // The same Kiln, each keyed write its own statement: the groups' effect, side by side in the same run.
  const alone = await startKiln({ ...env, KEYED_GROUP_MAX: '1' });
  const admin = new pg.Client({ connectionString: DATABASE_URL, options: `-c search_path="${schema}"` });
  await admin.connect();
  const baseline = await startBaseline('bench/baseline-keyed.ts', {
    DATABASE_URL,
    DATABASE_SCHEMA: schema,
    REDIS_URL,
    REDIS_PREFIX: `${schema}:`,
    BENCH_USERS: String(USERS),
  });
  const url = kiln.url;
  const base = baseline.url;
  try {
    // Enough of everything that no request repeats a nonce, a key, a project or a hold, on either side: a closed loop
    // of the bare routes runs at up to a few thousand a second here, and a pool's cursor (one per side) runs through
    // the warm-up, the run and the paced run. A side that ran out would repeat keys and get fast 409s, which is why
    // any non-2xx in a run marks the comparison invalid below.
    const perSide = (2 * WARM_S + 2 * durationS) * CLOSED_LOOP_MAX + rate * durationS + 2_000;
    const builds = perSide;
    const credits = perSide;
    await admin.query(
      `select credit_grant(u || (g % $1::int), 1000000000000::bigint, null, 'bench', 'bench', 'setup', 'setup')
         from generate_series(0, $1::int - 1) g, unnest(array['bench_user_', 'bench_base_']) u`,
      [USERS],
    );
    await admin.query(
      `insert into projects (id, owner_id, name) select 'bench_p_' || g, 'bench', 'Bench ' || g
         from generate_series(0, $1::int - 1) g`,
      [builds],
    );
    for (const [prefix, user] of [
      ['kiln_c_', 'bench_user_'],
      ['kiln_r_', 'bench_user_'],
      ['base_c_', 'bench_base_'],
      ['base_r_', 'bench_base_'],
    ]) {
      await admin.query(
        `select credit_reserve($1::text || g, $2::text || (g % $4::int), 10::bigint, null::text, 7200, 'setup', 'setup', 'bench')
           from generate_series(0, $3::int - 1) g`,
        [prefix, user, credits, USERS],
      );
    }
    await admin.query('set session_replication_role = replica'); // a history: no triggers, no outbox, no events
    await admin.query(
      `insert into projects (id, owner_id, name) select 'bench_h_' || g, 'bench', 'History ' || g
         from generate_series(0, 9999) g`,
    );
    await admin.query(
      `insert into builds (id, project_id, user_id, state, previous_state, exclusive, estimated_credits,
                           actual_credits, created_at, started_at, finished_at)
       select 'bench_hb_' || g, 'bench_h_' || (g % 10000), 'bench_hu_' || (g % 500), 'deployed', 'building', true,
              10, 5, now() - interval '2 days', now() - interval '2 days', now() - interval '2 days'
         from generate_series(1, $1::int) g`,
      [SEEDED.builds],
    );
    await admin.query(
      `insert into idempotency_keys (key, method, path, body_hash, status_code, response_body, request_id, expires_at)
       select 'bench-history-' || g, 'POST', '/v1/builds', 'hash', 201, '{}', 'req_history', now() + interval '12 hours'
         from generate_series(1, $1::int) g`,
      [SEEDED.records],
    );
    await admin.query('set session_replication_role = origin');
    await admin.query('vacuum analyze');

    const buildPool = presignedPosts(
      '/v1/builds',
      builds,
      (i) => JSON.stringify({ projectId: `bench_p_${i}`, userId: `bench_user_${i % USERS}`, estimatedCredits: 10 }),
      key,
    );
    const reservePool = presignedPosts(
      '/v1/credits/reserve',
      credits,
      (i) => JSON.stringify({ userId: `bench_user_${i % USERS}`, estimatedCredits: 10 }),
      key,
    );
    const commitPool = presignedPosts(
      '/v1/credits/commit',
      credits,
      (i) => JSON.stringify({ reservationId: `kiln_c_${i}`, actualCredits: 5 }),
      key,
    );
    const releasePool = presignedPosts(
      '/v1/credits/release',
      credits,
      (i) => JSON.stringify({ reservationId: `kiln_r_${i}`, reason: 'bench' }),
      key,
    );
    // One cursor per pool across warm-up and runs (a nonce and a key are used once); the baseline is sent the same
    // bytes (it reads the key, ignores the rest), so the load generator spends the same on both sides.
    const kilnBuilds = cycling(buildPool);
    const baseBuilds = cycling(buildPool, '/builds');
    const kilnReserves = cycling(reservePool);
    const baseReserves = cycling(reservePool, '/reserve');
    const warm = { durationS: WARM_S };
    await compare(
      { name: 'warm-up', url: `${base}/builds`, setupRequest: baseBuilds, ...warm },
      { name: 'warm-up', url, setupRequest: kilnBuilds, ...warm },
    );
    await load('warm-up', { url: alone.url, setupRequest: kilnBuilds, ...warm });
    // CPU per request of each side of the closed loops (server, PostgreSQL, Redis, load generator).
    const meters: { name: string; meter: ReturnType<typeof cpuMeter> }[] = [];
    const metered = (name: string, pid: number) => {
      const meter = cpuMeter(pid);
      meters.push({ name, meter });
      return meter.during;
    };
    /** Keyed builds, then keyed reserves, of one Kiln (`target`) against the baseline, each side metered. */
    const buildsAndReserves = async (target: { url: string; pid: number }, label: string, again: string) => [
      await compare(
        {
          name: 'bare: SET NX + credit_reserve() (the composite)',
          url: `${base}/builds`,
          setupRequest: baseBuilds,
          during: metered(`bare composite (builds)${again}`, baseline.pid),
        },
        {
          name: `Kiln keyed POST /v1/builds${label || ' (everything on)'}`,
          url: target.url,
          setupRequest: kilnBuilds,
          during: metered(`Kiln keyed build${label}`, target.pid),
        },
      ),
      await compare(
        {
          name: 'bare: SET NX + credit_reserve()',
          url: `${base}/reserve`,
          setupRequest: baseReserves,
          during: metered(`bare SET NX + reserve${again}`, baseline.pid),
        },
        {
          name: `Kiln keyed POST /v1/credits/reserve${label}`,
          url: target.url,
          setupRequest: kilnReserves,
          during: metered(`Kiln keyed reserve${label}`, target.pid),
        },
      ),
    ];
    const pairs = [
      ...(await buildsAndReserves(kiln, '', '')),
      await compare(
        {
          name: 'bare: SET NX + credit_resolve(commit)',
          url: `${base}/commit`,
          setupRequest: cycling(commitPool, '/commit'),
        },
        { name: 'Kiln keyed POST /v1/credits/commit', url, setupRequest: cycling(commitPool) },
      ),
      await compare(
        {
          name: 'bare: SET NX + credit_resolve(release)',
          url: `${base}/release`,
          setupRequest: cycling(releasePool, '/release'),
        },
        { name: 'Kiln keyed POST /v1/credits/release', url, setupRequest: cycling(releasePool) },
      ),
    ];
    const alonePairs = await buildsAndReserves(alone, ', KEYED_GROUP_MAX=1', ', again');
    const pacedPairs = [
      await comparePaced(
        { name: `bare composite at ${rate} req/s`, url: `${base}/builds`, rate, next: baseBuilds },
        { name: `Kiln keyed POST /v1/builds at ${rate} req/s`, url, rate, next: kilnBuilds },
      ),
      await comparePaced(
        { name: `bare SET NX + reserve at ${rate} req/s`, url: `${base}/reserve`, rate, next: baseReserves },
        { name: `Kiln keyed reserve at ${rate} req/s`, url, rate, next: kilnReserves },
      ),
    ];
    const tables = [...pairs, ...alonePairs, ...pacedPairs].map(([b, k]) => formatTable([b, k], b));
    // The meters in the order they were made: each pair's baseline, then its Kiln.
    const served = [...pairs.slice(0, 2), ...alonePairs].flat().map((m) => m.requestsPerSec * durationS);
    const cpuRows = meters.map(({ name, meter }, i) => {
      const us: CpuUse = perRequestUs(meter.used, served[i]);
      const total = us.server + us.postgres + us.redis + us.generator;
      return `| ${name} | ${us.server} | ${us.postgres} | ${us.redis} | ${us.generator} | ${total} |`;
    });
    const cpuTable = [
      '| side | server µs | PostgreSQL µs | Redis µs | load generator µs | total µs |',
      '| --- | ---: | ---: | ---: | ---: | ---: |',
      ...cpuRows,
    ].join('\n');
    const metricsText = await (await fetch(`${url}/metrics`)).text();
    const groupSize = (name: string) =>
      Number(new RegExp(`^kiln_keyed_write_group_size_${name} (\\S+)$`, 'm').exec(metricsText)?.[1] ?? Number.NaN);
    const meanGroup = groupSize('sum') / groupSize('count');
    const ratio = ([b, k]: (typeof pairs)[number]) => `${((k.requestsPerSec / b.requestsPerSec) * 100).toFixed(1)} %`;
    const { rows: dup } = await admin.query<{ builds: string; holds: string; unbalanced: string }>(
      `select (select count(*) from builds) as builds,
              (select count(*) from credit_reservations where build_id is not null) as holds,
              (select count(*) from credit_accounts a
                where a.balance <> (select coalesce(sum(amount), 0) from credit_ledger l where l.user_id = a.user_id))
                as unbalanced`,
    );
    // A side that answered anything but 2xx (a repeated key, a refusal) did less work than the other: say so.
    const invalid = [...pairs, ...alonePairs, ...pacedPairs]
      .flat()
      .filter((r) => r.non2xx > 0 || r.errors > 0)
      .map((r) => `${r.name}: ${r.non2xx} non-2xx, ${r.errors} errors`);
    const summary = [
      ...(invalid.length ? [`INVALID RUN — not every request succeeded (${invalid.join('; ')})`] : []),
      `Kiln / bare throughput: builds ${ratio(pairs[0])}, reserve ${ratio(pairs[1])}, commit ${ratio(pairs[2])}, release ${ratio(pairs[3])} (target ≥ 80 %)`,
      `each keyed write its own statement (KEYED_GROUP_MAX=1): builds ${ratio(alonePairs[0])}, reserve ${ratio(alonePairs[1])} of the same baseline`,
      `keyed writes per statement in the grouped Kiln over the whole run: ${meanGroup.toFixed(1)} on average (${groupSize('count')} statements)`,
      `p95 at ${rate} req/s: builds ${pacedPairs[0][1].p95} ms (target ≤ 10; bare ${pacedPairs[0][0].p95}), reserve ${pacedPairs[1][1].p95} ms (target ≤ 5; bare ${pacedPairs[1][0].p95})`,
      `afterwards: ${dup[0].builds} builds, ${dup[0].holds} build holds (one each), ${dup[0].unbalanced} accounts whose balance differs from the ledger`,
    ];
    process.stdout.write(`\n${tables.join('\n\n')}\n\n${cpuTable}\n\n${summary.join('\n')}\n`);
    await writeSection(
      'keyed-writes',
      `## Keyed writes: exactly once vs a cache check (SPEC section 8, first row)\n\n${new Date().toISOString()} — ${machine()}. Kiln on PostgreSQL and Redis with everything on (signature and nonce, both rate limits checked at a limit no run reaches, an Idempotency-Key per request, the record committed with the effect, the store's copy, the wake-up); 20 connections, ${durationS} s a side in alternating quarters; ${USERS} users, one project per build (no row lock shared); every request signed before the run. The baseline (bench/baseline-keyed.ts) is sent the same requests: one Redis \`SET NX\` on the key, then the same credit function once (for builds: \`credit_reserve\`, the hold a build takes) — a cache check and an effect, not atomic. The ${rate} req/s rows are an open loop, requests evenly spaced, latency from each request's slot. Kiln groups the keyed writes it has ready at once into one statement (KEYED_GROUP_MAX, 16); a second Kiln on the same schema with KEYED_GROUP_MAX=1 runs each alone. Before the run the schema got a history of ${SEEDED.builds.toLocaleString('en')} finished builds and ${SEEDED.records.toLocaleString('en')} live idempotency records, and was analyzed (see SEEDED in bench/keyed-writes.ts).\n\n${tables.join('\n\n')}\n\nCPU per request, by part, over each side's closed-loop slices (from /proc; PostgreSQL counts all its processes):\n\n${cpuTable}\n\n${summary.map((s) => `- ${s}.`).join('\n')}\n`,
    );
  } finally {
    await kiln.stop();
    await alone.stop();
    await baseline.stop();
    await admin.query(`drop schema if exists "${schema}" cascade`);
    await admin.end();
    await deleteRedisKeys(REDIS_URL, `${schema}:`);
  }
}

if (process.argv[1]?.endsWith('keyed-writes.ts')) await benchKeyedWrites();
