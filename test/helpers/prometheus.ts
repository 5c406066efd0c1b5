import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse as parseYaml } from 'yaml';

/** Debian's `prometheus` package (the CI installs it; tests skip without it). */
export const PROMETHEUS_BIN = '/usr/bin/prometheus';
export const PROMTOOL_BIN = '/usr/bin/promtool';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** One series of an instant query (`value`) or a range query (`values`); values as Prometheus sends them. */
export interface PromSeries {
  metric: Record<string, string>;
  value?: [number, string];
  values?: [number, string][];
}

export interface PromRule {
  name: string;
  query: string;
  type: 'recording' | 'alerting';
  health: string;
  lastError?: string;
  state?: string;
  duration?: number;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  alerts?: { labels: Record<string, string>; state: string; value: string }[];
  lastEvaluation: string;
}

export interface PromRuleGroup {
  name: string;
  file: string;
  rules: PromRule[];
  lastEvaluation: string;
}

export interface PromTarget {
  labels: Record<string, string>;
  scrapeUrl: string;
  health: string;
  lastError: string;
  lastScrape: string;
}

export interface PrometheusServer {
  url: string;
  /** Ask an API path (`/api/v1/...`); throws on a non-success answer, with Prometheus's error. */
  api<T>(path: string, params?: Record<string, string | string[]>): Promise<{ data: T; warnings?: string[] }>;
  /** An instant query at `time` (seconds; default now). */
  query(expr: string, time?: number): Promise<{ series: PromSeries[]; warnings?: string[] }>;
  /** A range query; times in seconds. */
  queryRange(
    expr: string,
    start: number,
    end: number,
    stepS: number,
  ): Promise<{ series: PromSeries[]; warnings?: string[] }>;
  ruleGroups(): Promise<PromRuleGroup[]>;
  targets(): Promise<PromTarget[]>;
  /** Everything Prometheus wrote to stdout and stderr. */
  output(): string;
  /** Stop it (SIGTERM, SIGKILL after 10 s) and remove its directory. */
  stop(): Promise<void>;
}

/** A port free right now (the kernel's choice), for a server started just after. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

/**
 * Start a private Prometheus on a free port with `config` (prometheus.yml text; rule files by absolute path), its
 * TSDB in a temporary directory, and wait until it is ready. The port is chosen by listening on 0 first; if another
 * process takes it in between, Prometheus exits and the start is retried on another port.
 */
export async function startPrometheus(config: string, timeoutMs = 30_000): Promise<PrometheusServer> {
  const dir = await mkdtemp(join(tmpdir(), 'kiln-prometheus-'));
  const configFile = join(dir, 'prometheus.yml');
  await writeFile(configFile, config);
  let lastFailure = '';
  try {
    for (let attempt = 0; attempt < 3; attempt++) {
      const port = await freePort();
      const started = await startOn(dir, configFile, port, timeoutMs);
      if ('server' in started) return started.server;
      lastFailure = started.failure;
      if (!/address already in use/.test(lastFailure)) break;
    }
  } catch (error) {
    await rm(dir, { recursive: true, force: true });
    throw error;
  }
  await rm(dir, { recursive: true, force: true });
  throw new Error(`Prometheus did not start:\n${lastFailure}`);
}

