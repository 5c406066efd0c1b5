// Webhook delivery (issue 17), on the real PostgreSQL and Redis, to a local receiver in a process of its own
// (bench/webhook-receiver.ts, allow-listed loopback):
// - burst: 100 builds driven through the API at once (create, building, deployed: 300 events); latency from the
//   event's createdAt (its transaction's start, database clock) to the receiver's arrival (host clock, same machine);
// - paced: the same, one build started every 20 ms (the latency of delivery rather than of the API's burst);
// - backlog: 100 builds × 50 events written in one transaction (5,000 messages at once); how fast one Kiln process
//   drains them, and their latency;
// - the outbox's cost on POST /v1/builds: a Kiln whose projects have a webhook (each build's queued event writes an
//   outbox row, delivered meanwhile by the same process) against one whose projects have none, same requests,
//   alternating slices.
import { loadavg } from 'node:os';
import pg from 'pg';
import { createKilnClient } from '../src/client/sign';
import {
  BENCH_SECRET,
  compare,
  cycling,
  DATABASE_URL,
  deleteRedisKeys,
  formatTable,
  load,
  machine,
  presignedPosts,
  REDIS_URL,
  realServicesEnv,
  type Started,
  startBaseline,
  startKiln,
  writeSection,
} from './lib';
import type { Arrival } from './webhook-receiver';

const BUILDS = 100;
const BACKLOG_EVENTS_PER_BUILD = 50;
const WEBHOOK_ENV = {
  WEBHOOK_ALLOWED_NETWORKS: '127.0.0.1/32',
  WEBHOOK_ALLOW_HTTP: 'true',
  BUILD_EXECUTOR: 'external',
};

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];
}
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function arrivals(receiver: Started): Promise<Arrival[]> {
  return (await fetch(`${receiver.url}/stats`)).json() as Promise<Arrival[]>;
}

async function until(receiver: Started, count: number, timeoutMs = 300_000): Promise<Arrival[]> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const got = await arrivals(receiver);
    if (new Set(got.map((a) => a.id)).size >= count) return got;
    if (Date.now() > deadline) throw new Error(`only ${got.length} of ${count} messages arrived`);
    await sleep(100);
  }
}

/** Per build, were the first arrivals in seq order? */
function inOrder(got: Arrival[]): boolean {
  const last = new Map<string, number>();
  const seen = new Set<string>();
  for (const a of got) {
    if (seen.has(a.id)) continue;
    seen.add(a.id);
    if ((last.get(a.buildId) ?? 0) >= a.seq) return false;
    last.set(a.buildId, a.seq);
  }
  return true;
}

function summary(name: string, got: Arrival[], since: number): string {
  const firsts = new Map<string, Arrival>();
  for (const a of got) if (!firsts.has(a.id)) firsts.set(a.id, a);
  const all = [...firsts.values()];
  const latencies = all.map((a) => a.at - a.createdAt).sort((a, b) => a - b);
  const spanS = (Math.max(...all.map((a) => a.at)) - since) / 1000;
  return `| ${name} | ${all.length} | ${(all.length / spanS).toFixed(0)} | ${spanS.toFixed(2)} | ${percentile(latencies, 50)} | ${percentile(latencies, 95)} | ${percentile(latencies, 99)} | ${got.length - all.length} | ${inOrder(got) ? 'yes' : 'NO'} |`;
}

async function seedProjects(admin: pg.Client, schema: string, receiverUrl: string | null): Promise<void> {
  await admin.query(`set search_path = "${schema}"`);
  await admin.query(
    `insert into projects (id, owner_id, name, allow_concurrent_builds, webhook_url, webhook_secret)
     select 'wp' || g, 'o', 'n', true, $1::text || '/p/wp' || g,
            case when $1::text is null then null
                 else 'whsec_' || encode(decode(md5(random()::text) || md5(random()::text), 'hex'), 'base64') end
       from generate_series(0, ${BUILDS - 1}) g`,
    [receiverUrl],
  );
  await admin.query(
    `select credit_grant('bench_user_' || g, 1000000000000::bigint, null, 'bench', 'bench', 'setup', 'setup')
       from generate_series(0, ${BUILDS - 1}) g`,
  );
}

