import {
  type EndedBuildsRow,
  type LedgerSumRow,
  readActiveBuilds,
  readEndedBuilds,
  readLedgerSums,
  readOldestQueuedBuildId,
  readRecentBuilds,
} from '../db/dashboard';
import type { Queryable } from '../db/database';
import { listInstances } from '../db/instances';
import { ApiError } from '../domain/errors';
import { requestsByRoute } from '../metrics';
import { storeState } from './health';
import type { PipelineSnapshot } from './pipeline';
import { sharedRead, TimedOut, within } from './shared-read';

/** The window of the page's "last hour" figures. */
const LAST_HOUR_S = 3600;
/** How long one read serves every viewer of this process (the pipeline reader keeps its own second too). */
const MAX_AGE_MS = 1_000;
/** How long the page's reads may take before it answers 503 naming the database. */
const READ_LIMIT_MS = 3_000;
/** How long the store's ping may take before the page calls it down. */
const STORE_PING_MS = 1_500;

export interface DashboardSources {
  /** Where the page's own reads go (the builds and the ledger). */
  db: Queryable;
  /** The process's one pipeline reader, shared with /metrics: the same figures, from the same read. */
  pipeline: () => Promise<PipelineSnapshot>;
  /** Resolves when the store answers (Redis, or the store tables of the database). */
  storeAnswers: () => Promise<void>;
  /** CREDIT_AUDIT_INTERVAL_S: the latest audit is stale when older than twice it (0: never stale). */
  auditIntervalS: number;
  version: string;
}

export interface DashboardRoute {
  method: string;
  route: string;
  requests: number;
  clientErrors: number;
  serverErrors: number;
  /** (4xx + 5xx) / requests. */
  errorRate: number;
  /** 5xx / requests. */
  serverErrorRate: number;
}

/** What the live page shows (GET /dashboard/data). */
export interface Dashboard {
  generatedAt: string;
  version: string;
  pipeline: PipelineFigures;
  active: ActiveBuild[];
  recent: RecentBuild[];
  lastHour: {
    deployed: number;
    failed: number;
    cancelled: number;
    /** deployed / (deployed + failed); null when none ended either way. */
    successRate: number | null;
    failuresByReason: { reason: string; count: number }[];
  };
  credits: {
    lastHour: CreditFlows;
    activeHolds: number;
    reservedCredits: number;
  };
  /** This process's requests since it started (each process counts its own). */
  routes: DashboardRoute[];
  /** The latest full credit audit; null before the first. */
  audit: { ranAt: string; problems: number; ok: boolean; ageSeconds: number; stale: boolean } | null;
  auditIntervalSeconds: number;
  dependencies: { database: 'up'; store: 'up' | 'down' };
  /** Every Kiln process's line in service_instances: live ones first; dead ones for a day after they went silent. */
  instances: InstanceFigures[];
}

export interface InstanceFigures {
  id: string;
  hostname: string;
  pid: number;
  version: string;
  state: 'live' | 'dead';
  startedAt: string;
  /** Seconds since the process last renewed its line. */
  silentSeconds: number;
  leaseSeconds: number;
  /** What it said of itself at its last renewal (src/services/instances.ts, InstanceHealth). */
  health: Record<string, unknown>;
}

export interface PipelineFigures {
  queuedBuilds: number;
  oldestQueuedAgeSeconds: number;
  /** The build runners claim next; null when none waits. */
  oldestQueuedBuildId: string | null;
  buildingBuilds: number;
  activeHolds: number;
  reservedCredits: number;
  liveInstances: number;
  deadInstances: number;
}

export interface ActiveBuild {
  id: string;
  projectId: string;
  userId: string;
  startedAt: string | null;
  ageSeconds: number;
  progress: number | null;
  phase: string | null;
  message: string | null;
  runner: string | null;
}

export interface RecentBuild {
  id: string;
  projectId: string;
  userId: string;
  state: string;
  reason: string | null;
  createdAt: string;
  startedAt: string | null;
  finishedAt: string | null;
  durationSeconds: number | null;
}

/** Credits moved in the window, by kind (each a positive figure). */
export interface CreditFlows {
  granted: number;
  reserved: number;
  /** Consumed: committed from holds plus charged beyond them. */
  charged: number;
  /** The rest of committed holds, given back. */
  refunded: number;
  released: number;
  expired: number;
  entries: number;
}

const iso = (date: Date | null) => (date === null ? null : date.toISOString());

/** Credits by kind from the ledger's sums by type (amount = signed change of balance, reservedChange of reserved). */
export function creditFlows(sums: LedgerSumRow[]): CreditFlows {
  const of = (type: string) => sums.find((s) => s.type === type) ?? { amount: 0, reservedChange: 0, entries: 0 };
  const commit = of('commit');
  return {
    granted: of('grant').amount,
    reserved: of('reserve').reservedChange,
    charged: -commit.amount - of('charge').amount,
    // A commit frees its whole hold (-reservedChange) and takes part of it from the balance (-amount).
    refunded: -commit.reservedChange + commit.amount,
    released: -of('release').reservedChange,
    expired: -of('expire').reservedChange,
    entries: sums.reduce((n, s) => n + s.entries, 0),
  };
}

