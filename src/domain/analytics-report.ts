/**
 * Analytics reports (SPEC section 7), pure: the rows a read gives (per bucket, per pattern) made into the API's
 * answer — every bucket of the range present, zeros included; totals that are the sums of the series; percentiles
 * from the duration histograms (src/domain/analytics.ts).
 */

import { type AnalyticsRange, bucketStarts, bucketValue } from './analytics';

// ---------------------------------------------------------------------------------------------------------------
// What a read gives (db/analytics.ts produces these shapes)

export interface BuildCounts {
  created: number;
  started: number;
  deployed: number;
  failed: number;
  cancelled: number;
}

/** The nearest-rank percentiles of a set of durations, as duration buckets (null: no durations). */
export interface LatencyPercentiles {
  /** series: one bucket of the range (i); total: the whole range; hour: the builds that started at an hour of day. */
  g: 'series' | 'total' | 'hour';
  i: number | null;
  hod: number | null;
  kind: 'run' | 'wait';
  p50: number | null;
  p95: number | null;
  p99: number | null;
}

export interface BuildAnalyticsRows {
  /** Per bucket, by its 1-based index among the range's bucket starts. */
  counts: (BuildCounts & { i: number })[];
  frameworks: (BuildCounts & { framework: string })[];
  hours: { hour: number; created: number }[];
  weekdays: { weekday: number; created: number }[];
  failures: { i: number; reason: string; failed: number }[];
  percentiles: LatencyPercentiles[];
  features: { feature: string; builds: number }[];
}

export interface CreditFigures {
  granted: number;
  reserved: number;
  charged: number;
  refunded: number;
  released: number;
  expired: number;
}

export interface UsageAnalyticsRows {
  series: (CreditFigures & { i: number; segment: string; entries: number })[];
  topUsers: (CreditFigures & { userId: string; plan: string })[];
}

// ---------------------------------------------------------------------------------------------------------------
// The answers

export interface Percentiles {
  p50: number | null;
  p95: number | null;
  p99?: number | null;
}

export interface BuildFigures {
  created: number;
  deployed: number;
  failed: number;
  /** Failures by reason: Kiln's own (exit_code, timeout, worker_lost, …) and `other`. */
  failedByReason: Record<string, number>;
  cancelled: number;
  /** deployed / (deployed + failed) of the builds that ended; null when none did either. */
  successRate: number | null;
  /** Building → deployed or failed, of the builds that ended so (seconds). */
  durationSeconds: Percentiles;
  /** Queued → building, of the builds that started (seconds). */
  queueWaitSeconds: Percentiles;
}

export interface BuildAnalytics {
  from: string;
  to: string;
  interval: 'hour' | 'day';
  timezone: string;
  projectId: string | null;
  userId: string | null;
  totals: BuildFigures;
  series: (BuildFigures & { start: string; end: string })[];
  patterns: {
    byFramework: (Pick<BuildFigures, 'created' | 'deployed' | 'failed' | 'cancelled' | 'successRate'> & {
      framework: string | null;
    })[];
    byHourOfDay: { hour: number; created: number; queueWaitSeconds: Percentiles }[];
    byDayOfWeek: { isoWeekday: number; day: string; created: number }[];
    topFeatures: { feature: string; builds: number }[];
  };
  percentiles: { method: 'histogram'; rank: 'nearest'; maxRelativeError: number };
}

const WEEKDAYS = ['monday', 'tuesday', 'wednesday', 'thursday', 'friday', 'saturday', 'sunday'];
const ZERO_COUNTS: BuildCounts = { created: 0, started: 0, deployed: 0, failed: 0, cancelled: 0 };

/** A duration bucket as the seconds it reports, to the millisecond (null stays null). */
function seconds(bucket: number | null | undefined): number | null {
  return bucket === null || bucket === undefined ? null : Math.round(bucketValue(bucket) * 1000) / 1000;
}

type Durations = { run?: LatencyPercentiles; wait?: LatencyPercentiles };

function figures(
  counts: BuildCounts,
  failures: Record<string, number>,
  durations: Durations | undefined,
): BuildFigures {
  const ended = counts.deployed + counts.failed;
  return {
    created: counts.created,
    deployed: counts.deployed,
    failed: counts.failed,
    failedByReason: failures,
    cancelled: counts.cancelled,
    successRate: ended === 0 ? null : round4(counts.deployed / ended),
    durationSeconds: {
      p50: seconds(durations?.run?.p50),
      p95: seconds(durations?.run?.p95),
      p99: seconds(durations?.run?.p99),
    },
    queueWaitSeconds: { p50: seconds(durations?.wait?.p50), p95: seconds(durations?.wait?.p95) },
  };
}

/** One group's percentile rows by key (a bucket's index, an hour of day, or 0 for the total), run and wait apart. */
function durationsBy(rows: LatencyPercentiles[], g: LatencyPercentiles['g']): Map<number, Durations> {
  const byKey = new Map<number, Durations>();
  for (const row of rows.filter((r) => r.g === g)) {
    const key = (g === 'series' ? row.i : g === 'hour' ? row.hod : 0) ?? 0;
    byKey.set(key, { ...byKey.get(key), [row.kind]: row });
  }
  return byKey;
}

const round4 = (x: number) => Math.round(x * 10_000) / 10_000;

function add(into: BuildCounts, from: BuildCounts): void {
  into.created += from.created;
  into.started += from.started;
  into.deployed += from.deployed;
  into.failed += from.failed;
  into.cancelled += from.cancelled;
}

