import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { foldAnalytics } from '../../src/db/analytics';
import type { Queryable } from '../../src/db/database';
import {
  addToHistogram,
  exactPercentile,
  type Histogram,
  latencyBucket,
  PERCENTILE_RELATIVE_ERROR,
  percentile,
} from '../../src/domain/analytics';
import type { BuildAnalytics, BuildFigures, UsageAnalytics } from '../../src/domain/analytics-report';
import { buildAnalytics, usageAnalytics } from '../../src/services/analytics';
import { startTestApp, type TestApp } from '../helpers/app';
import { signedInject } from '../helpers/signed';

/**
 * A scripted history (builds and ledger entries at chosen instants, written as Kiln writes them: a build moved
 * through its states by the transition trigger with its events, ledger entries appended), and every figure of both
 * reports computed by hand from the same script. The reports must be the same whatever has been folded into the
 * rollups: nothing, part, or all of it.
 */

const at = (iso: string) => new Date(iso);
const plus = (iso: string, seconds: number) => new Date(Date.parse(iso) + seconds * 1000);

interface ScriptBuild {
  id: string;
  project: string;
  user: string;
  created: Date;
  started?: Date;
  finished?: Date;
  state?: 'deployed' | 'failed' | 'cancelled';
  reason?: string;
  metadata?: Record<string, unknown>;
}

const BUILDS: ScriptBuild[] = [
  // created the day before the range, started and deployed on its first instant and minute
  {
    id: 'b0',
    project: 'pn',
    user: 'u_pro',
    created: at('2026-11-01T23:00:00Z'),
    started: at('2026-11-02T00:00:00Z'),
    finished: at('2026-11-02T00:05:00Z'),
    state: 'deployed',
  },
  {
    id: 'b1',
    project: 'pn',
    user: 'u_pro',
    created: at('2026-11-02T09:15:00Z'),
    started: plus('2026-11-02T09:15:00Z', 5),
    finished: plus('2026-11-02T09:15:00Z', 120),
    state: 'deployed',
    metadata: { features: ['ssr', 'edge'] },
  },
  {
    id: 'b2',
    project: 'pn',
    user: 'u_pro',
    created: at('2026-11-02T09:40:00Z'),
    started: plus('2026-11-02T09:40:00Z', 30),
    finished: plus('2026-11-02T09:40:00Z', 300),
    state: 'failed',
    reason: 'exit_code',
    metadata: { features: ['ssr'] },
  },
  // created the last second of a day, started on the first instant of the next
  {
    id: 'b3',
    project: 'pa',
    user: 'u_free',
    created: at('2026-11-02T23:59:59Z'),
    started: at('2026-11-03T00:00:00Z'),
    finished: at('2026-11-03T00:01:00Z'),
    state: 'deployed',
    metadata: { features: ['static'] },
  },
  // created exactly on a day's edge, cancelled while queued
  {
    id: 'b4',
    project: 'px',
    user: 'u_team',
    created: at('2026-11-03T00:00:00Z'),
    finished: at('2026-11-03T00:10:00Z'),
    state: 'cancelled',
  },
  {
    id: 'b5',
    project: 'pa',
    user: 'u_team',
    created: at('2026-11-03T10:00:00Z'),
    started: plus('2026-11-03T10:00:00Z', 2),
    finished: at('2026-11-03T10:30:00Z'),
    state: 'failed',
    reason: 'my own words',
    metadata: { features: ['ssr', 'i18n', 'ssr'] },
  },
  {
    id: 'b6',
    project: 'pn',
    user: 'u_free',
    created: at('2026-11-03T10:05:00Z'),
    started: at('2026-11-03T10:06:00Z'),
    finished: at('2026-11-03T10:07:00Z'),
    state: 'cancelled',
  },
  // 2026-11-04: nothing at all
  {
    id: 'b7',
    project: 'pn',
    user: 'u_pro',
    created: at('2026-11-05T08:00:00Z'),
    started: plus('2026-11-05T08:00:00Z', 0.5),
    finished: plus('2026-11-05T08:00:00Z', 45),
    state: 'deployed',
    metadata: { features: ['edge'], operation: 'preview' },
  },
  { id: 'b8', project: 'pa', user: 'u_pro', created: at('2026-11-05T08:30:00Z') },
  // deployed on the range's end instant: outside [from, to)
  {
    id: 'b9',
    project: 'px',
    user: 'u_free',
    created: at('2026-11-05T23:00:00Z'),
    started: at('2026-11-05T23:00:10Z'),
    finished: at('2026-11-06T00:00:00Z'),
    state: 'deployed',
  },
];

