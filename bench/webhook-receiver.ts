// A webhook receiver for bench/webhooks.ts, in a process of its own (so it does not take the load generator's CPU):
// answers every POST 204 at once and records, per message, its arrival (host clock, ms), the event's createdAt
// and whether it is a replay. GET /stats returns the records; DELETE /stats forgets them.
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';

/** One message as the receiver saw it (bench/webhooks.ts reads them from GET /stats). */
export interface Arrival {
  id: string;
  buildId: string;
  seq: number;
  createdAt: number;
  at: number;
}

let arrivals: Arrival[] = [];
const server = createServer((req, res) => {
  if (req.method === 'GET') {
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(arrivals));
    return;
  }
  if (req.method === 'DELETE') {
    arrivals = [];
    res.writeHead(204).end();
    return;
  }
  const chunks: Buffer[] = [];
  req.on('data', (chunk: Buffer) => chunks.push(chunk));
  req.on('end', () => {
    const at = Date.now();
    try {
      const body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
      arrivals.push({
        id: String(req.headers['webhook-id']),
        buildId: body.data.buildId,
        seq: body.data.seq,
        createdAt: Date.parse(body.data.createdAt),
        at,
      });
    } catch {
      // not a Kiln delivery: answered all the same
    }
    res.writeHead(204).end();
  });
});
server.keepAliveTimeout = 10_000;
server.listen(0, '127.0.0.1', () => {
  process.stdout.write(`listening http://127.0.0.1:${(server.address() as AddressInfo).port}\n`);
});
