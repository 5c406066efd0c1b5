import { readFileSync } from 'node:fs';
import swagger from '@fastify/swagger';
import swaggerUi from '@fastify/swagger-ui';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import Fastify, {
  type FastifyBaseLogger,
  type FastifyReply,
  type FastifyRequest,
  LogController,
  type RouteOptions,
} from 'fastify';
import { describeProcess, observeRequest } from '../metrics';
import { rootPath } from '../paths';
import { pipelineReader } from '../services/pipeline';
import type { App, AppDeps } from './app';
import { registerJsonBody, throwBodyError } from './body';
import { registerContext, requestIdFrom } from './context';
import {
  clientErrorHandler,
  connectHandler,
  expectationHandler,
  frameworkErrorHandler,
  MAX_PARAM_LENGTH,
  registerErrorHandling,
} from './errors';
import { isSignedPath, signatureGuard } from './guard';
import { idempotencyHooks, isMutatingMethod, storedResponseKey } from './idempotency';
import { readIdempotencyKey } from './idempotency-key';
import { documentErrors, documentRoute, securitySchemes } from './openapi';
import { ROUTE_EXAMPLES } from './openapi-examples';
import { registerAnalyticsRoutes } from './routes/analytics';
import { registerBuildRoutes } from './routes/builds';
import { registerCreditRoutes } from './routes/credits';
import { registerDashboardRoutes } from './routes/dashboard';
import { registerEstimateRoutes } from './routes/estimate';
import { registerOpsRoutes } from './routes/ops';
import { registerPingRoutes } from './routes/ping';
import { registerPreviewRoutes } from './routes/previews';
import { registerProjectRoutes } from './routes/projects';
import { validatorCompiler } from './validation';

export type { App, AppDeps };

/** Build the Fastify application (not listening yet). */
export async function buildApp(deps: AppDeps): Promise<App> {
  const app: App = Fastify({
    loggerInstance: deps.logger as FastifyBaseLogger,
    genReqId: requestIdFrom,
    // One "request completed" line per request, written by our onResponse hook with both ids.
    logController: new LogController({ requestIdLogLabel: 'requestId', disableRequestLogging: true }),
    bodyLimit: deps.config.bodyLimitBytes,
    forceCloseConnections: 'idle',
    // Every error in the envelope with the context headers, including those raised before any route runs:
    // a request arriving while closing (registerContext answers 503), a malformed URL or an over-long path
    // parameter (frameworkErrors), what Node's parser refuses (clientErrorHandler), an HTTP/1.1 request without
    // Host (Node would answer a bare 400; registerContext answers it instead).
    return503OnClosing: false,
    frameworkErrors: frameworkErrorHandler(deps.version, deps.config.bodyLimitBytes),
    clientErrorHandler: clientErrorHandler(deps.version, deps.logger as FastifyBaseLogger),
    http: { requireHostHeader: false },
    // Ids are up to 128 characters: the schemas bound them, the router only refuses what no schema would take.
    routerOptions: { maxParamLength: MAX_PARAM_LENGTH },
    trustProxy: false,
  }).withTypeProvider<TypeBoxTypeProvider>();
  app.setValidatorCompiler(validatorCompiler());
  // CONNECT and unmet Expect headers are answered by Node itself (a closed socket, a bare 417) unless heard.
  app.server.on('connect', connectHandler(deps.version, deps.logger as FastifyBaseLogger));
  app.server.on('checkExpectation', expectationHandler(deps.version, deps.logger as FastifyBaseLogger));

  registerContext(app, deps.version);
  registerErrorHandling(app, deps.config.bodyLimitBytes);
  registerJsonBody(app);
  attachRouteHooks(app, deps);
  app.addHook('onResponse', (request, reply, done) => {
    observeRequest(request.method, request.routeOptions.url ?? 'unmatched', reply.statusCode, reply.elapsedTime / 1000);
    request.log.info(
      {
        method: request.method,
        url: request.url,
        statusCode: reply.statusCode,
        ms: Number(reply.elapsedTime.toFixed(2)),
        ...request.logFields,
      },
      'request completed',
    );
    done();
  });

  await app.register(swagger, {
    openapi: {
      openapi: '3.1.0',
      info: {
        title: 'Kiln',
        version: deps.version,
        description:
          'Builds, credits and the guarantees around them. Every /v1 route is signed (README: "Signed requests"); ' +
          'in /docs, paste the HMAC secret in the box at the top and "Try it out" signs each request in the page.',
      },
      components: { securitySchemes: securitySchemes(deps.config.signatureHeaderPrefix) },
    },
    transform: ({ schema, url, route }) => {
      const method = (Array.isArray(route.method) ? route.method[0] : route.method).toUpperCase();
      return documentRoute(schema as Record<string, unknown> | undefined, url, method, {
        signed: isSignedPath(url),
        idempotencyRequired: deps.config.idempotencyRequired,
        hmacMode: deps.config.hmacMode,
        example: ROUTE_EXAMPLES[`${method} ${url}`],
      });
    },
    // A query parameter with a default may be left out: the server fills it in, so the document must not call it
    // required (TypeBox leaves a property with a default in `required`).
    transformObject: (documentObject) => {
      if (!('openapiObject' in documentObject)) return documentObject.swaggerObject;
      const { openapiObject } = documentObject;
      for (const operations of Object.values(openapiObject.paths ?? {})) {
        for (const operation of Object.values(
          operations as Record<string, { parameters?: unknown[]; requestBody?: Record<string, unknown> }>,
        )) {
          // A body the route marks optional (optionalBody) may be left out.
          const media = (operation?.requestBody?.content as Record<string, { schema?: object }> | undefined)?.[
            'application/json'
          ];
          if (operation.requestBody && media?.schema && 'x-optional-body' in media.schema) {
            operation.requestBody.required = false;
          }
          for (const parameter of operation?.parameters ?? []) {
            const p = parameter as { in?: string; required?: boolean; schema?: { default?: unknown } };
            if (p.in === 'query' && p.required && p.schema?.default !== undefined) p.required = false;
          }
        }
      }
      return openapiObject;
    },
  });
  await app.register(swaggerUi, {
    routePrefix: '/docs',
    theme: {
      title: 'Kiln API',
      js: [{ filename: 'kiln-signing.js', content: docsSigningScript(deps.config.signatureHeaderPrefix) }],
    },
    uiConfig: {
      // Serialised into the page as source: it hands each "Try it out" request to kiln-signing.js, which signs /v1
      // requests with the secret pasted in the page (README: "Trying it in /docs").
      requestInterceptor: (request) =>
        (
          globalThis as unknown as { kilnDocsSigning: { signRequest<R>(r: R): Promise<R> } }
        ).kilnDocsSigning.signRequest(request),
      displayRequestDuration: true,
    },
  });

  // One reader of the pipeline for /metrics and the live page (background connections: scrapes never wait behind requests).
  const pipeline = pipelineReader(deps.db.background);
  describeProcess({
    version: deps.version,
    runnerSlots: deps.config.runnerConcurrency,
    auditIntervalS: deps.config.creditAuditIntervalS,
    memoryBudgetBytes: deps.config.memoryBudgetMb * 1024 * 1024,
  });
  registerOpsRoutes(app, deps, pipeline);
  registerDashboardRoutes(app, deps, pipeline);
  registerPingRoutes(app);
  registerProjectRoutes(app, deps);
  registerBuildRoutes(app, deps);
  registerPreviewRoutes(app, deps);
  registerCreditRoutes(app, deps);
  registerEstimateRoutes(app, deps);
  registerAnalyticsRoutes(app, deps);
  return app;
}

