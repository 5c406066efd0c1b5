import { describe, expect, it } from 'vitest';
import { bucketValue, checkRange, PERCENTILE_RELATIVE_ERROR } from '../../src/domain/analytics';
import { buildReport, usageReport } from '../../src/domain/analytics-report';

const range = (() => {
  const checked = checkRange({ from: '2026-11-02', to: '2026-11-05' });
  if ('issues' in checked) throw new Error('bad range');
  return checked.range;
})();

const empty = {
  counts: [],
  frameworks: [],
  hours: [],
  weekdays: [],
  failures: [],
  percentiles: [],
  features: [],
};

describe('analytics reports', () => {
  it('gives every bucket, zeros and nulls where nothing happened, and totals that are the buckets’ sums', () => {
    const report = buildReport(
      {
        ...empty,
        counts: [
          { i: 1, created: 3, started: 2, deployed: 1, failed: 1, cancelled: 1 },
          { i: 3, created: 2, started: 2, deployed: 2, failed: 0, cancelled: 0 },
        ],
        failures: [{ i: 1, reason: 'timeout', failed: 1 }],
        percentiles: [
          { g: 'series', i: 1, hod: null, kind: 'run', p50: 100, p95: 120, p99: 121 },
          { g: 'total', i: null, hod: null, kind: 'run', p50: 101, p95: 120, p99: 121 },
          { g: 'hour', i: null, hod: 9, kind: 'wait', p50: 0, p95: 10, p99: 10 },
        ],
        frameworks: [{ framework: '', created: 5, started: 4, deployed: 3, failed: 1, cancelled: 1 }],
      },
      range,
      {},
      PERCENTILE_RELATIVE_ERROR,
    );
    expect(report.series.map((b) => [b.start, b.created, b.successRate])).toEqual([
      ['2026-11-02T00:00:00.000Z', 3, 0.5],
      ['2026-11-03T00:00:00.000Z', 0, null],
      ['2026-11-04T00:00:00.000Z', 2, 1],
    ]);
    expect(report.series[0].failedByReason).toEqual({ timeout: 1 });
    expect(report.series[0].durationSeconds.p50).toBe(Math.round(bucketValue(100) * 1000) / 1000);
    expect(report.series[1].durationSeconds).toEqual({ p50: null, p95: null, p99: null });
    expect(report.totals).toMatchObject({ created: 5, deployed: 3, failed: 1, cancelled: 1, successRate: 0.75 });
    expect(report.totals.failedByReason).toEqual({ timeout: 1 });
    expect(report.totals.durationSeconds.p50).toBe(Math.round(bucketValue(101) * 1000) / 1000);
    expect(report.patterns.byHourOfDay[9].queueWaitSeconds).toEqual({
      p50: 0.001,
      p95: Math.round(bucketValue(10) * 1000) / 1000,
    });
    expect(report.patterns.byHourOfDay[10].queueWaitSeconds).toEqual({ p50: null, p95: null });
    expect(report.patterns.byFramework).toEqual([
      { framework: null, created: 5, deployed: 3, failed: 1, cancelled: 1, successRate: 0.75 },
    ]);
    expect(report.patterns.byDayOfWeek).toHaveLength(7);
  });

  it('puts every segment of the range in every bucket, and sums buckets and segments alike', () => {
    const cell = (i: number, segment: string, charged: number) => ({
      i,
      segment,
      granted: 0,
      reserved: charged,
      charged,
      refunded: 0,
      released: 0,
      expired: 0,
      entries: 2,
    });
    const report = usageReport(
      { series: [cell(1, 'pro', 10), cell(3, 'free', 4), cell(3, 'pro', 1)], topUsers: [] },
      range,
      'plan',
      undefined,
      { from: '2026-11-02', to: '2026-11-05' },
    );
    expect(report.series.map((b) => b.segments.map((s) => `${s.segment}:${s.charged}`))).toEqual([
      ['free:0', 'pro:10'],
      ['free:0', 'pro:0'],
      ['free:4', 'pro:1'],
    ]);
    expect(report.series.map((b) => b.charged)).toEqual([10, 0, 5]);
    expect(report.totals).toMatchObject({ charged: 15, reserved: 15, entries: 6 });
    expect(report.totals.bySegment).toEqual([
      { segment: 'free', granted: 0, reserved: 4, charged: 4, refunded: 0, released: 0, expired: 0, entries: 2 },
      { segment: 'pro', granted: 0, reserved: 11, charged: 11, refunded: 0, released: 0, expired: 0, entries: 4 },
    ]);
    expect(report.topUsers).toEqual({ from: '2026-11-02', to: '2026-11-05', users: [] });
  });
});
