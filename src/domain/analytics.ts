/**
 * Analytics rules (SPEC section 7), pure: which ranges a query may ask for, how its buckets fall, and how durations
 * are kept so that percentiles over any range and segment come from sums of counts.
 *
 * Durations (build run time, queue wait) are kept as counts in logarithmic buckets: bucket 0 holds everything under
 * 1 ms, bucket b ≥ 1 holds [1 ms × 1.1^(b−1), 1 ms × 1.1^b). A percentile is the nearest-rank value (the value at
 * rank ⌈p·n⌉ of the sorted durations); from the buckets it is reported as the geometric middle of the bucket holding
 * that rank, which is within 4.9 % of the true value (√1.1 − 1 = 4.88 %), or within 0.5 ms under 1 ms. Finer buckets
 * cost rows: a month of hourly figures holds about one row per hour and bucket in use.
 */

export const LATENCY_BASE_S = 0.001;
export const LATENCY_RATIO = 1.1;
/** The last bucket (everything past ~2 × 10⁷ s, eight months, lands here). */
export const LATENCY_MAX_BUCKET = 250;
/** The stated bound on a reported percentile's error, relative (above 1 ms). */
export const PERCENTILE_RELATIVE_ERROR = Math.sqrt(LATENCY_RATIO) - 1;

/** The bucket of a duration in seconds (the SQL of db/analytics.ts computes the same). */
export function latencyBucket(seconds: number): number {
  if (!(seconds >= LATENCY_BASE_S)) return 0;
  return Math.min(LATENCY_MAX_BUCKET, 1 + Math.floor(Math.log(seconds / LATENCY_BASE_S) / Math.log(LATENCY_RATIO)));
}

/** The value a bucket reports: its geometric middle (half a millisecond for bucket 0). */
export function bucketValue(bucket: number): number {
  if (bucket <= 0) return LATENCY_BASE_S / 2;
  return LATENCY_BASE_S * LATENCY_RATIO ** (bucket - 0.5);
}

/** Counts by bucket (bucket → number of durations). */
export type Histogram = Map<number, number>;

/** Add `n` durations of bucket `bucket` to a histogram. */
export function addToHistogram(histogram: Histogram, bucket: number, n: number): void {
  if (n > 0) histogram.set(bucket, (histogram.get(bucket) ?? 0) + n);
}

/**
 * The nearest-rank `p` percentile (0 < p ≤ 1) of the durations a histogram counts, as its bucket's value, rounded to
 * the millisecond; null when it counts none.
 */
export function percentile(histogram: Histogram, p: number): number | null {
  let total = 0;
  for (const n of histogram.values()) total += n;
  if (total === 0) return null;
  const rank = Math.max(1, Math.ceil(p * total));
  let seen = 0;
  for (const bucket of [...histogram.keys()].sort((a, b) => a - b)) {
    seen += histogram.get(bucket) ?? 0;
    if (seen >= rank) return Math.round(bucketValue(bucket) * 1000) / 1000;
  }
  return null;
}

/** The exact nearest-rank percentile of a list of values (what the tests compare the histogram's with). */
export function exactPercentile(values: number[], p: number): number | null {
  if (values.length === 0) return null;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.max(1, Math.ceil(p * sorted.length)) - 1];
}

// ---------------------------------------------------------------------------------------------------------------
// Ranges

export type Interval = 'hour' | 'day';

/** A query's range, checked: [from, to) on bucket edges, in `timeZone` for day buckets. */
export interface AnalyticsRange {
  from: Date;
  to: Date;
  interval: Interval;
  timeZone: string;
  buckets: number;
}

export interface RangeIssue {
  path: string;
  message: string;
}

/** At most a year per query (a leap year's worth). */
export const MAX_RANGE_DAYS = 366;
/** At most this many buckets per series. */
export const MAX_BUCKETS = 1000;

const HOUR_MS = 3_600_000;
const DATE_TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,3})?)?(Z|[+-]\d{2}:\d{2})$/;
const DATE = /^\d{4}-\d{2}-\d{2}$/;

