// Development aid (not part of `npm run bench`): Kiln at a git revision against Kiln in this working tree, with the
// replay benchmark's baseline, measured interleaved in one run — to tell whether a change made a request cheaper on
// a machine whose speed drifts by tens of percent within minutes. Prints throughput against the baseline and each
// server's CPU per request (user + system from /proc, the figure the drift moves least).
// `npx tsx bench/revisions.ts [REV=HEAD] [replay|signed-get]`, PostgreSQL and Redis as for the other benchmarks;
// ROUNDS (default 8) rounds of 3 s slices, in the order baseline, REV, tree, then reversed.
import { execFileSync } from 'node:child_process';
import { mkdtemp, readFile, rm, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import {
  type BenchRequest,
  cycling,
  DATABASE_URL,
  load,
  machine,
  presignedGets,
  presignedPosts,
  REDIS_URL,
  realServicesEnv,
  type Started,
  startBaseline,
  startKiln,
} from './lib';

const rev = process.argv[2] ?? 'HEAD';
const scenario = process.argv[3] ?? 'replay';
if (!['replay', 'signed-get'].includes(scenario)) throw new Error(`unknown scenario ${scenario}`);
const rounds = Number(process.env.ROUNDS ?? 8);
const SLICE_S = 3;

async function cpuMs(pid: number): Promise<number> {
  const fields = (await readFile(`/proc/${pid}/stat`, 'utf8')).split(') ')[1].split(' ');
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / 100;
}

const root = new URL('..', import.meta.url).pathname;
const checkout = await mkdtemp(join(tmpdir(), 'kiln-rev-'));
execFileSync('git', ['worktree', 'add', '--detach', checkout, rev], { cwd: root, stdio: 'ignore' });
await symlink(join(root, 'node_modules'), join(checkout, 'node_modules'));
const stamp = Date.now().toString(36);
const schemas = [`rev_a_${stamp}`, `rev_b_${stamp}`];
const servers: Started[] = [];
try {
  const env = (schema: string) => ({
    ...realServicesEnv(DATABASE_URL, REDIS_URL, schema),
    // signed-get counts the IP quota as a deployment would; the replay benchmark runs without quotas.
    ...(scenario === 'signed-get' ? { RATE_LIMIT_IP_PER_MIN: '10000000' } : {}),
  });
  const old = await startKiln(env(schemas[0]), [], checkout);
  const now = await startKiln(env(schemas[1]));
  const base =
    scenario === 'replay'
      ? await startBaseline('bench/baseline-redis.ts', { REDIS_URL })
      : await startBaseline('bench/baseline-server.ts');
  servers.push(old, now, base);
  const basePath = scenario === 'replay' ? '/redis-get' : '/constant';
  const body = JSON.stringify({ ownerId: 'bench_owner', name: 'Bench project', settings: { region: 'eu' } });
  const pool: BenchRequest[] =
    scenario === 'replay'
      ? presignedPosts(
          '/v1/projects',
          600_000,
          () => body,
          () => 'rev-replayed-key',
        )
      : presignedGets('/v1/ping', 600_000);
  if (scenario === 'replay') {
    // The request every later one replays, once on each side.
    for (const kiln of [old, now]) {
      const [first] = pool.splice(0, 1);
      const res = await fetch(`${kiln.url}${first.path}`, { method: 'POST', headers: first.headers, body });
      if (res.status !== 201) throw new Error(`setup failed: ${res.status} ${await res.text()}`);
    }
  }
  // Each side its own nonces (a nonce is accepted once); the baseline gets the same bytes and ignores them.
  const half = Math.floor(pool.length / 2);
  const sides = [
    { name: 'baseline', server: base, url: `${base.url}${basePath}`, next: cycling(pool, basePath) },
    { name: `Kiln at ${rev}`, server: old, url: old.url, next: cycling(pool.slice(0, half)) },
    { name: 'Kiln in the working tree', server: now, url: now.url, next: cycling(pool.slice(half)) },
  ];
  const results = sides.map(() => ({ rps: [] as number[], us: [] as number[] }));
  for (const side of sides) await load('warm-up', { url: side.url, durationS: 2, setupRequest: side.next });
  for (let round = 0; round < rounds; round++) {
    const order = round % 2 === 0 ? [0, 1, 2] : [2, 1, 0];
    for (const i of order) {
      const side = sides[i];
      const before = await cpuMs(side.server.pid);
      const started = performance.now();
      const m = await load(side.name, { url: side.url, durationS: SLICE_S, setupRequest: side.next });
      const served = (m.requestsPerSec * (performance.now() - started)) / 1000;
      results[i].rps.push(m.requestsPerSec);
      results[i].us.push(((await cpuMs(side.server.pid)) - before) * (1000 / served));
    }
  }
  const mean = (values: number[]) => values.reduce((a, b) => a + b, 0) / values.length;
  const baseRps = mean(results[0].rps);
  process.stdout.write(
    `\n${new Date().toISOString()} — ${machine()}; ${scenario}, ${rounds} rounds of ${SLICE_S} s\n\n`,
  );
  process.stdout.write('| server | req/s | vs baseline | CPU µs per request | req/s per round (thousands) |\n');
  process.stdout.write('| --- | ---: | ---: | ---: | --- |\n');
  sides.forEach((side, i) => {
    const rps = mean(results[i].rps);
    const perRound = results[i].rps.map((r) => (r / 1000).toFixed(1)).join(' ');
    process.stdout.write(
      `| ${side.name} | ${rps.toFixed(0)} | ${((rps / baseRps) * 100).toFixed(1)} % | ${mean(results[i].us).toFixed(1)} | ${perRound} |\n`,
    );
  });
} finally {
  await Promise.all(servers.map((s) => s.stop()));
  execFileSync('git', ['worktree', 'remove', '--force', checkout], { cwd: root, stdio: 'ignore' });
  await rm(checkout, { recursive: true, force: true });
  const admin = new pg.Client({ connectionString: DATABASE_URL });
  await admin.connect();
  for (const schema of schemas) await admin.query(`drop schema if exists "${schema}" cascade`);
  await admin.end();
}
