import type { Logger } from 'pino';
import type { Database } from '../db/database';
import { purgeExpired } from '../db/idempotency';
import type { EphemeralStore } from '../store/store';
import { startBatchedJob } from './periodic';

/**
 * Housekeeping every process runs: purge expired idempotency records, and the dead nonces and counters of a store
 * kept in the database (in batches, so a backlog never holds a long lock). Safe to run in many processes at once.
 * Returns a function that stops it.
 */
export function startMaintenance(db: Database, store: EphemeralStore, logger: Logger, intervalMs = 60_000): () => void {
  const stops = [
    startBatchedJob({
      everyMs: intervalMs,
      logger,
      batch: () => purgeExpired(db),
      done: (purged) => [{ purged }, 'purged expired idempotency records'],
      failure: 'idempotency purge failed; will retry',
    }),
  ];
  const purgeStore = store.purge?.bind(store);
  if (purgeStore) {
    stops.push(
      startBatchedJob({
        everyMs: intervalMs,
        logger,
        batch: () => purgeStore(),
        done: (purged) => [{ purged }, 'purged dead nonces and rate counters'],
        failure: 'store purge failed; will retry',
      }),
    );
  }
  return () => {
    for (const stop of stops) stop();
  };
}
