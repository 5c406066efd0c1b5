// Baseline for the keyed-writes benchmark (SPEC section 8, first row): what most idempotency middlewares do — one
// Redis SET NX on the request's Idempotency-Key (a cache check), then the effect — with none of Kiln's guarantee
// (the mark and the effect are not atomic; a crash between them loses the request or replays nothing).
// - POST /builds: SET NX + one credit_reserve() call (the hold a build takes);
// - POST /reserve, /commit, /release: SET NX + the same credit function Kiln runs, once.
// Runs in the schema Kiln migrated (DATABASE_SCHEMA); commits and releases take the next hold created before the run.
import Fastify, { type FastifyReply, type FastifyRequest } from 'fastify';
import { Redis } from 'ioredis';
import pg from 'pg';

const schema = process.env.DATABASE_SCHEMA ?? 'public';
const prefix = `${process.env.REDIS_PREFIX ?? 'bench_keyed_base:'}base:`;
const users = Number(process.env.BENCH_USERS ?? 200);
const redis = new Redis(process.env.REDIS_URL ?? 'redis://127.0.0.1:6379');
const pool = new pg.Pool({
  connectionString: process.env.DATABASE_URL,
  max: 20,
  options: `-c search_path="${schema}"`,
});
let n = 0;
let commitN = 0;
let releaseN = 0;

/** The cache check: a key seen before answers 409 without touching the database. */
async function claimed(request: FastifyRequest, reply: FastifyReply): Promise<boolean> {
  const key = request.headers['idempotency-key'];
  const ok = await redis.set(`${prefix}${key ?? `none_${n}`}`, '1', 'EX', 86_400, 'NX');
  if (ok === null) reply.code(409).send({ error: 'IDEMPOTENCY_KEY_IN_USE' });
  return ok !== null;
}

const app = Fastify({ logger: false });
const reserve = async (request: FastifyRequest, reply: FastifyReply) => {
  if (!(await claimed(request, reply))) return reply;
  const i = n++;
  const { rows } = await pool.query(
    `select * from credit_reserve($1::text, $2::text, 10::bigint, null::text, 1800, 'req', 'corr', 'bench')`,
    [`base_x_${process.pid}_${i}`, `bench_base_${i % users}`],
  );
  return reply.code(201).send(rows[0]);
};
app.post('/builds', reserve);
app.post('/reserve', reserve);
const resolve = (kind: 'commit' | 'release') => async (request: FastifyRequest, reply: FastifyReply) => {
  if (!(await claimed(request, reply))) return reply;
  const id = kind === 'commit' ? `base_c_${commitN++}` : `base_r_${releaseN++}`;
  const { rows } = await pool.query(
    `select * from credit_resolve($1::text, $2::text, $3::bigint, null::text, 'bench', 'req', 'corr')`,
    [id, kind, kind === 'commit' ? 5 : null],
  );
  return rows[0].outcome === 'ok' ? rows[0] : reply.code(404).send(rows[0]);
};
app.post('/commit', resolve('commit'));
app.post('/release', resolve('release'));

const address = await app.listen({ port: 0, host: '127.0.0.1' });
process.stdout.write(`baseline listening ${address}\n`);
process.on(
  'SIGTERM',
  () =>
    void app.close().then(async () => {
      await pool.end();
      redis.disconnect();
      process.exit(0);
    }),
);