async function startOn(
  dir: string,
  configFile: string,
  port: number,
  timeoutMs: number,
): Promise<{ server: PrometheusServer } | { failure: string }> {
  const child: ChildProcess = spawn(
    PROMETHEUS_BIN,
    [
      `--config.file=${configFile}`,
      `--storage.tsdb.path=${join(dir, `data-${port}`)}`,
      `--web.listen-address=127.0.0.1:${port}`,
      '--log.level=warn',
      '--storage.tsdb.retention.time=1h',
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let output = '';
  child.stdout?.on('data', (c: Buffer) => {
    output += c.toString();
  });
  child.stderr?.on('data', (c: Buffer) => {
    output += c.toString();
  });
  const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
  let ended = false;
  void exited.then(() => {
    ended = true;
  });
  const url = `http://127.0.0.1:${port}`;

  const deadline = Date.now() + timeoutMs;
  let ready = false;
  while (!ended && Date.now() < deadline) {
    const res = await fetch(`${url}/-/ready`).catch(() => undefined);
    if (res?.status === 200) {
      ready = true;
      break;
    }
    await sleep(100);
  }
  if (!ready) {
    if (!ended) child.kill('SIGKILL');
    await exited;
    return { failure: ended ? output : `not ready within ${timeoutMs} ms:\n${output}` };
  }

  async function api<T>(path: string, params: Record<string, string | string[]> = {}) {
    const search = new URLSearchParams();
    for (const [key, value] of Object.entries(params)) {
      for (const v of Array.isArray(value) ? value : [value]) search.append(key, v);
    }
    // Queries are POSTed (long expressions stay out of the URL); the other endpoints take GET only.
    const post = path.startsWith('/api/v1/query');
    const res = post
      ? await fetch(`${url}${path}`, {
          method: 'POST',
          headers: { 'content-type': 'application/x-www-form-urlencoded' },
          body: search.toString(),
        })
      : await fetch(`${url}${path}${search.toString() ? `?${search}` : ''}`);
    const answer = (await res.json()) as {
      status: string;
      data: T;
      error?: string;
      errorType?: string;
      warnings?: string[];
    };
    if (answer.status !== 'success') {
      throw new Error(`Prometheus ${path} ${JSON.stringify(params)}: ${answer.errorType}: ${answer.error}`);
    }
    return { data: answer.data, warnings: answer.warnings };
  }

  const server: PrometheusServer = {
    url,
    api,
    async query(expr, time) {
      const params: Record<string, string> = { query: expr };
      if (time !== undefined) params.time = String(time);
      const { data, warnings } = await api<{ result: PromSeries[] }>('/api/v1/query', params);
      return { series: data.result, warnings };
    },
    async queryRange(expr, start, end, stepS) {
      const { data, warnings } = await api<{ result: PromSeries[] }>('/api/v1/query_range', {
        query: expr,
        start: String(start),
        end: String(end),
        step: String(stepS),
      });
      return { series: data.result, warnings };
    },
    async ruleGroups() {
      return (await api<{ groups: PromRuleGroup[] }>('/api/v1/rules')).data.groups;
    },
    async targets() {
      return (await api<{ activeTargets: PromTarget[] }>('/api/v1/targets', { state: 'active' })).data.activeTargets;
    },
    output: () => output,
    async stop() {
      if (!ended) {
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
        await exited;
        clearTimeout(timer);
      }
      await rm(dir, { recursive: true, force: true });
    },
  };
  return { server };
}

/** A sample value as Prometheus sends it ("NaN", "+Inf", "1.5") is a number a panel can draw. */
export function isFiniteSample(value: string): boolean {
  return Number.isFinite(Number(value));
}

// ---------------------------------------------------------------------------------------------------------------
// deploy/: the rules and the dashboard, read back for the tests

const ROOT = new URL('../..', import.meta.url).pathname;
export const PROMETHEUS_CONFIG = join(ROOT, 'deploy/prometheus/prometheus.yml');
export const RULES_FILE = join(ROOT, 'deploy/prometheus/rules/kiln.rules.yml');
export const RULES_TEST_FILE = join(ROOT, 'deploy/prometheus/tests/kiln.rules.test.yml');
export const DASHBOARD_FILE = join(ROOT, 'deploy/grafana/dashboards/kiln.json');

export interface RuleFile {
  groups: {
    name: string;
    rules: {
      record?: string;
      alert?: string;
      expr: string;
      for?: string;
      labels?: Record<string, string>;
      annotations?: Record<string, string>;
    }[];
  }[];
}

export async function loadRules(): Promise<RuleFile> {
  return parseYaml(await readFile(RULES_FILE, 'utf8')) as RuleFile;
}

/**
 * The parts of an alert's expression, by the rules file's convention: `<signal> <cmp> <number>`, optionally
 * `and on(...) <signal> <cmp> <number>`. Undefined when the expression does not follow it.
 */
export function alertConditions(expr: string): { signal: string; comparison: string; threshold: number }[] | undefined {
  const parts = expr.trim().split(/\s+and\s+on\s*\([^)]*\)\s+/);
  const conditions = parts.map((part) => /^(.+?)\s*(==|!=|>=|<=|>|<)\s*(-?\d+(?:\.\d+)?)$/s.exec(part.trim()));
  if (conditions.some((c) => !c)) return undefined;
  return conditions.map((c) => ({ signal: c![1].trim(), comparison: c![2], threshold: Number(c![3]) }));
}

export interface DashboardQuery {
  panel: string;
  refId: string;
  expr: string;
}

export interface Dashboard {
  schemaVersion: number;
  uid: string;
  title: string;
  templating: {
    list: { name: string; type: string; query: unknown; allValue?: string; datasource?: { uid: string } }[];
  };
  panels: DashboardPanel[];
}

export interface DashboardPanel {
  id: number;
  type: string;
  title: string;
  gridPos: { h: number; w: number; x: number; y: number };
  datasource?: { type: string; uid: string };
  targets?: { expr: string; refId: string; datasource?: { type: string; uid: string } }[];
  panels?: DashboardPanel[];
}

export async function loadDashboard(): Promise<Dashboard> {
  return JSON.parse(await readFile(DASHBOARD_FILE, 'utf8')) as Dashboard;
}

/** Every panel, those inside collapsed rows included. */
export function dashboardPanels(dashboard: Dashboard): DashboardPanel[] {
  return dashboard.panels.flatMap((p) => [p, ...(p.panels ?? [])]);
}

/** Every PromQL expression of every panel. */
export function dashboardQueries(dashboard: Dashboard): DashboardQuery[] {
  return dashboardPanels(dashboard).flatMap((panel) =>
    (panel.targets ?? []).map((t) => ({ panel: panel.title, refId: t.refId, expr: t.expr })),
  );
}

/** An expression with Grafana's variables replaced (`$name`, `${name}`, `${name:fmt}`, `[[name]]`). */
export function substituteVariables(expr: string, values: Record<string, string>): string {
  return expr.replace(/\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)/g, (whole, a, b, c) => {
    const name = a ?? b ?? c;
    if (!(name in values)) throw new Error(`no value for the variable ${whole} in: ${expr}`);
    return values[name];
  });
}

const PROMQL_WORDS = new Set([
  'and',
  'or',
  'unless',
  'by',
  'without',
  'on',
  'ignoring',
  'group_left',
  'group_right',
  'offset',
  'bool',
  'inf',
  'nan',
]);

/**
 * The metric names an expression selects (recording rules, with a colon, included): what is left once strings,
 * label matchers, ranges, grouping clauses, function calls, variables and numbers are taken out.
 */
export function metricNames(expr: string): string[] {
  const stripped = expr
    .replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`/g, ' ')
    .replace(/\{[^}]*\}/g, ' ')
    .replace(/\[[^\]]*\]/g, ' ')
    .replace(/\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, ' ')
    .replace(/\$\{?\w+\}?/g, ' ');
  const names = new Set<string>();
  for (const match of stripped.matchAll(/[a-zA-Z_:][a-zA-Z0-9_:]*/g)) {
    const word = match[0];
    const after = stripped.slice((match.index ?? 0) + word.length);
    if (/^\s*\(/.test(after)) continue; // a function (or an aggregation)
    if (PROMQL_WORDS.has(word.toLowerCase())) continue;
    if (/^\d/.test(word) || /^e\d*$/i.test(word)) continue;
    names.add(word);
  }
  return [...names];
}
