import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DATABASE_URL } from '../helpers/env';
import { type KilnProcess, type Shared, sharedEnvironment, spawnKiln } from '../helpers/kiln-process';
import { loseABuild, runScenario, SCENARIO_ENV, type ScenarioExpectation } from '../helpers/metrics-scenario';
import { parseMetrics, type Sample, samplesOf, sampleValue, summed } from '../helpers/metrics-text';
import {
  alertConditions,
  type Dashboard,
  dashboardQueries,
  isFiniteSample,
  loadDashboard,
  loadRules,
  PROMETHEUS_BIN,
  PROMTOOL_BIN,
  type PrometheusServer,
  type PromRuleGroup,
  type PromSeries,
  RULES_FILE,
  type RuleFile,
  startPrometheus,
  substituteVariables,
} from '../helpers/prometheus';
import { sleep, waitFor } from '../helpers/wait';

async function scrape(kiln: KilnProcess): Promise<{ text: string; samples: Sample[] }> {
  const res = await fetch(`${kiln.url}/metrics`);
  expect(res.status).toBe(200);
  expect(res.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
  const text = await res.text();
  return { text, samples: parseMetrics(text) };
}

/** Counters and histograms: summed over the processes, they equal the scenario's totals. */
function expectCountersSum(scrapes: Sample[][], expected: ScenarioExpectation): void {
  for (const [pair, n] of Object.entries(expected.transitions)) {
    const [from, to] = pair.split(' ');
    expect(summed(scrapes, 'kiln_build_transitions_total', { from, to }), `transition ${pair}`).toBe(n);
  }
  for (const [outcome, n] of Object.entries(expected.completed)) {
    expect(summed(scrapes, 'builds_completed_total', { outcome }), `completed ${outcome}`).toBe(n);
    expect(summed(scrapes, 'build_duration_seconds_count', { outcome }), `duration ${outcome}`).toBe(
      expected.durationCount[outcome as keyof typeof expected.durationCount],
    );
  }
  const failures = scrapes.flatMap((s) => samplesOf(s, 'kiln_build_failures_total'));
  for (const reason of new Set(failures.map((s) => s.labels.reason))) {
    expect(summed(scrapes, 'kiln_build_failures_total', { reason }), `failures ${reason}`).toBe(
      expected.failures[reason] ?? 0,
    );
  }
  expect(summed(scrapes, 'kiln_build_queue_wait_seconds_count')).toBe(expected.queueWaitCount);
  for (const [operation, credits] of Object.entries(expected.credits)) {
    expect(summed(scrapes, 'credit_usage_total', { operation }), `credit_usage_total ${operation}`).toBe(credits);
  }
  const idem = (outcome: string) => summed(scrapes, 'kiln_idempotency_requests_total', { outcome });
  expect(idem('executed')).toBe(expected.idempotency.executed);
  expect(idem('key_reused')).toBe(expected.idempotency.key_reused);
  expect(idem('key_in_use')).toBe(expected.idempotency.key_in_use);
  // The replay is answered from the store's copy, unless it outran the copy's write (then from the database).
  expect(idem('replayed_store') + idem('replayed_database')).toBe(expected.idempotency.replayed_store);
  expect(summed(scrapes, 'kiln_rate_limited_total', { scope: 'user' })).toBe(expected.rateLimitedUser);
  expect(summed(scrapes, 'kiln_rate_limited_total', { scope: 'ip' })).toBe(0);
  expect(summed(scrapes, 'kiln_credits_uncollected_total')).toBe(expected.uncollected);
}

/** Per process: every /v1 request it answered, by method, route template and status, and no other. */
function expectRequests(kiln: KilnProcess, samples: Sample[], expected: ScenarioExpectation): void {
  const mine = expected.requests.get(kiln.url) ?? new Map<string, number>();
  const seen = new Map<string, number>();
  for (const s of samplesOf(samples, 'api_request_duration_seconds_count')) {
    if (s.labels.route.startsWith('/v1'))
      seen.set(`${s.labels.method} ${s.labels.route} ${s.labels.status_code}`, s.value);
  }
  expect(Object.fromEntries(seen)).toEqual(Object.fromEntries(mine));
  for (const s of samplesOf(samples, 'api_request_duration_seconds_count')) {
    expect(s.labels.route, 'a route template, never an id').not.toMatch(/bld_|res_|p_[a-z]_/);
  }
  expect(sampleValue(samples, 'kiln_signature_verifications_total', { outcome: 'both' })).toBe(
    expected.signedRequests.get(kiln.url) ?? 0,
  );
  // The +Inf bucket of every series holds all of its observations.
  for (const s of samplesOf(samples, 'api_request_duration_seconds_count')) {
    expect(sampleValue(samples, 'api_request_duration_seconds_bucket', { ...s.labels, le: '+Inf' })).toBe(s.value);
  }
}

/** Gauges of shared state: every process reads the same from the database. */
/** The instance lease the processes run with (INSTANCE_LEASE_S, its default). */
const LEASE_MS = 30_000;

/**
 * Live processes: the measured ones, and the killed victim while its line is within its lease (it renewed the line
 * every third of the lease, so it reads live until two thirds of a lease after the kill at least, and dead a lease
 * after it at the latest): in between either is right.
 */
function expectedLive(measured: number, victimKilledAt: number): number[] {
  const since = Date.now() - victimKilledAt;
  if (since < (LEASE_MS * 2) / 3 - 1_000) return [measured + 1];
  if (since > LEASE_MS + 1_000) return [measured];
  return [measured, measured + 1];
}

function expectSharedGauges(samples: Sample[], expected: ScenarioExpectation, liveInstances: number[]): void {
  const g = expected.gauges;
  expect(sampleValue(samples, 'build_queue_depth')).toBe(g.queueDepth);
  expect(sampleValue(samples, 'active_builds')).toBe(g.activeBuilds);
  expect(sampleValue(samples, 'kiln_credit_holds_active')).toBe(g.holdsActive);
  expect(sampleValue(samples, 'kiln_credits_reserved')).toBe(g.creditsReserved);
  const age = sampleValue(samples, 'kiln_oldest_queued_build_age_seconds') ?? -1;
  expect(age).toBeGreaterThan(0);
  expect(age).toBeLessThanOrEqual((Date.now() - expected.oldestQueuedAt) / 1000 + 1);
  expect(sampleValue(samples, 'kiln_credit_audit_problems')).toBe(g.auditProblems);
  expect(sampleValue(samples, 'kiln_credit_audit_last_run_timestamp_seconds')).toBeGreaterThanOrEqual(
    expected.auditAfterS,
  );
  expect(liveInstances).toContain(sampleValue(samples, 'kiln_instances_live'));
  expect(sampleValue(samples, 'kiln_dependency_up', { dependency: 'database' })).toBe(1);
  expect(sampleValue(samples, 'kiln_dependency_up', { dependency: 'store' })).toBe(1);
  expect(sampleValue(samples, 'worker_memory_usage_bytes')).toBeGreaterThan(10_000_000);
  expect(sampleValue(samples, 'worker_cpu_usage_ratio')).toBeGreaterThanOrEqual(0);
  expect(sampleValue(samples, 'kiln_runner_slots')).toBe(0);
  expect(sampleValue(samples, 'kiln_runner_builds_running')).toBe(0);
}

function promtoolCheck(text: string): Promise<{ code: number; output: string }> {
  return new Promise((resolve) => {
    const child = execFile(PROMTOOL_BIN, ['check', 'metrics'], (error, stdout, stderr) =>
      resolve({ code: error ? Number(error.code ?? 1) : 0, output: stdout + stderr }),
    );
    child.stdin?.end(text);
  });
}

const JOB = 'kiln';
/** Grafana's $__rate_interval, as a dashboard over 1 s scrapes would send it. */
const RATE_INTERVAL = '10s';
const HAVE_PROMETHEUS = existsSync(PROMETHEUS_BIN);

/** A series has data when at least one of its samples is a number (not NaN, which a panel leaves blank). */
const hasData = (s: PromSeries) =>
  (s.value !== undefined && isFiniteSample(s.value[1])) || (s.values ?? []).some(([, v]) => isFiniteSample(v));

function prometheusConfig(kilnUrl: string): string {
  return [
    'global:',
    '  scrape_interval: 1s',
    '  scrape_timeout: 1s',
    '  evaluation_interval: 1s',
    'rule_files:',
    `  - ${JSON.stringify(RULES_FILE)}`,
    'scrape_configs:',
    `  - job_name: ${JOB}`,
    '    metrics_path: /metrics',
    '    static_configs:',
    `      - targets: [${JSON.stringify(new URL(kilnUrl).host)}]`,
    '',
  ].join('\n');
}

/**
 * One scripted scenario (test/helpers/metrics-scenario.ts) against one Kiln, scraped every second by a real
 * Prometheus (Debian's 2.42, which asks for OpenMetrics) with deploy/prometheus/rules/kiln.rules.yml loaded:
 * afterwards every figure of /metrics must be what the scenario did, and every rule, alert signal and query of the
 * Grafana dashboard must evaluate to data. Without the prometheus binary only the first half runs.
 */
// One process in the embedded pass (the PostgreSQL pass runs the two-process scenario below instead: the same figures
// from two processes sharing one database, where the shared gauges come from PostgreSQL).
describe.skipIf(DATABASE_URL !== undefined)(
  '/metrics after a scripted scenario, scraped by a real Prometheus',
  { timeout: 180_000 },
  () => {
    let shared: Shared;
    let kiln: KilnProcess;
    let prometheus: PrometheusServer | undefined;
    let expected: ScenarioExpectation;
    let scraped: { text: string; samples: Sample[] };
    let rules: RuleFile;
    let dashboard: Dashboard;
    /** When Prometheus's first scrape of Kiln succeeded (s). */
    let scrapedFrom = 0;
    let victimKilledAt = 0;
    /** What kiln_instances_live may read at the scrape (see expectedLive). */
    let live: number[] = [];

    beforeAll(async () => {
      shared = await sharedEnvironment();
      const lost = await loseABuild(shared.env, 'one');
      kiln = await spawnKiln({ ...shared.env, ...SCENARIO_ENV });
      if (HAVE_PROMETHEUS) {
        rules = await loadRules();
        dashboard = await loadDashboard();
        prometheus = await startPrometheus(prometheusConfig(kiln.url));
        const server = prometheus;
        // Counters must be seen before the scenario moves them (a rate needs the sample before the increase).
        let lastError = '';
        await waitFor('the first successful scrape', async () => {
          const [target] = await server.targets();
          lastError = target?.lastError ?? '';
          return target?.health === 'up' ? true : undefined;
        }).catch((error: Error) => {
          throw new Error(`${error.message}; Prometheus's last scrape error: ${lastError || 'none'}`);
        });
        scrapedFrom = Math.floor(Date.now() / 1000) - 1;
      }
      ({ expected } = await runScenario([kiln], lost.id, 'one'));
      victimKilledAt = lost.killedAt;
      const scenarioEnd = Date.now() / 1000;
      await sleep(1_100); // the shared gauges' one-second cache
      scraped = await scrape(kiln);
      live = expectedLive(1, victimKilledAt);
      const server = prometheus;
      if (server) {
        // A few scrapes and evaluations after the end: every group evaluated at least twice since.
        await waitFor('rule evaluations after the scenario', async () => {
          const groups = await server.ruleGroups();
          return groups.length > 0 && groups.every((g) => Date.parse(g.lastEvaluation) / 1000 > scenarioEnd + 2.5)
            ? true
            : undefined;
        });
      }
    }, 170_000);

    afterAll(async () => {
      await prometheus?.stop();
      await kiln?.stop('SIGKILL');
      await shared?.cleanup();
    });

    it('every figure is what the scenario did', () => {
      const { samples } = scraped;
      expectCountersSum([samples], expected);
      // Prometheus's own scrapes are GET /metrics: expectRequests compares the /v1 routes.
      expectRequests(kiln, samples, expected);
      // The killed victim has not unregistered; its line is still recent, so it counts as live for now.
      expectSharedGauges(samples, expected, live);
      expect(samplesOf(samples, 'kiln_build_info')).toEqual([
        { name: 'kiln_build_info', labels: { version: expect.any(String) }, value: 1 },
      ]);
    });

    it('answers OpenMetrics when asked, as Prometheus asks', async () => {
      const om = await fetch(`${kiln.url}/metrics`, {
        headers: { accept: 'application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5' },
      });
      expect(om.headers.get('content-type')).toMatch(/^application\/openmetrics-text; version=1\.0\.0/);
      const text = await om.text();
      expect(text.endsWith('# EOF\n')).toBe(true);
      expect(text).toContain('# TYPE builds_completed counter');
      expect(text).toContain(`\nbuilds_completed_total{outcome="deployed"} ${expected.completed.deployed}\n`);
    });

    it.skipIf(!existsSync(PROMTOOL_BIN))('is clean under promtool check metrics', async () => {
      const checked = await promtoolCheck(scraped.text);
      expect(checked.output).toBe('');
      expect(checked.code).toBe(0);
    });

    describe.skipIf(!HAVE_PROMETHEUS)('Prometheus', () => {
      /** For a failure's message: how Prometheus's scrapes of Kiln went over the run (up and scrape time, per second). */
      const scrapeHistory = async () => {
        const end = Math.ceil(Date.now() / 1000);
        const lines = [];
        for (const q of ['up', 'scrape_duration_seconds']) {
          const { series } = await prometheus!.queryRange(q, scrapedFrom, end, 1);
          lines.push(
            `${q} from ${scrapedFrom}: ${series.map((x) => (x.values ?? []).map((v) => v[1]).join(' ')).join(' | ')}`,
          );
        }
        const [target] = await prometheus!.targets();
        return `\n${lines.join('\n')}\nlast scrape error: ${target?.lastError || 'none'}`;
      };

      it('scrapes Kiln (OpenMetrics) without an error', async () => {
        const targets = await prometheus!.targets();
        expect(targets.map((t) => ({ job: t.labels.job, health: t.health, lastError: t.lastError }))).toEqual([
          { job: JOB, health: 'up', lastError: '' },
        ]);
        const { series } = await prometheus!.query(`kiln_build_info{job="${JOB}"}`);
        expect(series).toHaveLength(1);
      });

      it('loads every rule group of the file, and every rule evaluates without an error', async () => {
        const groups: PromRuleGroup[] = await prometheus!.ruleGroups();
        expect(groups.map((g) => g.name).sort()).toEqual(rules.groups.map((g) => g.name).sort());
        for (const group of rules.groups) {
          const loaded = groups.find((g) => g.name === group.name)!;
          expect(
            loaded.rules.map((r) => r.name),
            group.name,
          ).toEqual(group.rules.map((r) => r.record ?? r.alert));
          for (const rule of loaded.rules) {
            expect({ rule: rule.name, health: rule.health, lastError: rule.lastError ?? '' }).toEqual({
              rule: rule.name,
              health: 'ok',
              lastError: '',
            });
          }
        }
      });

      it('finds data for every recording rule', async () => {
        const records = rules.groups.flatMap((g) => g.rules.flatMap((r) => (r.record ? [r.record] : [])));
        expect(records.length).toBeGreaterThan(10);
        const empty: string[] = [];
        for (const record of records) {
          const { series, warnings } = await prometheus!.query(record);
          expect(warnings ?? [], record).toEqual([]);
          if (!series.some(hasData)) empty.push(record);
        }
        expect(empty, `recording rules without a numeric series${empty.length ? await scrapeHistory() : ''}`).toEqual(
          [],
        );
      });

      it("finds data for every alert's signal; the lost runner fires, and no outage does", async () => {
        const alerts = rules.groups.flatMap((g) => g.rules.filter((r) => r.alert));
        const empty: string[] = [];
        for (const alert of alerts) {
          const conditions = alertConditions(alert.expr);
          expect(
            conditions,
            `${alert.alert}: <signal> <cmp> <number> [and on(...) <signal> <cmp> <number>]`,
          ).toBeDefined();
          for (const { signal } of conditions!) {
            const { series } = await prometheus!.query(signal);
            if (!series.some(hasData)) empty.push(`${alert.alert}: ${signal}`);
          }
        }
        expect(empty, `alert signals without a numeric series${empty.length ? await scrapeHistory() : ''}`).toEqual([]);

        const states = new Map<string, string>();
        for (const group of await prometheus!.ruleGroups()) {
          for (const rule of group.rules) if (rule.type === 'alerting') states.set(rule.name, rule.state ?? '');
        }
        // The scenario's victim was killed holding a build: the measured process failed it as worker_lost.
        expect(states.get('KilnRunnerLost')).toBe('firing');
        for (const healthy of [
          'KilnDatabaseUnavailable',
          'KilnStoreUnavailable',
          'KilnTargetDown',
          'KilnAllTargetsDown',
          'KilnCreditAuditProblems',
          'KilnCreditAuditStale',
          'KilnEndpointErrorRateHigh',
          'KilnBuildSuccessRateLow',
        ]) {
          expect(states.get(healthy), healthy).not.toBe('firing');
        }
      });

      it('evaluates every query of the Grafana dashboard to data over the scenario', async () => {
        const end = Math.ceil(Date.now() / 1000);
        const variables: Record<string, string> = {
          datasource: 'prometheus',
          job: JOB,
          instance: '.*',
          __rate_interval: RATE_INTERVAL,
          __interval: '1s',
          __range: `${end - scrapedFrom}s`,
        };
        const queries = dashboardQueries(dashboard);
        expect(queries.length).toBeGreaterThan(20);
        const failures: string[] = [];
        for (const q of queries) {
          const expr = substituteVariables(q.expr, variables);
          try {
            const { series, warnings } = await prometheus!.queryRange(expr, scrapedFrom, end, 1);
            if (warnings?.length) failures.push(`${q.panel} (${q.refId}): warnings ${warnings.join('; ')}`);
            else if (!series.some(hasData)) failures.push(`${q.panel} (${q.refId}): no data for ${expr}`);
          } catch (error) {
            failures.push(`${q.panel} (${q.refId}): ${(error as Error).message}`);
          }
        }
        expect(failures).toEqual([]);

        // The variables' own queries (Grafana's label_values(selector, label)) find values.
        for (const variable of dashboard.templating.list.filter((v) => v.type === 'query')) {
          const definition = (variable.query as { query: string }).query;
          const match = /^label_values\((.+),\s*(\w+)\)$/.exec(definition);
          expect(match, `${variable.name}: ${definition}`).not.toBeNull();
          const selector = substituteVariables(match![1], { ...variables, job: JOB });
          const { data } = await prometheus!.api<string[]>(`/api/v1/label/${match![2]}/values`, {
            'match[]': selector,
            start: String(scrapedFrom),
            end: String(end),
          });
          expect(data.length, `${variable.name}: ${definition}`).toBeGreaterThan(0);
        }
      });
    });
  },
);

describe.skipIf(!DATABASE_URL)('/metrics of two processes on PostgreSQL', { timeout: 150_000 }, () => {
  let fresh: Shared;
  const processes: KilnProcess[] = [];
  beforeAll(async () => {
    fresh = await sharedEnvironment();
  });
  afterAll(async () => {
    await Promise.all(processes.map((p) => p.stop('SIGKILL')));
    await fresh.cleanup();
  });

  it('counters sum to the scenario, gauges agree', async () => {
    const lost = await loseABuild(fresh.env, 'two');
    const pair = [
      await spawnKiln({ ...fresh.env, ...SCENARIO_ENV }),
      await spawnKiln({ ...fresh.env, ...SCENARIO_ENV }),
    ];
    processes.push(...pair);
    const { expected } = await runScenario(pair, lost.id, 'two');
    await sleep(1_100);
    const scrapes = await Promise.all(pair.map(scrape));
    const live = expectedLive(2, lost.killedAt);
    expectCountersSum(
      scrapes.map((s) => s.samples),
      expected,
    );
    for (const [i, kiln] of pair.entries()) {
      expectRequests(kiln, scrapes[i].samples, expected);
      expectSharedGauges(scrapes[i].samples, expected, live);
    }
    // Both processes did part of the work: the sums are sums, not one process's figures.
    const created = (s: Sample[]) =>
      sampleValue(s, 'kiln_build_transitions_total', { from: 'none', to: 'queued' }) ?? 0;
    expect(created(scrapes[0].samples)).toBeGreaterThan(0);
    expect(created(scrapes[1].samples)).toBeGreaterThan(0);
  });
});