interface ScriptEntry {
  at: string;
  user: string;
  type: 'grant' | 'reserve' | 'commit' | 'release' | 'expire' | 'charge';
  amount: number;
  reservedChange: number;
  plan: string;
  build?: string;
}

const ENTRIES: ScriptEntry[] = [
  { at: '2026-11-01T23:59:59Z', user: 'u_pro', type: 'grant', amount: 5, reservedChange: 0, plan: 'pro' }, // before from
  { at: '2026-11-02T08:00:00Z', user: 'u_pro', type: 'grant', amount: 1000, reservedChange: 0, plan: 'pro' },
  {
    at: '2026-11-02T09:15:00Z',
    user: 'u_pro',
    type: 'reserve',
    amount: 0,
    reservedChange: 100,
    plan: 'pro',
    build: 'b1',
  },
  {
    at: '2026-11-02T09:17:00Z',
    user: 'u_pro',
    type: 'commit',
    amount: -80,
    reservedChange: -100,
    plan: 'pro',
    build: 'b1',
  },
  {
    at: '2026-11-02T09:40:00Z',
    user: 'u_pro',
    type: 'reserve',
    amount: 0,
    reservedChange: 50,
    plan: 'pro',
    build: 'b2',
  },
  {
    at: '2026-11-02T09:45:00Z',
    user: 'u_pro',
    type: 'release',
    amount: 0,
    reservedChange: -50,
    plan: 'pro',
    build: 'b2',
  },
  { at: '2026-11-02T23:59:59Z', user: 'u_free', type: 'grant', amount: 200, reservedChange: 0, plan: 'free' },
  {
    at: '2026-11-03T00:00:00Z',
    user: 'u_free',
    type: 'reserve',
    amount: 0,
    reservedChange: 30,
    plan: 'free',
    build: 'b3',
  },
  {
    at: '2026-11-03T00:01:00Z',
    user: 'u_free',
    type: 'commit',
    amount: -30,
    reservedChange: -30,
    plan: 'free',
    build: 'b3',
  },
  { at: '2026-11-03T10:00:00Z', user: 'u_team', type: 'grant', amount: 500, reservedChange: 0, plan: 'team' },
  {
    at: '2026-11-03T10:00:00Z',
    user: 'u_team',
    type: 'reserve',
    amount: 0,
    reservedChange: 40,
    plan: 'team',
    build: 'b5',
  },
  {
    at: '2026-11-03T10:30:00Z',
    user: 'u_team',
    type: 'release',
    amount: 0,
    reservedChange: -40,
    plan: 'team',
    build: 'b5',
  },
  { at: '2026-11-03T12:00:00Z', user: 'u_team', type: 'reserve', amount: 0, reservedChange: 25, plan: 'team' },
  { at: '2026-11-03T12:30:00Z', user: 'u_team', type: 'expire', amount: 0, reservedChange: -25, plan: 'team' },
  {
    at: '2026-11-03T13:00:00Z',
    user: 'u_team',
    type: 'charge',
    amount: -15,
    reservedChange: 0,
    plan: 'team',
    build: 'b5',
  },
  {
    at: '2026-11-05T08:00:00Z',
    user: 'u_pro',
    type: 'reserve',
    amount: 0,
    reservedChange: 60,
    plan: 'pro',
    build: 'b7',
  },
  {
    at: '2026-11-05T08:00:45Z',
    user: 'u_pro',
    type: 'commit',
    amount: -45,
    reservedChange: -60,
    plan: 'pro',
    build: 'b7',
  },
  // the free user moves to pro: this entry is pro's
  { at: '2026-11-05T12:00:00Z', user: 'u_free', type: 'grant', amount: 100, reservedChange: 0, plan: 'pro' },
  { at: '2026-11-06T00:00:00Z', user: 'u_pro', type: 'grant', amount: 10, reservedChange: 0, plan: 'pro' }, // on to
];

