// Analytics at scale (SPEC sections 7 and 8, issue 16), Kiln on PostgreSQL + Redis:
// - a schema of its own seeded with 1,000,000 builds over 90 days (with their state events) and 5,000,000 ledger
//   entries of 20,000 users, folded into the rollups by Kiln's own fold; then both analytics routes, signed, for a
//   30-day daily and a 48-hour hourly series, for everyone and for one project (builds) or one user (usage): p50/p95
//   of sequential calls;
// - the write path's cost of keeping analytics: POST /v1/builds and POST /v1/credits/reserve on a schema with
//   analytics against one without it (its fold-order indexes and the xact default dropped, no fold), alternating
//   slices in the same run.
import pg from 'pg';
import { migrate } from '../src/db/migrate';
import { openPostgres } from '../src/db/postgres';
import {
  compare,
  cycling,
  DATABASE_URL,
  deleteRedisKeys,
  formatTable,
  load,
  machine,
  presignedGets,
  presignedPosts,
  REDIS_URL,
  realServicesEnv,
  startKiln,
  writeSection,
} from './lib';

const BUILDS = Number(process.env.BENCH_ANALYTICS_BUILDS ?? 1_000_000);
const ENTRIES = Number(process.env.BENCH_ANALYTICS_ENTRIES ?? 5_000_000);
const USERS = 20_000;
const PROJECTS = 5_000;
const CALLS = Number(process.env.BENCH_ANALYTICS_CALLS ?? 40);
const DAY_MS = 86_400_000;

const log = (message: string) => process.stdout.write(`${new Date().toISOString().slice(11, 19)} ${message}\n`);

/** Seed the schema with a realistic history, straight in SQL (generate_series), as Kiln's tables hold it. */
async function seed(admin: pg.Client, schema: string): Promise<void> {
  await admin.query(`set search_path = "${schema}"`);
  // Triggers off while seeding history (the transition trigger only admits queued inserts).
  await admin.query('set session_replication_role = replica');
  await admin.query(
    `insert into projects (id, owner_id, name, framework, allow_concurrent_builds)
     select 'p' || g, 'o' || (g % 2000), 'project ' || g,
            (array['next', 'next', 'astro', 'remix', 'nuxt', 'sveltekit', 'gatsby', null])[1 + g % 8], true
       from generate_series(1, $1::int) g`,
    [PROJECTS],
  );
  await admin.query(
    `insert into credit_accounts (user_id, plan, balance, reserved)
     select 'u' || g, case when g % 20 = 0 then 'team' when g % 4 = 0 then 'pro' else 'free' end, 1000000, 0
       from generate_series(1, $1::int) g`,
    [USERS],
  );
  log(`seeding ${BUILDS} builds`);
  // Busy working hours, quiet nights; run times of seconds to tens of minutes; waits mostly short, longer at peaks.
  await admin.query(
    `with g as (
       select g, random() as r1, random() as r2, random() as r3, random() as r4,
              now() - make_interval(secs => (random() * 90 * 86400)::int) as t0
         from generate_series(1, $1::int) g),
     shaped as (
       select g, r1, r2, r3, r4,
              date_trunc('day', t0) + make_interval(secs => (86400 * (0.25 + 0.6 * power(r2, 0.8)))::int) as created
         from g)
     insert into builds (id, project_id, user_id, state, previous_state, exclusive, estimated_credits, actual_credits,
                         reason, metadata, created_at, started_at, finished_at, last_event_seq)
     select 'bb' || g, 'p' || (1 + (g::bigint * 7919) % $2::int), 'u' || (1 + (g::bigint * 104729) % $3::int),
            s.state, case when s.state = 'cancelled' and r3 < 0.5 then 'queued' else 'building' end, false,
            50, case when s.state = 'deployed' then (10 + r4 * 90)::int end,
            case when s.state = 'failed' then (array['exit_code', 'exit_code', 'timeout', 'worker_lost'])[1 + (g % 4)]
                 when s.state = 'cancelled' then 'cancelled' end,
            jsonb_build_object('operation', case when r3 < 0.8 then 'build' when r3 < 0.95 then 'preview' else 'deploy' end,
                               'features', (array['["ssr"]', '["ssr","edge"]', '["static"]', '["isr","i18n"]', '[]',
                                                  '["api-routes"]', '["edge","image-opt"]'])[1 + g % 7]::jsonb),
            created,
            case when not (s.state = 'cancelled' and r3 < 0.5)
                 then created + make_interval(secs => 0.05 + power(r1, 6) * 300) end,
            created + make_interval(secs => 0.05 + power(r1, 6) * 300 + 20 + power(r4, 3) * 1800),
            case when s.state = 'cancelled' and r3 < 0.5 then 2 else 3 end
       from shaped, lateral (select case when r1 < 0.82 then 'deployed' when r1 < 0.94 then 'failed'
                                         else 'cancelled' end as state) s`,
    [BUILDS, PROJECTS, USERS],
  );
  log('seeding build events');
  await admin.query(
    `insert into build_events (build_id, seq, type, created_at)
     select id, 1, 'queued', created_at from builds
     union all select id, 2, 'started', started_at from builds where started_at is not null
     union all select id, last_event_seq, state, finished_at from builds`,
  );
  log(`seeding ${ENTRIES} ledger entries`);
  await admin.query(
    `insert into credit_ledger (user_id, type, amount, reserved_change, balance_after, reserved_after, build_id,
                                request_id, correlation_id, reason, plan, created_at)
     select 'u' || u, k.type,
            case k.type when 'grant' then 500 when 'commit' then -(10 + g % 40) when 'charge' then -(g % 20 + 1) else 0 end,
            case k.type when 'reserve' then 50 when 'commit' then -50 when 'release' then -50 when 'expire' then -50
                        else 0 end,
            1000000, 0,
            case when k.type in ('reserve', 'commit', 'release', 'charge') and g % 5 <> 0
                 then 'bb' || (1 + (g * 31) % $2::int) end,
            'seed', 'seed', 'seed',
            case when u % 20 = 0 then 'team' when u % 4 = 0 then 'pro' else 'free' end,
            now() - make_interval(secs => (random() * 90 * 86400)::int)
       from generate_series(1, $1::int) g,
            lateral (select 1 + floor(power(random() + 0 * g, 2.5) * $3::int)::int as u) uu,
            lateral (select (array['reserve', 'reserve', 'reserve', 'commit', 'commit', 'release', 'grant', 'expire',
                                   'charge', 'reserve'])[1 + g % 10] as type) k`,
    [ENTRIES, BUILDS, USERS],
  );
  await admin.query('set session_replication_role = origin');
  log('vacuum analyze');
  await admin.query('vacuum analyze');
  log('folding into the rollups (Kiln’s own fold, in batches)');
  for (;;) {
    const { rows } = await admin.query<{ events: number; entries: number }>(
      'select events, entries from analytics_fold(500000)',
    );
    // -1: the Kiln process was folding (one fold at a time); wait for its turn to end.
    if (rows[0].events < 0) {
      await new Promise((resolve) => setTimeout(resolve, 200));
      continue;
    }
    if (rows[0].events === 0 && rows[0].entries === 0) break;
    log(`  folded ${rows[0].events} events, ${rows[0].entries} entries`);
  }
  await admin.query('vacuum analyze');
}

