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

/** The process's logger: JSON lines on stdout at `level`, each with the process id. */
export function createLogger(level: string): Logger {
  const destination = new BatchedDestination(1);
  // Lines logged just before an exit (a crash included) are written, not left pending.
  process.on('exit', () => destination.flushSync());
  return pino({ level, base: { pid: process.pid } }, destination);
}
