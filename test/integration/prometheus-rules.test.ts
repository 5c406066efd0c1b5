import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
// Shared-state gauges (every one metrics.ts reads from the database): the same in every process; summing multiplies.
import { SHARED_GAUGES } from '../../src/metrics';
import { startTestApp, type TestApp } from '../helpers/app';
import { parseMetrics } from '../helpers/metrics-text';
import {
  alertConditions,
  type Dashboard,
  dashboardPanels,
  dashboardQueries,
  loadDashboard,
  loadRules,
  metricNames,
  PROMETHEUS_CONFIG,
  PROMTOOL_BIN,
  RULES_FILE,
  RULES_TEST_FILE,
  type RuleFile,
} from '../helpers/prometheus';
import { signedInject } from '../helpers/signed';

/**
 * deploy/prometheus and deploy/grafana, checked without a Prometheus: promtool accepts the configuration, the rules
 * and their unit tests; every metric they and the dashboard name is one Kiln exports (read from a real scrape); every
 * alert carries what on-call needs and has a unit test that fires it and one that does not.
 * (test/e2e/metrics.test.ts runs them in a real Prometheus against a real Kiln.)
 */

const ROOT = new URL('../..', import.meta.url).pathname;
const HAVE_PROMTOOL = existsSync(PROMTOOL_BIN);

/** How every panel and query of the dashboard names its data source: through the `datasource` variable. */
// biome-ignore lint/suspicious/noTemplateCurlyInString: Grafana's variable syntax, not a template literal
const DATASOURCE = { type: 'prometheus', uid: '${datasource}' };
/** Series Prometheus makes itself for each target. */
const PROMETHEUS_SERIES = ['up'];

function promtool(...args: string[]): Promise<{ code: number; output: string }> {
  return new Promise((resolve) => {
    execFile(PROMTOOL_BIN, args, { cwd: ROOT }, (error, stdout, stderr) =>
      resolve({ code: error ? Number(error.code ?? 1) : 0, output: stdout + stderr }),
    );
  });
}

function expectClean(result: { code: number; output: string }): void {
  expect(result.output).not.toMatch(/warn|error|fail/i);
  expect(result.output).toMatch(/SUCCESS/);
  expect(result.code, result.output).toBe(0);
}

interface RulesTest {
  rule_files: string[];
  tests: {
    name: string;
    input_series: { series: string; values: string }[];
    alert_rule_test?: { eval_time: string; alertname: string; exp_alerts: unknown[] | null }[];
  }[];
}

describe.skipIf(!HAVE_PROMTOOL)('promtool on deploy/prometheus', () => {
  it('accepts prometheus.yml, and the rule file it names resolves', async () => {
    const result = await promtool('check', 'config', PROMETHEUS_CONFIG);
    expectClean(result);
    expect(result.output).toMatch(/1 rule files found/);
    expect(result.output).toMatch(/SUCCESS: \d+ rules found/);
  });

  it('accepts the rules', async () => {
    expectClean(await promtool('check', 'rules', RULES_FILE));
  });

  it('passes the rules unit tests', async () => {
    const result = await promtool('test', 'rules', RULES_TEST_FILE);
    expect(result.output).not.toMatch(/warn|FAILED/i);
    expect(result.output).toMatch(/SUCCESS/);
    expect(result.code, result.output).toBe(0);
  });
});

