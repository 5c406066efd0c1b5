import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { type TSchema, Type } from '@sinclair/typebox';
import { rootPath } from '../../paths';
import { dashboardReader } from '../../services/dashboard';
import type { PipelineSnapshot } from '../../services/pipeline';
import type { App, AppDeps } from '../app';
import { requireMetricsToken } from './ops';

// The page: one static file (HTML, inline CSS and JS, no build step), read once, found through rootPath (from src/
// and from the dist/ bundle alike).
const PAGE = readFileSync(rootPath('static', 'dashboard.html'), 'utf8');

/** A CSP allowing exactly the page's inline script and style (by hash) and fetches to this origin. */
function contentSecurityPolicy(page: string): string {
  const hashes = (tag: string) =>
    [...page.matchAll(new RegExp(`<${tag}>([\\s\\S]*?)</${tag}>`, 'g'))]
      .map((m) => `'sha256-${createHash('sha256').update(m[1]).digest('base64')}'`)
      .join(' ');
  return [
    "default-src 'none'",
    `script-src ${hashes('script')}`,
    `style-src ${hashes('style')}`,
    "connect-src 'self'",
    "img-src 'self' data:",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
  ].join('; ');
}
const PAGE_HEADERS = {
  'content-type': 'text/html; charset=utf-8',
  'cache-control': 'no-cache',
  'content-security-policy': contentSecurityPolicy(PAGE),
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
};

const Nullable = <T extends TSchema>(schema: T) => Type.Union([schema, Type.Null()]);
const DateTime = Type.String({ format: 'date-time' });
const Count = Type.Integer({ minimum: 0 });

const DashboardSchema = Type.Object(
  {
    generatedAt: DateTime,
    version: Type.String(),
    pipeline: Type.Object({
      queuedBuilds: Count,
      oldestQueuedAgeSeconds: Type.Number({ description: '0 when none waits' }),
      oldestQueuedBuildId: Nullable(Type.String({ description: 'the build runners claim next' })),
      buildingBuilds: Count,
      activeHolds: Count,
      reservedCredits: Type.Integer(),
      liveInstances: Count,
      deadInstances: Type.Integer({ minimum: 0, description: 'lines not renewed within their lease (kept a day)' }),
    }),
    active: Type.Array(
      Type.Object({
        id: Type.String(),
        projectId: Type.String(),
        userId: Type.String(),
        startedAt: Nullable(DateTime),
        ageSeconds: Type.Number(),
        progress: Nullable(Type.Number({ description: "the latest progress event's figure, 0..1" })),
        phase: Nullable(Type.String()),
        message: Nullable(Type.String()),
        runner: Nullable(Type.String({ description: 'the runner holding the lease' })),
      }),
      { description: 'builds building now, oldest first (at most 50)' },
    ),
    recent: Type.Array(
      Type.Object({
        id: Type.String(),
        projectId: Type.String(),
        userId: Type.String(),
        state: Type.String(),
        reason: Nullable(Type.String()),
        createdAt: DateTime,
        startedAt: Nullable(DateTime),
        finishedAt: Nullable(DateTime),
        durationSeconds: Nullable(Type.Number({ description: 'start to end (or now); null if never started' })),
      }),
      { description: 'the 20 builds created last, newest first' },
    ),
    lastHour: Type.Object(
      {
        deployed: Count,
        failed: Count,
        cancelled: Count,
        successRate: Nullable(Type.Number({ description: 'deployed / (deployed + failed)' })),
        failuresByReason: Type.Array(Type.Object({ reason: Type.String(), count: Count })),
      },
      { description: 'builds that ended in the last hour' },
    ),
    credits: Type.Object({
      lastHour: Type.Object(
        {
          granted: Type.Integer(),
          reserved: Type.Integer(),
          charged: Type.Integer({ description: 'consumed: committed from holds plus charged beyond them' }),
          refunded: Type.Integer({ description: 'the rest of committed holds, given back' }),
          released: Type.Integer(),
          expired: Type.Integer(),
          entries: Count,
        },
        { description: 'credits moved in the last hour, from the ledger' },
      ),
      activeHolds: Count,
      reservedCredits: Type.Integer(),
    }),
    routes: Type.Array(
      Type.Object({
        method: Type.String(),
        route: Type.String(),
        requests: Count,
        clientErrors: Count,
        serverErrors: Count,
        errorRate: Type.Number({ description: '(4xx + 5xx) / requests' }),
        serverErrorRate: Type.Number({ description: '5xx / requests' }),
      }),
      { description: 'requests this process answered since it started, by route' },
    ),
    audit: Nullable(
      Type.Object({
        ranAt: DateTime,
        problems: Count,
        ok: Type.Boolean(),
        ageSeconds: Type.Number(),
        stale: Type.Boolean({ description: 'older than twice CREDIT_AUDIT_INTERVAL_S' }),
      }),
    ),
    auditIntervalSeconds: Count,
    dependencies: Type.Object({
      database: Type.Literal('up'),
      store: Type.Union([Type.Literal('up'), Type.Literal('down')]),
    }),
    instances: Type.Array(
      Type.Object({
        id: Type.String(),
        hostname: Type.String(),
        pid: Type.Integer(),
        version: Type.String(),
        state: Type.Union([Type.Literal('live'), Type.Literal('dead')], {
          description: 'dead: its line was not renewed within its lease (crashed or stalled)',
        }),
        startedAt: DateTime,
        silentSeconds: Type.Number({ description: 'since its last renewal' }),
        leaseSeconds: Count,
        health: Type.Object(
          {},
          {
            additionalProperties: true,
            description:
              'what it said of itself at its last renewal: store (up|down), buildsRunning, runnerConcurrency, rssMb, heapUsedMb, eventLoopDelayP99Ms, uptimeSeconds',
          },
        ),
      }),
      { description: "every Kiln process's line in service_instances: live first; dead ones for a day" },
    ),
  },
  { title: 'Dashboard' },
);

/**
 * The live page (SPEC section 7): `GET /dashboard`, a static page holding no data (served without a token), and
 * `GET /dashboard/data`, its figures (Authorization: Bearer METRICS_TOKEN when that is set). The pipeline part
 * comes from the reader /metrics uses.
 */
export function registerDashboardRoutes(app: App, deps: AppDeps, pipeline: () => Promise<PipelineSnapshot>): void {
  const read = dashboardReader({
    db: deps.db,
    pipeline,
    storeAnswers: () => deps.store.ping(),
    auditIntervalS: deps.config.creditAuditIntervalS,
    version: deps.version,
  });

  app.get(
    '/dashboard',
    {
      schema: {
        tags: ['ops'],
        summary: 'The live page: queue, builds, outcomes, credits, errors by route, the audit (refreshes itself)',
        response: { 200: { description: 'An HTML page', content: { 'text/html': { schema: Type.String() } } } },
      },
    },
    async (_request, reply) => reply.headers(PAGE_HEADERS).send(PAGE),
  );

  app.get(
    '/dashboard/data',
    {
      config: { errors: ['UNAUTHORIZED'] },
      schema: {
        tags: ['ops'],
        summary: "The live page's figures (Authorization: Bearer METRICS_TOKEN when set)",
        response: { 200: DashboardSchema },
      },
    },
    async (request, reply) => {
      requireMetricsToken(deps, request.headers.authorization, "read the live page's figures");
      reply.header('cache-control', 'no-store');
      return read();
    },
  );
}
