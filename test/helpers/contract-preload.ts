import { appendFileSync } from 'node:fs';
import { ServerResponse } from 'node:http';
import { contract } from './contract';

/**
 * Loaded with `--import` into every Kiln process the end-to-end tests spawn (test/helpers/kiln-process.ts): each
 * response the process sends, to whatever client (the client package, fetch, raw sockets, a browser), is checked
 * against the OpenAPI document, and what breaks it is appended to KILN_CONTRACT_LOG, which the test reads when it
 * stops the process. Nothing in Kiln knows about it.
 */
const log = process.env.KILN_CONTRACT_LOG;

if (log) {
  const chunksOf = new WeakMap<ServerResponse, Buffer[]>();
  const toBuffer = (chunk: unknown, encoding?: unknown) =>
    typeof chunk === 'string'
      ? Buffer.from(chunk, typeof encoding === 'string' ? (encoding as BufferEncoding) : 'utf8')
      : Buffer.isBuffer(chunk)
        ? chunk
        : chunk instanceof Uint8Array
          ? Buffer.from(chunk)
          : undefined;
  // Fastify hands its headers to writeHead, which Node does not keep where getHeader looks: remember the type here.
  const typeOf = new WeakMap<ServerResponse, string>();
  const contentType = (res: ServerResponse) => typeOf.get(res) ?? res.getHeader('content-type')?.toString();
  const isJson = (res: ServerResponse) => String(contentType(res) ?? '').startsWith('application/json');

  const writeHead = ServerResponse.prototype.writeHead;
  ServerResponse.prototype.writeHead = function (this: ServerResponse, ...args: unknown[]) {
    const headers = args.find((a) => typeof a === 'object' && a !== null);
    if (Array.isArray(headers)) {
      for (let i = 0; i + 1 < headers.length; i += 2) {
        if (String(headers[i]).toLowerCase() === 'content-type') typeOf.set(this, String(headers[i + 1]));
      }
    } else if (headers) {
      for (const [name, value] of Object.entries(headers)) {
        if (name.toLowerCase() === 'content-type') typeOf.set(this, String(value));
      }
    }
    return (writeHead as (...a: unknown[]) => ServerResponse).apply(this, args);
  } as typeof writeHead;

  const write = ServerResponse.prototype.write;
  ServerResponse.prototype.write = function (this: ServerResponse, chunk: unknown, ...rest: unknown[]) {
    if (isJson(this)) {
      const buffer = toBuffer(chunk, rest[0]);
      if (buffer) chunksOf.set(this, [...(chunksOf.get(this) ?? []), buffer]);
    }
    return (write as (...args: unknown[]) => boolean).call(this, chunk, ...rest);
  } as typeof write;

  const end = ServerResponse.prototype.end;
  ServerResponse.prototype.end = function (this: ServerResponse, ...args: unknown[]) {
    try {
      const request = this.req;
      const chunk = typeof args[0] === 'function' ? undefined : args[0];
      const last = chunk === undefined || chunk === null ? undefined : toBuffer(chunk, args[1]);
      const body = Buffer.concat([...(chunksOf.get(this) ?? []), ...(last ? [last] : [])]).toString('utf8');
      const found = request
        ? contract().violation({
            method: request.method ?? 'GET',
            url: request.url ?? '/',
            status: this.statusCode,
            contentType: contentType(this),
            body,
          })
        : undefined;
      if (found) appendFileSync(log, `${found.replaceAll('\n', ' ')}\n`);
    } catch (error) {
      appendFileSync(log, `contract check failed: ${(error as Error).message}\n`);
    }
    return (end as (...args: unknown[]) => ServerResponse).apply(this, args);
  } as typeof end;
}