async function writeHistory(db: Queryable): Promise<void> {
  for (const [id, framework] of [
    ['pn', 'next'],
    ['pa', 'astro'],
    ['px', null],
  ] as const) {
    await db.query(
      'insert into projects (id, owner_id, name, framework) values ($1::text, $2::text, $3::text, $4::text)',
      [id, 'owner', id, framework],
    );
  }
  for (const b of BUILDS) {
    await db.query(
      `insert into builds (id, project_id, user_id, state, estimated_credits, metadata, last_event_seq, created_at)
       values ($1::text, $2::text, $3::text, 'queued', 1, $4::jsonb, 1, $5::timestamptz)`,
      [b.id, b.project, b.user, JSON.stringify(b.metadata ?? {}), b.created],
    );
    const event = (seq: number, type: string, when: Date) =>
      db.query(
        'insert into build_events (build_id, seq, type, created_at) values ($1::text, $2::int, $3::text, $4::timestamptz)',
        [b.id, seq, type, when],
      );
    await event(1, 'queued', b.created);
    let seq = 1;
    if (b.started) {
      await db.query(
        `update builds set state = 'building', started_at = $2::timestamptz, last_event_seq = 2 where id = $1::text`,
        [b.id, b.started],
      );
      await event(++seq, 'started', b.started);
    }
    if (b.finished && b.state) {
      await db.query(
        `update builds set state = $2::text, finished_at = $3::timestamptz, reason = $4::text,
                last_event_seq = $5::int where id = $1::text`,
        [b.id, b.state, b.finished, b.reason ?? null, seq + 1],
      );
      await event(++seq, b.state, b.finished);
    }
  }
  for (const e of ENTRIES) {
    // As the credit functions write it: the plan the user has, the operation of the build (none without one).
    const build = BUILDS.find((b) => b.id === e.build);
    const operation = build ? ((build.metadata?.operation as string | undefined) ?? 'build') : 'none';
    await db.query(
      `insert into credit_ledger (user_id, type, amount, reserved_change, balance_after, reserved_after, build_id,
                                  request_id, correlation_id, reason, plan, operation, created_at)
       values ($1::text, $2::text, $3::bigint, $4::bigint, 0, 0, $5::text, 'script', 'script', 'script', $6::text,
               $7::text, $8::timestamptz)`,
      [e.user, e.type, e.amount, e.reservedChange, e.build ?? null, e.plan, operation, e.at],
    );
  }
}

/** What the report must say of a set of figures: counts exact, percentiles within the stated bound. */
function expectFigures(
  actual: BuildFigures,
  expected: {
    created: number;
    deployed: number;
    failed: number;
    failedByReason?: Record<string, number>;
    cancelled: number;
    run: number[];
    wait: number[];
  },
  where: string,
): void {
  expect(
    {
      created: actual.created,
      deployed: actual.deployed,
      failed: actual.failed,
      failedByReason: actual.failedByReason,
      cancelled: actual.cancelled,
    },
    where,
  ).toEqual({
    created: expected.created,
    deployed: expected.deployed,
    failed: expected.failed,
    failedByReason: expected.failedByReason ?? {},
    cancelled: expected.cancelled,
  });
  const ended = expected.deployed + expected.failed;
  expect(actual.successRate, `${where} successRate`).toBe(
    ended === 0 ? null : Math.round((expected.deployed / ended) * 10_000) / 10_000,
  );
  // Exactly what the domain's rule reports for these durations (the statement computes it in SQL), and within the
  // stated bound of the exact nearest-rank value.
  const close = (reported: number | null | undefined, values: number[], p: number, what: string) => {
    const histogram: Histogram = new Map();
    for (const v of values) addToHistogram(histogram, latencyBucket(v), 1);
    expect(reported, `${where} ${what} as the domain reports it`).toBe(percentile(histogram, p));
    const exact = exactPercentile(values, p);
    if (exact === null) return expect(reported, `${where} ${what}`).toBeNull();
    const bound = Math.max(exact * PERCENTILE_RELATIVE_ERROR, 0.0005) + 0.0005;
    expect(
      Math.abs((reported as number) - exact),
      `${where} ${what}: ${reported} vs exact ${exact}`,
    ).toBeLessThanOrEqual(bound);
  };
  close(actual.durationSeconds.p50, expected.run, 0.5, 'run p50');
  close(actual.durationSeconds.p95, expected.run, 0.95, 'run p95');
  close(actual.durationSeconds.p99, expected.run, 0.99, 'run p99');
  close(actual.queueWaitSeconds.p50, expected.wait, 0.5, 'wait p50');
  close(actual.queueWaitSeconds.p95, expected.wait, 0.95, 'wait p95');
}

