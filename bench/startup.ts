// The compiled start against the tsx one (issue 20): start-to-ready and resident memory of `node dist/main.js` and
// `node --import tsx src/main.ts`, side by side, in the same run. Start-to-ready is from spawn until /readyz answers
// 200 (polled every 50 ms): a first start on a fresh DATA_DIR (the embedded database is initialised), a later start on
// that directory, and a start on PostgreSQL and Redis (migrations already applied). RSS is read from /proc right
// after ready and after IDLE_S seconds of idle. ROUNDS rounds, the two entries alternating; medians reported.
import { execFileSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import {
  DATABASE_URL,
  deleteRedisKeys,
  machine,
  REDIS_URL,
  realServicesEnv,
  rssMb,
  startKiln,
  writeSection,
} from './lib';

const ROUNDS = Number(process.env.BENCH_STARTUP_ROUNDS ?? 3);
const IDLE_S = Number(process.env.BENCH_STARTUP_IDLE_S ?? 20);
type Entry = 'src' | 'dist';
type Mode = 'embedded, first start' | 'embedded, later start' | 'PostgreSQL + Redis';

const median = (values: number[]) => {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
};

interface Sample {
  readyMs: number;
  rssReady: number;
  rssIdle?: number;
}

async function once(entry: Entry, env: Record<string, string>, idle: boolean): Promise<Sample> {
  const started = Date.now();
  const kiln = await startKiln(env, [], undefined, entry);
  const readyMs = Date.now() - started;
  try {
    const rssReady = await rssMb(kiln.pid);
    if (!idle) return { readyMs, rssReady };
    await new Promise((resolve) => setTimeout(resolve, IDLE_S * 1000));
    return { readyMs, rssReady, rssIdle: await rssMb(kiln.pid) };
  } finally {
    await kiln.stop();
  }
}

export async function benchStartup(): Promise<void> {
  execFileSync('npm', ['run', 'build', '--silent'], { stdio: 'inherit' });
  const samples = new Map<string, Sample[]>();
  const add = (entry: Entry, mode: Mode, sample: Sample) => {
    const key = `${entry}|${mode}`;
    samples.set(key, [...(samples.get(key) ?? []), sample]);
  };
  const admin = new pg.Client({ connectionString: DATABASE_URL });
  await admin.connect();
  const schemas: string[] = [];
  try {
    for (let round = 0; round < ROUNDS; round++) {
      for (const entry of (round % 2 ? ['dist', 'src'] : ['src', 'dist']) as Entry[]) {
        const dataDir = await mkdtemp(join(tmpdir(), 'kiln-bench-start-'));
        try {
          const embedded = { DATA_DIR: dataDir, DATABASE_URL: '', REDIS_URL: '' };
          add(entry, 'embedded, first start', await once(entry, embedded, false));
          add(entry, 'embedded, later start', await once(entry, embedded, true));
        } finally {
          await rm(dataDir, { recursive: true, force: true });
        }
        const schema = `bench_start_${entry}_${round}_${Date.now().toString(36)}`;
        schemas.push(schema);
        const shared = { ...realServicesEnv(DATABASE_URL, REDIS_URL, schema), DATA_DIR: tmpdir() };
        await once(entry, shared, false); // applies the migrations: not measured
        add(entry, 'PostgreSQL + Redis', await once(entry, shared, true));
        process.stdout.write(`round ${round + 1}/${ROUNDS} ${entry} done\n`);
      }
    }
  } finally {
    for (const schema of schemas) {
      await admin.query(`drop schema if exists "${schema}" cascade`);
      await deleteRedisKeys(REDIS_URL, `${schema}:`);
    }
    await admin.end();
  }

  const modes: Mode[] = ['embedded, first start', 'embedded, later start', 'PostgreSQL + Redis'];
  const fmt = (n: number | undefined, digits = 0) => (n === undefined || Number.isNaN(n) ? '—' : n.toFixed(digits));
  const rows = modes.map((mode) => {
    const src = samples.get(`src|${mode}`) ?? [];
    const dist = samples.get(`dist|${mode}`) ?? [];
    const srcMs = median(src.map((s) => s.readyMs));
    const distMs = median(dist.map((s) => s.readyMs));
    const idle = (list: Sample[]) =>
      list[0]?.rssIdle === undefined ? undefined : median(list.map((s) => s.rssIdle ?? 0));
    return `| ${mode} | ${fmt(srcMs)} | ${fmt(distMs)} | ${fmt(distMs / srcMs, 2)} | ${fmt(median(src.map((s) => s.rssReady)))} / ${fmt(idle(src))} | ${fmt(median(dist.map((s) => s.rssReady)))} / ${fmt(idle(dist))} |`;
  });
  const markdown = `## Start-up: compiled dist/ against tsx (\`npm run bench startup\`)

${new Date().toISOString()} · ${machine()} · ${ROUNDS} rounds, entries alternating, medians · RSS after ${IDLE_S} s idle

| start | tsx src/main.ts: ready (ms) | node dist/main.js: ready (ms) | dist / tsx | tsx RSS MB: ready / idle | dist RSS MB: ready / idle |
| --- | ---: | ---: | ---: | ---: | ---: |
${rows.join('\n')}

Ready = spawn until \`/readyz\` answers 200 (polled every 50 ms), rate limits off, no builds running. "First start"
initialises the embedded database in a fresh \`DATA_DIR\`; "later start" opens it again; PostgreSQL + Redis starts on
a schema whose migrations a previous start applied. The memory under the sustained mix is the \`memory\` section
(\`BENCH_ENTRY=dist npm run bench memory\` runs it on the compiled start).`;
  process.stdout.write(`${markdown}\n`);
  await writeSection('startup', markdown);
}