/** Builds that ended in the window, by outcome, with the success rate and failures by reason. */
export function outcomes(rows: EndedBuildsRow[]): Dashboard['lastHour'] {
  const count = (state: string) => rows.filter((r) => r.state === state).reduce((n, r) => n + r.count, 0);
  const deployed = count('deployed');
  const failed = count('failed');
  const reasons = new Map<string, number>();
  for (const row of rows) {
    if (row.state !== 'failed') continue;
    const reason = row.reason ?? 'unspecified';
    reasons.set(reason, (reasons.get(reason) ?? 0) + row.count);
  }
  return {
    deployed,
    failed,
    cancelled: count('cancelled'),
    successRate: deployed + failed === 0 ? null : deployed / (deployed + failed),
    failuresByReason: [...reasons]
      .map(([reason, n]) => ({ reason, count: n }))
      .sort((a, b) => b.count - a.count || a.reason.localeCompare(b.reason)),
  };
}

/** This process's requests by route, with their error rates, the most errors first. */
function routeFigures(): DashboardRoute[] {
  return requestsByRoute()
    .map((r) => ({
      ...r,
      errorRate: r.requests === 0 ? 0 : (r.clientErrors + r.serverErrors) / r.requests,
      serverErrorRate: r.requests === 0 ? 0 : r.serverErrors / r.requests,
    }))
    .sort(
      (a, b) =>
        b.serverErrors - a.serverErrors ||
        b.clientErrors + b.serverErrors - (a.clientErrors + a.serverErrors) ||
        b.requests - a.requests ||
        `${a.route} ${a.method}`.localeCompare(`${b.route} ${b.method}`),
    );
}

/** Read everything the page shows, at once: the pipeline from the shared reader, the rest in parallel. */
export async function readDashboard(from: DashboardSources): Promise<Dashboard> {
  const reads = Promise.all([
    from.pipeline(),
    readOldestQueuedBuildId(from.db),
    readActiveBuilds(from.db),
    readRecentBuilds(from.db),
    readEndedBuilds(from.db, LAST_HOUR_S),
    readLedgerSums(from.db, LAST_HOUR_S),
    storeState(from.storeAnswers, STORE_PING_MS),
    listInstances(from.db),
  ]);
  // A database that does not answer in time is said at once (503 naming it), not after the page's own timeout.
  const [pipeline, oldestId, active, recent, ended, ledger, store, instances] = await within(
    reads,
    READ_LIMIT_MS,
  ).catch((error: unknown) => {
    if (!(error instanceof TimedOut)) throw error;
    throw new ApiError(
      'SERVICE_UNAVAILABLE',
      'The database did not answer the live page in time; its figures will come back when it does. Retry after 5 s.',
      { dependency: 'database' },
      { 'retry-after': 5 },
    );
  });
  const now = Date.now();
  const audit = pipeline.audit;
  const auditAge = audit ? Math.max(0, (now - audit.ranAt.getTime()) / 1000) : 0;
  return {
    generatedAt: new Date(now).toISOString(),
    version: from.version,
    pipeline: {
      queuedBuilds: pipeline.queuedBuilds,
      oldestQueuedAgeSeconds: pipeline.oldestQueuedAgeSeconds,
      oldestQueuedBuildId: pipeline.queuedBuilds > 0 ? (oldestId ?? null) : null,
      buildingBuilds: pipeline.buildingBuilds,
      activeHolds: pipeline.activeHolds,
      reservedCredits: pipeline.reservedCredits,
      liveInstances: pipeline.liveInstances,
      deadInstances: pipeline.deadInstances,
    },
    active: active.map((b) => ({ ...b, startedAt: iso(b.startedAt) })),
    recent: recent.map((b) => ({
      ...b,
      createdAt: b.createdAt.toISOString(),
      startedAt: iso(b.startedAt),
      finishedAt: iso(b.finishedAt),
    })),
    lastHour: outcomes(ended),
    credits: {
      lastHour: creditFlows(ledger),
      activeHolds: pipeline.activeHolds,
      reservedCredits: pipeline.reservedCredits,
    },
    routes: routeFigures(),
    audit: audit
      ? {
          ranAt: audit.ranAt.toISOString(),
          problems: audit.problems,
          ok: audit.problems === 0,
          ageSeconds: auditAge,
          stale: from.auditIntervalS > 0 && auditAge > 2 * from.auditIntervalS,
        }
      : null,
    auditIntervalSeconds: from.auditIntervalS,
    dependencies: { database: 'up', store },
    instances: instances.map((i) => ({
      id: i.id,
      hostname: i.hostname,
      pid: i.pid,
      version: i.version,
      state: i.state,
      startedAt: i.startedAt.toISOString(),
      silentSeconds: i.silentSeconds,
      leaseSeconds: i.leaseSeconds,
      health: i.health,
    })),
  };
}

/** The page's figures, read at most once a second per process however many pages poll (see sharedRead). */
export function dashboardReader(from: DashboardSources, maxAgeMs = MAX_AGE_MS): () => Promise<Dashboard> {
  return sharedRead(() => readDashboard(from), maxAgeMs);
}
