import { lookup as dnsLookup } from 'node:dns/promises';
import { request as httpRequest, type IncomingMessage, type OutgoingHttpHeaders, STATUS_CODES } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { isIP } from 'node:net';
import { performance } from 'node:perf_hooks';
import { StringDecoder } from 'node:string_decoder';
import { blockedRange, canonicalAddress, inNetworks, type Network } from '../domain/ip-ranges';
import { TimedOut, within } from '../services/shared-read';

/**
 * One webhook delivery attempt (a Standard Webhooks POST), guarded against SSRF: the URL's host is resolved once,
 * every address it resolves to is checked against the refused ranges (domain/ip-ranges.ts), and the connection
 * goes to the very address that was checked (no second lookup, so no DNS-rebinding window). Redirects are never
 * followed, the response body is read only up to a small limit, and one deadline covers the whole attempt.
 * Retries, signing and scheduling are the caller's: this sends once and says what happened.
 */

export interface SendRequest {
  url: string;
  headers: Record<string, string>;
  body: string;
  /** The deadline of the whole attempt: DNS, connect, TLS, the response and its body. */
  timeoutMs: number;
  /** Whether an http: URL may be used (development and tests); https: always may. */
  allowHttp: boolean;
  /** Refused addresses allowed back, e.g. a receiver on the private network; empty in the usual case. */
  allowedNetworks: readonly Network[];
  /** How much of the response body to keep (default 1024): enough to show the receiver's error. */
  maxResponseBytes?: number;
  /** Resolves a host name (default: the system resolver, every address); tests give their own. */
  lookup?: (hostname: string) => Promise<{ address: string; family: number }[]>;
}

export type SendFailure =
  | 'invalid_url'
  | 'dns_failed'
  | 'blocked_address'
  | 'connect_failed'
  | 'tls_failed'
  | 'timeout'
  | 'redirect'
  | 'http_status'
  | 'network_error';

export interface SendResult {
  /** A 2xx response was received (and its body read to its end or to the limit). */
  delivered: boolean;
  status: number | null;
  durationMs: number;
  failure: SendFailure | null;
  /** Human text for logs and the delivery's record, e.g. "127.0.0.1 is loopback" or "connect ECONNREFUSED …". */
  detail: string | null;
  /** At most maxResponseBytes of the response body as UTF-8, cut on a character boundary. */
  responseBody: string;
  /** Retry-After in seconds (delta seconds, or an HTTP-date from now), null when absent or unparseable. */
  retryAfterS: number | null;
  /** The address connected to (or tried), null when the attempt stopped before connecting. */
  address: string | null;
}

const USER_AGENT = 'Kiln-Webhooks/1';
const DEFAULT_MAX_RESPONSE_BYTES = 1024;
/** Details quote server-controlled text (a Location, an error message): bounded, since they are logged and stored. */
const MAX_DETAIL = 300;

/** Request headers the sender owns: the ones that must agree with the URL and the body actually sent. */
const OWNED_HEADERS = new Set(['host', 'content-type', 'content-length', 'transfer-encoding', 'connection']);

type Outcome = Omit<SendResult, 'durationMs'>;

const NOTHING: Outcome = {
  delivered: false,
  status: null,
  failure: null,
  detail: null,
  responseBody: '',
  retryAfterS: null,
  address: null,
};

function clip(text: string): string {
  return text.length <= MAX_DETAIL ? text : `${text.slice(0, MAX_DETAIL - 1)}…`;
}

/** Where to send: the URL's parts, or why the URL is refused. */
interface Target {
  https: boolean;
  /** The host without IPv6 brackets: what is resolved, and the TLS server name. */
  hostname: string;
  /** host[:port] as in the URL, for the Host header. */
  host: string;
  port: number;
  path: string;
}

function targetOf(url: string, allowHttp: boolean): Target | string {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return 'the URL does not parse';
  }
  // The URL itself is not quoted: its query may carry a receiver's token.
  if (parsed.protocol !== 'https:' && !(allowHttp && parsed.protocol === 'http:'))
    return `${parsed.protocol} is not allowed (only https:${allowHttp ? ' and http:' : ''})`;
  if (parsed.username !== '' || parsed.password !== '') return 'the URL carries credentials';
  if (parsed.hostname === '') return 'the URL has no host';
  const https = parsed.protocol === 'https:';
  return {
    https,
    hostname: parsed.hostname.replace(/^\[(.*)\]$/, '$1'),
    host: parsed.host,
    port: parsed.port === '' ? (https ? 443 : 80) : Number(parsed.port),
    path: `${parsed.pathname}${parsed.search}`,
  };
}

