// What a Prometheus scrape costs the API (issue 15): the same Kiln (PostgreSQL + Redis) measured with and without a
// scrape of /metrics every second, in alternating slices of one run: the signed GET /v1/ping and the credit reserve,
// closed loop and at a fixed 500 req/s. The scrape reads the shared gauges from the database (one statement, cached
// for a second) and renders every metric; the target is no visible difference.
import pg from 'pg';
import {
  compare,
  comparePaced,
  cycling,
  DATABASE_URL,
  type During,
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

const USERS = 100;

/** A scrape of `url`/metrics every second while a slice runs; each scrape's time and size are kept. */
function scrapeLoop(url: string, timings: number[], sizes: number[]): During {
  return () => {
    let stopped = false;
    let timer: NodeJS.Timeout | undefined;
    let current: Promise<void> = Promise.resolve();
    const tick = () => {
      if (stopped) return;
      const started = performance.now();
      current = fetch(`${url}/metrics`, { headers: { accept: 'application/openmetrics-text;version=1.0.0' } })
        .then(async (res) => {
          sizes.push((await res.text()).length);
          timings.push(performance.now() - started);
        })
        .catch(() => undefined);
      timer = setTimeout(tick, 1_000);
    };
    tick();
    return async () => {
      stopped = true;
      clearTimeout(timer);
      await current;
    };
  };
}

function pct(sorted: number[], p: number): number {
  return sorted.length === 0
    ? Number.NaN
    : sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}

export async function benchMetricsScrape(): Promise<void> {
  const schema = `bench_scrape_${Date.now().toString(36)}`;
  const durationS = Number(process.env.BENCH_DURATION_S ?? 8);
  const kiln = await startKiln(realServicesEnv(DATABASE_URL, REDIS_URL, schema));
  const admin = new pg.Client({ connectionString: DATABASE_URL, options: `-c search_path="${schema}"` });
  await admin.connect();
  const timings: number[] = [];
  const sizes: number[] = [];
  const scraping = scrapeLoop(kiln.url, timings, sizes);
  try {
    await admin.query(
      `select credit_grant('bench_user_' || g, 1000000000000::bigint, null, 'bench', 'bench', 'setup', 'setup')
         from generate_series(0, $1::int - 1) g`,
      [USERS],
    );
    // Requests sent once each across both sides and all slices (a nonce is accepted once).
    const gets = cycling(presignedGets('/v1/ping', durationS * 2 * 9_000));
    const reserves = cycling(
      presignedPosts('/v1/credits/reserve', durationS * 2 * 6_000, (i) =>
        JSON.stringify({ userId: `bench_user_${i % USERS}`, estimatedCredits: 1 }),
      ),
    );
    const ping = `${kiln.url}/v1/ping`;
    const reserve = `${kiln.url}/v1/credits/reserve`;
    await load('warm-up', { url: ping, durationS: 2, setupRequest: gets });
    await load('warm-up', { url: reserve, durationS: 2, setupRequest: reserves });
    const [getQuiet, getScraped] = await compare(
      { name: 'signed GET /v1/ping, no scrape', url: ping, setupRequest: gets },
      { name: 'signed GET /v1/ping, /metrics scraped every 1 s', url: ping, setupRequest: gets, during: scraping },
    );
    const [reserveQuiet, reserveScraped] = await compare(
      { name: 'POST /v1/credits/reserve, no scrape', url: reserve, setupRequest: reserves },
      { name: 'POST /v1/credits/reserve, scraped every 1 s', url: reserve, setupRequest: reserves, during: scraping },
    );
    const [pacedQuiet, pacedScraped] = await comparePaced(
      { name: 'reserve at 500 req/s, no scrape', url: reserve, rate: 500, next: reserves },
      { name: 'reserve at 500 req/s, scraped every 1 s', url: reserve, rate: 500, next: reserves, during: scraping },
    );
    const { rows } = await admin.query<{ n: string }>(
      `select count(*) as n from credit_reservations where state = 'active'`,
    );
    const table = [
      formatTable([getQuiet, getScraped], getQuiet),
      formatTable([reserveQuiet, reserveScraped], reserveQuiet),
      formatTable([pacedQuiet, pacedScraped], pacedQuiet),
    ].join('\n\n');
    timings.sort((a, b) => a - b);
    const scrapes = `${timings.length} scrapes under load: p50 ${pct(timings, 50).toFixed(1)} ms, p95 ${pct(timings, 95).toFixed(1)} ms, max ${pct(timings, 100).toFixed(1)} ms; ${Math.round((sizes.at(-1) ?? 0) / 1024)} KiB each (OpenMetrics); ${rows[0].n} active holds by the end (every reserve left one, all read by the gauges)`;
    process.stdout.write(`\n${table}\n\n${scrapes}\n`);
    await writeSection(
      'metrics-scrape',
      `## A scrape of /metrics under load\n\n${new Date().toISOString()} — ${machine()}. One Kiln on PostgreSQL and Redis (rate limits off), 20 connections, ${durationS} s per side in alternating quarters (no scrape, scraped, scraped, no scrape, twice): the "scraped" slices run a loop fetching /metrics every second (the shared gauges' one database statement, then every metric rendered). Requests signed before the run, each sent once; reserves spread over ${USERS} users.\n\n${table}\n\n- ${scrapes}.\n`,
    );
  } finally {
    await kiln.stop();
    await admin.query(`drop schema if exists "${schema}" cascade`);
    await admin.end();
  }
}
