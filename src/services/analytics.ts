import type { Logger } from 'pino';
import { foldAnalytics, readBuildAnalytics, readUsageAnalytics } from '../db/analytics';
import type { Database, Queryable } from '../db/database';
import {
  type AnalyticsRange,
  bucketStarts,
  checkRange,
  PERCENTILE_RELATIVE_ERROR,
  type RangeIssue,
} from '../domain/analytics';
import { type BuildAnalytics, buildReport, type UsageAnalytics, usageReport } from '../domain/analytics-report';
import { ApiError } from '../domain/errors';
import { startBatchedJob } from './periodic';

export type { BuildAnalytics, UsageAnalytics };

/** How many users the usage report names. */
const TOP_USERS = 10;
/** Rows of each source one fold transaction takes at most (a short transaction; the loop takes the next batch). */
const FOLD_BATCH = 5_000;

const ID = /^[A-Za-z0-9_-]{1,64}$/;
const TOKEN = /^[\w.:@-]{1,128}$/;

/** The query parameters of the analytics routes, as given (every one checked here, every problem listed). */
export interface AnalyticsQuery {
  from?: string;
  to?: string;
  interval?: string;
  timezone?: string;
  projectId?: string;
  userId?: string;
  segment?: string;
}

function refuse(issues: RangeIssue[]): ApiError {
  return new ApiError(
    'VALIDATION_ERROR',
    `The query has ${issues.length} invalid parameter${issues.length === 1 ? '' : 's'}: ${issues.map((i) => i.path.replace('query.', '')).join(', ')}. Fix ${issues.length === 1 ? 'it' : 'them'} and ask again.`,
    { issues },
  );
}

/** The parameters checked here; what the route's schema says of any other (an unknown one) is kept. */
const PARAMETERS = ['from', 'to', 'interval', 'timezone', 'projectId', 'userId', 'segment'].map((p) => `query.${p}`);

/**
 * Check a query's parameters, listing every problem, with what the route's schema found of parameters not checked
 * here (unknown ones). Throws 400 VALIDATION_ERROR naming each.
 */
function checkQuery(query: AnalyticsQuery, schemaIssues: RangeIssue[], withSegment: boolean): AnalyticsRange {
  const checked = checkRange(query);
  const issues = 'issues' in checked ? [...checked.issues] : [];
  if (query.projectId !== undefined && !ID.test(query.projectId)) {
    issues.push({ path: 'query.projectId', message: 'must be a project id (1-64 of A-Z a-z 0-9 _ -)' });
  }
  if (query.userId !== undefined && !TOKEN.test(query.userId)) {
    issues.push({ path: 'query.userId', message: 'must be a user id (1-128 of word characters and . : @ -)' });
  }
  if (withSegment && query.segment !== undefined && !['plan', 'operation'].includes(query.segment)) {
    issues.push({ path: 'query.segment', message: `must be plan or operation, got "${query.segment.slice(0, 40)}"` });
  }
  issues.push(...schemaIssues.filter((i) => !PARAMETERS.includes(i.path)));
  if (issues.length > 0 || 'issues' in checked) throw refuse(issues);
  return checked.range;
}

/**
 * GET /v1/analytics/builds: created, deployed, failed (by reason), cancelled, success rate, duration and queue-wait
 * percentiles per bucket and in total, and the patterns (framework, hour of day, day of week, features), for
 * everyone, one project or one user.
 */
export async function buildAnalytics(
  q: Queryable,
  query: AnalyticsQuery,
  schemaIssues: RangeIssue[] = [],
): Promise<BuildAnalytics> {
  const range = checkQuery(query, schemaIssues, false);
  const filter = { projectId: query.projectId, userId: query.userId };
  const rows = await readBuildAnalytics(
    q,
    {
      from: range.from,
      to: range.to,
      starts: bucketStarts(range),
      timeZone: range.timeZone,
      utcDays: range.interval === 'day' && range.timeZone === 'UTC',
    },
    filter,
  );
  return buildReport(rows, range, filter, PERCENTILE_RELATIVE_ERROR);
}

/** The whole UTC days holding [from, to): the window of the top users. */
function utcDays(range: AnalyticsRange): { from: string; to: string } {
  const from = range.from.toISOString().slice(0, 10);
  const end = new Date(range.to.getTime() - 1);
  const to = new Date(Date.UTC(end.getUTCFullYear(), end.getUTCMonth(), end.getUTCDate() + 1));
  return { from, to: to.toISOString().slice(0, 10) };
}

/**
 * GET /v1/analytics/usage: credits granted, reserved, charged, refunded, released and expired per bucket and
 * segment (plan, or operation), totals that are the ledger's movements in the range, and the top users.
 */
export async function usageAnalytics(
  q: Queryable,
  query: AnalyticsQuery,
  schemaIssues: RangeIssue[] = [],
): Promise<UsageAnalytics> {
  const range = checkQuery(query, schemaIssues, true);
  const segment = (query.segment ?? 'plan') as 'plan' | 'operation';
  const days = utcDays(range);
  const rows = await readUsageAnalytics(
    q,
    {
      from: range.from,
      to: range.to,
      starts: bucketStarts(range),
      fromDay: days.from,
      toDay: days.to,
      utcDays: range.interval === 'day' && range.timeZone === 'UTC',
    },
    segment,
    TOP_USERS,
    query.userId,
  );
  return usageReport(
    rows,
    range,
    segment,
    query.userId,
    query.userId === undefined
      ? days
      : {
          from: range.from.toISOString(),
          to: range.to.toISOString(),
        },
  );
}

/**
 * Fold settled events and ledger entries into the analytics rollups every `intervalMs`, in every process (one at a
 * time: a process that finds another folding skips its turn). Returns a function that stops it.
 */
export function startAnalyticsFolder(db: Database, logger: Logger, intervalMs: number): () => void {
  return startBatchedJob({
    everyMs: intervalMs,
    logger,
    batch: async () => {
      const { events, entries } = await foldAnalytics(db, FOLD_BATCH);
      // -1: another process is folding; a full batch: more is waiting.
      return events === FOLD_BATCH || entries === FOLD_BATCH ? events + entries : 0;
    },
    done: (rows) => [{ rows }, 'folded a backlog into the analytics rollups'],
    failure: 'analytics fold failed; will retry',
  });
}