const DAYS = { from: '2026-11-02T00:00:00Z', to: '2026-11-06T00:00:00Z', interval: 'day' };
const EDGE_HOURS = { from: '2026-11-02T23:00:00Z', to: '2026-11-03T02:00:00Z', interval: 'hour' };

function expectEveryoneByDay(report: BuildAnalytics): void {
  expect(report.series.map((b) => b.start)).toEqual([
    '2026-11-02T00:00:00.000Z',
    '2026-11-03T00:00:00.000Z',
    '2026-11-04T00:00:00.000Z',
    '2026-11-05T00:00:00.000Z',
  ]);
  expect(report.series.map((b) => b.end)).toEqual([
    '2026-11-03T00:00:00.000Z',
    '2026-11-04T00:00:00.000Z',
    '2026-11-05T00:00:00.000Z',
    '2026-11-06T00:00:00.000Z',
  ]);
  const [nov2, nov3, nov4, nov5] = report.series;
  // run = building → deployed/failed of the builds that ended in the bucket; wait = queued → building, by start
  expectFigures(
    nov2,
    {
      created: 3,
      deployed: 2,
      failed: 1,
      failedByReason: { exit_code: 1 },
      cancelled: 0,
      run: [300, 115, 270],
      wait: [3600, 5, 30],
    },
    'Nov 2',
  );
  expectFigures(
    nov3,
    {
      created: 3,
      deployed: 1,
      failed: 1,
      failedByReason: { other: 1 },
      cancelled: 2,
      run: [60, 1798],
      wait: [1, 2, 60],
    },
    'Nov 3',
  );
  expectFigures(nov4, { created: 0, deployed: 0, failed: 0, cancelled: 0, run: [], wait: [] }, 'Nov 4 (empty)');
  expectFigures(nov5, { created: 3, deployed: 1, failed: 0, cancelled: 0, run: [44.5], wait: [0.5, 10] }, 'Nov 5');
  expectFigures(
    report.totals,
    {
      created: 9,
      deployed: 4,
      failed: 2,
      failedByReason: { exit_code: 1, other: 1 },
      cancelled: 2,
      run: [300, 115, 270, 60, 1798, 44.5],
      wait: [3600, 5, 30, 1, 2, 60, 0.5, 10],
    },
    'totals',
  );
  const frameworks = Object.fromEntries(report.patterns.byFramework.map((f) => [f.framework ?? '(none)', f]));
  expect(Object.keys(frameworks).sort()).toEqual(['(none)', 'astro', 'next']);
  expect(frameworks.next).toMatchObject({ created: 4, deployed: 3, failed: 1, cancelled: 1, successRate: 0.75 });
  expect(frameworks.astro).toMatchObject({ created: 3, deployed: 1, failed: 1, cancelled: 0, successRate: 0.5 });
  expect(frameworks['(none)']).toMatchObject({ created: 2, deployed: 0, failed: 0, cancelled: 1, successRate: null });
  const hours = report.patterns.byHourOfDay;
  expect(hours).toHaveLength(24);
  expect(Object.fromEntries(hours.filter((h) => h.created > 0).map((h) => [h.hour, h.created]))).toEqual({
    0: 1,
    8: 2,
    9: 2,
    10: 2,
    23: 2,
  });
  // Queue waits by the hour the builds started: 00:00 holds b0 (an hour) and b3 (1 s).
  const near = (reported: number | null, exact: number) =>
    expect(Math.abs((reported as number) - exact)).toBeLessThanOrEqual(exact * PERCENTILE_RELATIVE_ERROR + 0.001);
  near(hours[0].queueWaitSeconds.p95, 3600);
  near(hours[0].queueWaitSeconds.p50, 1);
  near(hours[9].queueWaitSeconds.p95, 30);
  expect(hours[12].queueWaitSeconds.p50).toBeNull();
  expect(report.patterns.byDayOfWeek.map((d) => [d.day, d.created])).toEqual([
    ['monday', 3],
    ['tuesday', 3],
    ['wednesday', 0],
    ['thursday', 3],
    ['friday', 0],
    ['saturday', 0],
    ['sunday', 0],
  ]);
  expect(report.patterns.topFeatures).toEqual([
    { feature: 'ssr', builds: 3 },
    { feature: 'edge', builds: 2 },
    { feature: 'i18n', builds: 1 },
    { feature: 'static', builds: 1 },
  ]);
}

