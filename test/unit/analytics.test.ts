import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  addToHistogram,
  bucketStarts,
  bucketValue,
  checkRange,
  exactPercentile,
  type Histogram,
  latencyBucket,
  offsetMinutes,
  PERCENTILE_RELATIVE_ERROR,
  percentile,
} from '../../src/domain/analytics';

describe('analytics: duration buckets and percentiles', () => {
  it('puts a duration in the bucket whose bounds hold it', () => {
    expect(latencyBucket(0)).toBe(0);
    expect(latencyBucket(0.0009)).toBe(0);
    expect(latencyBucket(0.001)).toBe(1);
    expect(latencyBucket(0.00111)).toBe(2);
    expect(latencyBucket(1e12)).toBe(250);
    fc.assert(
      fc.property(fc.double({ min: 0.001, max: 1e6, noNaN: true }), (s) => {
        const b = latencyBucket(s);
        expect(0.001 * 1.1 ** (b - 1)).toBeLessThanOrEqual(s * (1 + 1e-12));
        expect(s).toBeLessThan(0.001 * 1.1 ** b * (1 + 1e-12));
      }),
    );
  });

  it('reports a nearest-rank percentile within the stated bound of the exact one, for any durations', () => {
    expect(PERCENTILE_RELATIVE_ERROR).toBeCloseTo(0.0488, 4);
    fc.assert(
      fc.property(
        fc.array(fc.double({ min: 0, max: 36_000, noNaN: true }), { minLength: 1, maxLength: 400 }),
        fc.constantFrom(0.5, 0.95, 0.99),
        (durations, p) => {
          const histogram: Histogram = new Map();
          for (const d of durations) addToHistogram(histogram, latencyBucket(d), 1);
          const reported = percentile(histogram, p) as number;
          const exact = exactPercentile(durations, p) as number;
          // Within 4.9 % above 1 ms, within 0.5 ms below it (plus the millisecond rounding of the answer).
          const bound = Math.max(exact * PERCENTILE_RELATIVE_ERROR, 0.0005) + 0.0005;
          expect(Math.abs(reported - exact)).toBeLessThanOrEqual(bound);
        },
      ),
      { numRuns: 300 },
    );
  });

  it('answers null for no durations, and the bucket value for one', () => {
    expect(percentile(new Map(), 0.5)).toBeNull();
    expect(exactPercentile([], 0.5)).toBeNull();
    const one: Histogram = new Map([[latencyBucket(42), 1]]);
    expect(percentile(one, 0.99)).toBeCloseTo(bucketValue(latencyBucket(42)), 3);
    expect(exactPercentile([5, 1, 3, 2, 4], 0.5)).toBe(3);
    expect(exactPercentile([5, 1, 3, 2, 4], 0.95)).toBe(5);
  });
});