interface Case {
  name: string;
  path: string;
}

function pct(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}

/** Sequential signed calls of each case (after two warm-up calls): p50, p95, max, and the answer's size. */
async function measure(url: string, cases: Case[]): Promise<string[]> {
  const lines = ['| query | p50 ms | p95 ms | max ms | bytes |', '| --- | ---: | ---: | ---: | ---: |'];
  for (const c of cases) {
    const requests = presignedGets(c.path, CALLS + 2);
    const times: number[] = [];
    let bytes = 0;
    for (const [i, r] of requests.entries()) {
      const started = performance.now();
      const res = await fetch(`${url}${r.path}`, { headers: r.headers });
      const text = await res.text();
      if (res.status !== 200) throw new Error(`${c.name}: ${res.status} ${text.slice(0, 300)}`);
      if (i >= 2) times.push(performance.now() - started);
      bytes = text.length;
    }
    times.sort((a, b) => a - b);
    lines.push(
      `| ${c.name} | ${pct(times, 50).toFixed(1)} | ${pct(times, 95).toFixed(1)} | ${times.at(-1)?.toFixed(1)} | ${bytes} |`,
    );
    log(lines.at(-1) ?? '');
  }
  return lines;
}

async function writePathCost(admin: pg.Client, durationS: number): Promise<string> {
  const stamp = Date.now().toString(36);
  const withSchema = `bench_an_with_${stamp}`;
  const withoutSchema = `bench_an_without_${stamp}`;
  // BENCH_ANALYTICS_FOLD_S: the fold interval of the Kiln with analytics (0: no fold, to see what the fold costs).
  const withKiln = await startKiln({
    ...realServicesEnv(DATABASE_URL, REDIS_URL, withSchema),
    ANALYTICS_FOLD_INTERVAL_S: process.env.BENCH_ANALYTICS_FOLD_S ?? '2',
  });
  const withoutKiln = await startKiln({
    ...realServicesEnv(DATABASE_URL, REDIS_URL, withoutSchema),
    ANALYTICS_FOLD_INTERVAL_S: '0',
  });
  try {
    // Without analytics' write path: no fold-order indexes, no xact default (the column left empty), no index of a
    // user's ledger by time, no lookup of a build's operation, the narrower index of ended builds back, no fold.
    await admin.query(`set search_path = "${withoutSchema}"`);
    await admin.query(
      'drop index build_events_fold; drop index credit_ledger_fold; drop index credit_ledger_user_time',
    );
    await admin.query(
      `drop index builds_user_created;
       create index builds_user_ended on builds (user_id) where state in ('deployed', 'failed', 'cancelled');
       create or replace function credit_operation(p_build text) returns text language sql stable as $$ select null::text $$`,
    );
    await admin.query('alter table build_events alter column xact drop not null, alter column xact drop default');
    await admin.query('alter table credit_ledger alter column xact drop not null, alter column xact drop default');
    for (const schema of [withSchema, withoutSchema]) {
      await admin.query(`set search_path = "${schema}"`);
      await admin.query(
        `insert into projects (id, owner_id, name, allow_concurrent_builds)
         select 'bp' || g, 'o', 'n', true from generate_series(0, 199) g`,
      );
      await admin.query(
        `select credit_grant('bench_user_' || g, 1000000000000::bigint, null, 'bench', 'bench', 'setup', 'setup')
           from generate_series(0, 199) g`,
      );
    }
    const count = durationS * 6_000;
    const builds = presignedPosts('/v1/builds', count, (i) =>
      JSON.stringify({ projectId: `bp${i % 200}`, userId: `bench_user_${i % 200}`, estimatedCredits: 5 }),
    );
    const reserves = presignedPosts('/v1/credits/reserve', count, (i) =>
      JSON.stringify({ userId: `bench_user_${i % 200}`, estimatedCredits: 1 }),
    );
    // Each side its own requests (a nonce is accepted once per schema's store prefix, but keep them apart anyway).
    const half = (all: typeof builds, side: 0 | 1) => all.filter((_, i) => i % 2 === side);
    const [b0, b1, r0, r1] = [
      cycling(half(builds, 0)),
      cycling(half(builds, 1)),
      cycling(half(reserves, 0)),
      cycling(half(reserves, 1)),
    ];
    await load('warm-up', { url: `${withKiln.url}/v1/builds`, durationS: 1, setupRequest: b0 });
    await load('warm-up', { url: `${withoutKiln.url}/v1/builds`, durationS: 1, setupRequest: b1 });
    const [buildsWithout, buildsWith] = await compare(
      { name: 'POST /v1/builds, without analytics', url: withoutKiln.url, setupRequest: b1 },
      { name: 'POST /v1/builds, with analytics (fold every 2 s)', url: withKiln.url, setupRequest: b0 },
    );
    const [reserveWithout, reserveWith] = await compare(
      { name: 'POST /v1/credits/reserve, without analytics', url: withoutKiln.url, setupRequest: r1 },
      { name: 'POST /v1/credits/reserve, with analytics', url: withKiln.url, setupRequest: r0 },
    );
    return `${formatTable([buildsWithout, buildsWith], buildsWithout)}\n\n${formatTable([reserveWithout, reserveWith], reserveWithout)}`;
  } finally {
    await withKiln.stop();
    await withoutKiln.stop();
    await admin.query(`drop schema if exists "${withSchema}" cascade`);
    await admin.query(`drop schema if exists "${withoutSchema}" cascade`);
    for (const prefix of [withSchema, withoutSchema]) await deleteRedisKeys(REDIS_URL, `${prefix}:`);
  }
}