function systemLookup(hostname: string): Promise<{ address: string; family: number }[]> {
  return dnsLookup(hostname, { all: true, verbatim: true });
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/**
 * The addresses to consider, or the outcome that ends the attempt: an IP literal is its own (only) address,
 * a name is resolved once, within the deadline.
 */
async function addressesOf(target: Target, req: SendRequest, remainingMs: number): Promise<string[] | Outcome> {
  if (isIP(target.hostname) !== 0) return [target.hostname];
  let found: { address: string; family: number }[];
  try {
    // The lookup itself goes on past the deadline (getaddrinfo cannot be stopped); the attempt does not wait for it.
    found = await within((req.lookup ?? systemLookup)(target.hostname), Math.max(1, remainingMs));
  } catch (error) {
    if (error instanceof TimedOut) {
      return { ...NOTHING, failure: 'timeout', detail: `${target.hostname} not resolved within ${req.timeoutMs} ms` };
    }
    return { ...NOTHING, failure: 'dns_failed', detail: clip(`${target.hostname}: ${messageOf(error)}`) };
  }
  if (!Array.isArray(found) || found.length === 0)
    return { ...NOTHING, failure: 'dns_failed', detail: clip(`${target.hostname}: no address`) };
  return found.map((entry) => String(entry.address));
}

/**
 * The first address that may not be reached, as the detail of a refusal, or null when all may. Every address is
 * checked, not only the one used: a name with one private address among public ones is refused either way.
 */
function refusal(target: Target, addresses: string[], allowed: readonly Network[]): string | null {
  for (const address of addresses) {
    const range = blockedRange(address);
    if (range === null || inNetworks(address, allowed)) continue;
    const canonical = canonicalAddress(address);
    const shown = canonical === address ? address : `${address} (${canonical})`;
    return clip(address === target.hostname ? `${shown} is ${range}` : `${target.hostname} → ${shown} is ${range}`);
  }
  return null;
}

function headersFor(given: Record<string, string>, target: Target, body: string): OutgoingHttpHeaders {
  const headers: Record<string, string> = { 'user-agent': USER_AGENT };
  for (const [name, value] of Object.entries(given)) {
    const lower = name.toLowerCase();
    if (!OWNED_HEADERS.has(lower)) headers[lower] = value;
  }
  return {
    ...headers,
    host: target.host,
    'content-type': 'application/json',
    'content-length': String(Buffer.byteLength(body)),
  };
}

const MONTHS = ['jan', 'feb', 'mar', 'apr', 'may', 'jun', 'jul', 'aug', 'sep', 'oct', 'nov', 'dec'];

/** A UTC instant from HTTP-date parts, or null when a part is out of range (30 February included). */
function utc(year: number, month: string, day: number, hour: number, minute: number, second: number): number | null {
  const m = MONTHS.indexOf(month.toLowerCase());
  if (m < 0 || day < 1 || day > 31 || hour > 23 || minute > 59 || second > 60) return null;
  const ms = Date.UTC(year, m, day, hour, minute, Math.min(second, 59));
  return new Date(ms).getUTCDate() === day ? ms : null;
}

/**
 * An HTTP-date (RFC 9110 §5.6.7) as epoch ms: IMF-fixdate, or the obsolete RFC 850 and asctime forms every
 * recipient must still read. Not Date.parse, which takes almost anything ("7.5" is a date to it) and reads asctime
 * as local time.
 */
function httpDate(text: string, nowMs: number): number | null {
  let m = /^[A-Za-z]{3}, (\d{2}) ([A-Za-z]{3}) (\d{4}) (\d{2}):(\d{2}):(\d{2}) GMT$/.exec(text);
  if (m) return utc(Number(m[3]), m[2], Number(m[1]), Number(m[4]), Number(m[5]), Number(m[6]));
  m = /^[A-Za-z]+, (\d{2})-([A-Za-z]{3})-(\d{2}) (\d{2}):(\d{2}):(\d{2}) GMT$/.exec(text);
  if (m) {
    // A two-digit year more than 50 years ahead is in the past century (RFC 9110).
    let year = 2000 + Number(m[3]);
    if (year > new Date(nowMs).getUTCFullYear() + 50) year -= 100;
    return utc(year, m[2], Number(m[1]), Number(m[4]), Number(m[5]), Number(m[6]));
  }
  m = /^[A-Za-z]{3} ([A-Za-z]{3}) ([ \d]\d) (\d{2}):(\d{2}):(\d{2}) (\d{4})$/.exec(text);
  if (m) return utc(Number(m[6]), m[1], Number(m[2].trim()), Number(m[3]), Number(m[4]), Number(m[5]));
  return null;
}

/**
 * A Retry-After value in seconds from now: delta seconds as given, an HTTP-date as the whole seconds until it
 * (0 when it has passed), null when absent or neither.
 */
export function parseRetryAfter(value: string | undefined, nowMs: number): number | null {
  if (value === undefined) return null;
  const text = value.trim();
  if (/^\d+$/.test(text)) {
    const seconds = Number(text);
    return Number.isSafeInteger(seconds) ? seconds : null;
  }
  const at = httpDate(text, nowMs);
  return at === null ? null : Math.max(0, Math.ceil((at - nowMs) / 1000));
}

/**
 * The first max bytes of a body as text, never splitting a character: the decoder holds back an incomplete
 * sequence at a cut, and invalid bytes (U+FFFD, three bytes each) are trimmed so the text stays within max bytes.
 */
function textOf(bytes: Buffer, complete: boolean, max: number): string {
  const decoder = new StringDecoder('utf8');
  const text = decoder.write(bytes) + (complete ? decoder.end() : '');
  if (Buffer.byteLength(text) <= max) return text;
  let used = 0;
  let end = 0;
  for (const char of text) {
    const size = Buffer.byteLength(char);
    if (used + size > max) break;
    used += size;
    end += char.length;
  }
  return text.slice(0, end);
}

/** What a status means for the delivery: 2xx delivered, 3xx a redirect not followed, anything else refused. */
function verdict(status: number, location: string | undefined): Pick<Outcome, 'delivered' | 'failure' | 'detail'> {
  if (status >= 200 && status < 300) return { delivered: true, failure: null, detail: null };
  if (status >= 300 && status < 400)
    return {
      delivered: false,
      failure: 'redirect',
      detail: clip(`HTTP ${status}, not followed: Location ${location === undefined ? '(none)' : location}`),
    };
  return { delivered: false, failure: 'http_status', detail: `HTTP ${status} ${STATUS_CODES[status] ?? ''}`.trim() };
}

/** OpenSSL's and Node's TLS errors: certificate checks, handshake failures, a peer that does not speak TLS. */
function isTlsError(error: unknown): boolean {
  const code = (error as NodeJS.ErrnoException).code ?? '';
  return (
    /^ERR_(TLS|SSL)_|CERT|SELF_SIGNED|UNABLE_TO_/.test(code) ||
    code === 'EPROTO' ||
    (typeof error === 'object' && error !== null && 'library' in error)
  );
}

/** Where the connection had got to when an error ended it, which says what failed. */
interface Progress {
  https: boolean;
  connected: boolean;
  secured: boolean;
}

function failureOf(error: unknown, progress: Progress): Pick<Outcome, 'failure' | 'detail'> {
  const detail = clip(messageOf(error));
  const code = (error as NodeJS.ErrnoException).code;
  if (code === 'ETIMEDOUT') return { failure: 'timeout', detail };
  if (progress.https && isTlsError(error)) return { failure: 'tls_failed', detail };
  if (!progress.connected) return { failure: 'connect_failed', detail };
  // Connected, but the handshake never finished (the peer closed or reset it): a TLS failure all the same.
  if (progress.https && !progress.secured) return { failure: 'tls_failed', detail };
  return { failure: 'network_error', detail };
}

/**
 * The POST itself, to `address` (already checked) and nowhere else: the socket is opened to the address, the Host
 * header and the TLS server name carry the URL's host, a fresh agent is used (no pooled socket from another
 * host), and the timer ends the attempt whatever stage it is at. Resolves once, never rejects.
 */
function post(target: Target, address: string, req: SendRequest, remainingMs: number, maxBytes: number) {
  return new Promise<Outcome>((resolve) => {
    const progress: Progress = { https: target.https, connected: false, secured: false };
    let status: number | null = null;
    let retryAfterS: number | null = null;
    let settled = false;
    let timer: NodeJS.Timeout | undefined;
    let request: ReturnType<typeof httpRequest> | undefined;
    const settle = (outcome: Partial<Outcome>) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve({ ...NOTHING, status, retryAfterS, address, ...outcome });
      // Done with the connection: stops reading a body past the limit, and a response still to come.
      request?.destroy();
    };
    try {
      request = (target.https ? httpsRequest : httpRequest)({
        host: address,
        port: target.port,
        path: target.path,
        method: 'POST',
        headers: headersFor(req.headers, target, req.body),
        agent: false,
        // SNI and the certificate check name the URL's host; an IP literal is checked as itself (no SNI).
        ...(target.https && isIP(target.hostname) === 0 ? { servername: target.hostname } : {}),
      });
    } catch (error) {
      // Headers Node refuses (a newline in a value): nothing was sent.
      settle({ failure: 'network_error', detail: clip(messageOf(error)) });
      return;
    }
    timer = setTimeout(
      () => settle({ failure: 'timeout', detail: `no complete response within ${req.timeoutMs} ms` }),
      Math.max(1, remainingMs),
    );
    request.on('socket', (socket) => {
      socket.once('connect', () => {
        progress.connected = true;
      });
      socket.once('secureConnect', () => {
        progress.secured = true;
      });
    });
    request.on('error', (error) => settle(failureOf(error, progress)));
    request.on('response', (response: IncomingMessage) => {
      status = response.statusCode ?? null;
      retryAfterS = parseRetryAfter(response.headers['retry-after'], Date.now());
      const judged = verdict(status ?? 0, response.headers.location);
      const chunks: Buffer[] = [];
      let size = 0;
      const done = (complete: boolean) =>
        settle({ ...judged, responseBody: textOf(Buffer.concat(chunks), complete, maxBytes) });
      response.on('error', (error) => settle({ failure: 'network_error', detail: clip(messageOf(error)) }));
      response.on('close', () => {
        if (!response.complete) settle({ failure: 'network_error', detail: 'the connection closed mid-response' });
      });
      response.on('end', () => done(true));
      response.on('data', (chunk: Buffer) => {
        const room = maxBytes - size;
        chunks.push(chunk.length > room ? chunk.subarray(0, room) : chunk);
        size += Math.min(chunk.length, room);
        // Enough read: the rest is never buffered (settle destroys the connection).
        if (size >= maxBytes) done(false);
      });
      if (maxBytes === 0) done(false);
    });
    request.end(req.body);
  });
}

