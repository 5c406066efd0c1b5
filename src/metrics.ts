import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';
import type { PipelineRow } from './db/pipeline';
import type { BuildState } from './domain/build-states';
import { within } from './services/shared-read';

/**
 * The process's Prometheus registry (SPEC section 7). Modules count what happens here; `/metrics` exposes it.
 * One registry per process (default metrics are process-wide), created once.
 *
 * Two kinds of figures, and the difference matters when several processes are scraped:
 * - counters and histograms count what *this process* did: sum them across processes;
 * - gauges of shared state (queue depth, active builds, holds, the audit) are read from the database at scrape, so
 *   every process reports the same truth: take their max (or any one), never their sum.
 */
export const registry = new Registry();
collectDefaultMetrics({ register: registry });
// prom-client names these three gauges with a `_total` suffix, which the conventions (and `promtool check metrics`)
// keep for counters; the same figures remain, by type, in nodejs_active_handles, _requests and _resources.
for (const name of ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total']) {
  registry.removeSingleMetric(name);
}

// ---------------------------------------------------------------------------------------------------------------
// Counters of this process

// Signature outcomes since the last scrape. Every signed request counts one: a plain Map update, where a labelled
// Counter.inc builds and checks a label hash each time; they are added to the counter when /metrics is read.
const pendingVerifications = new Map<string, number>();

/** Outcomes of request-signature checks: which version verified, mismatches, and failures by reason. */
export const signatureVerifications = new Counter({
  name: 'kiln_signature_verifications_total',
  help: 'Signed-request checks by outcome: v1, v2, both, mismatch (one of two signatures failed), or failure_<reason>',
  labelNames: ['outcome'] as const,
  registers: [registry],
  collect() {
    for (const [outcome, n] of pendingVerifications) if (n > 0) this.inc({ outcome }, n);
    pendingVerifications.clear();
  },
});

for (const outcome of ['v1', 'v2', 'both', 'mismatch']) signatureVerifications.inc({ outcome }, 0);

/** Count one signature check's outcome (see signatureVerifications). */
export function countSignatureOutcome(outcome: string): void {
  pendingVerifications.set(outcome, (pendingVerifications.get(outcome) ?? 0) + 1);
}

/** Credits builds used that their users' balances could not cover (never charged; see services/build-credits.ts). */
export const creditsUncollected = new Counter({
  name: 'kiln_credits_uncollected_total',
  help: 'Credits deployed builds used beyond what their hold and the available balance could cover (not charged)',
  registers: [registry],
});

/** Requests refused by a rate limit, by scope (user or ip). */
export const rateLimited = new Counter({
  name: 'kiln_rate_limited_total',
  help: 'Requests answered 429 RATE_LIMITED, by scope (user, ip)',
  labelNames: ['scope'] as const,
  registers: [registry],
});
for (const scope of ['user', 'ip']) rateLimited.inc({ scope }, 0);

/** What the idempotency layer did with a request that carried a key (SPEC section 4). */
export type IdempotencyOutcome = 'executed' | 'replayed_store' | 'replayed_database' | 'key_in_use' | 'key_reused';

const idempotencyRequests = new Counter({
  name: 'kiln_idempotency_requests_total',
  help: 'Mutating requests with an Idempotency-Key, by outcome: executed (ran, and its response was recorded when recordable), replayed_store / replayed_database (answered from the record), key_in_use (409, the first still running), key_reused (422, another request)',
  labelNames: ['outcome'] as const,
  registers: [registry],
});
const IDEMPOTENCY_OUTCOMES: IdempotencyOutcome[] = [
  'executed',
  'replayed_store',
  'replayed_database',
  'key_in_use',
  'key_reused',
];
for (const outcome of IDEMPOTENCY_OUTCOMES) idempotencyRequests.inc({ outcome }, 0);

/** Count what the idempotency layer did with one keyed request. */
export function countIdempotency(outcome: IdempotencyOutcome): void {
  idempotencyRequests.inc({ outcome });
}