/** The wall-clock parts of an instant in a time zone (Intl; every zone Node knows). */
function partsIn(
  instant: Date,
  timeZone: string,
): { y: number; m: number; d: number; h: number; min: number; s: number } {
  const parts = new Intl.DateTimeFormat('en-US', {
    timeZone,
    hourCycle: 'h23',
    year: 'numeric',
    month: 'numeric',
    day: 'numeric',
    hour: 'numeric',
    minute: 'numeric',
    second: 'numeric',
  }).formatToParts(instant);
  const get = (type: string) => Number(parts.find((p) => p.type === type)?.value);
  return { y: get('year'), m: get('month'), d: get('day'), h: get('hour'), min: get('minute'), s: get('second') };
}

/** The zone's offset from UTC at an instant, in minutes. */
export function offsetMinutes(instant: Date, timeZone: string): number {
  const p = partsIn(instant, timeZone);
  const asUtc = Date.UTC(p.y, p.m - 1, p.d, p.h, p.min, p.s);
  return Math.round((asUtc - Math.floor(instant.getTime() / 1000) * 1000) / 60_000);
}

/** Local midnight of a calendar date in a zone (the instant; zones whose offset is whole hours). */
function localMidnight(date: string, timeZone: string): Date {
  const [y, m, d] = date.split('-').map(Number);
  const guess = Date.UTC(y, m - 1, d);
  // The offset at local midnight is the offset at (guess − offset); twice settles a DST change at midnight.
  let instant = guess - offsetMinutes(new Date(guess), timeZone) * 60_000;
  instant = guess - offsetMinutes(new Date(instant), timeZone) * 60_000;
  return new Date(instant);
}

function validTimeZone(timeZone: string): boolean {
  try {
    new Intl.DateTimeFormat('en-US', { timeZone });
    return true;
  } catch {
    return false;
  }
}

/** A bound given as a date-time with a zone (Z or ±hh:mm), or a date (local midnight in the time zone). */
function parseBound(raw: string, timeZone: string): Date | undefined {
  if (DATE.test(raw)) {
    // A real calendar date (Date.UTC would roll 2026-13-01 over into 2027).
    const [y, m, d] = raw.split('-').map(Number);
    const utc = new Date(Date.UTC(y, m - 1, d));
    if (utc.getUTCFullYear() !== y || utc.getUTCMonth() !== m - 1 || utc.getUTCDate() !== d) return undefined;
    const at = localMidnight(raw, timeZone);
    return Number.isNaN(at.getTime()) ? undefined : at;
  }
  if (!DATE_TIME.test(raw)) return undefined;
  const at = new Date(raw);
  // Date parses 2026-02-30T00:00:00Z as March 2nd: the date part must survive the round trip (in its own offset).
  const offset = raw.endsWith('Z')
    ? 0
    : (raw.at(-6) === '-' ? -1 : 1) * (Number(raw.slice(-5, -3)) * 60 + Number(raw.slice(-2)));
  const local = new Date(at.getTime() + offset * 60_000).toISOString().slice(0, 10);
  return Number.isNaN(at.getTime()) || local !== raw.slice(0, 10) ? undefined : at;
}

/**
 * Check an analytics query's range, listing every problem (path and what to do): `from` and `to` (RFC 3339
 * date-times with a zone, or dates), `interval` (hour or day), `timeZone` (an IANA name; day buckets are local days,
 * hour buckets and the hour-of-day pattern follow it too). Both bounds must be bucket edges (a whole hour; local
 * midnight for days), from before to, at most a year and 1000 buckets apart; the zone's offset must be a whole number
 * of hours over the range (Kiln keeps its figures by the hour).
 */
