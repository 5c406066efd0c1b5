import type { Logger } from 'pino';
import { claimAuditTurn, purgeAuditRuns } from '../db/credit-audit-runs';
import type { Database } from '../db/database';
import { audit } from './credits';

/** Runs older than this are forgotten. */
const KEEP_RUNS_DAYS = 7;

/**
 * Audit the books every `intervalS` seconds, between all processes about once per interval (one at a time, and
 * only when nobody audited within the interval), so kiln_credit_audit_problems stays current without a scheduler.
 * A failed audit is logged with its problems. Returns a stop function.
 */
export function startCreditAuditor(db: Database, logger: Logger, intervalS: number): () => void {
  let running = false;
  const tick = async () => {
    if (running) return;
    running = true;
    try {
      const report = await db.transaction(async (tx) => {
        // 0.9: a process whose timer fires a little early still finds the last run old enough.
        if (!(await claimAuditTurn(tx, intervalS * 0.9))) return undefined;
        await purgeAuditRuns(tx, KEEP_RUNS_DAYS);
        return audit(tx, undefined, 'auditor');
      });
      if (report && !report.ok) {
        logger.error(
          { problems: report.problems.slice(0, 20), total: report.problems.length },
          'credit audit found inconsistencies: the books do not balance',
        );
      } else if (report) logger.info({ checkedUsers: report.checkedUsers }, 'credit audit ok');
    } catch (error) {
      logger.warn({ err: error }, 'credit audit failed; will retry');
    } finally {
      running = false;
    }
  };
  const timer = setInterval(() => void tick(), intervalS * 1000);
  timer.unref();
  return () => clearInterval(timer);
}