/** Only the write path's cost (no seeding): `npx tsx bench/analytics.ts writes`. */
export async function benchAnalyticsWrites(): Promise<void> {
  const admin = new pg.Client({ connectionString: DATABASE_URL });
  await admin.connect();
  try {
    process.stdout.write(`\n${await writePathCost(admin, Number(process.env.BENCH_DURATION_S ?? 8))}\n`);
  } finally {
    await admin.end();
  }
}

/** Migrate a schema of its own (as Kiln does at start), so it can be seeded before any Kiln folds it. */
async function migrated(schema: string): Promise<void> {
  const db = openPostgres({ url: DATABASE_URL, schema, max: 2 });
  try {
    await migrate(db, schema);
  } finally {
    await db.close();
  }
}

export async function benchAnalytics(): Promise<void> {
  // BENCH_ANALYTICS_SCHEMA: measure a schema seeded before (kept afterwards); else seed a new one and drop it.
  const reuse = process.env.BENCH_ANALYTICS_SCHEMA;
  const schema = reuse ?? `bench_analytics_${Date.now().toString(36)}`;
  const durationS = Number(process.env.BENCH_DURATION_S ?? 8);
  const admin = new pg.Client({ connectionString: DATABASE_URL });
  await admin.connect();
  let kiln: Awaited<ReturnType<typeof startKiln>> | undefined;
  try {
    // The write path first, on a quiet database (before the seed's writes and their vacuum).
    log('write path with and without analytics');
    const writes = await writePathCost(admin, durationS);
    let seedS = 0;
    if (!reuse) {
      const seedStarted = Date.now();
      await migrated(schema);
      await seed(admin, schema);
      seedS = Math.round((Date.now() - seedStarted) / 1000);
    }
    kiln = await startKiln(realServicesEnv(DATABASE_URL, REDIS_URL, schema));
    const today = new Date(Math.floor(Date.now() / DAY_MS) * DAY_MS);
    const hour = new Date(Math.floor(Date.now() / 3_600_000) * 3_600_000);
    const days = `from=${new Date(today.getTime() - 30 * DAY_MS).toISOString()}&to=${today.toISOString()}&interval=day`;
    const hours = `from=${new Date(hour.getTime() - 48 * 3_600_000).toISOString()}&to=${hour.toISOString()}&interval=hour`;
    const { rows } = await admin.query<{ project_id: string; n: number }>(
      `select project_id, count(*)::int as n from "${schema}".builds group by 1 order by 2 desc limit 1`,
    );
    const { rows: users } = await admin.query<{ user_id: string; n: number }>(
      `select user_id, count(*)::int as n from "${schema}".credit_ledger group by 1 order by 2 desc limit 1`,
    );
    const project = rows[0];
    const user = users[0];
    const lines = await measure(kiln.url, [
      { name: 'builds, everyone, 30 days by day', path: `/v1/analytics/builds?${days}` },
      { name: 'builds, everyone, 48 hours by hour', path: `/v1/analytics/builds?${hours}` },
      {
        name: `builds, busiest project (${project.n} builds), 30 days by day`,
        path: `/v1/analytics/builds?${days}&projectId=${project.project_id}`,
      },
      {
        name: 'builds, busiest project, 48 hours by hour',
        path: `/v1/analytics/builds?${hours}&projectId=${project.project_id}`,
      },
      { name: 'usage by plan, everyone, 30 days by day (top users)', path: `/v1/analytics/usage?${days}` },
      { name: 'usage by plan, everyone, 48 hours by hour (top users)', path: `/v1/analytics/usage?${hours}` },
      { name: 'usage by operation, everyone, 30 days by day', path: `/v1/analytics/usage?${days}&segment=operation` },
      {
        name: `usage, busiest user (${user.n} entries), 30 days by day`,
        path: `/v1/analytics/usage?${days}&userId=${user.user_id}`,
      },
      { name: 'usage, busiest user, 48 hours by hour', path: `/v1/analytics/usage?${hours}&userId=${user.user_id}` },
    ]);
    process.stdout.write(`\n${lines.join('\n')}\n\n${writes}\n`);
    await writeSection(
      'analytics',
      `## Analytics over 1 M builds and 5 M ledger entries\n\n${new Date().toISOString()} — ${machine()}. Kiln on PostgreSQL and Redis, on a schema seeded${seedS ? ` in ${seedS} s` : ' before'} (generate_series, then Kiln's own fold into the rollups) with ${BUILDS.toLocaleString('en')} builds over 90 days (82 % deployed, 12 % failed, 6 % cancelled; run times of seconds to half an hour; 5,000 projects) and their state events, and ${ENTRIES.toLocaleString('en')} ledger entries of 20,000 users (skewed: a few users move most credits). Each query signed and sent ${CALLS} times in a row after two warm-ups; the fold runs every 2 s meanwhile. Target: p95 < 100 ms for every case.\n\n${lines.join('\n')}\n\nThe write path's cost (issue 16: at most 5 %): the same requests to a Kiln on a schema with analytics and to one on a schema without its write-path parts (the fold-order indexes and the xact default dropped, no fold), in alternating quarters, 20 connections, ${durationS} s a side, spread over 200 users and projects, measured first, on a quiet database.\n\n${writes}\n`,
    );
  } finally {
    await kiln?.stop();
    if (!reuse) {
      await admin.query(`drop schema if exists "${schema}" cascade`);
      await deleteRedisKeys(REDIS_URL, `${schema}:`);
    }
    await admin.end();
  }
}

/** Seed a schema for `BENCH_ANALYTICS_SCHEMA=<schema> npm run bench analytics` (kept): `npx tsx bench/analytics.ts seed <schema>`. */
async function seedOnly(schema: string): Promise<void> {
  const admin = new pg.Client({ connectionString: DATABASE_URL });
  await admin.connect();
  try {
    await migrated(schema);
    await seed(admin, schema);
  } finally {
    await admin.end();
  }
}

if (process.argv[1]?.endsWith('analytics.ts') && process.argv[2] === 'writes') await benchAnalyticsWrites();
if (process.argv[1]?.endsWith('analytics.ts') && process.argv[2] === 'seed')
  await seedOnly(process.argv[3] ?? 'bench_analytics');