/** How many keyed writes went to the database together in one statement (services/idempotency.ts OnceGroups). */
const keyedGroupSize = new Histogram({
  name: 'kiln_keyed_write_group_size',
  help: 'Keyed writes (builds, reserve, commit, release with an Idempotency-Key) sent to the database together in one statement and one transaction: 1 when a write went alone (nothing else ready, or run again alone after waiting on a lock)',
  buckets: [1, 2, 4, 8, 16],
  registers: [registry],
});

/** Count one statement of keyed writes and how many it carried. */
export function observeKeyedGroup(size: number): void {
  keyedGroupSize.observe(size);
}

/** Ledger operations, as credit_usage_total labels them (`refund`: the part of a committed hold given back). */
export type CreditOperation = 'grant' | 'reserve' | 'commit' | 'refund' | 'release' | 'expire' | 'charge';
export const CREDIT_OPERATIONS: readonly CreditOperation[] = [
  'grant',
  'reserve',
  'commit',
  'refund',
  'release',
  'expire',
  'charge',
];

const creditUsage = new Counter({
  name: 'credit_usage_total',
  help: 'Credits moved by this process, by ledger operation: grant (added), reserve (held), commit (charged from a hold), refund (the rest of a committed hold, given back), release (a hold given back), expire (a lapsed hold), charge (taken beyond a hold). Consumption = commit + charge',
  labelNames: ['operation'] as const,
  registers: [registry],
});
for (const operation of CREDIT_OPERATIONS) creditUsage.inc({ operation }, 0);

/** Count credits moved by a committed operation (services/tally.ts calls it after commit). */
export function countCreditUsage(operation: CreditOperation, credits: number): void {
  if (credits > 0) creditUsage.inc({ operation }, credits);
}

// ---------------------------------------------------------------------------------------------------------------
// Builds, as this process moved them

const BUILD_OUTCOMES = ['deployed', 'failed', 'cancelled'] as const;
/** Failure reasons Kiln itself gives (README, "Builds and the runner"); anything else (a PATCH's own) is `other`. */
export const FAILURE_REASONS = [
  'exit_code',
  'timeout',
  'worker_lost',
  'hold_expired',
  'hold_lost',
  'hold_resolved',
  'executor_error',
  'shutdown',
  'other',
] as const;

const buildsCompleted = new Counter({
  name: 'builds_completed_total',
  help: 'Builds this process moved to a final state, by outcome (deployed, failed, cancelled)',
  labelNames: ['outcome'] as const,
  registers: [registry],
});
for (const outcome of BUILD_OUTCOMES) buildsCompleted.inc({ outcome }, 0);

const buildFailures = new Counter({
  name: 'kiln_build_failures_total',
  help: 'Builds this process failed, by reason (worker_lost = the runner holding it was lost; other = a reason given through PATCH)',
  labelNames: ['reason'] as const,
  registers: [registry],
});
for (const reason of FAILURE_REASONS) buildFailures.inc({ reason }, 0);

const buildTransitions = new Counter({
  name: 'kiln_build_transitions_total',
  help: 'State changes of builds made by this process, by from and to (from="none": a build queued)',
  labelNames: ['from', 'to'] as const,
  registers: [registry],
});
for (const [from, to] of [
  ['none', 'queued'],
  ['queued', 'building'],
  ['queued', 'cancelled'],
  ['building', 'deployed'],
  ['building', 'failed'],
  ['building', 'cancelled'],
] as const) {
  buildTransitions.inc({ from, to }, 0);
}

/** Build duration and queue wait run from seconds to the hour of BUILD_TIMEOUT_S's default. */
const buildDuration = new Histogram({
  name: 'build_duration_seconds',
  help: 'Time from building to its final state, for builds that started, by outcome',
  labelNames: ['outcome'] as const,
  buckets: [1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600],
  registers: [registry],
});
for (const outcome of BUILD_OUTCOMES) buildDuration.zero({ outcome });

