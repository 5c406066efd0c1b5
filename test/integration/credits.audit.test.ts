import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { registry } from '../../src/metrics';
import { startCreditAuditor } from '../../src/services/credit-auditor';
import { audit, commitReservation, grant, reserveCredits } from '../../src/services/credits';
import { startTestApp, type TestApp } from '../helpers/app';
import { signedInject } from '../helpers/signed';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Every rule of the audit fires on the books it guards (each user's are edited behind the ledger's back, as an
 * operator's stray UPDATE would), and the latest full audit is on /metrics.
 */
describe('the credit audit', () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await startTestApp();
  });
  afterAll(() => t.close());
  const sql = (text: string, params: unknown[] = []) => t.database.db.query(text, params);
  const rulesFor = async (userId: string) => (await audit(t.database.db, userId)).problems.map((p) => p.check).sort();
  const gauge = async (name: string) => Number(new RegExp(`^${name} (\\S+)$`, 'm').exec(await registry.metrics())?.[1]);

  it('passes balanced books and records a full audit run for the gauges', async () => {
    await grant(t.database.db, { userId: 'u_audit_ok', credits: 100, reason: 'seed', source: 'test' });
    const res = await signedInject(t.app, { method: 'GET', url: '/v1/credits/audit' });
    expect(res.json()).toMatchObject({ ok: true, problems: [] });
    expect(await gauge('kiln_credit_audit_problems')).toBe(0);
    expect(await gauge('kiln_credit_audit_last_run_timestamp_seconds')).toBeGreaterThan(Date.now() / 1000 - 60);
  });

  it('finds a balance that differs from its ledger', async () => {
    await grant(t.database.db, { userId: 'u_audit_bal', credits: 100, reason: 'seed', source: 'test' });
    await sql("update credit_accounts set balance = balance + 5 where user_id = 'u_audit_bal'");
    expect(await rulesFor('u_audit_bal')).toEqual([
      'balance = last ledger balance_after',
      'balance = sum of ledger amounts',
    ]);
  });

  it('finds a hold whose amount differs from what is reserved', async () => {
    await grant(t.database.db, { userId: 'u_audit_hold', credits: 100, reason: 'seed', source: 'test' });
    const hold = await reserveCredits(t.database.db, { userId: 'u_audit_hold', amount: 10 });
    await sql('update credit_reservations set amount = amount + 3 where id = $1', [hold.reservationId]);
    const report = await audit(t.database.db, 'u_audit_hold');
    expect(report.problems).toEqual([
      expect.objectContaining({ check: 'reserved = sum of active holds', expected: 13, actual: 10 }),
    ]);
  });

  it('finds a reserved figure that differs from the ledger', async () => {
    await grant(t.database.db, { userId: 'u_audit_res', credits: 100, reason: 'seed', source: 'test' });
    await sql("update credit_accounts set reserved = reserved + 2 where user_id = 'u_audit_res'");
    expect(await rulesFor('u_audit_res')).toEqual([
      'reserved = last ledger reserved_after',
      'reserved = sum of active holds',
      'reserved = sum of ledger reserved changes',
    ]);
  });

  it('finds a reservation resolved twice', async () => {
    await grant(t.database.db, { userId: 'u_audit_twice', credits: 100, reason: 'seed', source: 'test' });
    const hold = await reserveCredits(t.database.db, { userId: 'u_audit_twice', amount: 10 });
    await commitReservation(t.database.db, { reservationId: hold.reservationId, actualCredits: 4 });
    // A second resolution entry that moves nothing, so only the resolution rule can see it.
    await sql(
      `insert into credit_ledger (user_id, type, amount, reserved_change, balance_after, reserved_after, reservation_id,
                                  request_id, correlation_id, reason)
       values ('u_audit_twice', 'release', 0, 0, 96, 0, $1, 'r', 'c', 'stray')`,
      [hold.reservationId],
    );
    const report = await audit(t.database.db, 'u_audit_twice');
    expect(report.problems).toEqual([
      expect.objectContaining({
        check: 'a reservation resolves at most once',
        reservationId: hold.reservationId,
        actual: 2,
      }),
    ]);
  });

  it('finds a reservation resolved without its ledger entry', async () => {
    await grant(t.database.db, { userId: 'u_audit_noentry', credits: 100, reason: 'seed', source: 'test' });
    const hold = await reserveCredits(t.database.db, { userId: 'u_audit_noentry', amount: 10 });
    await sql("update credit_reservations set state = 'released', resolved_at = now() where id = $1", [
      hold.reservationId,
    ]);
    const report = await audit(t.database.db, 'u_audit_noentry');
    expect(report.problems).toContainEqual(
      expect.objectContaining({
        check: 'a resolved reservation has its ledger entry',
        reservationId: hold.reservationId,
      }),
    );
  });

  it('finds negative figures (were the CHECKs ever dropped)', async () => {
    await grant(t.database.db, { userId: 'u_audit_neg', credits: 10, reason: 'seed', source: 'test' });
    await sql('alter table credit_accounts drop constraint credit_available_non_negative');
    await sql("update credit_accounts set reserved = 15 where user_id = 'u_audit_neg'");
    expect(await rulesFor('u_audit_neg')).toContain('no negative figures');
  });

  it('counts what a full audit finds on /metrics', async () => {
    const res = await signedInject(t.app, { method: 'GET', url: '/v1/credits/audit' });
    const { ok, problems } = res.json();
    expect(ok).toBe(false);
    expect(problems.length).toBeGreaterThanOrEqual(9);
    expect(await gauge('kiln_credit_audit_problems')).toBe(problems.length);
  });

  it('audits on a timer between processes, about once per interval, and says what it found', async () => {
    const before = (await sql('select count(*)::int as n from credit_audit_runs')).rows[0] as { n: number };
    const lines: { msg: string; total?: number }[] = [];
    const logger = pino({ level: 'info' }, { write: (line: string) => void lines.push(JSON.parse(line)) });
    const stops = [startCreditAuditor(t.database.db, logger, 1), startCreditAuditor(t.database.db, logger, 1)];
    try {
      await sleep(2_600);
    } finally {
      for (const stop of stops) stop();
    }
    const after = (await sql('select count(*)::int as n from credit_audit_runs')).rows[0] as { n: number };
    // Two auditors, two or three ticks each: one run per interval between them, not one per auditor.
    expect(after.n - before.n).toBeGreaterThanOrEqual(1);
    expect(after.n - before.n).toBeLessThanOrEqual(3);
    expect(lines.filter((l) => l.msg.startsWith('credit audit found inconsistencies'))).toHaveLength(
      after.n - before.n,
    );
    expect(await gauge('kiln_credit_audit_problems')).toBeGreaterThanOrEqual(9);
  });
});
