/**
 * Every environment variable Kiln reads, parsed and validated once.
 * `loadConfig` is a pure function of the environment so tests can pass their own.
 * A value that was given but is wrong stops start-up: we never fall back to a default for it.
 */

import { type Network, parseNetworkList } from './domain/ip-ranges';
import { type CreditPackage, DEFAULT_CREDIT_PACKAGES } from './domain/recommendation';
import { parseRetrySchedule } from './domain/webhooks';

export type { CreditPackage };
export { DEFAULT_CREDIT_PACKAGES };

export type HmacMode = 'v1' | 'dual' | 'v2';
export type BuildExecutor = 'command' | 'external';
export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';

export interface Config {
  port: number;
  host: string;
  databaseUrl: string | undefined;
  /** Connections in this process's PostgreSQL request pool (background work has a pool of its own). */
  databasePoolSize: number;
  /** Longest a request's SQL statement may run before it is cancelled (→ 503). */
  databaseStatementTimeoutS: number;
  /** Longest a request waits for a free connection of the pool before it is answered 503. */
  databasePoolTimeoutMs: number;
  /** PostgreSQL schema Kiln's tables live in (lets several deployments or test runs share one database). */
  databaseSchema: string;
  redisUrl: string | undefined;
  /** Prefix of every key Kiln writes to Redis or the in-process store. */
  redisPrefix: string;
  dataDir: string;
  /** Secrets from HMAC_SECRET / HMAC_SECRETS; empty means "generate one in DATA_DIR". */
  hmacSecrets: string[];
  hmacMode: HmacMode;
  /**
   * When v1 signatures stop being accepted. At start the configured value is reconciled with the instant recorded in
   * the database (src/services/settings.ts), and a running process picks up an instant another process recorded: the
   * one field of the configuration that may change while the process runs.
   */
  hmacV1Until: Date | undefined;
  signatureHeaderPrefix: string;
  idempotencyTtlS: number;
  idempotencyRequired: boolean;
  idempotencyLockS: number;
  /** The most keyed writes sent to the database together in one statement (1: each alone). */
  keyedGroupMax: number;
  timestampToleranceS: number;
  nonceTtlS: number;
  rateLimitUserPerMin: number;
  rateLimitIpPerMin: number;
  reservationTtlS: number;
  /** Seconds between sweeps that write lapsed holds' expiry into the ledger. */
  creditSweepIntervalS: number;
  /** Seconds between folds of new events and ledger entries into the analytics rollups (0: this process folds none). */
  analyticsFoldIntervalS: number;
  /** Seconds between full credit audits (between all processes); 0 = none but those asked for. */
  creditAuditIntervalS: number;
  buildExecutor: BuildExecutor;
  buildCommand: string | undefined;
  buildTimeoutS: number;
  runnerConcurrency: number;
  /** Seconds a runner holds a build without renewing; a lapsed lease fails the build as worker_lost. */
  buildLeaseS: number;
  /** Seconds a process's line in service_instances may go unrenewed before it is marked dead (renewed every third). */
  instanceLeaseS: number;
  /** Days after its end a build's workspace (this host's disk) is removed; 0 = never. */
  retentionWorkspaceDays: number;
  /** Days after its end a deployed build's preview is removed from the database; 0 = never. */
  retentionPreviewDays: number;
  /** Days after its end a build's events are removed (its finished webhook messages with them); 0 = never. */
  retentionEventDays: number;
  /** Days after it was delivered or given up a webhook message (and its attempts) is removed; 0 = never. */
  retentionWebhookDays: number;
  /** Seconds between retention runs in each process. */
  retentionIntervalS: number;
  /** Largest preview (all its files) copied into the database for every process to serve, in MB. */
  previewMaxMb: number;
  metricsToken: string | undefined;
  /** Resident memory one process should stay under, in MB (exported for the MemoryNearBudget alert). */
  memoryBudgetMb: number;
  /** Packages a user can buy; the 402 recommendation picks the cheapest that covers the shortfall. */
  creditPackages: CreditPackage[];
  /** Price of a build without reported credits: credits per started minute of build time. */
  creditsPerBuildMinute: number;
  /** Estimate when there is no history at all. */
  defaultEstimateCredits: number;
  /** Networks webhooks may reach despite the SSRF guard (WEBHOOK_ALLOWED_NETWORKS; tests, private networks). */
  webhookAllowedNetworks: Network[];
  /** Whether webhook URLs may be plain http:// (https only by default). */
  webhookAllowHttp: boolean;
  /** Seconds before each attempt of a delivery: the first (normally 0), then each retry's. */
  webhookRetryScheduleS: number[];
  /** Longest one attempt may take, connect to last byte. */
  webhookTimeoutS: number;
  /** An endpoint failing without a success for this long is disabled. */
  webhookDisableAfterS: number;
  /** Attempts in flight at once in this process (0: this process delivers nothing). */
  webhookConcurrency: number;
  /** After a rotation or a new URL, the previous secret signs too for this long. */
  webhookSecretOverlapS: number;
  logLevel: LogLevel;
  /** LOG_FORMAT: json lines, pretty lines for people, or auto (pretty when stdout is a terminal). */
  logFormat: 'json' | 'pretty' | 'auto';
  bodyLimitBytes: number;
  shutdownTimeoutS: number;
}