const buildQueueWait = new Histogram({
  name: 'kiln_build_queue_wait_seconds',
  help: 'Time builds waited queued before they started (submit to start)',
  buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600],
  registers: [registry],
});

/** A committed change of a build's state, as metrics need it. */
export interface ObservedTransition {
  /** null: the build was just queued. */
  from: BuildState | null;
  to: BuildState;
  createdAt: Date;
  startedAt: Date | null;
  finishedAt: Date | null;
  reason: string | null;
}

const seconds = (from: Date, to: Date) => Math.max(0, (to.getTime() - from.getTime()) / 1000);

/** Count one committed transition (services/tally.ts calls it after commit). */
export function observeBuildTransition(t: ObservedTransition): void {
  buildTransitions.inc({ from: t.from ?? 'none', to: t.to });
  if (t.to === 'building' && t.startedAt) buildQueueWait.observe(seconds(t.createdAt, t.startedAt));
  if (t.to !== 'deployed' && t.to !== 'failed' && t.to !== 'cancelled') return;
  buildsCompleted.inc({ outcome: t.to });
  if (t.to === 'failed') {
    const known = (FAILURE_REASONS as readonly string[]).includes(t.reason ?? '');
    buildFailures.inc({ reason: known ? (t.reason as string) : 'other' });
  }
  if (t.startedAt && t.finishedAt) buildDuration.observe({ outcome: t.to }, seconds(t.startedAt, t.finishedAt));
}

// ---------------------------------------------------------------------------------------------------------------
// Webhooks, as this process delivered them

/** Why attempts fail (src/delivery/sender.ts's SendFailure); an answer that was not 2xx is counted by its class. */
export const WEBHOOK_FAILURES = [
  'invalid_url',
  'dns_failed',
  'blocked_address',
  'connect_failed',
  'tls_failed',
  'timeout',
  'redirect',
  'network_error',
  'http_4xx',
  'http_5xx',
  'http_other',
] as const;

const webhookAttempts = new Counter({
  name: 'kiln_webhook_attempts_total',
  help: 'Webhook delivery attempts by outcome (delivered, failed) and reason (none when delivered; blocked_address is the SSRF guard refusing the resolved address)',
  labelNames: ['outcome', 'reason'] as const,
  registers: [registry],
});
webhookAttempts.inc({ outcome: 'delivered', reason: 'none' }, 0);
for (const reason of WEBHOOK_FAILURES) webhookAttempts.inc({ outcome: 'failed', reason }, 0);

const webhookDeliveries = new Counter({
  name: 'kiln_webhook_deliveries_total',
  help: 'Webhook messages finished: delivered, or failed (retries spent, or the endpoint disabled)',
  labelNames: ['status'] as const,
  registers: [registry],
});
for (const status of ['delivered', 'failed']) webhookDeliveries.inc({ status }, 0);

const webhookEndpointsDisabled = new Counter({
  name: 'kiln_webhook_endpoints_disabled_total',
  help: 'Webhook endpoints disabled, by reason: gone (answered 410) or failing (failed for WEBHOOK_DISABLE_AFTER_S)',
  labelNames: ['reason'] as const,
  registers: [registry],
});
for (const reason of ['gone', 'failing']) webhookEndpointsDisabled.inc({ reason }, 0);

const webhookLatency = new Histogram({
  name: 'kiln_webhook_delivery_latency_seconds',
  help: 'From an event committed (its outbox row written) to the receiver answering 2xx, retries included',
  buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 7200, 36000],
  registers: [registry],
});

/** The reason label of a failed attempt: its failure, or an answer's status class. */
export function webhookReasonLabel(failure: string, status: number | null): string {
  if (failure === 'http_status' && status !== null) {
    return status >= 400 && status < 500 ? 'http_4xx' : status >= 500 && status < 600 ? 'http_5xx' : 'http_other';
  }
  return (WEBHOOK_FAILURES as readonly string[]).includes(failure) ? failure : 'network_error';
}

