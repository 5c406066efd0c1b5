// The baseline of the benchmarks: a bare Fastify server with nothing but the route under comparison.
import Fastify from 'fastify';

const app = Fastify({ logger: false });
app.get('/constant', async () => ({ status: 'ok' }));
const address = await app.listen({ port: 0, host: '127.0.0.1' });
process.stdout.write(`baseline listening ${address}\n`);
process.on('SIGTERM', () => void app.close().then(() => process.exit(0)));