describe('analytics: ranges', () => {
  const ok = (query: Parameters<typeof checkRange>[0]) => {
    const checked = checkRange(query);
    if ('issues' in checked) throw new Error(JSON.stringify(checked.issues));
    return checked.range;
  };
  const issues = (query: Parameters<typeof checkRange>[0]) => {
    const checked = checkRange(query);
    return 'issues' in checked ? checked.issues : [];
  };

  it('gives every bucket of [from, to): hours, or local days (23 and 25 hours across DST)', () => {
    const hours = ok({ from: '2026-12-01T22:00:00Z', to: '2026-12-02T02:00:00Z', interval: 'hour' });
    expect(bucketStarts(hours).map((d) => d.toISOString())).toEqual([
      '2026-12-01T22:00:00.000Z',
      '2026-12-01T23:00:00.000Z',
      '2026-12-02T00:00:00.000Z',
      '2026-12-02T01:00:00.000Z',
    ]);
    const berlin = ok({ from: '2026-03-28', to: '2026-03-31', interval: 'day', timezone: 'Europe/Berlin' });
    expect(berlin.from.toISOString()).toBe('2026-03-27T23:00:00.000Z');
    expect(bucketStarts(berlin).map((d) => d.toISOString())).toEqual([
      '2026-03-27T23:00:00.000Z',
      '2026-03-28T23:00:00.000Z',
      '2026-03-29T22:00:00.000Z',
    ]);
    expect(berlin.buckets).toBe(3);
    expect(berlin.to.toISOString()).toBe('2026-03-30T22:00:00.000Z');
    const utcDays = ok({ from: '2026-11-04T00:00:00Z', to: '2026-12-04T00:00:00Z' });
    expect(utcDays).toMatchObject({ interval: 'day', timeZone: 'UTC', buckets: 30 });
  });

  it('refuses, naming each parameter, every kind of bad query', () => {
    expect(issues({})).toEqual([
      { path: 'query.from', message: expect.stringMatching(/required/) },
      { path: 'query.to', message: expect.stringMatching(/required/) },
    ]);
    expect(issues({ from: 'yesterday', to: '2026-13-01', interval: 'week', timezone: 'Mars/Olympus' })).toEqual([
      { path: 'query.interval', message: expect.stringMatching(/hour or day/) },
      { path: 'query.timezone', message: expect.stringMatching(/IANA/) },
      { path: 'query.from', message: expect.stringMatching(/date-time/) },
      { path: 'query.to', message: expect.stringMatching(/date-time/) },
    ]);
    const paths = (query: Parameters<typeof checkRange>[0]) => issues(query).map((i) => i.path);
    expect(paths({ from: '2026-02-30T00:00:00Z', to: '2026-03-02T00:00:00Z' })).toEqual(['query.from']);
    // Not on a bucket edge.
    expect(paths({ from: '2026-12-01T10:30:00Z', to: '2026-12-02T00:00:00Z', interval: 'hour' })).toEqual([
      'query.from',
    ]);
    expect(paths({ from: '2026-12-01T00:00:00Z', to: '2026-12-02T05:00:00Z', interval: 'day' })).toEqual(['query.to']);
    expect(paths({ from: '2026-12-01T00:00:00.500Z', to: '2026-12-02T00:00:00Z', interval: 'hour' })).toEqual([
      'query.from',
    ]);
    // Backwards, too long, too many buckets.
    expect(paths({ from: '2026-12-02', to: '2026-12-01' })).toEqual(['query.to']);
    expect(paths({ from: '2026-12-02', to: '2026-12-02' })).toEqual(['query.to']);
    expect(paths({ from: '2025-01-01', to: '2026-01-03' })).toEqual(['query.to']);
    expect(issues({ from: '2026-01-01', to: '2026-03-01', interval: 'hour' })).toEqual([
      { path: 'query.interval', message: expect.stringMatching(/1416 buckets, more than 1000/) },
    ]);
    // A zone half an hour off UTC cannot be answered from hourly figures.
    expect(issues({ from: '2026-12-01', to: '2026-12-03', timezone: 'Asia/Kolkata' })).toEqual([
      { path: 'query.timezone', message: expect.stringMatching(/whole number of hours/) },
    ]);
    // A year is allowed; a leap year's worth too.
    expect(paths({ from: '2027-01-01', to: '2028-01-01' })).toEqual([]);
    expect(paths({ from: '2028-01-01', to: '2029-01-01' })).toEqual([]);
  });

  it('reads a zone’s offset at an instant', () => {
    expect(offsetMinutes(new Date('2026-07-01T12:00:00Z'), 'Europe/Berlin')).toBe(120);
    expect(offsetMinutes(new Date('2026-12-01T12:00:00Z'), 'Europe/Berlin')).toBe(60);
    expect(offsetMinutes(new Date('2026-12-01T12:00:00Z'), 'America/New_York')).toBe(-300);
    expect(offsetMinutes(new Date('2026-12-01T12:00:00Z'), 'Asia/Kolkata')).toBe(330);
  });
});
