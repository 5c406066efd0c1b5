import type { Logger } from 'pino';
import type { Database } from '../db/database';
import { purgeExpired } from '../db/idempotency';

/**
 * Housekeeping every process runs: purge expired idempotency records (in batches, so a backlog never holds
 * a long lock). Safe to run in many processes at once. Returns a function that stops it.
 */
export function startMaintenance(db: Database, logger: Logger, intervalMs = 60_000): () => void {
  let running = false;
  const tick = async () => {
    if (running) return;
    running = true;
    try {
      let purged = 0;
      for (let batch = await purgeExpired(db); batch > 0; batch = await purgeExpired(db)) purged += batch;
      if (purged > 0) logger.info({ purged }, 'purged expired idempotency records');
    } catch (error) {
      logger.warn({ err: error }, 'idempotency purge failed; will retry');
    } finally {
      running = false;
    }
  };
  const timer = setInterval(() => void tick(), intervalMs);
  timer.unref();
  return () => clearInterval(timer);
}