export async function benchWebhooks(): Promise<void> {
  const admin = new pg.Client({ connectionString: DATABASE_URL });
  await admin.connect();
  const stamp = Date.now().toString(36);
  const schema = `bench_wh_${stamp}`;
  const withoutSchema = `bench_wh_none_${stamp}`;
  const quietSchema = `bench_wh_quiet_${stamp}`;
  const receiver = await startBaseline('bench/webhook-receiver.ts');
  let kiln: Started | undefined;
  let without: Started | undefined;
  let quiet: Started | undefined;
  try {
    kiln = await startKiln({ ...realServicesEnv(DATABASE_URL, REDIS_URL, schema), ...WEBHOOK_ENV });
    await seedProjects(admin, schema, receiver.url);
    const api = createKilnClient({ baseUrl: kiln.url, secret: BENCH_SECRET });

    // Live: 100 builds through the API at once, each moved twice.
    const liveStart = Date.now();
    const ids = await Promise.all(
      Array.from({ length: BUILDS }, async (_, i) => {
        const res = await api<{ id: string }>('POST', '/v1/builds', {
          projectId: `wp${i}`,
          userId: `bench_user_${i}`,
          estimatedCredits: 1,
        });
        if (res.status !== 201) throw new Error(`POST /v1/builds answered ${res.status}`);
        return res.body.id;
      }),
    );
    for (const state of ['building', 'deployed']) {
      await Promise.all(ids.map((id) => api('PATCH', `/v1/builds/${id}`, { state })));
    }
    const live = await until(receiver, BUILDS * 3);
    const liveRow = summary(`burst: ${BUILDS} builds × 3 events through the API at once`, live, liveStart);
    await fetch(`${receiver.url}/stats`, { method: 'DELETE' });

    // Paced: the same 100 builds' worth, one build started every 20 ms (50 builds/s, 150 events/s), each moved
    // through its states as soon as the previous call answered: the latency of delivery itself, not of a burst.
    const pacedStart = Date.now();
    await Promise.all(
      Array.from({ length: BUILDS }, async (_, i) => {
        await sleep(i * 20);
        const res = await api<{ id: string }>('POST', '/v1/builds', {
          projectId: `wp${i}`,
          userId: `bench_user_${i}`,
          estimatedCredits: 1,
        });
        if (res.status !== 201) throw new Error(`POST /v1/builds answered ${res.status}`);
        for (const state of ['building', 'deployed']) await api('PATCH', `/v1/builds/${res.body.id}`, { state });
      }),
    );
    const paced = await until(receiver, BUILDS * 3);
    const pacedRow = summary(`paced: a build every 20 ms, × 3 events through the API`, paced, pacedStart);
    await fetch(`${receiver.url}/stats`, { method: 'DELETE' });

    // Backlog: 5,000 messages committed at once.
    await admin.query(`set search_path = "${schema}"`);
    await admin.query(
      `insert into builds (id, project_id, user_id, state, estimated_credits, exclusive)
       select 'bk' || g, 'wp' || g, 'bench_user_' || g, 'queued', 1, false from generate_series(0, ${BUILDS - 1}) g`,
    );
    const backlogStart = Date.now();
    await admin.query(
      `with e as (insert into build_events (build_id, seq, type, message)
                  select 'bk' || b, s, 'log', 'line ' || s
                    from generate_series(0, ${BUILDS - 1}) b, generate_series(1, ${BACKLOG_EVENTS_PER_BUILD}) s
                  returning build_id)
       update builds set last_event_seq = ${BACKLOG_EVENTS_PER_BUILD} where id like 'bk%'`,
    );
    const backlog = await until(receiver, BUILDS * BACKLOG_EVENTS_PER_BUILD);
    const backlogRow = summary(
      `backlog: ${BUILDS} builds × ${BACKLOG_EVENTS_PER_BUILD} events in one transaction`,
      backlog,
      backlogStart,
    );
    const loadAfterDelivery = loadavg()[0].toFixed(2);

    // The outbox's cost on POST /v1/builds.
    without = await startKiln({ ...realServicesEnv(DATABASE_URL, REDIS_URL, withoutSchema), ...WEBHOOK_ENV });
    await seedProjects(admin, withoutSchema, null);
    // The outbox rows alone: projects with a webhook, but this process delivers none (WEBHOOK_CONCURRENCY=0).
    quiet = await startKiln({
      ...realServicesEnv(DATABASE_URL, REDIS_URL, quietSchema),
      ...WEBHOOK_ENV,
      WEBHOOK_CONCURRENCY: '0',
    });
    await seedProjects(admin, quietSchema, receiver.url);
    const count = Number(process.env.BENCH_DURATION_S ?? 8) * 6_000;
    const builds = presignedPosts('/v1/builds', count, (i) =>
      JSON.stringify({ projectId: `wp${i % BUILDS}`, userId: `bench_user_${i % BUILDS}`, estimatedCredits: 1 }),
    );
    const third = (side: 0 | 1 | 2) => cycling(builds.filter((_, i) => i % 3 === side));
    const [withRequests, withoutRequests, quietRequests] = [third(0), third(1), third(2)];
    await load('warm-up', { url: `${kiln.url}/v1/builds`, durationS: 1, setupRequest: withRequests });
    await load('warm-up', { url: `${without.url}/v1/builds`, durationS: 1, setupRequest: withoutRequests });
    await load('warm-up', { url: `${quiet.url}/v1/builds`, durationS: 1, setupRequest: quietRequests });
    const plainSide = {
      name: 'POST /v1/builds, projects without a webhook',
      url: without.url,
      setupRequest: withoutRequests,
    };
    const [plain, outboxOnly] = await compare(plainSide, {
      name: 'POST /v1/builds, with a webhook, outbox rows only (no delivery here)',
      url: quiet.url,
      setupRequest: quietRequests,
    });
    const [plainAgain, outboxed] = await compare(plainSide, {
      name: 'POST /v1/builds, with a webhook, delivered by the same process',
      url: kiln.url,
      setupRequest: withRequests,
    });
    await admin.query(`set search_path = "${schema}"`);
    const { rows } = await admin.query<{ delivered: number; pending: number }>(
      `select count(*) filter (where status = 'delivered')::int as delivered,
              count(*) filter (where status = 'pending')::int as pending from webhook_deliveries`,
    );

    const markdown = `## Webhook delivery

Machine: ${machine()}. Date: ${new Date().toISOString()}. PostgreSQL and Redis local; one Kiln process delivering
(WEBHOOK_CONCURRENCY 32, at most 4 per endpoint), ${BUILDS} projects each with its own endpoint on one local receiver
(a separate process answering 204 at once). Latency: from the event's \`createdAt\` (its transaction's start) to the
receiver reading the request; throughput: messages over the time from the first write to the last arrival. 1-minute
load average after the delivery runs: ${loadAfterDelivery}.

| run | messages | msg/s | seconds | p50 ms | p95 ms | p99 ms | repeats | per-build order |
| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |
${liveRow}
${pacedRow}
${backlogRow}

The outbox's cost on \`POST /v1/builds\` (alternating slices, the same kind of requests to each side): first the
outbox rows alone (a Kiln whose projects have webhooks but which delivers none), then with the same process also
delivering each build's queued event while it takes requests (${rows[0].delivered} delivered, ${rows[0].pending}
still pending when the slices ended; the receiver is another process on the same 2 cores):

${formatTable([plain, outboxOnly], plain)}

${formatTable([plainAgain, outboxed], plainAgain)}
`;
    process.stdout.write(`\n${markdown}\n`);
    await writeSection('webhooks', markdown);
  } finally {
    await kiln?.stop();
    await without?.stop();
    await quiet?.stop();
    await receiver.stop();
    await admin.query(`drop schema if exists "${schema}" cascade`);
    await admin.query(`drop schema if exists "${withoutSchema}" cascade`);
    await admin.query(`drop schema if exists "${quietSchema}" cascade`);
    for (const prefix of [schema, withoutSchema, quietSchema]) await deleteRedisKeys(REDIS_URL, `${prefix}:`);
    await admin.end();
  }
}