/** Count one attempt, and what it finished: a delivery (with its latency) or a failure, an endpoint disabled. */
export function observeWebhookAttempt(attempt: {
  delivered: boolean;
  failure: string | null;
  status: number | null;
  finished: 'delivered' | 'failed' | null;
  /** Null for a stale attempt (its delivery was finished by another). */
  latencySeconds: number | null;
  disabledReason: string | null;
  /** Other messages of the endpoint failed because this attempt disabled it. */
  abandoned: number;
}): void {
  webhookAttempts.inc(
    attempt.delivered
      ? { outcome: 'delivered', reason: 'none' }
      : { outcome: 'failed', reason: webhookReasonLabel(attempt.failure ?? 'network_error', attempt.status) },
  );
  if (attempt.finished) webhookDeliveries.inc({ status: attempt.finished });
  if (attempt.abandoned > 0) webhookDeliveries.inc({ status: 'failed' }, attempt.abandoned);
  if (attempt.delivered && attempt.latencySeconds !== null) webhookLatency.observe(Math.max(0, attempt.latencySeconds));
  if (attempt.disabledReason) webhookEndpointsDisabled.inc({ reason: attempt.disabledReason });
}

// ---------------------------------------------------------------------------------------------------------------
// Requests

/**
 * A histogram for the hottest path (every request observes one): its series are found by one string key and kept as
 * plain arrays, where prom-client's Histogram validates and hashes the labels on every observation. It renders as a
 * prom-client histogram does (registered through the registry's `registerMetric`).
 */
class RequestHistogram {
  readonly type = 'histogram';
  readonly aggregator = 'sum';
  private series = new Map<string, { labels: Record<string, string>; counts: number[]; sum: number; count: number }>();

  constructor(
    readonly name: string,
    readonly help: string,
    private readonly bounds: readonly number[],
  ) {}

  observe(key: string, labels: () => Record<string, string>, value: number): void {
    let series = this.series.get(key);
    if (!series) {
      series = { labels: labels(), counts: new Array(this.bounds.length).fill(0), sum: 0, count: 0 };
      this.series.set(key, series);
    }
    const { bounds } = this;
    for (let i = 0; i < bounds.length; i++) {
      if (value <= bounds[i]) {
        series.counts[i] += 1;
        break;
      }
    }
    series.sum += value;
    series.count += 1;
  }

  get() {
    const values: { labels: Record<string, string | number>; value: number; metricName: string }[] = [];
    for (const { labels, counts, sum, count } of this.series.values()) {
      let cumulative = 0;
      this.bounds.forEach((le, i) => {
        cumulative += counts[i];
        values.push({ labels: { le, ...labels }, value: cumulative, metricName: `${this.name}_bucket` });
      });
      values.push({ labels: { le: '+Inf', ...labels }, value: count, metricName: `${this.name}_bucket` });
      values.push({ labels, value: sum, metricName: `${this.name}_sum` });
      values.push({ labels, value: count, metricName: `${this.name}_count` });
    }
    return { name: this.name, help: this.help, type: this.type, values, aggregator: this.aggregator };
  }

  reset(): void {
    this.series.clear();
  }

  /** Every series' labels and observation count (no buckets). */
  counts(): { labels: Record<string, string>; count: number }[] {
    return [...this.series.values()].map(({ labels, count }) => ({ labels, count }));
  }
}

const apiRequestDuration = new RequestHistogram(
  'api_request_duration_seconds',
  'Time to answer HTTP requests, by method, route template (never an id; "unmatched" for no route) and status code',
  [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2.5, 5, 10],
);
registry.registerMetric(apiRequestDuration as unknown as Parameters<typeof registry.registerMetric>[0]);

