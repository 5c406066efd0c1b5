// Baseline for the credits benchmark: bare Fastify routes each calling one credit function once on a pg pool,
// in the schema Kiln migrated (DATABASE_SCHEMA). Holds for commit/release were created before the run
// (ids base_c_N / base_r_N); each request takes the next one.
import Fastify from 'fastify';
import pg from 'pg';

const schema = process.env.DATABASE_SCHEMA ?? 'public';
const pool = new pg.Pool({
  connectionString: process.env.DATABASE_URL,
  max: 20,
  options: `-c search_path="${schema}"`,
});
// As in bench/credits.ts: the load is spread over this many users.
const BENCH_USERS = 100;
let reserveN = 0;
let commitN = 0;
let releaseN = 0;
const app = Fastify({ logger: false });
app.post('/reserve', async () => {
  const id = `base_x_${process.pid}_${reserveN++}`;
  const { rows } = await pool.query(
    `select * from credit_reserve($1::text, $2::text, 10::bigint, null::text, 1800, 'req', 'corr', 'bench')`,
    [id, `bench_base_${reserveN % BENCH_USERS}`],
  );
  return rows[0];
});
// A hold that is not there (the prepared ones ran out) answers 404, so the bench's non-2xx column shows it.
app.post('/commit', async (_request, reply) => {
  const { rows } = await pool.query(
    `select * from credit_resolve($1::text, 'commit', 5::bigint, null::text, 'bench', 'req', 'corr')`,
    [`base_c_${commitN++}`],
  );
  return rows[0].outcome === 'ok' ? rows[0] : reply.code(404).send(rows[0]);
});
app.post('/release', async (_request, reply) => {
  const { rows } = await pool.query(
    `select * from credit_resolve($1::text, 'release', null::bigint, null::text, 'bench', 'req', 'corr')`,
    [`base_r_${releaseN++}`],
  );
  return rows[0].outcome === 'ok' ? rows[0] : reply.code(404).send(rows[0]);
});
const address = await app.listen({ port: 0, host: '127.0.0.1' });
process.stdout.write(`baseline listening ${address}\n`);
process.on(
  'SIGTERM',
  () =>
    void app
      .close()
      .then(() => pool.end())
      .then(() => process.exit(0)),
);