/** A configuration value that cannot be used; the message names the variable. */
export class ConfigError extends Error {
  constructor(
    readonly variable: string,
    message: string,
  ) {
    super(`${variable}: ${message}`);
    this.name = 'ConfigError';
  }
}

type Env = Record<string, string | undefined>;

function given(env: Env, name: string): string | undefined {
  const value = env[name];
  return value === undefined || value.trim() === '' ? undefined : value.trim();
}

function integer(env: Env, name: string, fallback: number, min: number, max: number): number {
  const raw = given(env, name);
  if (raw === undefined) return fallback;
  if (!/^-?\d+$/.test(raw)) throw new ConfigError(name, `expected an integer, got "${raw}"`);
  const value = Number(raw);
  if (value < min || value > max) throw new ConfigError(name, `expected ${min}..${max}, got ${value}`);
  return value;
}

function boolean(env: Env, name: string, fallback: boolean): boolean {
  const raw = given(env, name);
  if (raw === undefined) return fallback;
  if (/^(true|1|yes)$/i.test(raw)) return true;
  if (/^(false|0|no)$/i.test(raw)) return false;
  throw new ConfigError(name, `expected true or false, got "${raw}"`);
}

function oneOf<T extends string>(env: Env, name: string, allowed: readonly T[], fallback: T): T {
  const raw = given(env, name);
  if (raw === undefined) return fallback;
  if (!(allowed as readonly string[]).includes(raw)) {
    throw new ConfigError(name, `expected one of ${allowed.join(', ')}, got "${raw}"`);
  }
  return raw as T;
}

function url(env: Env, name: string, protocols: string[]): string | undefined {
  const raw = given(env, name);
  if (raw === undefined) return undefined;
  let parsed: URL;
  try {
    parsed = new URL(raw);
  } catch {
    // The value is not echoed: an unparsable URL is often one whose password holds a character needing %-encoding.
    throw new ConfigError(
      name,
      `not a URL (expected ${protocols.map((p) => `${p}//…`).join(' or ')}; %-encode special characters in the user and password, e.g. # as %23)`,
    );
  }
  if (!protocols.includes(parsed.protocol)) {
    throw new ConfigError(name, `expected a ${protocols.join(' or ')} URL, got "${parsed.protocol}"`);
  }
  if (!parsed.hostname) throw new ConfigError(name, 'the URL has no host');
  return raw;
}

function identifier(env: Env, name: string, fallback: string): string {
  const raw = given(env, name) ?? fallback;
  if (!/^[a-z_][a-z0-9_]{0,62}$/.test(raw)) {
    throw new ConfigError(name, `expected a lowercase SQL identifier (a-z, 0-9, _), got "${raw}"`);
  }
  return raw;
}

function secrets(env: Env): string[] {
  const list = [given(env, 'HMAC_SECRET'), ...(given(env, 'HMAC_SECRETS')?.split(',') ?? [])]
    .map((s) => s?.trim())
    .filter((s): s is string => Boolean(s));
  for (const secret of list) {
    if (secret.length < 16) throw new ConfigError('HMAC_SECRET', 'each secret must be at least 16 characters');
  }
  return [...new Set(list)];
}

function instant(env: Env, name: string): Date | undefined {
  const raw = given(env, name);
  if (raw === undefined) return undefined;
  const date = new Date(raw);
  if (Number.isNaN(date.getTime()) || !/^\d{4}-\d{2}-\d{2}/.test(raw)) {
    throw new ConfigError(name, `expected an ISO date-time such as 2026-12-31T00:00:00Z, got "${raw}"`);
  }
  return date;
}

