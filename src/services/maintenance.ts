import type { Logger } from 'pino';
import type { Database } from '../db/database';
import { purgeExpired } from '../db/idempotency';
import { startBatchedJob } from './periodic';

/**
 * Housekeeping every process runs: purge expired idempotency records (in batches, so a backlog never holds
 * a long lock). Safe to run in many processes at once. Returns a function that stops it.
 */
export function startMaintenance(db: Database, logger: Logger, intervalMs = 60_000): () => void {
  return startBatchedJob({
    everyMs: intervalMs,
    logger,
    batch: () => purgeExpired(db),
    done: (purged) => [{ purged }, 'purged expired idempotency records'],
    failure: 'idempotency purge failed; will retry',
  });
}