describe('the alert rules', () => {
  let rules: RuleFile;
  beforeAll(async () => {
    rules = await loadRules();
  });
  const alerts = () => rules.groups.flatMap((g) => g.rules.filter((r) => r.alert));

  it('name every recording rule kiln:..., each once', () => {
    const records = rules.groups.flatMap((g) => g.rules.flatMap((r) => (r.record ? [r.record] : [])));
    expect(records.length).toBeGreaterThan(10);
    for (const record of records) expect(record).toMatch(/^kiln:[a-z0-9_]+(:[a-z0-9_]+)*$/);
    expect(new Set(records).size).toBe(records.length);
  });

  it('give every alert a severity, a summary and a description saying what to check', () => {
    const names = alerts().map((a) => a.alert);
    expect(new Set(names).size).toBe(names.length);
    for (const alert of alerts()) {
      expect(alert.alert, 'alert name').toMatch(/^Kiln[A-Z][A-Za-z]+$/);
      expect(alert.labels?.severity, `${alert.alert}: severity`).toMatch(/^(critical|warning)$/);
      expect(alert.annotations?.summary?.length ?? 0, `${alert.alert}: summary`).toBeGreaterThan(15);
      expect(alert.annotations?.description?.length ?? 0, `${alert.alert}: description`).toBeGreaterThan(150);
      expect(alert.annotations?.description, `${alert.alert}: what to check`).toMatch(/\bcheck\b/i);
      if (alert.for !== undefined) expect(alert.for, `${alert.alert}: for`).toMatch(/^\d+[smh]$/);
    }
  });

  it('cover what the requirements ask to watch', () => {
    const names = alerts().map((a) => a.alert);
    expect(names).toEqual(
      expect.arrayContaining([
        'KilnBuildQueueBackingUp',
        'KilnBuildWaitingTooLong',
        'KilnBuildSuccessRateLow',
        'KilnRunnerLost',
        'KilnEndpointErrorRateHigh',
        'KilnEndpointSlow',
        'KilnCreditEndpointSlow',
        'KilnCreditAuditProblems',
        'KilnCreditAuditStale',
        'KilnMemoryNearBudget',
        'KilnDatabaseUnavailable',
        'KilnStoreUnavailable',
        'KilnTargetDown',
      ]),
    );
  });

  it('write every alert as <signal> <cmp> <number>, the signal recorded earlier in its group or a plain selector', () => {
    for (const group of rules.groups) {
      const recordedBefore = new Set<string>();
      for (const rule of group.rules) {
        if (rule.record) {
          recordedBefore.add(rule.record);
          continue;
        }
        const conditions = alertConditions(rule.expr);
        expect(conditions, `${rule.alert}: ${rule.expr}`).toBeDefined();
        for (const { signal } of conditions!) {
          // A recording rule (optionally narrowed by label matchers), or one metric with label matchers.
          const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?$/.exec(signal);
          expect(match, `${rule.alert}: the signal "${signal}" is one selector`).not.toBeNull();
          if (match![1].includes(':')) {
            expect(
              recordedBefore.has(match![1]),
              `${rule.alert}: ${match![1]} recorded before it in ${group.name}`,
            ).toBe(true);
          }
        }
      }
    }
  });

  it('have a unit test that fires each alert and one where it stays silent', async () => {
    const tests = parseYaml(await readFile(RULES_TEST_FILE, 'utf8')) as RulesTest;
    expect(tests.rule_files.map((f) => join(ROOT, 'deploy/prometheus/tests', f))).toEqual([RULES_FILE]);
    const fired = new Set<string>();
    const silent = new Set<string>();
    for (const test of tests.tests) {
      for (const check of test.alert_rule_test ?? []) {
        (check.exp_alerts?.length ? fired : silent).add(check.alertname);
      }
    }
    for (const alert of alerts()) {
      expect(fired.has(alert.alert!), `${alert.alert} fires in a test`).toBe(true);
      expect(silent.has(alert.alert!), `${alert.alert} stays silent in a test`).toBe(true);
    }
  });
});

describe('metric names in deploy/ against a real scrape of Kiln', () => {
  let t: TestApp;
  let exported: Set<string>;
  let rules: RuleFile;
  let dashboard: Dashboard;
  let recorded: Set<string>;
  beforeAll(async () => {
    t = await startTestApp({ BUILD_EXECUTOR: 'external' });
    // Some series exist once something happened: a signed request (kiln_signature_verifications_total) and any
    // request (api_request_duration_seconds; the first scrape is one).
    expect((await signedInject(t.app, { method: 'GET', url: '/v1/ping' })).statusCode).toBe(200);
    await t.app.inject({ method: 'GET', url: '/metrics' });
    const res = await t.app.inject({ method: 'GET', url: '/metrics' });
    expect(res.statusCode).toBe(200);
    exported = new Set(parseMetrics(res.body).map((s) => s.name));
    rules = await loadRules();
    dashboard = await loadDashboard();
    recorded = new Set(rules.groups.flatMap((g) => g.rules.flatMap((r) => (r.record ? [r.record] : []))));
  });
  afterAll(() => t?.close());

  /** Names an expression uses that are neither exported by Kiln, made by Prometheus, nor recorded by the rules. */
  const unknown = (expr: string) =>
    metricNames(expr).filter((n) => !exported.has(n) && !PROMETHEUS_SERIES.includes(n) && !recorded.has(n));

  it('finds the metrics the checks rely on in the scrape (the check itself reads the scrape right)', () => {
    for (const name of [
      'build_queue_depth',
      'builds_completed_total',
      'api_request_duration_seconds_bucket',
      'api_request_duration_seconds_count',
      'kiln_dependency_up',
      'process_start_time_seconds',
      'nodejs_eventloop_lag_p99_seconds',
    ]) {
      expect(exported.has(name), name).toBe(true);
    }
    expect(metricNames('sum by (le, route) (rate(api_request_duration_seconds_bucket{route!="x"}[5m])) > 0.2')).toEqual(
      ['api_request_duration_seconds_bucket'],
    );
  });

  it('uses only exported metrics in the rules', () => {
    for (const rule of rules.groups.flatMap((g) => g.rules)) {
      expect(unknown(rule.expr), rule.record ?? rule.alert).toEqual([]);
      expect(metricNames(rule.expr).length, rule.record ?? rule.alert).toBeGreaterThan(0);
    }
  });

  it('uses only exported metrics in the rules unit tests', async () => {
    const tests = parseYaml(await readFile(RULES_TEST_FILE, 'utf8')) as RulesTest;
    for (const series of tests.tests.flatMap((test) => test.input_series)) {
      const name = /^([a-zA-Z_:][a-zA-Z0-9_:]*)/.exec(series.series)![1];
      expect(exported.has(name) || PROMETHEUS_SERIES.includes(name), series.series).toBe(true);
    }
  });

  it('uses only exported metrics in the Grafana dashboard, and every panel query names one', () => {
    const queries = dashboardQueries(dashboard);
    expect(queries.length).toBeGreaterThan(20);
    for (const q of queries) {
      expect(metricNames(q.expr).length, `${q.panel}: ${q.expr}`).toBeGreaterThan(0);
      expect(unknown(q.expr), `${q.panel}: ${q.expr}`).toEqual([]);
    }
    for (const variable of dashboard.templating.list.filter((v) => v.type === 'query')) {
      const definition = (variable.query as { query: string }).query;
      expect(unknown(definition.replace(/^label_values\((.+),\s*\w+\)$/, '$1')), definition).toEqual([]);
    }
  });

  it('never sums a shared-state gauge (every process reports the same value)', () => {
    const expressions = [
      ...rules.groups.flatMap((g) => g.rules.map((r) => ({ where: r.record ?? r.alert, expr: r.expr }))),
      ...dashboardQueries(dashboard).map((q) => ({ where: q.panel, expr: q.expr })),
    ];
    for (const { where, expr } of expressions) {
      for (const gauge of SHARED_GAUGES) {
        const summed = new RegExp(`\\b(sum|avg|count)(\\s+(by|without)\\s*\\([^)]*\\))?\\s*\\(\\s*${gauge}\\b`);
        expect(summed.test(expr), `${where}: ${gauge} in ${expr}`).toBe(false);
      }
    }
  });
});

