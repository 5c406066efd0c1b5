import pino, { type Logger } from 'pino';

/** How long a line may wait for others before they are written together, and how much text forces a write. */
const FLUSH_EVERY_MS = 25;
const MAX_PENDING_BYTES = 64 * 1024;

/**
 * A pino destination that gathers lines for up to FLUSH_EVERY_MS (or MAX_PENDING_BYTES) and writes them with one
 * synchronous system call, through pino's own destination: it retries a full pipe rather than drop a line, and stops
 * writing, without crashing the process, once the reader of a pipe is gone (EPIPE). A write per line, or a thread-pool
 * write per few lines as the asynchronous destination did, cost about 12 % of a replayed request's CPU.
 *
 * Pending lines are copied into one buffer outside the JavaScript heap as they come: held as strings for up to
 * 25 ms, they outlived the young-generation collections that run about as often under load, and were copied by each.
 */
export class BatchedDestination {
  private readonly out: ReturnType<typeof pino.destination>;
  private readonly pending = Buffer.allocUnsafe(MAX_PENDING_BYTES);
  private used = 0;
  private timer: NodeJS.Timeout | undefined;

  constructor(fd = 1) {
    this.out = pino.destination({ dest: fd, sync: true });
  }

  write(line: string): boolean {
    // A UTF-16 unit is at most 3 bytes of UTF-8: a line that might not fit goes after what is pending.
    if (line.length * 3 > this.pending.length - this.used) {
      this.flushSync();
      if (line.length * 3 > this.pending.length) {
        this.out.write(line);
        return true;
      }
    }
    this.used += this.pending.write(line, this.used, 'utf8');
    if (!this.timer) {
      this.timer = setTimeout(this.flushSync, FLUSH_EVERY_MS);
      this.timer.unref();
    }
    return true;
  }

  /** Write what is pending now. */
  readonly flushSync = (): void => {
    if (this.timer) {
      clearTimeout(this.timer);
      this.timer = undefined;
    }
    if (this.used === 0) return;
    const text = this.pending.toString('utf8', 0, this.used);
    this.used = 0;
    this.out.write(text);
  };

  /** pino's logger.flush(cb): everything pending is written before `cb` runs. */
  flush(cb?: (error?: Error) => void): void {
    this.flushSync();
    cb?.();
  }
}

/** How log lines are written: JSON lines, or lines for people (a terminal). */
export type LogFormat = 'json' | 'pretty';

const LEVELS: Record<number, string> = { 10: 'TRACE', 20: 'DEBUG', 30: 'INFO', 40: 'WARN', 50: 'ERROR', 60: 'FATAL' };
// Fields every line has, or that the line's head already shows.
const HEAD_FIELDS = new Set(['level', 'time', 'pid', 'hostname', 'msg', 'requestId', 'v']);

function fieldValue(value: unknown): string {
  if (typeof value === 'string')
    return /^[\x21-\x7e]+$/.test(value) && !/["=]/.test(value) ? value : JSON.stringify(value);
  return JSON.stringify(value);
}

/** A message as is when it is printable; quoted (control characters escaped) when not, so it cannot forge lines. */
const printable = (text: string) => {
  for (let i = 0; i < text.length; i++) {
    const code = text.charCodeAt(i);
    if (code < 0x20 || code === 0x7f) return JSON.stringify(text);
  }
  return text;
};

/**
 * One JSON log line as a line for people: the request id first (when there is one), then the time, the level, the
 * message and the other fields as key=value; an error's stack on the lines after. Anything unparsable passes as is.
 */
export function prettyLine(json: string): string {
  let entry: Record<string, unknown>;
  try {
    entry = JSON.parse(json);
  } catch {
    return json;
  }
  const time = typeof entry.time === 'number' ? new Date(entry.time).toISOString().slice(11, 23) : '';
  const level = LEVELS[entry.level as number] ?? String(entry.level ?? '');
  const head = [
    entry.requestId ? `[${printable(String(entry.requestId))}]` : '',
    time,
    level.padEnd(5),
    printable(String(entry.msg ?? '')),
  ]
    .filter(Boolean)
    .join(' ');
  let stack = '';
  const fields: string[] = [];
  for (const [key, value] of Object.entries(entry)) {
    if (HEAD_FIELDS.has(key) || value === undefined) continue;
    const error = value as { stack?: unknown; message?: unknown; type?: unknown };
    if ((key === 'err' || key === 'error') && error && typeof error === 'object' && typeof error.stack === 'string') {
      fields.push(`${key}=${fieldValue(error.message ?? error.type)}`);
      stack = `\n    ${error.stack.split('\n').join('\n    ')}`;
      continue;
    }
    fields.push(`${key}=${fieldValue(value)}`);
  }
  return `${head}${fields.length > 0 ? `  ${fields.join(' ')}` : ''}${stack}\n`;
}

/** Lines for people, written through the batching destination. */
class PrettyDestination {
  constructor(private readonly out: BatchedDestination) {}
  write(line: string): boolean {
    return this.out.write(prettyLine(line));
  }
  flushSync = (): void => this.out.flushSync();
  flush(cb?: (error?: Error) => void): void {
    this.out.flush(cb);
  }
}

/**
 * The process's logger at `level`, on stdout: JSON lines, each with the process id, or with `format` 'pretty' lines
 * for people (LOG_FORMAT=pretty, or by default when stdout is a terminal).
 */
export function createLogger(level: string, format: LogFormat = 'json'): Logger {
  const batched = new BatchedDestination(1);
  const destination = format === 'pretty' ? new PrettyDestination(batched) : batched;
  // Lines logged just before an exit (a crash included) are written, not left pending.
  process.on('exit', () => destination.flushSync());
  return pino({ level, base: { pid: process.pid } }, destination);
}
