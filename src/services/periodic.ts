import type { Logger } from 'pino';

export interface BatchedJob<Run extends Record<string, unknown> = Record<string, unknown>> {
  /** Milliseconds between runs. */
  everyMs: number;
  logger: Logger;
  /** Context shared by the batches of one run (e.g. the request id its ledger entries carry), logged with it. */
  startRun?: () => Run;
  /** One batch of work; returns how many items it handled (0 = nothing left). */
  batch: (run: Run) => Promise<number>;
  /** Logged at info with the total when a run handled anything. */
  done: (total: number) => [Record<string, unknown>, string];
  /** Logged at warn when a run fails (it is retried on the next tick). */
  failure: string;
}

/**
 * Run `batch` repeatedly until it reports nothing left, every `everyMs`, never two runs at once in this process.
 * Batches keep each transaction short; jobs written this way are safe to run in many processes. Returns a stop
 * function.
 */
export function startBatchedJob<Run extends Record<string, unknown>>(job: BatchedJob<Run>): () => void {
  let running = false;
  const tick = async () => {
    if (running) return;
    running = true;
    try {
      const run = job.startRun?.() ?? ({} as Run);
      let total = 0;
      for (let handled = await job.batch(run); handled > 0; handled = await job.batch(run)) total += handled;
      if (total > 0) {
        const [fields, message] = job.done(total);
        const logged: Record<string, unknown> = { ...run, ...fields };
        job.logger.info(logged, message);
      }
    } catch (error) {
      job.logger.warn({ err: error }, job.failure);
    } finally {
      running = false;
    }
  };
  const timer = setInterval(() => void tick(), job.everyMs);
  timer.unref();
  return () => clearInterval(timer);
}