/** Requests this process answered for one route since it started, by class of status. */
export interface RouteRequests {
  method: string;
  route: string;
  requests: number;
  clientErrors: number;
  serverErrors: number;
}

/** What api_request_duration_seconds counted, per method and route (the live page's error rate by route). */
export function requestsByRoute(): RouteRequests[] {
  const byRoute = new Map<string, RouteRequests>();
  for (const { labels, count } of apiRequestDuration.counts()) {
    const key = `${labels.method} ${labels.route}`;
    const row = byRoute.get(key) ?? {
      method: labels.method,
      route: labels.route,
      requests: 0,
      clientErrors: 0,
      serverErrors: 0,
    };
    row.requests += count;
    if (labels.status_code.startsWith('4')) row.clientErrors += count;
    if (labels.status_code.startsWith('5')) row.serverErrors += count;
    byRoute.set(key, row);
  }
  return [...byRoute.values()];
}

/** Observe one answered request. `route` must be a template (`/v1/builds/:id`), never a URL. */
export function observeRequest(method: string, route: string, statusCode: number, durationSeconds: number): void {
  apiRequestDuration.observe(
    `${method} ${statusCode} ${route}`,
    () => ({ method, route, status_code: String(statusCode) }),
    durationSeconds,
  );
}

// ---------------------------------------------------------------------------------------------------------------
// This process

/** Facts about this process that Grafana and the alert rules compare against. */
export interface ProcessFacts {
  version: string;
  /** RUNNER_CONCURRENCY (0: it runs no builds). */
  runnerSlots: number;
  /** CREDIT_AUDIT_INTERVAL_S (0: only audits that are asked for). */
  auditIntervalS: number;
  /** MEMORY_BUDGET_MB in bytes. */
  memoryBudgetBytes: number;
}
let facts: ProcessFacts | undefined;
let runningBuilds: (() => number) | undefined;

/** Say what this process is (the HTTP app does, from its configuration). */
export function describeProcess(given: ProcessFacts): void {
  facts = given;
  buildInfo.reset();
  buildInfo.set({ version: given.version }, 1);
}

/** Where kiln_runner_builds_running reads how many builds this process runs (the composition root's runner). */
export function countRunningBuildsWith(count: () => number): void {
  runningBuilds = count;
}

const buildInfo = new Gauge({
  name: 'kiln_build_info',
  help: 'Always 1; the version label says which Kiln this process runs',
  labelNames: ['version'] as const,
  registers: [registry],
});

new Gauge({
  name: 'kiln_runner_slots',
  help: 'Builds this process may run at once (RUNNER_CONCURRENCY)',
  registers: [registry],
  collect() {
    if (facts) this.set(facts.runnerSlots);
  },
});

new Gauge({
  name: 'kiln_runner_builds_running',
  help: 'Builds this process runs now',
  registers: [registry],
  collect() {
    this.set(runningBuilds?.() ?? 0);
  },
});

new Gauge({
  name: 'kiln_credit_audit_interval_seconds',
  help: 'Seconds between full credit audits (CREDIT_AUDIT_INTERVAL_S; 0 = only on request)',
  registers: [registry],
  collect() {
    if (facts) this.set(facts.auditIntervalS);
  },
});

new Gauge({
  name: 'kiln_memory_budget_bytes',
  help: 'The resident memory this process should stay under (MEMORY_BUDGET_MB)',
  registers: [registry],
  collect() {
    if (facts) this.set(facts.memoryBudgetBytes);
  },
});

new Gauge({
  name: 'worker_memory_usage_bytes',
  help: 'Resident set size of this process, in bytes',
  registers: [registry],
  collect() {
    this.set(process.memoryUsage.rss());
  },
});