const ZERO = { granted: 0, reserved: 0, charged: 0, refunded: 0, released: 0, expired: 0, entries: 0 };

function expectUsageByPlan(report: UsageAnalytics): void {
  const cells = report.series.map((b) =>
    Object.fromEntries(b.segments.map((s) => [s.segment, { ...s, segment: undefined }])),
  );
  const seg = (figures: Partial<typeof ZERO>) => ({ ...ZERO, ...figures, segment: undefined });
  expect(cells).toEqual([
    {
      free: seg({ granted: 200, entries: 1 }),
      pro: seg({ granted: 1000, reserved: 150, charged: 80, refunded: 20, released: 50, entries: 5 }),
      team: seg({}),
    },
    {
      free: seg({ reserved: 30, charged: 30, entries: 2 }),
      pro: seg({}),
      team: seg({ granted: 500, reserved: 65, charged: 15, released: 40, expired: 25, entries: 6 }),
    },
    { free: seg({}), pro: seg({}), team: seg({}) },
    { free: seg({}), pro: seg({ granted: 100, reserved: 60, charged: 45, refunded: 15, entries: 3 }), team: seg({}) },
  ]);
  expect(report.totals).toMatchObject({
    granted: 1800,
    reserved: 305,
    charged: 170,
    refunded: 35,
    released: 90,
    expired: 25,
    entries: 17,
  });
  expect(report.topUsers).toEqual({
    from: '2026-11-02',
    to: '2026-11-06',
    users: [
      {
        userId: 'u_pro',
        plan: 'pro',
        granted: 1000,
        reserved: 210,
        charged: 125,
        refunded: 35,
        released: 50,
        expired: 0,
      },
      { userId: 'u_free', plan: 'pro', granted: 300, reserved: 30, charged: 30, refunded: 0, released: 0, expired: 0 },
      {
        userId: 'u_team',
        plan: 'team',
        granted: 500,
        reserved: 65,
        charged: 15,
        refunded: 0,
        released: 40,
        expired: 25,
      },
    ],
  });
}

