import { timingSafeEqual } from 'node:crypto';
import { Type } from '@sinclair/typebox';
import {
  OPENMETRICS_CONTENT_TYPE,
  readSharedStateFrom,
  registry,
  toOpenMetrics,
  wantsOpenMetrics,
} from '../../metrics';
import { databaseAnswers } from '../../services/health';
import type { PipelineSnapshot } from '../../services/pipeline';
import type { App, AppDeps } from '../app';
import { ApiError } from '../errors';

const CHECK_TIMEOUT_MS = 1_500;

export function bearerMatches(header: string | undefined, token: string): boolean {
  const given = Buffer.from(header?.startsWith('Bearer ') ? header.slice(7) : '');
  const expected = Buffer.from(token);
  return given.length === expected.length && timingSafeEqual(given, expected);
}

class CheckTimeout extends Error {}

type CheckResult = { status: 'ok' } | { status: 'down' | 'timeout'; error: unknown };

/** Probe one dependency: `ok`, `down` (it failed) or `timeout` (no answer in time), and the error for the log. */
async function check(probe: () => Promise<unknown>): Promise<CheckResult> {
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([
      probe(),
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new CheckTimeout(`no answer within ${CHECK_TIMEOUT_MS} ms`)), CHECK_TIMEOUT_MS);
      }),
    ]);
    return { status: 'ok' };
  } catch (error) {
    return { status: error instanceof CheckTimeout ? 'timeout' : 'down', error };
  } finally {
    clearTimeout(timer);
  }
}

const HealthSchema = Type.Object({
  status: Type.Literal('ok'),
  version: Type.String(),
  uptimeSeconds: Type.Number(),
});

const ReadySchema = Type.Object({
  status: Type.Literal('ready'),
  checks: Type.Object({ database: Type.Literal('ok'), store: Type.Literal('ok') }),
  instances: Type.Optional(
    Type.Object(
      { live: Type.Integer({ minimum: 0 }), dead: Type.Integer({ minimum: 0 }) },
      {
        description:
          'Kiln processes sharing this database: live renewed their line in service_instances within its lease; dead did not (crashed or stalled; counted for a day). Absent when it could not be read in time.',
      },
    ),
  ),
});

/** Liveness and readiness: unsigned, for load balancers and orchestrators. */
export function registerOpsRoutes(app: App, deps: AppDeps, pipeline: () => Promise<PipelineSnapshot>): void {
  const startedAt = Date.now();
  // The shared gauges (queue, builds running, holds, the latest audit) read the database at scrape, through the
  // reader the live page shares; the store's gauge pings it.
  readSharedStateFrom({ pipeline, store: () => deps.store.ping() });
  app.get(
    '/healthz',
    { schema: { tags: ['ops'], summary: 'The process is alive', response: { 200: HealthSchema } } },
    async () => ({ status: 'ok' as const, version: deps.version, uptimeSeconds: (Date.now() - startedAt) / 1000 }),
  );

  app.get(
    '/readyz',
    {
      schema: {
        tags: ['ops'],
        summary: 'The database and the store both answer (and how many Kiln processes are live and dead)',
        response: { 200: ReadySchema },
      },
    },
    async (request) => {
      let instances: { live: number; dead: number } | undefined;
      const [database, store] = await Promise.all([
        check(() => databaseAnswers(deps.db)),
        check(() => deps.store.ping()),
        // From the pipeline reader /metrics and the live page share (one read a second at most).
        check(async () => {
          const { liveInstances, deadInstances } = await pipeline();
          instances = { live: liveInstances, dead: deadInstances };
        }),
      ]);
      if (database.status === 'ok' && store.status === 'ok') {
        return {
          status: 'ready' as const,
          checks: { database: 'ok' as const, store: 'ok' as const },
          ...(instances ? { instances } : {}),
        };
      }
      // The raw error text stays in the log (under the request id), never in the answer.
      for (const [dependency, result] of [
        ['database', database],
        ['store', store],
      ] as const) {
        if (result.status !== 'ok') {
          request.log.warn({ dependency, check: result.status, err: result.error }, 'readiness check failed');
        }
      }
      const storeName = deps.store.kind === 'redis' ? 'Redis' : 'the store tables of the database';
      const failing = [database.status !== 'ok' && 'the database', store.status !== 'ok' && storeName]
        .filter(Boolean)
        .join(' and ');
      throw new ApiError(
        'SERVICE_UNAVAILABLE',
        `Not ready: ${failing} not answering. Check it is running and reachable; retry after 5 s.`,
        {
          dependency: database.status !== 'ok' ? 'database' : 'store',
          checks: { database: database.status, store: store.status },
        },
        { 'retry-after': 5 },
      );
    },
  );

  app.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger());
  // A newcomer's first request: a browser is sent to the interactive docs; a client reads where things are.
  app.get('/', { schema: { hide: true } }, async (_request, reply) =>
    reply.code(302).header('location', '/docs').send({
      docs: '/docs',
      openapi: '/openapi.json',
      health: '/healthz',
      readme: 'Every /v1 route is signed: see the README, "Signed requests".',
    }),
  );

  app.get(
    '/metrics',
    {
      config: { errors: ['UNAUTHORIZED'] },
      schema: {
        tags: ['ops'],
        summary:
          'Prometheus metrics: the text format, or OpenMetrics when Accept asks for it (Authorization: Bearer METRICS_TOKEN when set)',
        response: {
          200: {
            description: 'The metrics',
            content: {
              'text/plain; version=0.0.4; charset=utf-8': { schema: Type.String() },
              'application/openmetrics-text; version=1.0.0; charset=utf-8': { schema: Type.String() },
            },
          },
        },
      },
    },
    async (request, reply) => {
      requireMetricsToken(deps, request.headers.authorization, 'read the metrics');
      const text = await registry.metrics();
      if (wantsOpenMetrics(request.headers.accept))
        return reply.type(OPENMETRICS_CONTENT_TYPE).send(toOpenMetrics(text));
      return reply.type(registry.contentType).send(text);
    },
  );
}

/** 401 unless the request carries METRICS_TOKEN as a bearer token (when one is set): /metrics and the live page. */
export function requireMetricsToken(deps: AppDeps, authorization: string | undefined, what: string): void {
  const token = deps.config.metricsToken;
  if (token && !bearerMatches(authorization, token)) {
    throw new ApiError(
      'UNAUTHORIZED',
      `Send Authorization: Bearer <METRICS_TOKEN> to ${what}.`,
      { header: 'authorization' },
      { 'www-authenticate': 'Bearer realm="kiln-metrics"' },
    );
  }
}