// CPU used per second of wall time since the previous reading at least a second old (1 = one core fully busy).
let cpuSample = { at: process.hrtime.bigint(), usage: process.cpuUsage() };
let cpuRatio = 0;
new Gauge({
  name: 'worker_cpu_usage_ratio',
  help: 'CPU time this process used per second of wall time, over the interval since the previous scrape (1 = one core fully busy)',
  registers: [registry],
  collect() {
    const at = process.hrtime.bigint();
    const elapsedUs = Number(at - cpuSample.at) / 1000;
    if (elapsedUs >= 1_000_000) {
      const usage = process.cpuUsage(cpuSample.usage);
      cpuRatio = (usage.user + usage.system) / elapsedUs;
      cpuSample = { at, usage: process.cpuUsage() };
    }
    this.set(cpuRatio);
  },
});

// ---------------------------------------------------------------------------------------------------------------
// Shared state, read from the database at scrape (the same for every process)

/** The pipeline as the database sees it (one statement, db/pipeline.ts; read through services/pipeline.ts). */
export type PipelineSnapshot = PipelineRow;

/** Where the shared gauges read from (the HTTP layer sets them to its database and store). */
export interface SharedStateReaders {
  pipeline: () => Promise<PipelineSnapshot>;
  /** Resolves when the store answers (Redis, or the store tables of the database). */
  store: () => Promise<void>;
}

const SCRAPE_READ_TIMEOUT_MS = 2_000;
let readers: SharedStateReaders | undefined;
let inFlight: Promise<SharedRead> | undefined;

interface SharedRead {
  pipeline?: PipelineSnapshot;
  databaseUp?: boolean;
  storeUp?: boolean;
}

/** The shared state for this scrape: every gauge's collect (a scrape starts them all at once) shares one read. */
function sharedState(): Promise<SharedRead> {
  if (!readers) return Promise.resolve({});
  const from = readers;
  inFlight ??= Promise.allSettled([
    within(from.pipeline(), SCRAPE_READ_TIMEOUT_MS),
    within(from.store(), SCRAPE_READ_TIMEOUT_MS),
  ])
    .then(([pipeline, store]) => ({
      pipeline: pipeline.status === 'fulfilled' ? pipeline.value : undefined,
      databaseUp: pipeline.status === 'fulfilled',
      storeUp: store.status === 'fulfilled',
    }))
    .finally(() => {
      inFlight = undefined;
    });
  return inFlight;
}

/**
 * Where the shared gauges read from. A database that does not answer within 2 s makes them NaN for that scrape (and
 * kiln_dependency_up{dependency="database"} 0); /metrics itself still answers.
 */
export function readSharedStateFrom(given: SharedStateReaders): void {
  readers = given;
}

/** The names of the shared gauges (read from the database, the same in every process: take their max, never sum). */
export const SHARED_GAUGES: string[] = [];

function pipelineGauge(name: string, help: string, pick: (s: PipelineSnapshot) => number | undefined): Gauge {
  SHARED_GAUGES.push(name);
  return new Gauge({
    name,
    help,
    registers: [registry],
    async collect() {
      const { pipeline } = await sharedState();
      // Unread (the database did not answer in time): NaN, never a reassuring 0 or a frozen figure. Alerts on the
      // figure stay quiet; KilnDatabaseUnavailable (kiln_dependency_up) says why.
      this.set(pipeline ? (pick(pipeline) ?? Number.NaN) : Number.NaN);
    },
  });
}