function packages(env: Env): CreditPackage[] {
  const raw = given(env, 'CREDIT_PACKAGES');
  if (raw === undefined) return DEFAULT_CREDIT_PACKAGES;
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw);
  } catch {
    throw new ConfigError('CREDIT_PACKAGES', 'expected JSON such as [{"name":"pro","price":29.99,"credits":1000}]');
  }
  const valid =
    Array.isArray(parsed) &&
    parsed.length > 0 &&
    parsed.every(
      (p) =>
        p &&
        typeof p.name === 'string' &&
        /^[\w-]{1,32}$/.test(p.name) &&
        typeof p.price === 'number' &&
        p.price > 0 &&
        Number.isInteger(p.credits) &&
        p.credits > 0,
    );
  if (!valid) {
    throw new ConfigError(
      'CREDIT_PACKAGES',
      'expected a non-empty array of {name, price > 0, credits: positive integer}',
    );
  }
  return (parsed as CreditPackage[]).map(({ name, price, credits }) => ({ name, price, credits }));
}

const DAY = 86_400;

function networks(env: Env, name: string): Network[] {
  const { networks: parsed, errors } = parseNetworkList(given(env, name) ?? '');
  if (errors.length) throw new ConfigError(name, `expected comma-separated CIDRs: ${errors.join('; ')}`);
  return parsed;
}

function retrySchedule(env: Env, name: string, fallback: number[]): number[] {
  const raw = given(env, name);
  if (raw === undefined) return fallback;
  const schedule = parseRetrySchedule(raw);
  if (!schedule) {
    throw new ConfigError(name, `expected comma-separated seconds such as 0,5,300 (1 to 50 of them), got "${raw}"`);
  }
  return schedule;
}

/** Combinations that are each valid but unsafe together (SPEC section 1). */
function checkCombinations(config: Config): Config {
  if (config.nonceTtlS < 2 * config.timestampToleranceS) {
    throw new ConfigError(
      'NONCE_TTL_S',
      `must be at least twice TIMESTAMP_TOLERANCE_S (2 × ${config.timestampToleranceS} = ${2 * config.timestampToleranceS} s), got ${config.nonceTtlS}: a nonce forgotten sooner could be used again while its timestamp is still accepted`,
    );
  }
  if (config.reservationTtlS <= config.buildLeaseS) {
    throw new ConfigError(
      'RESERVATION_TTL_S',
      `must be greater than BUILD_LEASE_S (${config.buildLeaseS} s), got ${config.reservationTtlS}: a running build's hold is renewed with its lease and would lapse between renewals`,
    );
  }
  return config;
}

