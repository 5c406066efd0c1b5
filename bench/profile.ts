// Profiling aid (not part of `npm run bench`): starts Kiln with --cpu-prof, loads it for BENCH_DURATION_S seconds
// with pre-signed requests, stops it and prints where the CPU time went (self time by function and by package).
// `npx tsx bench/profile.ts [signed-get|reserve|replay|read-build|keyed-reserve|keyed-build] [profile dir]`:
// signed-get is the signed-get benchmark's GET /v1/ping (embedded database, REDIS_URL if set); reserve is
// POST /v1/credits/reserve on the real PostgreSQL and Redis (DATABASE_URL / REDIS_URL, else the local ones), spread
// over 100 users; keyed-reserve the same with a fresh Idempotency-Key each; keyed-build a keyed POST /v1/builds, one
// project per build; replay is a replayed POST /v1/projects there; read-build is GET /v1/builds/:id of a queued build
// there. PROFILE=0 measures without profiling.
import { mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import {
  cycling,
  DATABASE_URL,
  deleteRedisKeys,
  load,
  presignedGets,
  presignedPosts,
  REDIS_URL,
  realServicesEnv,
  startKiln,
} from './lib';
import { signedGetEnv } from './signed-get';
import { queuedBuildPath } from './signed-get-build';

const scenario = process.argv[2] ?? 'signed-get';
if (!['signed-get', 'reserve', 'replay', 'read-build', 'keyed-reserve', 'keyed-build'].includes(scenario))
  throw new Error(`unknown scenario ${scenario}`);
const profileDir = process.argv[3] ?? (await mkdtemp(join(tmpdir(), 'kiln-prof-')));
const dataDir = await mkdtemp(join(tmpdir(), 'kiln-bench-'));
const redisUrl = process.env.REDIS_URL ?? '';
const schema = `bench_profile_${Date.now().toString(36)}`;
const env =
  scenario === 'signed-get'
    ? signedGetEnv(dataDir, redisUrl)
    : { ...realServicesEnv(DATABASE_URL, redisUrl || REDIS_URL, schema), DATA_DIR: dataDir };
const kiln = await startKiln(env, process.env.PROFILE === '0' ? [] : ['--cpu-prof', '--cpu-prof-dir', profileDir]);
const path =
  scenario === 'read-build'
    ? await queuedBuildPath(kiln.url)
    : ({
        'signed-get': '/v1/ping',
        reserve: '/v1/credits/reserve',
        'keyed-reserve': '/v1/credits/reserve',
        'keyed-build': '/v1/builds',
        replay: '/v1/projects',
      }[scenario] as string);
/** Requests signed before the run (a nonce, and a key, is used once). */
const POOL = 300_000;
const freshKey = (i: number) => `profile-${process.pid}-${i}`;
const USERS = 100;
const REPLAYED_BODY = JSON.stringify({ ownerId: 'profile_owner', name: 'Profiled', settings: { region: 'eu' } });
const pool =
  scenario === 'signed-get' || scenario === 'read-build'
    ? presignedGets(path, 300_000)
    : scenario === 'replay'
      ? presignedPosts(
          path,
          300_000,
          () => REPLAYED_BODY,
          () => 'profile-replayed-key',
        )
      : scenario === 'keyed-build'
        ? presignedPosts(
            path,
            POOL / 10,
            (i) =>
              JSON.stringify({
                projectId: `profile_p_${i}`,
                userId: `profile_user_${i % USERS}`,
                estimatedCredits: 10,
              }),
            freshKey,
          )
        : presignedPosts(
            path,
            POOL,
            (i) => JSON.stringify({ userId: `profile_user_${i % USERS}`, estimatedCredits: 10 }),
            scenario === 'keyed-reserve' ? freshKey : () => undefined,
          );
let admin: pg.Client | undefined;
if (scenario === 'replay') {
  // The one request every later one replays.
  const created = await fetch(`${kiln.url}${path}`, { method: 'POST', headers: pool[0].headers, body: REPLAYED_BODY });
  if (created.status !== 201) throw new Error(`setup failed: ${created.status} ${await created.text()}`);
  pool.shift();
}
if (scenario !== 'signed-get') {
  admin = new pg.Client({ connectionString: DATABASE_URL, options: `-c search_path="${schema}"` });
  await admin.connect();
}
if (admin && ['reserve', 'keyed-reserve', 'keyed-build'].includes(scenario)) {
  await admin.query(
    `select credit_grant('profile_user_' || g, 1000000000000::bigint, null, 'bench', 'bench', 'setup', 'setup')
       from generate_series(0, $1::int - 1) g`,
    [USERS],
  );
}
if (admin && scenario === 'keyed-build') {
  await admin.query(
    `insert into projects (id, owner_id, name) select 'profile_p_' || g, 'o', 'n' from generate_series(0, $1::int - 1) g`,
    [pool.length],
  );
}
// One cursor across warm-up and measurement: a nonce is accepted once.
const signed = cycling(pool);
// Kiln's CPU time (user + system, from /proc) over the measurement: the figure the noise of a shared machine moves least.
const cpuMs = async () => {
  const fields = (await readFile(`/proc/${kiln.pid}/stat`, 'utf8')).split(') ')[1].split(' ');
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / 100;
};
await load('warm-up', { url: `${kiln.url}${path}`, durationS: 2, setupRequest: signed });
const cpuBefore = await cpuMs();
const loadStart = performance.now();
const result = await load('profiled', { url: `${kiln.url}${path}`, setupRequest: signed });
const loadEnd = performance.now();
const cpu = (await cpuMs()) - cpuBefore;
const served = result.requestsPerSec * ((loadEnd - loadStart) / 1000);
process.stdout.write(
  `${JSON.stringify(result)}\nKiln CPU ${(cpu / ((loadEnd - loadStart) / 1000) / 10).toFixed(0)} % of a core, ${((cpu * 1000) / served).toFixed(1)} µs per request\n`,
);
await kiln.stop();
const stopped = performance.now();
await rm(dataDir, { recursive: true, force: true });
if (admin) {
  await admin.query(`drop schema if exists "${schema}" cascade`);
  await admin.end();
  await deleteRedisKeys(redisUrl || REDIS_URL, `${schema}:`);
}
if (process.env.PROFILE === '0') process.exit(0);

interface Node {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}
// --cpu-prof also profiles tsx's loader thread: the main thread's profile is the largest one.
const files = (await readdir(profileDir)).filter((f) => f.endsWith('.cpuprofile'));
const sizes = await Promise.all(files.map(async (f) => (await stat(join(profileDir, f))).size));
const file = files[sizes.indexOf(Math.max(...sizes))];
if (!file) throw new Error('no profile written');
const profile = JSON.parse(await readFile(join(profileDir, file), 'utf8')) as {
  nodes: Node[];
  samples: number[];
  timeDeltas: number[];
  startTime: number;
  endTime: number;
};
// Only the samples taken while the load ran (the profile ends when the process exits, just after the stop).
const from = profile.endTime - (stopped - loadStart) * 1000;
const to = profile.endTime - (stopped - loadEnd) * 1000;
const self = new Map<number, number>();
let at = profile.startTime;
profile.samples.forEach((id, i) => {
  const delta = profile.timeDeltas[i] ?? 0;
  at += delta;
  if (at >= from && at <= to) self.set(id, (self.get(id) ?? 0) + delta);
});
// Inclusive time of every function name (a function counted once per sample even when recursive).
const parent = new Map<number, number>();
for (const node of profile.nodes) for (const child of node.children ?? []) parent.set(child, node.id);
const byId = new Map(profile.nodes.map((n) => [n.id, n]));
const inclusive = new Map<string, number>();
for (const [id, t] of self) {
  const seen = new Set<string>();
  for (let n: number | undefined = id; n !== undefined; n = parent.get(n)) {
    const f = byId.get(n)?.callFrame;
    if (!f) break;
    const key = `${f.functionName || '(anon)'} ${f.url.replace(/^.*node_modules\//, '').replace(/^file:\/\/.*\/main\//, '')}:${f.lineNumber + 1}`;
    if (seen.has(key)) continue;
    seen.add(key);
    inclusive.set(key, (inclusive.get(key) ?? 0) + t);
  }
}
const total = [...self.values()].reduce((a, b) => a + b, 0);
const byFunction = new Map<string, number>();
const byPackage = new Map<string, number>();
for (const node of profile.nodes) {
  const t = self.get(node.id) ?? 0;
  const { functionName, url, lineNumber } = node.callFrame;
  const short = url.replace(/^.*node_modules\//, '').replace(/^file:\/\/.*\/main\//, '');
  const key = `${functionName || '(anon)'} ${short}:${lineNumber + 1}`;
  byFunction.set(key, (byFunction.get(key) ?? 0) + t);
  const pkg = url.includes('node_modules/')
    ? (url
        .split('node_modules/')
        .pop()
        ?.split('/')
        .slice(0, url.includes('node_modules/@') ? 2 : 1)
        .join('/') ?? url)
    : url.startsWith('node:')
      ? url
      : url.includes('/main/src/')
        ? `kiln ${short}`
        : functionName.startsWith('(')
          ? functionName
          : '(native/other)';
  byPackage.set(pkg, (byPackage.get(pkg) ?? 0) + t);
}
const pct = (t: number) => `${((t / total) * 100).toFixed(1).padStart(5)} %`;
const top = (m: Map<string, number>, n: number) =>
  [...m.entries()]
    .sort((a, b) => b[1] - a[1])
    .slice(0, n)
    .map(([k, t]) => `${pct(t)}  ${k}`)
    .join('\n');
process.stdout.write(`profile ${join(profileDir, file)}, ${(total / 1e6).toFixed(1)} s sampled\n`);
process.stdout.write(
  `\n-- self time by package\n${top(byPackage, 25)}\n\n-- self time by function\n${top(byFunction, 40)}\n`,
);
process.stdout.write(`\n-- inclusive time by function\n${top(inclusive, Number(process.env.PROFILE_TOP ?? 70))}\n`);