/**
 * One guarded delivery attempt; never throws. Refused before any connection: a bad URL (not https:, or http:
 * unless allowHttp; credentials in it), a name that does not resolve, or any resolved address in a refused range
 * and not in allowedNetworks. Then one POST to the first address, redirects not followed.
 */
export async function sendWebhook(req: SendRequest): Promise<SendResult> {
  const started = performance.now();
  const finish = (outcome: Outcome): SendResult => ({ ...outcome, durationMs: performance.now() - started });
  try {
    const target = targetOf(req.url, req.allowHttp);
    if (typeof target === 'string') return finish({ ...NOTHING, failure: 'invalid_url', detail: target });
    const addresses = await addressesOf(target, req, req.timeoutMs);
    if (!Array.isArray(addresses)) return finish(addresses);
    const refused = refusal(target, addresses, req.allowedNetworks);
    if (refused !== null) return finish({ ...NOTHING, failure: 'blocked_address', detail: refused });
    const maxBytes =
      req.maxResponseBytes !== undefined && Number.isFinite(req.maxResponseBytes)
        ? Math.max(0, Math.floor(req.maxResponseBytes))
        : DEFAULT_MAX_RESPONSE_BYTES;
    // The canonical form is what was checked (`::ffff:10.0.0.1` is 10.0.0.1): connect to exactly that.
    const address = canonicalAddress(addresses[0]);
    const remainingMs = req.timeoutMs - (performance.now() - started);
    return finish(await post(target, address, req, remainingMs, maxBytes));
  } catch (error) {
    return finish({ ...NOTHING, failure: 'network_error', detail: clip(messageOf(error)) });
  }
}