pipelineGauge(
  'build_queue_depth',
  'Builds queued, waiting for a runner (all processes; from the database)',
  (s) => s.queuedBuilds,
);
pipelineGauge('active_builds', 'Builds building now (all processes; from the database)', (s) => s.buildingBuilds);
pipelineGauge(
  'kiln_oldest_queued_build_age_seconds',
  'How long the oldest queued build has waited (0 when none waits; from the database)',
  (s) => s.oldestQueuedAgeSeconds,
);
pipelineGauge(
  'kiln_credit_holds_active',
  'Credit holds active and unexpired (all users; from the database)',
  (s) => s.activeHolds,
);
pipelineGauge(
  'kiln_credits_reserved',
  'Credits held by active, unexpired holds (all users; from the database)',
  (s) => s.reservedCredits,
);
pipelineGauge(
  'kiln_instances_live',
  'Kiln processes that renewed their line in service_instances within its lease (INSTANCE_LEASE_S)',
  (s) => s.liveInstances,
);
pipelineGauge(
  'kiln_instances_dead',
  'Kiln processes whose line in service_instances went unrenewed past its lease (crashed or stalled; lines go a day after)',
  (s) => s.deadInstances,
);
pipelineGauge(
  'kiln_webhook_deliveries_pending',
  'Webhook messages waiting for delivery or a retry (all processes; from the database)',
  (s) => s.webhookPending,
);
pipelineGauge(
  'kiln_webhook_oldest_due_seconds',
  'How long the most overdue webhook attempt has been due (0 when none is; from the database): delivery is behind',
  (s) => s.webhookOldestDueSeconds,
);
pipelineGauge(
  'kiln_credit_audit_problems',
  'Problems found by the latest full credit audit (0 = the books balance, or no audit yet; at most 1000 are counted)',
  (s) => s.audit?.problems ?? 0,
);
pipelineGauge(
  'kiln_credit_audit_last_run_timestamp_seconds',
  'Unix time of the latest full credit audit (0 = none yet)',
  (s) => (s.audit ? s.audit.ranAt.getTime() / 1000 : 0),
);

new Gauge({
  name: 'kiln_dependency_up',
  help: 'Whether a dependency answered this scrape, as this process sees it: 1 yes, 0 no (database: the pipeline read; store: Redis, or the store tables of the database)',
  labelNames: ['dependency'] as const,
  registers: [registry],
  async collect() {
    const { databaseUp, storeUp } = await sharedState();
    if (databaseUp !== undefined) this.set({ dependency: 'database' }, databaseUp ? 1 : 0);
    if (storeUp !== undefined) this.set({ dependency: 'store' }, storeUp ? 1 : 0);
  },
});

// ---------------------------------------------------------------------------------------------------------------
// Exposition

/** The content type of the OpenMetrics text format. */
export const OPENMETRICS_CONTENT_TYPE = 'application/openmetrics-text; version=1.0.0; charset=utf-8';

/** True when an Accept header asks for OpenMetrics (as Prometheus does by default) rather than the text format. */
export function wantsOpenMetrics(accept: string | undefined): boolean {
  if (!accept) return false;
  return accept.split(',').some((part) => {
    const [type, ...params] = part.split(';').map((p) => p.trim().toLowerCase());
    const q = params.find((p) => p.startsWith('q='));
    return type === 'application/openmetrics-text' && (q === undefined || Number(q.slice(2)) > 0);
  });
}

/**
 * The registry's Prometheus text as OpenMetrics 1.0: a counter's family is named without `_total` (its samples keep
 * it), no blank lines, and `# EOF` at the end. Done on the text because prom-client's own OpenMetrics mode renames
 * the counters it shares with the text format in place.
 */
export function toOpenMetrics(text: string): string {
  const counters = new Set<string>();
  for (const match of text.matchAll(/^# TYPE (\S+) counter$/gm)) counters.add(match[1]);
  const lines = text.split('\n').flatMap((line) => {
    if (line === '') return [];
    const meta = /^# (HELP|TYPE) (\S+)(.*)$/.exec(line);
    if (!meta) return [line];
    // OpenMetrics escapes " in HELP text; the text format escapes only \\ and \n, there and here alike.
    const rest = meta[1] === 'HELP' ? meta[3].replaceAll('"', '\\"') : meta[3];
    const name = counters.has(meta[2]) && meta[2].endsWith('_total') ? meta[2].slice(0, -'_total'.length) : meta[2];
    return [`# ${meta[1]} ${name}${rest}`];
  });
  return `${lines.join('\n')}\n# EOF\n`;
}