/** The builds report of a range from its rows: every bucket, totals that are the sums of the buckets, patterns. */
export function buildReport(
  rows: BuildAnalyticsRows,
  range: AnalyticsRange,
  filter: { projectId?: string; userId?: string },
  maxRelativeError: number,
): BuildAnalytics {
  const starts = bucketStarts(range);
  const counts = new Map(rows.counts.map((r) => [r.i, r]));
  const failures = new Map<number, Record<string, number>>();
  const allFailures: Record<string, number> = {};
  for (const f of rows.failures) {
    const bucket = failures.get(f.i) ?? {};
    bucket[f.reason] = (bucket[f.reason] ?? 0) + f.failed;
    failures.set(f.i, bucket);
    allFailures[f.reason] = (allFailures[f.reason] ?? 0) + f.failed;
  }
  const latency = durationsBy(rows.percentiles, 'series');
  const byHour = durationsBy(rows.percentiles, 'hour');
  const total = { ...ZERO_COUNTS };
  const series = starts.map((start, index) => {
    const i = index + 1;
    const c = counts.get(i) ?? ZERO_COUNTS;
    add(total, c);
    const end = starts[index + 1] ?? range.to;
    return { start: start.toISOString(), end: end.toISOString(), ...figures(c, failures.get(i) ?? {}, latency.get(i)) };
  });
  const hours = new Map(rows.hours.map((h) => [h.hour, h.created]));
  const weekdays = new Map(rows.weekdays.map((d) => [d.weekday, d.created]));
  return {
    from: range.from.toISOString(),
    to: range.to.toISOString(),
    interval: range.interval,
    timezone: range.timeZone,
    projectId: filter.projectId ?? null,
    userId: filter.userId ?? null,
    totals: figures(total, allFailures, durationsBy(rows.percentiles, 'total').get(0)),
    series,
    patterns: {
      byFramework: rows.frameworks.map((f) => {
        const { created, deployed, failed, cancelled, successRate } = figures(f, {}, undefined);
        return {
          framework: f.framework === '' ? null : f.framework,
          created,
          deployed,
          failed,
          cancelled,
          successRate,
        };
      }),
      byHourOfDay: Array.from({ length: 24 }, (_, hour) => {
        const wait = byHour.get(hour)?.wait;
        return {
          hour,
          created: hours.get(hour) ?? 0,
          queueWaitSeconds: { p50: seconds(wait?.p50), p95: seconds(wait?.p95) },
        };
      }),
      byDayOfWeek: WEEKDAYS.map((day, index) => ({
        isoWeekday: index + 1,
        day,
        created: weekdays.get(index + 1) ?? 0,
      })),
      topFeatures: rows.features,
    },
    percentiles: { method: 'histogram', rank: 'nearest', maxRelativeError: round4(maxRelativeError) },
  };
}

export interface UsageFigures extends CreditFigures {
  /** Ledger entries counted. */
  entries: number;
}

export interface UsageAnalytics {
  from: string;
  to: string;
  interval: 'hour' | 'day';
  timezone: string;
  segment: 'plan' | 'operation';
  userId: string | null;
  totals: UsageFigures & { bySegment: (UsageFigures & { segment: string })[] };
  series: (UsageFigures & { start: string; end: string; segments: (UsageFigures & { segment: string })[] })[];
  topUsers: { from: string; to: string; users: (CreditFigures & { userId: string; plan: string })[] };
}

const ZERO_USAGE: UsageFigures = {
  granted: 0,
  reserved: 0,
  charged: 0,
  refunded: 0,
  released: 0,
  expired: 0,
  entries: 0,
};

function sumUsage(parts: UsageFigures[]): UsageFigures {
  const sum = { ...ZERO_USAGE };
  for (const p of parts) {
    for (const key of Object.keys(sum) as (keyof UsageFigures)[]) sum[key] += p[key];
  }
  return sum;
}

const usageOf = (row: UsageFigures): UsageFigures => ({
  granted: row.granted,
  reserved: row.reserved,
  charged: row.charged,
  refunded: row.refunded,
  released: row.released,
  expired: row.expired,
  entries: row.entries,
});

/**
 * The usage report of a range from its rows: every bucket, each with every segment seen in the range (zeros
 * included), totals that are the sums of the buckets, and the top users of the days `topUsersDays`.
 */
export function usageReport(
  rows: UsageAnalyticsRows,
  range: AnalyticsRange,
  segment: 'plan' | 'operation',
  userId: string | undefined,
  topUsersDays: { from: string; to: string },
): UsageAnalytics {
  const starts = bucketStarts(range);
  const segments = [...new Set(rows.series.map((r) => r.segment))].sort();
  const cells = new Map(rows.series.map((r) => [`${r.i}\u0000${r.segment}`, usageOf(r)]));
  const series = starts.map((start, index) => {
    const i = index + 1;
    const bySegment = segments.map((s) => ({ segment: s, ...(cells.get(`${i}\u0000${s}`) ?? ZERO_USAGE) }));
    return {
      start: start.toISOString(),
      end: (starts[index + 1] ?? range.to).toISOString(),
      ...sumUsage(bySegment),
      segments: bySegment,
    };
  });
  const bySegment = segments.map((s) => ({
    segment: s,
    ...sumUsage(series.map((b) => b.segments.find((x) => x.segment === s) ?? ZERO_USAGE)),
  }));
  return {
    from: range.from.toISOString(),
    to: range.to.toISOString(),
    interval: range.interval,
    timezone: range.timeZone,
    segment,
    userId: userId ?? null,
    totals: { ...sumUsage(series), bySegment },
    series,
    topUsers: { ...topUsersDays, users: rows.topUsers },
  };
}