describe('analytics over a scripted history', () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await startTestApp({ RATE_LIMIT_USER_PER_MIN: '0', RATE_LIMIT_IP_PER_MIN: '0' });
    await writeHistory(t.database.db);
    // The fold takes only rows below the oldest transaction still running anywhere on the server (another test
    // file's, on a shared PostgreSQL); the counts below assume every row of the script is there to fold.
    const deadline = Date.now() + 20_000;
    for (;;) {
      const { rows } = await t.database.db.query<{ settled: boolean }>(
        `select pg_snapshot_xmin(pg_current_snapshot()) > greatest((select max(xact) from build_events),
                                                                  (select max(xact) from credit_ledger)) as settled`,
      );
      if (rows[0].settled) break;
      if (Date.now() > deadline) throw new Error('a transaction on the server stayed open for 20 s: nothing to fold');
      await new Promise((r) => setTimeout(r, 50));
    }
  });
  afterAll(() => t?.close());

  /** Both reports, and the hourly ones across the edge of Nov 2 and 3, as they stand. */
  const reports = async () => ({
    builds: await buildAnalytics(t.database.db, DAYS),
    hours: await buildAnalytics(t.database.db, EDGE_HOURS),
    byPlan: await usageAnalytics(t.database.db, { ...DAYS, segment: 'plan' }),
    byOperation: await usageAnalytics(t.database.db, { ...DAYS, segment: 'operation' }),
    usageHours: await usageAnalytics(t.database.db, EDGE_HOURS),
    // One user by UTC day (their daily rollup and the entries past the cursor), u_free across a change of plan.
    teamByOperation: await usageAnalytics(t.database.db, { ...DAYS, segment: 'operation', userId: 'u_team' }),
    freeByPlan: await usageAnalytics(t.database.db, { ...DAYS, segment: 'plan', userId: 'u_free' }),
  });

  it('says what the script did, whether nothing, part or all of it is folded into the rollups', async () => {
    const unfolded = await reports();
    expectEveryoneByDay(unfolded.builds);
    expectUsageByPlan(unfolded.byPlan);
    // Part of it: a fold of 7 rows of each source, then the rest is read past the cursor.
    const first = await foldAnalytics(t.database.db, 7);
    expect(first).toEqual({ events: 7, entries: 7 });
    const partly = await reports();
    expect(partly).toEqual(unfolded);
    for (let folded = { events: 1, entries: 1 }; folded.events + folded.entries > 0; ) {
      folded = await foldAnalytics(t.database.db, 5);
    }
    const rollup = await t.database.db.query<{ n: number }>(
      'select sum(created)::int as n from analytics_builds_hourly',
    );
    expect(rollup.rows[0].n).toBe(BUILDS.length);
    expect(await reports()).toEqual(unfolded);
  });

  it('counts the hours across a day’s edge, an instant on the edge in the later hour', async () => {
    const { hours, usageHours } = await reports();
    expect(hours.series.map((b) => b.start)).toEqual([
      '2026-11-02T23:00:00.000Z',
      '2026-11-03T00:00:00.000Z',
      '2026-11-03T01:00:00.000Z',
    ]);
    const [h23, h00, h01] = hours.series;
    expectFigures(h23, { created: 1, deployed: 0, failed: 0, cancelled: 0, run: [], wait: [] }, '23:00');
    expectFigures(h00, { created: 1, deployed: 1, failed: 0, cancelled: 1, run: [60], wait: [1] }, '00:00');
    expectFigures(h01, { created: 0, deployed: 0, failed: 0, cancelled: 0, run: [], wait: [] }, '01:00');
    expect(usageHours.series.map((b) => ({ granted: b.granted, reserved: b.reserved, charged: b.charged }))).toEqual([
      { granted: 200, reserved: 0, charged: 0 },
      { granted: 0, reserved: 30, charged: 30 },
      { granted: 0, reserved: 0, charged: 0 },
    ]);
  });

  it('segments usage by the build’s operation, and the totals are the ledger’s movements in the range', async () => {
    const { byOperation } = await reports();
    const totals = Object.fromEntries(byOperation.totals.bySegment.map((s) => [s.segment, s]));
    expect(totals).toEqual({
      none: { segment: 'none', ...ZERO, granted: 1800, reserved: 25, expired: 25, entries: 6 },
      build: { segment: 'build', ...ZERO, reserved: 220, charged: 125, refunded: 20, released: 90, entries: 9 },
      preview: { segment: 'preview', ...ZERO, reserved: 60, charged: 45, refunded: 15, entries: 2 },
    });
    // The same sums, straight from the ledger.
    const { rows } = await t.database.db.query<Record<string, number>>(
      `select coalesce(sum(amount) filter (where type = 'grant'), 0)::int as granted,
              coalesce(sum(reserved_change) filter (where type = 'reserve'), 0)::int as reserved,
              coalesce(-sum(amount) filter (where type in ('commit', 'charge')), 0)::int as charged,
              coalesce(-sum(reserved_change) filter (where type = 'release'), 0)::int as released,
              coalesce(-sum(reserved_change) filter (where type = 'expire'), 0)::int as expired,
              count(*)::int as entries
         from credit_ledger where created_at >= $1::timestamptz and created_at < $2::timestamptz`,
      [DAYS.from, DAYS.to],
    );
    expect(rows[0]).toEqual({
      granted: byOperation.totals.granted,
      reserved: byOperation.totals.reserved,
      charged: byOperation.totals.charged,
      released: byOperation.totals.released,
      expired: byOperation.totals.expired,
      entries: byOperation.totals.entries,
    });
  });

  it('answers for one project or one user from their own builds and entries', async () => {
    const project = await buildAnalytics(t.database.db, { ...DAYS, projectId: 'pn' });
    expect(project.projectId).toBe('pn');
    const [nov2, nov3, nov4, nov5] = project.series;
    expectFigures(
      nov2,
      {
        created: 2,
        deployed: 2,
        failed: 1,
        failedByReason: { exit_code: 1 },
        cancelled: 0,
        run: [300, 115, 270],
        wait: [3600, 5, 30],
      },
      'pn Nov 2',
    );
    expectFigures(nov3, { created: 1, deployed: 0, failed: 0, cancelled: 1, run: [], wait: [60] }, 'pn Nov 3');
    expectFigures(nov4, { created: 0, deployed: 0, failed: 0, cancelled: 0, run: [], wait: [] }, 'pn Nov 4');
    expectFigures(nov5, { created: 1, deployed: 1, failed: 0, cancelled: 0, run: [44.5], wait: [0.5] }, 'pn Nov 5');
    expect(project.patterns.topFeatures).toEqual([
      { feature: 'edge', builds: 2 },
      { feature: 'ssr', builds: 2 },
    ]);
    const user = await buildAnalytics(t.database.db, { ...DAYS, userId: 'u_team' });
    expectFigures(
      user.totals,
      { created: 2, deployed: 0, failed: 1, failedByReason: { other: 1 }, cancelled: 1, run: [1798], wait: [2] },
      'u_team',
    );
    const both = await buildAnalytics(t.database.db, { ...DAYS, userId: 'u_free', projectId: 'pn' });
    expectFigures(
      both.totals,
      { created: 1, deployed: 0, failed: 0, cancelled: 1, run: [], wait: [60] },
      'u_free on pn',
    );
    const usage = await usageAnalytics(t.database.db, { ...DAYS, userId: 'u_team' });
    expect(usage.series.map((b) => b.charged)).toEqual([0, 15, 0, 0]);
    expect(usage.totals).toMatchObject({
      granted: 500,
      reserved: 65,
      charged: 15,
      released: 40,
      expired: 25,
      entries: 6,
    });
    expect(usage.topUsers.users).toEqual([
      {
        userId: 'u_team',
        plan: 'team',
        granted: 500,
        reserved: 65,
        charged: 15,
        refunded: 0,
        released: 40,
        expired: 25,
      },
    ]);
  });

  it('serves both reports signed over HTTP, as the services give them', async () => {
    const query = new URLSearchParams({ ...DAYS, segment: 'plan' }).toString();
    const res = await signedInject(t.app, { method: 'GET', url: `/v1/analytics/usage?${query}` });
    expect(res.statusCode).toBe(200);
    expect(res.json()).toEqual(
      JSON.parse(JSON.stringify(await usageAnalytics(t.database.db, { ...DAYS, segment: 'plan' }))),
    );
    const builds = await signedInject(t.app, {
      method: 'GET',
      url: `/v1/analytics/builds?${new URLSearchParams(DAYS).toString()}`,
    });
    expect(builds.statusCode).toBe(200);
    expect(builds.json()).toEqual(JSON.parse(JSON.stringify(await buildAnalytics(t.database.db, DAYS))));
    const unsigned = await t.app.inject({ method: 'GET', url: `/v1/analytics/builds?${new URLSearchParams(DAYS)}` });
    expect(unsigned.statusCode).toBe(401);
  });

  it('refuses bad parameters of every kind with one 400 naming each', async () => {
    const refused = async (query: string) => {
      const res = await signedInject(t.app, { method: 'GET', url: `/v1/analytics/usage?${query}` });
      expect(res.statusCode, query).toBe(400);
      expect(res.json().error).toBe('VALIDATION_ERROR');
      return (res.json().data.issues as { path: string }[]).map((i) => i.path).sort();
    };
    expect(await refused('')).toEqual(['query.from', 'query.to']);
    expect(
      await refused(
        'from=soon&to=2026-11-31&interval=minute&timezone=Nowhere/Land&segment=colour&userId=a%20b&extra=1',
      ),
    ).toEqual([
      'query.extra',
      'query.from',
      'query.interval',
      'query.segment',
      'query.timezone',
      'query.to',
      'query.userId',
    ]);
    expect(await refused('from=2026-11-02T00:30:00Z&to=2026-11-03T00:00:00Z&interval=hour')).toEqual(['query.from']);
    expect(await refused('from=2026-11-03&to=2026-11-02')).toEqual(['query.to']);
    expect(await refused('from=2025-01-01&to=2026-11-02')).toEqual(['query.to']);
    expect(await refused('from=2026-01-01&to=2026-03-01&interval=hour')).toEqual(['query.interval']);
    const res = await signedInject(t.app, {
      method: 'GET',
      url: '/v1/analytics/builds?from=2026-11-02&to=2026-11-03&projectId=no%20such',
    });
    expect(res.statusCode).toBe(400);
    expect(res.json().data.issues).toEqual([{ path: 'query.projectId', message: expect.stringMatching(/project id/) }]);
  });
});
