import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import swagger from '@fastify/swagger';
import swaggerUi from '@fastify/swagger-ui';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import Fastify, { type FastifyBaseLogger, type FastifyInstance, LogController } from 'fastify';
import type { Logger } from 'pino';
import type { Config } from '../config';
import type { Database } from '../db/database';
import type { BuildSignals } from '../runner/signals';
import type { EphemeralStore } from '../store/store';
import { registerBodyErrors, registerJsonBody } from './body';
import { registerContext, requestIdFrom } from './context';
import { registerErrorHandling } from './errors';
import { registerV1Guard } from './guard';
import { registerIdempotency } from './idempotency';
import { registerBuildRoutes } from './routes/builds';
import { registerCreditRoutes } from './routes/credits';
import { registerEstimateRoutes } from './routes/estimate';
import { registerOpsRoutes } from './routes/ops';
import { registerPingRoutes } from './routes/ping';
import { registerPreviewRoutes } from './routes/previews';
import { registerProjectRoutes } from './routes/projects';
import { validatorCompiler } from './validation';

/** What the HTTP layer needs from the process: configuration, stores and identity. */
export interface AppDeps {
  config: Config;
  db: Database;
  store: EphemeralStore;
  logger: Logger;
  version: string;
  /** Wake-ups between processes (runners, live event streams). */
  signals: BuildSignals;
}

/** The Fastify instance with TypeBox types, as every route module receives it. */
export type App = FastifyInstance<Server, IncomingMessage, ServerResponse, FastifyBaseLogger, TypeBoxTypeProvider>;

/** Build the Fastify application (not listening yet). */
export async function buildApp(deps: AppDeps): Promise<App> {
  const app: App = Fastify({
    loggerInstance: deps.logger as FastifyBaseLogger,
    genReqId: requestIdFrom,
    // One "request completed" line per request, written by our onResponse hook with both ids.
    logController: new LogController({ requestIdLogLabel: 'requestId', disableRequestLogging: true }),
    bodyLimit: deps.config.bodyLimitBytes,
    forceCloseConnections: 'idle',
    return503OnClosing: true,
    trustProxy: false,
  }).withTypeProvider<TypeBoxTypeProvider>();
  app.setValidatorCompiler(validatorCompiler());

  registerContext(app, deps.version);
  registerErrorHandling(app, deps.config.bodyLimitBytes);
  registerJsonBody(app);
  // Order matters: preValidation hooks run as registered, and the signature must be judged before the body.
  registerV1Guard(app, deps);
  registerBodyErrors(app);
  registerIdempotency(app, deps);
  app.addHook('onResponse', async (request, reply) => {
    request.log.info(
      {
        method: request.method,
        url: request.url,
        statusCode: reply.statusCode,
        ms: Number(reply.elapsedTime.toFixed(2)),
      },
      'request completed',
    );
  });

  await app.register(swagger, {
    openapi: {
      openapi: '3.1.0',
      info: {
        title: 'Kiln',
        version: deps.version,
        description: 'Builds, credits and the guarantees around them. Every /v1 route is signed (see README).',
      },
    },
  });
  await app.register(swaggerUi, { routePrefix: '/docs' });

  registerOpsRoutes(app, deps);
  registerPingRoutes(app);
  registerProjectRoutes(app, deps);
  registerBuildRoutes(app, deps);
  registerPreviewRoutes(app, deps);
  registerCreditRoutes(app, deps);
  registerEstimateRoutes(app, deps);
  return app;
}
