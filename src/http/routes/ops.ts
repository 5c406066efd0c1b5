import { timingSafeEqual } from 'node:crypto';
import { Type } from '@sinclair/typebox';
import { readLatestAuditFrom, registry } from '../../metrics';
import { latestAudit } from '../../services/credits';
import { databaseAnswers } from '../../services/health';
import type { App, AppDeps } from '../app';
import { ApiError } from '../errors';
import { ErrorEnvelopeSchema } from '../schemas';

const CHECK_TIMEOUT_MS = 1_500;

function bearerMatches(header: string | undefined, token: string): boolean {
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
});

/** Liveness and readiness: unsigned, for load balancers and orchestrators. */
export function registerOpsRoutes(app: App, deps: AppDeps): void {
  const startedAt = Date.now();
  // The credit audit gauges show the latest full audit this database recorded, run by any process.
  readLatestAuditFrom(() => latestAudit(deps.db));
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
        summary: 'The database and the store both answer',
        response: { 200: ReadySchema, 503: ErrorEnvelopeSchema },
      },
    },
    async (request) => {
      const [database, store] = await Promise.all([
        check(() => databaseAnswers(deps.db)),
        check(() => deps.store.ping()),
      ]);
      if (database.status === 'ok' && store.status === 'ok') {
        return { status: 'ready' as const, checks: { database: 'ok' as const, store: 'ok' as const } };
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

  app.get(
    '/metrics',
    {
      schema: {
        tags: ['ops'],
        summary: 'Prometheus metrics in the text format (Authorization: Bearer METRICS_TOKEN when set)',
      },
    },
    async (request, reply) => {
      const token = deps.config.metricsToken;
      if (token && !bearerMatches(request.headers.authorization, token)) {
        throw new ApiError('UNAUTHORIZED', 'Send Authorization: Bearer <METRICS_TOKEN> to read the metrics.', {
          header: 'authorization',
        });
      }
      const text = await registry.metrics();
      return reply.type(registry.contentType).send(text);
    },
  );
}