export function checkRange(query: {
  from?: string;
  to?: string;
  interval?: string;
  timezone?: string;
}): { range: AnalyticsRange } | { issues: RangeIssue[] } {
  const issues: RangeIssue[] = [];
  const interval = query.interval ?? 'day';
  if (interval !== 'hour' && interval !== 'day') {
    issues.push({ path: 'query.interval', message: `must be hour or day, got "${interval}"` });
  }
  const timeZone = query.timezone ?? 'UTC';
  const zoneOk = validTimeZone(timeZone);
  if (!zoneOk)
    issues.push({
      path: 'query.timezone',
      message: `is not an IANA time zone (e.g. Europe/Berlin), got "${timeZone}"`,
    });
  const zone = zoneOk ? timeZone : 'UTC';
  const bound = (name: 'from' | 'to'): Date | undefined => {
    const raw = query[name];
    if (raw === undefined) {
      issues.push({ path: `query.${name}`, message: 'is required (e.g. 2026-12-01T00:00:00Z or 2026-12-01)' });
      return undefined;
    }
    const at = parseBound(raw, zone);
    if (!at) {
      issues.push({
        path: `query.${name}`,
        message: `must be a date-time with a zone (2026-12-01T00:00:00Z) or a date (2026-12-01), got "${raw.slice(0, 40)}"`,
      });
    }
    return at;
  };
  const from = bound('from');
  const to = bound('to');
  if (from && to && (interval === 'hour' || interval === 'day') && zoneOk) {
    const edge = (at: Date, name: string) => {
      const p = partsIn(at, zone);
      const aligned = at.getTime() % 1000 === 0 && p.min === 0 && p.s === 0 && (interval === 'hour' || p.h === 0);
      if (!aligned) {
        issues.push({
          path: `query.${name}`,
          message:
            interval === 'hour'
              ? 'must be on a whole hour (minutes and seconds 0)'
              : `must be midnight in ${zone} (a date such as 2026-12-01 is)`,
        });
      }
    };
    edge(from, 'from');
    edge(to, 'to');
    const spanMs = to.getTime() - from.getTime();
    if (spanMs <= 0) issues.push({ path: 'query.to', message: 'must be after from' });
    else if (spanMs > MAX_RANGE_DAYS * 24 * HOUR_MS) {
      issues.push({
        path: 'query.to',
        message: `must be at most ${MAX_RANGE_DAYS} days after from; ask for a year at a time`,
      });
    } else {
      const buckets = bucketCount(from, to, interval, zone);
      if (buckets > MAX_BUCKETS) {
        issues.push({
          path: 'query.interval',
          message: `${from.toISOString()}..${to.toISOString()} by ${interval} is ${buckets} buckets, more than ${MAX_BUCKETS}: use interval=day or a shorter range`,
        });
      }
      if (!wholeHourOffsets(from, to, zone)) {
        issues.push({
          path: 'query.timezone',
          message: `${zone} is not a whole number of hours from UTC over this range; Kiln keeps its figures by the hour, so use a zone that is (or UTC)`,
        });
      }
    }
  }
  if (issues.length > 0 || !from || !to) return { issues };
  return {
    range: {
      from,
      to,
      interval: interval as Interval,
      timeZone: zone,
      buckets: bucketCount(from, to, interval as Interval, zone),
    },
  };
}

/** Buckets of [from, to): hours, or local days (a day with a DST change is still one bucket). */
function bucketCount(from: Date, to: Date, interval: Interval, timeZone: string): number {
  if (interval === 'hour') return Math.round((to.getTime() - from.getTime()) / HOUR_MS);
  return bucketStarts({ from, to, interval, timeZone, buckets: 0 }).length;
}

/** The start of every bucket of a range, in order (local midnights for days). */
export function bucketStarts(range: AnalyticsRange): Date[] {
  const starts: Date[] = [];
  if (range.interval === 'hour') {
    for (let t = range.from.getTime(); t < range.to.getTime(); t += HOUR_MS) starts.push(new Date(t));
    return starts;
  }
  const first = partsIn(range.from, range.timeZone);
  for (let day = Date.UTC(first.y, first.m - 1, first.d); ; day += 24 * HOUR_MS) {
    const at = localMidnight(new Date(day).toISOString().slice(0, 10), range.timeZone);
    if (at.getTime() >= range.to.getTime()) break;
    starts.push(at);
  }
  return starts;
}

/** True when the zone's offset is a whole number of hours at every hour of [from, to] (sampled each day). */
function wholeHourOffsets(from: Date, to: Date, timeZone: string): boolean {
  for (let t = from.getTime(); t <= to.getTime(); t += 24 * HOUR_MS) {
    if (offsetMinutes(new Date(t), timeZone) % 60 !== 0) return false;
  }
  return offsetMinutes(to, timeZone) % 60 === 0;
}