const DOCS_SIGNING = readFileSync(rootPath('static', 'docs-signing.js'), 'utf8');

/** The /docs page's signing script, with the configured signature header prefix. */
export function docsSigningScript(prefix: string): string {
  return DOCS_SIGNING.replaceAll('__KILN_PREFIX__', prefix);
}

type Hook = NonNullable<RouteOptions['preValidation']>;
const asList = (hooks: Hook | undefined) => (hooks === undefined ? [] : Array.isArray(hooks) ? hooks : [hooks]);

/**
 * Every route gets, as its own hooks, only the layers it needs, decided once when it is registered rather than
 * checked on every request: the signature guard on /v1 routes, then the kept body error (so an unsigned request is
 * answered 401 whatever its body), then idempotency and its transaction on /v1 POST, PUT and PATCH routes. They run
 * in that order, before any hook the route declares itself.
 */
function attachRouteHooks(app: App, deps: AppDeps): void {
  const guard = signatureGuard(deps);
  const idempotency = idempotencyHooks(deps);
  app.addHook('onRoute', (route) => {
    const signed = isSignedPath(route.url);
    documentErrors(route, signed);
    const methods = Array.isArray(route.method) ? route.method : [route.method];
    const mutating = signed && methods.some(isMutatingMethod);
    const keyed = mutating
      ? idempotency.preValidation({
          singleStatement: route.config?.singleStatement === true,
          once: route.config?.once === true,
        })
      : undefined;
    // One hook for the layers of a signed route (each hook Fastify runs costs a turn of its hook runner). A
    // mutation's key is read once: the guard reads its stored response in the same store round trip as the nonce.
    const layers = signed
      ? async (request: FastifyRequest, reply: FastifyReply) => {
          const read =
            keyed && isMutatingMethod(request.method)
              ? readIdempotencyKey(request, deps.config.idempotencyRequired)
              : undefined;
          const stored = await guard(request, read?.key === undefined ? undefined : storedResponseKey(read.key));
          if (request.bodyError) throw request.bodyError;
          if (read) return keyed?.(request, reply, read, stored);
        }
      : throwBodyError;
    route.preValidation = [layers, ...asList(route.preValidation)] as Hook;
    if (mutating) {
      route.onSend = [idempotency.onSend, ...asList(route.onSend as Hook)] as RouteOptions['onSend'];
      route.onResponse = [idempotency.onResponse, ...asList(route.onResponse as Hook)] as RouteOptions['onResponse'];
    }
  });
}
