// Baseline for the replay benchmark: a bare Fastify route doing one Redis GET and returning its value.
import Fastify from 'fastify';
import { Redis } from 'ioredis';

const redis = new Redis(process.env.REDIS_URL ?? 'redis://127.0.0.1:6379');
const key = `bench_baseline_${process.pid}`;
await redis.set(key, JSON.stringify({ statusCode: 201, body: '{"id":"prj_x","name":"bench"}' }), 'EX', 3600);
const app = Fastify({ logger: false });
app.post('/redis-get', async (_request, reply) => {
  const value = await redis.get(key);
  return reply.type('application/json').send(value);
});
const address = await app.listen({ port: 0, host: '127.0.0.1' });
process.stdout.write(`baseline listening ${address}\n`);
process.on(
  'SIGTERM',
  () =>
    void app.close().then(async () => {
      await redis.del(key);
      redis.disconnect();
      process.exit(0);
    }),
);
