import type { Logger } from 'pino';
import { sweepLapsedHolds } from '../db/credits';
import type { Database } from '../db/database';
import { countCreditUsage } from '../metrics';
import { internalActor } from './credits';
import { startBatchedJob } from './periodic';

const USERS_PER_BATCH = 100;

/**
 * Write the expiry of lapsed credit holds into the ledger (SPEC section 6: within a minute). Holds stop counting
 * at their expires_at without it; this only makes the ledger say so. Safe in many processes at once: each batch
 * skips accounts another process (or an operation) holds, and a hold leaves `active` once, so it is written once.
 * Returns a function that stops it.
 */
export function startCreditSweeper(db: Database, logger: Logger, intervalMs = 15_000): () => void {
  return startBatchedJob({
    everyMs: intervalMs,
    logger,
    startRun: () => ({ requestId: internalActor('sweep').requestId }),
    batch: async (run) => {
      // Each call commits by itself (autocommit): what it expired is counted at once.
      const { holds, credits } = await sweepLapsedHolds(db, USERS_PER_BATCH, run.requestId);
      countCreditUsage('expire', credits);
      return holds;
    },
    done: (expired) => [{ expired }, 'expired lapsed credit holds'],
    failure: 'credit hold sweep failed; will retry',
  });
}
