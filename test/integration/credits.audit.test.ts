import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { registry } from '../../src/metrics';
import { CommandExecutor } from '../../src/runner/executors/command';
import { Runner } from '../../src/runner/runner';
import { startCreditAuditor } from '../../src/services/credit-auditor';
import { audit, commitReservation, grant, reserveCredits } from '../../src/services/credits';
import { BuildSignals } from '../../src/store/signals';
import { startTestApp, type TestApp } from '../helpers/app';
import { signedInject } from '../helpers/signed';
import { waitFor } from '../helpers/wait';

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
  /**
   * The gauge once it shows what `expected` accepts: the shared gauges read the database at most once a second per
   * process (one read serves every scrape of that second), so a figure written just now shows within about a second.
   */
  const gaugeSettles = (name: string, expected: (value: number) => boolean) =>
    waitFor(
      `${name} to settle`,
      async () => {
        const value = await gauge(name);
        return expected(value) ? value : undefined;
      },
      5_000,
    );

  it('passes balanced books and records a full audit run for the gauges', async () => {
    await grant(t.database.db, { userId: 'u_audit_ok', credits: 100, reason: 'seed', source: 'test' });
    const res = await signedInject(t.app, { method: 'GET', url: '/v1/credits/audit' });
    expect(res.json()).toMatchObject({ ok: true, problems: [] });
    expect(await gaugeSettles('kiln_credit_audit_last_run_timestamp_seconds', (v) => v > 0)).toBeGreaterThan(
      Date.now() / 1000 - 60,
    );
    expect(await gauge('kiln_credit_audit_problems')).toBe(0);
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

  // The build rules. Builds are made through the API (or by SQL, driving the state machine), and a bad ledger row is
  // written by SQL as a stray writer would, keeping the account and the balance_after chain in step with it so that
  // only the rule under test can see it.
  let nb = 0;
  const call = (method: 'GET' | 'POST' | 'PATCH', url: string, body?: unknown) =>
    signedInject(t.app, { method, url, body });
  const apiBuild = async (userId: string, credits: number, estimatedCredits: number) => {
    const projectId = `prj_audit_${++nb}`;
    if (credits > 0) await grant(t.database.db, { userId, credits, reason: 'seed', source: 'test' });
    expect((await call('POST', '/v1/projects', { id: projectId, ownerId: userId, name: 'a' })).statusCode).toBe(201);
    const res = await call('POST', '/v1/builds', { projectId, userId, estimatedCredits });
    expect(res.statusCode).toBe(201);
    return res.json() as { id: string; reservationId: string };
  };
  const patch = async (id: string, body: Record<string, unknown>) => {
    const res = await call('PATCH', `/v1/builds/${id}`, body);
    expect(res.statusCode).toBe(200);
    return res.json();
  };
  /** A build ended by SQL, with no hold and no ledger entry. */
  const sqlBuild = async (userId: string, state: 'deployed' | 'failed' | 'cancelled', actual: number | null) => {
    const id = `b_audit_${++nb}`;
    await sql("insert into projects (id, owner_id, name) values ($1, $2, 'a') on conflict do nothing", [
      `prj_audit_sql_${userId}`,
      userId,
    ]);
    await sql(
      "insert into builds (id, project_id, user_id, state, exclusive, estimated_credits) values ($1, $2, $3, 'queued', false, 1)",
      [id, `prj_audit_sql_${userId}`, userId],
    );
    if (state !== 'cancelled')
      await sql("update builds set state = 'building', started_at = now() where id = $1", [id]);
    await sql('update builds set state = $2, finished_at = now(), actual_credits = $3 where id = $1', [
      id,
      state,
      actual,
    ]);
    return id;
  };
  /**
   * Make a stray entry look as if the build's end wrote it (its settlement shares the end's now()): otherwise it also
   * counts as a movement after the end, which has a test of its own.
   */
  const endLater = (id: string) =>
    sql("update builds set finished_at = finished_at + interval '1 hour' where id = $1", [id]);
  /** A ledger entry no credit function wrote, with the account moved by its amount so the balance rules agree. */
  const stray = async (
    userId: string,
    entry: { type: string; amount: number; buildId: string | null; reservationId?: string | null },
  ) => {
    await sql(
      `with last as (select balance_after, reserved_after from credit_ledger where user_id = $1 order by id desc limit 1)
       insert into credit_ledger (user_id, type, amount, reserved_change, balance_after, reserved_after, reservation_id,
                                  build_id, request_id, correlation_id, reason)
       select $1, $2, $3::bigint, 0, balance_after + $3::bigint, reserved_after, $4, $5, 'r', 'c', 'stray' from last`,
      [userId, entry.type, entry.amount, entry.reservationId ?? null, entry.buildId],
    );
    await sql('update credit_accounts set balance = balance + $2::bigint where user_id = $1', [userId, entry.amount]);
  };

  it('finds a deployed build committed twice', async () => {
    const build = await apiBuild('u_audit_commit2', 1000, 100);
    await patch(build.id, { state: 'building' });
    await patch(build.id, { state: 'deployed', actualCredits: 60 });
    expect((await audit(t.database.db, 'u_audit_commit2')).problems).toEqual([]);
    await endLater(build.id);
    await stray('u_audit_commit2', { type: 'commit', amount: 0, buildId: build.id });
    expect((await audit(t.database.db, 'u_audit_commit2')).problems).toEqual([
      {
        check: 'a deployed build is committed at most once',
        userId: 'u_audit_commit2',
        reservationId: null,
        buildId: build.id,
        expected: 1,
        actual: 2,
      },
    ]);
  });

  it('finds a deployed build charged beyond its hold twice (and so paying more than it used)', async () => {
    const build = await apiBuild('u_audit_charge2', 1000, 100);
    await patch(build.id, { state: 'building' });
    await patch(build.id, { state: 'deployed', actualCredits: 150 });
    expect((await audit(t.database.db, 'u_audit_charge2')).problems).toEqual([]);
    await endLater(build.id);
    await stray('u_audit_charge2', { type: 'charge', amount: -50, buildId: build.id });
    expect((await audit(t.database.db, 'u_audit_charge2')).problems).toEqual([
      expect.objectContaining({
        check: 'a deployed build is charged beyond its hold at most once',
        expected: 1,
        actual: 2,
      }),
      expect.objectContaining({
        check: 'a deployed build pays its actual credits less its shortfall',
        buildId: build.id,
        expected: 150,
        actual: 200,
      }),
    ]);
  });

  it('finds a deployed build that paid nothing, unless its shortfall is unknown (it ended before 0008)', async () => {
    await grant(t.database.db, { userId: 'u_audit_free', credits: 100, reason: 'seed', source: 'test' });
    const free = await sqlBuild('u_audit_free', 'deployed', 40);
    const old = await sqlBuild('u_audit_free', 'deployed', 30);
    await sql('update builds set uncollected_credits = null where id = $1', [old]);
    expect((await audit(t.database.db, 'u_audit_free')).problems).toEqual([
      {
        check: 'a deployed build pays its actual credits less its shortfall',
        userId: 'u_audit_free',
        reservationId: null,
        buildId: free,
        expected: 40,
        actual: 0,
      },
    ]);
    // What the balance could not cover is recorded with the build, and the rule takes it into account.
    await sql('update builds set uncollected_credits = 40 where id = $1', [free]);
    expect((await audit(t.database.db, 'u_audit_free')).problems).toEqual([]);
  });

  it('finds a failed or a cancelled build that paid something', async () => {
    await grant(t.database.db, { userId: 'u_audit_failpay', credits: 100, reason: 'seed', source: 'test' });
    const failed = await sqlBuild('u_audit_failpay', 'failed', 7);
    await endLater(failed);
    await stray('u_audit_failpay', { type: 'charge', amount: -7, buildId: failed });
    const cancelled = await apiBuild('u_audit_failpay', 0, 10);
    expect((await call('POST', `/v1/builds/${cancelled.id}/cancel`)).statusCode).toBe(200);
    // As if its settlement had committed 3 instead of releasing.
    await endLater(cancelled.id);
    await stray('u_audit_failpay', { type: 'commit', amount: -3, buildId: cancelled.id });
    const problems = (await audit(t.database.db, 'u_audit_failpay')).problems;
    expect(problems.map(({ check, buildId, expected, actual }) => ({ check, buildId, expected, actual }))).toEqual(
      expect.arrayContaining([
        { check: 'a failed or cancelled build pays nothing', buildId: failed, expected: 0, actual: 7 },
        { check: 'a failed or cancelled build pays nothing', buildId: cancelled.id, expected: 0, actual: 3 },
      ]),
    );
    expect(problems).toHaveLength(2);
  });

  it('finds a credit movement for a build after it ended', async () => {
    const build = await apiBuild('u_audit_late', 1000, 100);
    expect((await call('POST', `/v1/builds/${build.id}/cancel`)).statusCode).toBe(200);
    expect((await audit(t.database.db, 'u_audit_late')).problems).toEqual([]);
    await stray('u_audit_late', { type: 'expire', amount: 0, buildId: build.id });
    expect((await audit(t.database.db, 'u_audit_late')).problems).toEqual([
      {
        check: 'no credit movement for a build after its end',
        userId: 'u_audit_late',
        reservationId: null,
        buildId: build.id,
        expected: 0,
        actual: 1,
      },
    ]);
  });

  it('finds a broken balance_after or reserved_after chain, even when the last entry agrees', async () => {
    await grant(t.database.db, { userId: 'u_audit_chain', credits: 100, reason: 'seed', source: 'test' });
    // An entry that moves nothing but says the balance was 90 (and reserved 5): the chain breaks at it and at the
    // next entry, which the credit functions write from the account (100, then 110; reserved 0).
    await sql(
      `insert into credit_ledger (user_id, type, amount, reserved_change, balance_after, reserved_after, request_id,
                                  correlation_id, reason)
       values ('u_audit_chain', 'release', 0, 0, 90, 5, 'r', 'c', 'stray')`,
    );
    await grant(t.database.db, { userId: 'u_audit_chain', credits: 10, reason: 'seed', source: 'test' });
    const problems = (await audit(t.database.db, 'u_audit_chain')).problems;
    expect(problems).toHaveLength(4);
    expect(problems).toEqual(
      expect.arrayContaining([
        expect.objectContaining({
          check: 'balance_after = previous balance_after + amount',
          expected: 100,
          actual: 90,
        }),
        expect.objectContaining({
          check: 'balance_after = previous balance_after + amount',
          expected: 100,
          actual: 110,
        }),
        expect.objectContaining({
          check: 'reserved_after = previous reserved_after + reserved_change',
          expected: 0,
          actual: 5,
        }),
        expect.objectContaining({
          check: 'reserved_after = previous reserved_after + reserved_change',
          expected: 5,
          actual: 0,
        }),
      ]),
    );
  });

  it('passes every rule on real builds: deployed with and without a shortfall, failed, cancelled, reaped, run', async () => {
    const user = 'u_audit_real';
    const uncollectedOf = async (id: string) =>
      ((await sql('select uncollected_credits as u from builds where id = $1', [id])).rows[0] as { u: number | null })
        .u;
    // Deployed within its hold, and beyond it (commit of the whole hold, then a charge).
    const within = await apiBuild(user, 1000, 100);
    await patch(within.id, { state: 'building' });
    await patch(within.id, { state: 'deployed', actualCredits: 60 });
    const beyond = await apiBuild(user, 0, 100);
    await patch(beyond.id, { state: 'building' });
    await patch(beyond.id, { state: 'deployed', actualCredits: 250 });
    // Failed, and cancelled while queued and while building.
    const failed = await apiBuild(user, 0, 100);
    await patch(failed.id, { state: 'building' });
    await patch(failed.id, { state: 'failed', reason: 'exit_code' });
    const queuedCancel = await apiBuild(user, 0, 50);
    expect((await call('POST', `/v1/builds/${queuedCancel.id}/cancel`)).statusCode).toBe(200);
    const buildingCancel = await apiBuild(user, 0, 50);
    await patch(buildingCancel.id, { state: 'building' });
    expect((await call('POST', `/v1/builds/${buildingCancel.id}/cancel`)).statusCode).toBe(200);
    // Reaped: its lease lapsed, the reaper fails it and releases its hold.
    const reaped = await apiBuild(user, 0, 100);
    await patch(reaped.id, { state: 'building' });
    await sql("update builds set lease_expires_at = now() - interval '1 second' where id = $1", [reaped.id]);
    const silent = pino({ level: 'silent' });
    const dataDir = await mkdtemp(join(tmpdir(), 'kiln-audit-runner-'));
    const runnerWith = (executor: CommandExecutor | null) =>
      new Runner({
        db: t.database.db,
        signals: new BuildSignals(t.store.store, silent),
        logger: silent,
        owner: 'audit_test_runner',
        executor,
        concurrency: executor ? 1 : 0,
        // The reaper waits a lease after the database server started: this test's database may be a second old.
        leaseSeconds: executor ? 30 : 0,
        timeoutSeconds: 30,
        dataDir,
        creditsPerMinute: 1,
        reservationTtlS: 1800,
      });
    try {
      await runnerWith(null).reap();
      expect((await call('GET', `/v1/builds/${reaped.id}`)).json()).toMatchObject({
        state: 'failed',
        reason: 'worker_lost',
      });
      // Run and deployed by a runner, which reports 3 credits.
      const run = await apiBuild(user, 0, 10);
      const runner = runnerWith(new CommandExecutor(`echo '{"type":"result","credits":3}'`));
      await runner.fill();
      await runner.stop(5_000);
      expect((await call('GET', `/v1/builds/${run.id}`)).json()).toMatchObject({ state: 'deployed', actualCredits: 3 });
    } finally {
      await rm(dataDir, { recursive: true, force: true });
    }
    // Deployed with a shortfall: 1000 − 60 − 250 − 3 = 687 left; it used 900 on a hold of 100.
    const short = await apiBuild(user, 0, 100);
    await patch(short.id, { state: 'building' });
    await patch(short.id, { state: 'deployed', actualCredits: 900 });
    expect((await call('GET', `/v1/credits/balance/${user}`)).json()).toMatchObject({ balance: 0, reserved: 0 });
    expect(await uncollectedOf(short.id)).toBe(213);
    expect(await uncollectedOf(beyond.id)).toBe(0);
    expect(await uncollectedOf(failed.id)).toBe(0);
    const report = await audit(t.database.db, user);
    expect(report.problems).toEqual([]);
    expect(report.ledgerEntries).toBeGreaterThanOrEqual(18);
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
    expect(await gaugeSettles('kiln_credit_audit_problems', (v) => v === problems.length)).toBe(problems.length);
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
    expect(await gaugeSettles('kiln_credit_audit_problems', (v) => v >= 9)).toBeGreaterThanOrEqual(9);
  });
});
