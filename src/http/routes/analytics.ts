import { type TSchema, Type } from '@sinclair/typebox';
import type { FastifyError, FastifyRequest } from 'fastify';
import { type AnalyticsQuery, buildAnalytics, usageAnalytics } from '../../services/analytics';
import type { App, AppDeps } from '../app';
import { validationIssues } from '../errors';

const Nullable = <T extends TSchema>(schema: T) => Type.Union([schema, Type.Null()]);
const Count = Type.Integer({ minimum: 0 });
const Seconds = Nullable(Type.Number({ minimum: 0 }));
const DateTime = Type.String({ format: 'date-time' });

const RangeQuery = {
  from: Type.Optional(
    Type.String({
      maxLength: 40,
      description:
        'Start (inclusive): a date-time with a zone on a bucket edge (2026-12-01T00:00:00Z), or a date (midnight in timezone). Required.',
      examples: ['2026-11-04T00:00:00Z'],
    }),
  ),
  to: Type.Optional(
    Type.String({
      maxLength: 40,
      description: 'End (exclusive), as from; at most 366 days and 1000 buckets after it. Required.',
      examples: ['2026-12-04T00:00:00Z'],
    }),
  ),
  interval: Type.Optional(
    Type.String({
      enum: ['hour', 'day'],
      default: 'day',
      description: 'Bucket size: hour (UTC hours) or day (days in timezone)',
    }),
  ),
  timezone: Type.Optional(
    Type.String({
      maxLength: 64,
      default: 'UTC',
      description:
        'IANA time zone of day buckets and of the hour-of-day and weekday patterns; its offset must be whole hours',
      examples: ['Europe/Berlin'],
    }),
  ),
  userId: Type.Optional(Type.String({ maxLength: 128, description: 'Only this user’s figures' })),
};

const Percentiles = Type.Object({ p50: Seconds, p95: Seconds, p99: Type.Optional(Seconds) });
const BuildFigures = {
  created: Count,
  deployed: Count,
  failed: Count,
  failedByReason: Type.Record(Type.String(), Count, {
    description:
      'exit_code, timeout, worker_lost, hold_expired, hold_lost, hold_resolved, executor_error, shutdown, other',
  }),
  cancelled: Count,
  successRate: Nullable(Type.Number({ minimum: 0, maximum: 1, description: 'deployed / (deployed + failed)' })),
  durationSeconds: Percentiles,
  queueWaitSeconds: Percentiles,
};

const BuildAnalyticsSchema = Type.Object(
  {
    from: DateTime,
    to: DateTime,
    interval: Type.String(),
    timezone: Type.String(),
    projectId: Nullable(Type.String()),
    userId: Nullable(Type.String()),
    totals: Type.Object(BuildFigures),
    series: Type.Array(Type.Object({ start: DateTime, end: DateTime, ...BuildFigures }), {
      description: 'Every bucket of [from, to), zeros included',
    }),
    patterns: Type.Object({
      byFramework: Type.Array(
        Type.Object({
          framework: Nullable(Type.String()),
          created: Count,
          deployed: Count,
          failed: Count,
          cancelled: Count,
          successRate: BuildFigures.successRate,
        }),
      ),
      byHourOfDay: Type.Array(Type.Object({ hour: Count, created: Count, queueWaitSeconds: Percentiles })),
      byDayOfWeek: Type.Array(Type.Object({ isoWeekday: Count, day: Type.String(), created: Count })),
      topFeatures: Type.Array(Type.Object({ feature: Type.String(), builds: Count }), {
        description: 'The ten metadata.features tags most builds carried',
      }),
    }),
    percentiles: Type.Object({
      method: Type.String(),
      rank: Type.String(),
      maxRelativeError: Type.Number({ description: 'Largest error of a reported percentile, relative (above 1 ms)' }),
    }),
  },
  { title: 'BuildAnalytics' },
);

const Credits = {
  granted: Type.Integer(),
  reserved: Type.Integer(),
  charged: Type.Integer({ description: 'Consumed: committed from holds, and charged beyond them' }),
  refunded: Type.Integer({ description: 'The rest of committed holds, given back' }),
  released: Type.Integer(),
  expired: Type.Integer(),
};
const Usage = { ...Credits, entries: Count };
const SegmentUsage = Type.Object({ segment: Type.String(), ...Usage });

const UsageAnalyticsSchema = Type.Object(
  {
    from: DateTime,
    to: DateTime,
    interval: Type.String(),
    timezone: Type.String(),
    segment: Type.String(),
    userId: Nullable(Type.String()),
    totals: Type.Object({ ...Usage, bySegment: Type.Array(SegmentUsage) }),
    series: Type.Array(Type.Object({ start: DateTime, end: DateTime, ...Usage, segments: Type.Array(SegmentUsage) }), {
      description: 'Every bucket of [from, to), each with every segment of the range, zeros included',
    }),
    topUsers: Type.Object({
      from: Type.String({ description: 'The top users cover the whole UTC days holding the range (everyone)' }),
      to: Type.String(),
      users: Type.Array(Type.Object({ userId: Type.String(), plan: Type.String(), ...Credits })),
    }),
  },
  { title: 'UsageAnalytics' },
);

/** The schema's own findings about the query (attachValidation), as issues to list with the rest. */
function schemaIssues(request: FastifyRequest) {
  return request.validationError ? validationIssues(request.validationError as FastifyError) : [];
}

/** Analytics (SPEC section 7): build patterns and credit usage over a range, for everyone or one project or user. */
export function registerAnalyticsRoutes(app: App, deps: AppDeps): void {
  buildAnalyticsRoute(app, deps);
  usageAnalyticsRoute(app, deps);
}

/** GET /v1/analytics/builds */
function buildAnalyticsRoute(app: App, deps: AppDeps): void {
  app.get(
    '/v1/analytics/builds',
    {
      attachValidation: true,
      schema: {
        tags: ['analytics'],
        summary: 'Build counts, outcomes, success rate, duration and queue-wait percentiles per bucket, and patterns',
        querystring: Type.Object(
          {
            ...RangeQuery,
            projectId: Type.Optional(Type.String({ maxLength: 64, description: 'Only this project’s builds' })),
          },
          { additionalProperties: false },
        ),
        response: { 200: BuildAnalyticsSchema },
      },
    },
    async (request) => buildAnalytics(deps.db, request.query as AnalyticsQuery, schemaIssues(request)),
  );
}

/** GET /v1/analytics/usage */
function usageAnalyticsRoute(app: App, deps: AppDeps): void {
  app.get(
    '/v1/analytics/usage',
    {
      attachValidation: true,
      schema: {
        tags: ['analytics'],
        summary: 'Credits granted, reserved, charged, refunded, released and expired per bucket and segment; top users',
        querystring: Type.Object(
          {
            ...RangeQuery,
            segment: Type.Optional(
              Type.String({
                enum: ['plan', 'operation'],
                default: 'plan',
                description:
                  'plan: the user’s plan when the credits moved; operation: the build’s metadata.operation (none: no build)',
              }),
            ),
          },
          { additionalProperties: false },
        ),
        response: { 200: UsageAnalyticsSchema },
      },
    },
    async (request) => usageAnalytics(deps.db, request.query as AnalyticsQuery, schemaIssues(request)),
  );
}
