import { describe, expect, it } from 'vitest';
import {
  observeBuildTransition,
  observeRequest,
  readSharedStateFrom,
  registry,
  requestsByRoute,
  toOpenMetrics,
  wantsOpenMetrics,
} from '../../src/metrics';
import { parseMetrics, sampleValue } from '../helpers/metrics-text';

const at = (s: number) => new Date(Date.UTC(2026, 11, 4, 10, 0, s));

describe('metrics: exposition', () => {
  it('serves OpenMetrics only to a client that asks for it', () => {
    const prometheus =
      'application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1';
    expect(wantsOpenMetrics(prometheus)).toBe(true);
    expect(wantsOpenMetrics('text/plain;version=0.0.4')).toBe(false);
    expect(wantsOpenMetrics('*/*')).toBe(false);
    expect(wantsOpenMetrics(undefined)).toBe(false);
    expect(wantsOpenMetrics('application/openmetrics-text; q=0')).toBe(false);
  });

  it('renames counter families without _total, keeps their samples, drops blank lines and ends with # EOF', () => {
    const text = [
      '# HELP builds_completed_total Builds done',
      '# TYPE builds_completed_total counter',
      'builds_completed_total{outcome="deployed"} 3',
      '',
      '# HELP build_queue_depth Queued',
      '# TYPE build_queue_depth gauge',
      'build_queue_depth 2',
      '',
    ].join('\n');
    expect(toOpenMetrics(text)).toBe(
      [
        '# HELP builds_completed Builds done',
        '# TYPE builds_completed counter',
        'builds_completed_total{outcome="deployed"} 3',
        '# HELP build_queue_depth Queued',
        '# TYPE build_queue_depth gauge',
        'build_queue_depth 2',
        '# EOF',
        '',
      ].join('\n'),
    );
  });
});

