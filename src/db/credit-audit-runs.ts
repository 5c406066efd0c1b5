import type { AuditReport } from './credit-audit';
import type { Queryable } from './database';

/** Who ran a full audit. */
export type AuditSource = 'auditor' | 'api' | 'cli';

/** In: a full audit's report and who ran it. Out: nothing; one row in credit_audit_runs. Errors: the database's own. */
export async function recordAuditRun(q: Queryable, report: AuditReport, source: AuditSource): Promise<void> {
  await q.query(
    `insert into credit_audit_runs (ok, problems, checked_users, checked_reservations, ledger_entries, source)
     values ($1::boolean, $2::int, $3::int, $4::int, $5::bigint, $6::text)`,
    [report.ok, report.problems.length, report.checkedUsers, report.checkedReservations, report.ledgerEntries, source],
  );
}

/**
 * Take the auditor's turn: true (inside `q`'s transaction, until it ends) when no other process is auditing and no
 * full audit ran in the last `seconds`, so many processes audit about once per interval between them.
 */
export async function claimAuditTurn(q: Queryable, seconds: number): Promise<boolean> {
  const { rows } = await q.query<{ turn: boolean }>(
    `select pg_try_advisory_xact_lock(hashtextextended('kiln.credit-audit:' || current_schema(), 0))
            and not exists (select 1 from credit_audit_runs
                             where ran_at > now() - make_interval(secs => $1::double precision)) as turn`,
    [seconds],
  );
  return rows[0].turn;
}

/** Forget runs older than `days` (the latest always stays). */
export async function purgeAuditRuns(q: Queryable, days: number): Promise<number> {
  const result = await q.query(
    `delete from credit_audit_runs
      where ran_at < now() - make_interval(days => $1::int)
        and id <> (select max(id) from credit_audit_runs)`,
    [days],
  );
  return result.rowCount;
}
