import { connect } from 'node:net';

export interface RawResponse {
  status: number;
  headers: Record<string, string>;
  /** Header names as sent, in order (duplicates kept). */
  headerNames: string[];
  body: string;
  /** Everything the server wrote, as latin1 text. */
  text: string;
  /** Whether the server closed the connection within the wait. */
  closed: boolean;
}

/** Parse every HTTP/1.1 response in `text` (Content-Length bodies, or none). */
export function parseResponses(text: string): RawResponse[] {
  const responses: RawResponse[] = [];
  let rest = text;
  while (rest.startsWith('HTTP/')) {
    const end = rest.indexOf('\r\n\r\n');
    if (end === -1) break;
    const [statusLine, ...lines] = rest.slice(0, end).split('\r\n');
    const headers: Record<string, string> = {};
    const headerNames: string[] = [];
    for (const line of lines) {
      const colon = line.indexOf(':');
      const name = line.slice(0, colon);
      headerNames.push(name);
      headers[name.toLowerCase()] = line.slice(colon + 1).trim();
    }
    const length = Number(headers['content-length'] ?? 0);
    const bodyBytes = Buffer.from(rest.slice(end + 4), 'latin1').subarray(0, length);
    responses.push({
      status: Number(statusLine.split(' ')[1]),
      headers,
      headerNames,
      body: bodyBytes.toString('utf8'),
      text,
      closed: false,
    });
    rest = rest.slice(end + 4 + bodyBytes.length);
  }
  return responses;
}

/**
 * Write `bytes` on a fresh TCP connection to `baseUrl`'s host and port exactly as given (no normalisation, no
 * framing), and collect what comes back until the server closes or `waitMs` passes.
 */
export function rawExchange(
  baseUrl: string,
  bytes: string | Buffer,
  waitMs = 3_000,
): Promise<{ text: string; closed: boolean; responses: RawResponse[] }> {
  const { hostname, port } = new URL(baseUrl);
  return new Promise((resolve) => {
    const socket = connect(Number(port), hostname);
    const chunks: Buffer[] = [];
    let closed = false;
    const done = () => {
      clearTimeout(timer);
      socket.destroy();
      const text = Buffer.concat(chunks).toString('latin1');
      const responses = parseResponses(text).map((r) => ({ ...r, closed }));
      resolve({ text, closed, responses });
    };
    const timer = setTimeout(done, waitMs);
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    socket.on('error', () => {});
    socket.on('close', () => {
      closed = true;
      done();
    });
    socket.write(typeof bytes === 'string' ? Buffer.from(bytes, 'latin1') : bytes);
  });
}

/** One request written raw; resolves with the first response (throws when there is none). */
export async function rawRequest(baseUrl: string, bytes: string | Buffer, waitMs = 3_000): Promise<RawResponse> {
  const exchange = await rawExchange(baseUrl, bytes, waitMs);
  const first = exchange.responses[0];
  if (!first) throw new Error(`no HTTP response to ${JSON.stringify(String(bytes).slice(0, 80))}: ${exchange.text}`);
  return first;
}

/** `GET <path>` (or another method) as raw bytes: the path is sent exactly as given. */
export function rawGet(baseUrl: string, path: string, method = 'GET', extra = ''): Promise<RawResponse> {
  return rawRequest(baseUrl, `${method} ${path} HTTP/1.1\r\nHost: kiln\r\nConnection: close\r\n${extra}\r\n`);
}