describe('metrics: the shared gauges when the database does not answer', () => {
  const snapshot = {
    queuedBuilds: 4,
    oldestQueuedAgeSeconds: 12.5,
    buildingBuilds: 2,
    activeHolds: 3,
    reservedCredits: 70,
    liveInstances: 2,
    deadInstances: 1,
    webhookPending: 6,
    webhookOldestDueSeconds: 3.5,
    audit: { ranAt: new Date('2026-12-04T10:00:00Z'), problems: 0 },
  };

  it('shows NaN (never 0 or a frozen figure) and the dependency down, and /metrics answers within the limit', async () => {
    readSharedStateFrom({ pipeline: async () => snapshot, store: async () => {} });
    let samples = parseMetrics(await registry.metrics());
    expect(sampleValue(samples, 'build_queue_depth')).toBe(4);
    expect(sampleValue(samples, 'kiln_webhook_deliveries_pending')).toBe(6);
    expect(sampleValue(samples, 'kiln_instances_live')).toBe(2);
    expect(sampleValue(samples, 'kiln_instances_dead')).toBe(1);
    expect(sampleValue(samples, 'kiln_webhook_oldest_due_seconds')).toBe(3.5);
    expect(sampleValue(samples, 'kiln_credit_audit_last_run_timestamp_seconds')).toBe(1_796_378_400);
    expect(sampleValue(samples, 'kiln_dependency_up', { dependency: 'database' })).toBe(1);

    // A read that never answers (a dead connection), a store that refuses.
    readSharedStateFrom({
      pipeline: () => new Promise(() => {}),
      store: async () => {
        throw new Error('connection refused');
      },
    });
    const started = Date.now();
    samples = parseMetrics(await registry.metrics());
    expect(Date.now() - started).toBeLessThan(2_500);
    for (const name of [
      'build_queue_depth',
      'active_builds',
      'kiln_oldest_queued_build_age_seconds',
      'kiln_credit_holds_active',
      'kiln_credits_reserved',
      'kiln_instances_live',
      'kiln_instances_dead',
      'kiln_credit_audit_problems',
      'kiln_credit_audit_last_run_timestamp_seconds',
      'kiln_webhook_deliveries_pending',
      'kiln_webhook_oldest_due_seconds',
    ]) {
      expect(sampleValue(samples, name), name).toBeNaN();
    }
    expect(sampleValue(samples, 'kiln_dependency_up', { dependency: 'database' })).toBe(0);
    expect(sampleValue(samples, 'kiln_dependency_up', { dependency: 'store' })).toBe(0);

    // Back: the figures are read again.
    readSharedStateFrom({ pipeline: async () => ({ ...snapshot, queuedBuilds: 5 }), store: async () => {} });
    samples = parseMetrics(await registry.metrics());
    expect(sampleValue(samples, 'build_queue_depth')).toBe(5);
    expect(sampleValue(samples, 'kiln_dependency_up', { dependency: 'store' })).toBe(1);
  });

  it('escapes the quotes of HELP texts in OpenMetrics, as the real registry writes them', async () => {
    const text = toOpenMetrics(await registry.metrics());
    const helps = text.split('\n').filter((line) => line.startsWith('# HELP '));
    expect(helps.some((line) => line.includes('\\"none\\"'))).toBe(true);
    expect(helps.filter((line) => /[^\\]"/.test(line))).toEqual([]);
  });
});

describe('metrics: what is observed', () => {
  it('counts a transition, its queue wait, its outcome, a bounded failure reason and a started build’s duration', async () => {
    const before = parseMetrics(await registry.metrics());
    const count = (samples: ReturnType<typeof parseMetrics>, name: string, labels: Record<string, string> = {}) =>
      sampleValue(samples, name, labels) ?? 0;
    observeBuildTransition({
      from: 'queued',
      to: 'building',
      createdAt: at(0),
      startedAt: at(3),
      finishedAt: null,
      reason: null,
    });
    observeBuildTransition({
      from: 'building',
      to: 'failed',
      createdAt: at(0),
      startedAt: at(3),
      finishedAt: at(13),
      reason: 'a reason a PATCH made up',
    });
    observeBuildTransition({
      from: 'building',
      to: 'failed',
      createdAt: at(0),
      startedAt: at(3),
      finishedAt: at(5),
      reason: 'worker_lost',
    });
    observeBuildTransition({
      from: 'queued',
      to: 'cancelled',
      createdAt: at(0),
      startedAt: null,
      finishedAt: at(1),
      reason: 'cancelled',
    });
    const after = parseMetrics(await registry.metrics());
    const delta = (name: string, labels: Record<string, string> = {}) =>
      count(after, name, labels) - count(before, name, labels);
    expect(delta('kiln_build_transitions_total', { from: 'queued', to: 'building' })).toBe(1);
    expect(delta('kiln_build_transitions_total', { from: 'building', to: 'failed' })).toBe(2);
    expect(delta('kiln_build_queue_wait_seconds_count')).toBe(1);
    expect(delta('kiln_build_queue_wait_seconds_sum')).toBeCloseTo(3, 6);
    expect(delta('kiln_build_queue_wait_seconds_bucket', { le: '2.5' })).toBe(0);
    expect(delta('kiln_build_queue_wait_seconds_bucket', { le: '5' })).toBe(1);
    expect(delta('builds_completed_total', { outcome: 'failed' })).toBe(2);
    expect(delta('builds_completed_total', { outcome: 'cancelled' })).toBe(1);
    expect(delta('kiln_build_failures_total', { reason: 'other' })).toBe(1);
    expect(delta('kiln_build_failures_total', { reason: 'worker_lost' })).toBe(1);
    // A made-up reason never becomes a label value of its own.
    expect(after.some((s) => s.labels.reason === 'a reason a PATCH made up')).toBe(false);
    expect(delta('build_duration_seconds_count', { outcome: 'failed' })).toBe(2);
    expect(delta('build_duration_seconds_sum', { outcome: 'failed' })).toBeCloseTo(12, 6);
    // A build cancelled while queued never ran: no duration.
    expect(delta('build_duration_seconds_count', { outcome: 'cancelled' })).toBe(0);
  });

  it('renders request latencies as a cumulative histogram per route template, and sums them per route', async () => {
    const route = '/v1/unit-test/:id';
    for (const seconds of [0.0005, 0.004, 0.004, 0.3, 20]) observeRequest('GET', route, 200, seconds);
    observeRequest('GET', route, 503, 0.002);
    observeRequest('GET', route, 404, 0.002);
    const samples = parseMetrics(await registry.metrics());
    const labels = { method: 'GET', route, status_code: '200' };
    const bucket = (le: string) => sampleValue(samples, 'api_request_duration_seconds_bucket', { ...labels, le });
    expect(bucket('0.001')).toBe(1);
    expect(bucket('0.0025')).toBe(1);
    expect(bucket('0.005')).toBe(3);
    expect(bucket('0.5')).toBe(4);
    expect(bucket('10')).toBe(4);
    expect(bucket('+Inf')).toBe(5);
    expect(sampleValue(samples, 'api_request_duration_seconds_count', labels)).toBe(5);
    expect(sampleValue(samples, 'api_request_duration_seconds_sum', labels)).toBeCloseTo(20.3085, 6);
    expect(requestsByRoute().find((r) => r.route === route)).toEqual({
      method: 'GET',
      route,
      requests: 7,
      clientErrors: 1,
      serverErrors: 1,
    });
  });
});