/** Parse and validate the whole configuration; throws ConfigError naming the first bad variable. */
export function loadConfig(env: Env = process.env): Config {
  const prefix = given(env, 'SIGNATURE_HEADER_PREFIX') ?? 'x-sheen';
  if (!/^[a-z0-9-]{1,40}$/i.test(prefix)) {
    throw new ConfigError('SIGNATURE_HEADER_PREFIX', `expected letters, digits and dashes, got "${prefix}"`);
  }
  const redisPrefix = given(env, 'REDIS_PREFIX') ?? 'kiln:';
  if (!/^[\w:.-]{1,64}$/.test(redisPrefix)) {
    throw new ConfigError('REDIS_PREFIX', `expected up to 64 of [A-Za-z0-9_:.-], got "${redisPrefix}"`);
  }
  const buildExecutor = oneOf(env, 'BUILD_EXECUTOR', ['command', 'external'] as const, 'command');
  return checkCombinations({
    port: integer(env, 'PORT', 8081, 0, 65_535),
    host: given(env, 'HOST') ?? '127.0.0.1',
    databaseUrl: url(env, 'DATABASE_URL', ['postgres:', 'postgresql:']),
    databaseSchema: identifier(env, 'DATABASE_SCHEMA', 'public'),
    databasePoolSize: integer(env, 'DATABASE_POOL_SIZE', 20, 2, 500),
    databaseStatementTimeoutS: integer(env, 'DATABASE_STATEMENT_TIMEOUT_S', 30, 1, 3600),
    databasePoolTimeoutMs: integer(env, 'DATABASE_POOL_TIMEOUT_MS', 2000, 50, 60_000),
    redisUrl: url(env, 'REDIS_URL', ['redis:', 'rediss:']),
    redisPrefix,
    dataDir: given(env, 'DATA_DIR') ?? './.kiln',
    hmacSecrets: secrets(env),
    hmacMode: oneOf(env, 'HMAC_MODE', ['v1', 'dual', 'v2'] as const, 'dual'),
    hmacV1Until: instant(env, 'HMAC_V1_UNTIL'),
    signatureHeaderPrefix: prefix.toLowerCase(),
    idempotencyTtlS: integer(env, 'IDEMPOTENCY_TTL_S', DAY, 1, 30 * DAY),
    idempotencyRequired: boolean(env, 'IDEMPOTENCY_REQUIRED', false),
    idempotencyLockS: integer(env, 'IDEMPOTENCY_LOCK_S', 30, 1, 3600),
    keyedGroupMax: integer(env, 'KEYED_GROUP_MAX', 16, 1, 32),
    timestampToleranceS: integer(env, 'TIMESTAMP_TOLERANCE_S', 120, 1, 3600),
    nonceTtlS: integer(env, 'NONCE_TTL_S', 600, 1, DAY),
    rateLimitUserPerMin: integer(env, 'RATE_LIMIT_USER_PER_MIN', 600, 0, 10_000_000),
    rateLimitIpPerMin: integer(env, 'RATE_LIMIT_IP_PER_MIN', 1200, 0, 10_000_000),
    reservationTtlS: integer(env, 'RESERVATION_TTL_S', 1800, 1, 30 * DAY),
    creditSweepIntervalS: integer(env, 'CREDIT_SWEEP_INTERVAL_S', 15, 1, 60),
    creditAuditIntervalS: integer(env, 'CREDIT_AUDIT_INTERVAL_S', 300, 0, DAY),
    analyticsFoldIntervalS: integer(env, 'ANALYTICS_FOLD_INTERVAL_S', 2, 0, 60),
    buildExecutor,
    buildCommand: given(env, 'BUILD_COMMAND'),
    buildTimeoutS: integer(env, 'BUILD_TIMEOUT_S', 1800, 1, DAY),
    runnerConcurrency: integer(env, 'RUNNER_CONCURRENCY', 2, 0, 256),
    buildLeaseS: integer(env, 'BUILD_LEASE_S', 30, 1, 3600),
    instanceLeaseS: integer(env, 'INSTANCE_LEASE_S', 30, 3, 3600),
    retentionWorkspaceDays: integer(env, 'RETENTION_WORKSPACE_DAYS', 7, 0, 36_500),
    retentionPreviewDays: integer(env, 'RETENTION_PREVIEW_DAYS', 30, 0, 36_500),
    retentionEventDays: integer(env, 'RETENTION_EVENT_DAYS', 0, 0, 36_500),
    retentionWebhookDays: integer(env, 'RETENTION_WEBHOOK_DAYS', 30, 0, 36_500),
    retentionIntervalS: integer(env, 'RETENTION_INTERVAL_S', 600, 1, DAY),
    previewMaxMb: integer(env, 'PREVIEW_MAX_MB', 16, 0, 256),
    metricsToken: given(env, 'METRICS_TOKEN'),
    // SPEC 8 aims at 200 MB for PostgreSQL + Redis, and start-up peaks near it: the budget leaves room above the aim.
    // Embedded, PGlite's own memory lives in the process too.
    memoryBudgetMb: integer(env, 'MEMORY_BUDGET_MB', given(env, 'DATABASE_URL') ? 256 : 768, 16, 1_048_576),
    creditPackages: packages(env),
    creditsPerBuildMinute: integer(env, 'CREDITS_PER_BUILD_MINUTE', 10, 0, 1_000_000),
    defaultEstimateCredits: integer(env, 'DEFAULT_ESTIMATE_CREDITS', 100, 0, 10_000_000),
    webhookAllowedNetworks: networks(env, 'WEBHOOK_ALLOWED_NETWORKS'),
    webhookAllowHttp: boolean(env, 'WEBHOOK_ALLOW_HTTP', false),
    // Standard Webhooks' suggested schedule: at once, then 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
    webhookRetryScheduleS: retrySchedule(env, 'WEBHOOK_RETRY_SCHEDULE', [0, 5, 300, 1800, 7200, 18000, 36000, 36000]),
    webhookTimeoutS: integer(env, 'WEBHOOK_TIMEOUT_S', 15, 1, 300),
    webhookDisableAfterS: integer(env, 'WEBHOOK_DISABLE_AFTER_S', 5 * DAY, 1, 365 * DAY),
    webhookConcurrency: integer(env, 'WEBHOOK_CONCURRENCY', 32, 0, 1024),
    webhookSecretOverlapS: integer(env, 'WEBHOOK_SECRET_OVERLAP_S', DAY, 0, 30 * DAY),
    logLevel: oneOf(env, 'LOG_LEVEL', ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const, 'info'),
    logFormat: oneOf(env, 'LOG_FORMAT', ['json', 'pretty', 'auto'] as const, 'auto'),
    bodyLimitBytes: integer(env, 'BODY_LIMIT_BYTES', 1_048_576, 1024, 64 * 1_048_576),
    shutdownTimeoutS: integer(env, 'SHUTDOWN_TIMEOUT_S', 10, 1, 600),
  });
}
