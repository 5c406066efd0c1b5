import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';

/** One request a receiver got. */
export interface Received {
  path: string;
  headers: IncomingHttpHeaders;
  body: string;
  at: number;
}

/** What the receiver answers a request: a status, headers, a body, after a delay; 'hang' never answers. */
export type Answer = { status: number; headers?: Record<string, string>; body?: string; delayMs?: number } | 'hang';

export interface Receiver {
  /** Base URL, e.g. http://127.0.0.1:40123 */
  url: string;
  port: number;
  received: Received[];
  /** Decide the answer to each request (default: 204). */
  answer: (request: Received) => Answer;
  /** Stop listening (connections are refused meanwhile) and listen again on the same port. */
  stop(): Promise<void>;
  restart(): Promise<void>;
  close(): Promise<void>;
}

/** A local webhook receiver on 127.0.0.1 that records every request and answers as told. */
export async function startReceiver(port = 0): Promise<Receiver> {
  let server: Server;
  const hanging = new Set<() => void>();
  const receiver: Receiver = {
    url: '',
    port: 0,
    received: [],
    answer: () => ({ status: 204 }),
    async stop() {
      for (const release of hanging) release();
      hanging.clear();
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
    },
    async restart() {
      await listen(receiver.port);
    },
    async close() {
      if (server.listening) await receiver.stop();
    },
  };
  const listen = (on: number) =>
    new Promise<void>((resolve, reject) => {
      server = createServer((req, res) => {
        const chunks: Buffer[] = [];
        req.on('data', (chunk: Buffer) => chunks.push(chunk));
        req.on('end', () => {
          const got: Received = {
            path: req.url ?? '',
            headers: req.headers,
            body: Buffer.concat(chunks).toString('utf8'),
            at: Date.now(),
          };
          receiver.received.push(got);
          const answer = receiver.answer(got);
          if (answer === 'hang') {
            hanging.add(() => res.destroy());
            return;
          }
          setTimeout(() => {
            res.writeHead(answer.status, answer.headers);
            res.end(answer.body ?? '');
          }, answer.delayMs ?? 0);
        });
      });
      server.once('error', reject);
      server.listen(on, '127.0.0.1', () => {
        receiver.port = (server.address() as AddressInfo).port;
        receiver.url = `http://127.0.0.1:${receiver.port}`;
        resolve();
      });
    });
  await listen(port);
  return receiver;
}