describe('the Grafana dashboard and provisioning', () => {
  let dashboard: Dashboard;
  beforeAll(async () => {
    dashboard = await loadDashboard();
  });

  it('takes its data source from a variable, and filters by job and process', () => {
    expect(dashboard.schemaVersion).toBe(39);
    expect(dashboard.uid).toMatch(/^[a-z0-9-]+$/);
    const variables = Object.fromEntries(dashboard.templating.list.map((v) => [v.name, v]));
    expect(variables.datasource).toMatchObject({ type: 'datasource', query: 'prometheus' });
    expect(variables.job).toMatchObject({ type: 'query', datasource: DATASOURCE });
    expect(variables.instance).toMatchObject({ type: 'query', allValue: '.*', datasource: DATASOURCE });
    const ids = dashboardPanels(dashboard).map((p) => p.id);
    expect(new Set(ids).size).toBe(ids.length);
    for (const panel of dashboardPanels(dashboard).filter((p) => p.type !== 'row')) {
      expect(panel.datasource, panel.title).toEqual(DATASOURCE);
      expect(panel.targets?.length, panel.title).toBeGreaterThan(0);
      for (const target of panel.targets ?? []) {
        expect(target.datasource, panel.title).toEqual(DATASOURCE);
        expect(target.expr, `${panel.title}: filtered by job and process`).toContain(
          'job=~"$job", instance=~"$instance"',
        );
      }
    }
  });

  it('uses $__rate_interval for rates (or the window its alert uses, or the time range)', () => {
    for (const q of dashboardQueries(dashboard)) {
      for (const [, window] of q.expr.matchAll(/\[([^\]]+)\]/g)) {
        expect(['$__rate_interval', '$__range', '30m'], `${q.panel}: [${window}]`).toContain(window);
      }
      for (const [, window] of q.expr.matchAll(/\brate\([^[]*\[([^\]]+)\]/g)) {
        expect(window, `${q.panel}: rate window`).toBe('$__rate_interval');
      }
    }
  });

  it('shows the five views of the requirements and the audit', () => {
    const rows = dashboard.panels.filter((p) => p.type === 'row').map((p) => p.title);
    expect(rows).toEqual([
      'Build queue',
      'Build outcomes',
      'Credit consumption',
      'Resources',
      'Errors and latency by endpoint',
      'Credit audit',
    ]);
  });

  it('is provisioned from its folder, against a Prometheus data source', async () => {
    const datasources = parseYaml(
      await readFile(join(ROOT, 'deploy/grafana/provisioning/datasources/prometheus.yml'), 'utf8'),
    ) as { apiVersion: number; datasources: { type: string; url: string }[] };
    expect(datasources.apiVersion).toBe(1);
    expect(datasources.datasources[0]).toMatchObject({ type: 'prometheus', url: expect.stringMatching(/^http/) });
    const providers = parseYaml(
      await readFile(join(ROOT, 'deploy/grafana/provisioning/dashboards/kiln.yml'), 'utf8'),
    ) as { apiVersion: number; providers: { type: string; options: { path: string } }[] };
    expect(providers.apiVersion).toBe(1);
    expect(providers.providers[0]).toMatchObject({ type: 'file', options: { path: expect.stringMatching(/^\//) } });
  });
});
