import type { Logger } from 'pino';
import { sweepLapsedHolds } from '../db/credits';
import type { Database } from '../db/database';
import { internalActor } from './credits';

const USERS_PER_BATCH = 100;

/**
 * Write the expiry of lapsed credit holds into the ledger (SPEC section 6: within a minute). Holds stop counting
 * at their expires_at without it; this only makes the ledger say so. Safe in many processes at once: each batch
 * skips accounts another process (or an operation) holds, and a hold leaves `active` once, so it is written once.
 * Returns a function that stops it.
 */
export function startCreditSweeper(db: Database, logger: Logger, intervalMs = 15_000): () => void {
  let running = false;
  const tick = async () => {
    if (running) return;
    running = true;
    try {
      const { requestId } = internalActor('sweep');
      let expired = 0;
      for (let batch = await sweepLapsedHolds(db, USERS_PER_BATCH, requestId); batch > 0; ) {
        expired += batch;
        batch = await sweepLapsedHolds(db, USERS_PER_BATCH, requestId);
      }
      if (expired > 0) logger.info({ expired, requestId }, 'expired lapsed credit holds');
    } catch (error) {
      logger.warn({ err: error }, 'credit hold sweep failed; will retry');
    } finally {
      running = false;
    }
  };
  const timer = setInterval(() => void tick(), intervalMs);
  timer.unref();
  return () => clearInterval(timer);
}
