import { type Static, type TSchema, Type } from '@sinclair/typebox';
import type { FastifyError, FastifyRequest } from 'fastify';
import { MAX_BUILD_CREDITS, MAX_PREVIEW_URL_LENGTH, PREVIEW_URL_PATTERN } from '../../domain/build-pricing';
import { BUILD_STATES } from '../../domain/build-states';
import { reportSettlement } from '../../services/build-credits';
import {
  type BatchIssue,
  type BuildContext,
  type BuildReader,
  batchError,
  checkBatch,
  createBuild,
  createBuildOnce,
  createBuildReader,
  createBuilds,
  getBuildEvents,
  listBuildPage,
  MAX_BATCH_BUILDS,
  readBuild,
  requestTransition,
  toBuild,
} from '../../services/builds';
import { buildDeliveries, replayEvents } from '../../services/webhooks';
import type { App, AppDeps } from '../app';
import { ApiError, validationIssues } from '../errors';
import { afterCommit, sendOnce, tallyOf, transactionOf } from '../idempotency';
import { Id, PlainText, Token } from '../schemas';
import { bodyValidator, optionalBody } from '../validation';
import { registerStreamShutdown, replayPayload, streamBuildEvents } from './build-stream';

const State = Type.Union(BUILD_STATES.map((s) => Type.Literal(s)));
const NullableText = Type.Union([Type.String(), Type.Null()]);

export const BuildSchema = Type.Object(
  {
    id: Type.String(),
    projectId: Type.String(),
    userId: Type.String(),
    state: State,
    previousState: Type.Union([State, Type.Null()]),
    validNextStates: Type.Array(State),
    createdAt: Type.String({ format: 'date-time' }),
    startedAt: Type.Union([Type.String({ format: 'date-time' }), Type.Null()]),
    finishedAt: Type.Union([Type.String({ format: 'date-time' }), Type.Null()]),
    durationMs: Type.Union([Type.Integer(), Type.Null()]),
    estimatedCredits: Type.Integer(),
    actualCredits: Type.Union([Type.Integer(), Type.Null()]),
    reservationId: NullableText,
    previewUrl: NullableText,
    error: NullableText,
    reason: NullableText,
    metadata: Type.Record(Type.String(), Type.Unknown()),
  },
  { title: 'Build' },
);

export const EventSchema = Type.Object(
  {
    seq: Type.Integer({ minimum: 1 }),
    type: Type.String(),
    phase: Type.Optional(Type.String()),
    message: Type.Optional(Type.String()),
    progress: Type.Optional(Type.Number()),
    data: Type.Optional(Type.Record(Type.String(), Type.Unknown())),
    createdAt: Type.String({ format: 'date-time' }),
  },
  { title: 'BuildEvent' },
);

export const CreateBuildSchema = Type.Object(
  {
    projectId: Id,
    userId: Token,
    id: Type.Optional(Id),
    estimatedCredits: Type.Optional(Type.Integer({ minimum: 1, maximum: MAX_BUILD_CREDITS })),
    metadata: Type.Optional(
      Type.Record(Type.String(), Type.Unknown(), { maxProperties: 100, propertyNames: { maxLength: 128 } }),
    ),
    idempotencyKey: Type.Optional(Type.String({ minLength: 1, maxLength: 257 })),
  },
  { additionalProperties: false },
);

const PatchBuildSchema = Type.Object(
  {
    state: State,
    reason: Type.Optional(Type.String({ minLength: 1, maxLength: 200, pattern: PlainText })),
    actualCredits: Type.Optional(Type.Integer({ minimum: 0, maximum: MAX_BUILD_CREDITS })),
    previewUrl: Type.Optional(
      Type.String({
        minLength: 1,
        maxLength: MAX_PREVIEW_URL_LENGTH,
        pattern: PREVIEW_URL_PATTERN,
        description: 'An absolute http:// or https:// URL with a host, or a path under /previews/',
      }),
    ),
    error: Type.Optional(Type.String({ minLength: 1, maxLength: 4000 })),
  },
  { additionalProperties: false },
);

const IdParams = Type.Object({ id: Id });

/** Event sequence numbers are int4 in the database: `after` and Last-Event-ID are bounded by the schema. */
const MAX_SEQ = 2_147_483_647;
const After = (options: { default?: number } = {}) =>
  Type.Integer({ minimum: 0, maximum: MAX_SEQ, description: `Events after this seq (0..${MAX_SEQ})`, ...options });
const StreamHeaders = Type.Object({
  'last-event-id': Type.Optional(
    Type.Integer({ minimum: 0, maximum: MAX_SEQ, description: `Resume after this seq (0..${MAX_SEQ})` }),
  ),
});

/** `created_at|id` as encodeCursor writes it: a date PostgreSQL can hold, and a build id. */
const CURSOR = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z\|[A-Za-z0-9_-]{1,64}$/;

/**
 * preHandler of GET /v1/builds: a cursor must decode to what Kiln gave (decodeCursor accepts any date JavaScript
 * parses and any id, and a year PostgreSQL cannot store or a NUL in the id would reach the query as a 500).
 */
async function checkCursor(request: FastifyRequest): Promise<void> {
  const { cursor } = request.query as { cursor?: string };
  if (cursor === undefined) return;
  const text = Buffer.from(cursor, 'base64url').toString('utf8');
  if (!CURSOR.test(text) || Number.isNaN(new Date(text.slice(0, 24)).getTime())) {
    throw new ApiError('VALIDATION_ERROR', 'The cursor is not one Kiln gave; pass nextCursor from the previous page.', {
      issues: [{ path: 'query.cursor', message: 'is not a valid cursor' }],
    });
  }
}

/** Builds (SPEC section 5): create, read, list, transition, cancel, events, live events. */
export function registerBuildRoutes(app: App, deps: AppDeps): void {
  const { db, config } = deps;
  const readBuildById = createBuildReader(db);
  registerStreamShutdown(app);
  const buildContext = (request: FastifyRequest): BuildContext => ({
    defaultEstimateCredits: config.defaultEstimateCredits,
    packages: config.creditPackages,
    reservationTtlS: config.reservationTtlS,
    creditsPerMinute: config.creditsPerBuildMinute,
    externalLeaseS: config.buildTimeoutS,
    actor: { requestId: request.id, correlationId: request.correlationId, tally: tallyOf(request) },
    log: request.log,
  });
  const shared: Shared = { deps, readBuildById, buildContext };
  createBuildRoute(app, shared);
  getBuildRoute(app, shared);
  listBuildsRoute(app, shared);
  transitionBuildRoute(app, shared);
  cancelBuildRoute(app, shared);
  buildEventsRoute(app, shared);
  buildEventStreamRoute(app, shared);
  createBuildsBatchRoute(app, shared);
  replayEventsRoute(app, shared);
  deliveriesRoute(app, shared);
}

/** What the routes of this file share, made once when they are registered. */
interface Shared {
  deps: AppDeps;
  /** GET /v1/builds/:id: the reads of one event-loop turn share one statement. */
  readBuildById: BuildReader;
  buildContext: (request: FastifyRequest) => BuildContext;
}

/** POST /v1/builds */
function createBuildRoute(app: App, shared: Shared): void {
  const { deps, buildContext } = shared;
  app.post(
    '/v1/builds',
    {
      // Its one write is build_create, which leaves nothing when it refuses: without a key it runs in autocommit,
      // with one it runs with its record in one statement (sendOnce) unless it refuses.
      config: {
        singleStatement: true,
        once: true,
        errors: ['PROJECT_NOT_FOUND', 'BUILD_ALREADY_EXISTS', 'INSUFFICIENT_CREDITS', 'BUILD_ALREADY_RUNNING'],
      },
      schema: {
        tags: ['builds'],
        summary: 'Queue a build (one active build per project unless it allows concurrent builds)',
        body: CreateBuildSchema,
        response: { 201: BuildSchema },
      },
    },
    async (request, reply) => {
      const { idempotencyKey: _key, ...body } = request.body;
      const context = buildContext(request);
      const once = request.idempotency?.deferred ? await createBuildOnce(deps.db, body, context) : undefined;
      if (once) {
        // The same build (id, estimate) whether the one statement queues it or the general way does.
        const { id } = once.input;
        afterCommit(request, () => deps.signals.send('queued', id));
        reply.code(201).header('location', `/v1/builds/${id}`);
        const sent = await sendOnce(deps, request, reply, once.write, (figure) => ({
          ...toBuild(once.queued(new Date(0))),
          createdAt: figure('createdAt'),
        }));
        if (sent) return reply;
      }
      const build = await createBuild(transactionOf(request), once?.input ?? body, context);
      if (!once) afterCommit(request, () => deps.signals.send('queued', build.id));
      reply.code(201).header('location', `/v1/builds/${build.id}`);
      return toBuild(build);
    },
  );
}

/** GET /v1/builds/:id */
function getBuildRoute(app: App, shared: Shared): void {
  const { readBuildById } = shared;
  app.get(
    '/v1/builds/:id',
    {
      config: { errors: ['BUILD_NOT_FOUND'] },
      schema: {
        tags: ['builds'],
        summary: 'Read a build',
        params: IdParams,
        response: { 200: BuildSchema },
      },
    },
    async (request) => toBuild(await readBuild(readBuildById, request.params.id)),
  );
}

/** GET /v1/builds */
function listBuildsRoute(app: App, shared: Shared): void {
  const {
    deps: { db },
  } = shared;
  app.get(
    '/v1/builds',
    {
      preHandler: checkCursor,
      schema: {
        tags: ['builds'],
        summary: 'List builds, newest first (cursor pages)',
        querystring: Type.Object(
          {
            projectId: Type.Optional(Id),
            userId: Type.Optional(Token),
            state: Type.Optional(State),
            limit: Type.Integer({ minimum: 1, maximum: 100, default: 20 }),
            cursor: Type.Optional(
              Type.String({ pattern: '^[A-Za-z0-9_-]{1,200}$', description: 'nextCursor of the previous page' }),
            ),
          },
          { additionalProperties: false },
        ),
        response: {
          200: Type.Object({ builds: Type.Array(BuildSchema), nextCursor: Type.Union([Type.String(), Type.Null()]) }),
        },
      },
    },
    async (request) => listBuildPage(db, request.query),
  );
}

/** PATCH /v1/builds/:id */
function transitionBuildRoute(app: App, shared: Shared): void {
  const {
    deps: { signals },
    buildContext,
  } = shared;
  app.patch(
    '/v1/builds/:id',
    {
      // Moving to building keeps the build's hold, which may have lapsed and be unaffordable again.
      config: {
        errors: ['BUILD_NOT_FOUND', 'INVALID_STATE_TRANSITION', 'INSUFFICIENT_CREDITS', 'RESERVATION_NOT_ACTIVE'],
      },
      schema: {
        tags: ['builds'],
        summary: 'Move a build to another state (external runners, the web app)',
        params: IdParams,
        body: PatchBuildSchema,
        response: { 200: BuildSchema },
      },
    },
    async (request) => {
      const change = request.body as Static<typeof PatchBuildSchema>;
      const { after, settled } = await requestTransition(
        transactionOf(request),
        request.params.id,
        change,
        buildContext(request),
      );
      afterCommit(request, () => {
        reportSettlement(after, settled, request.log);
        signals.send('events', after.id);
        if (after.state === 'cancelled') signals.send('cancelled', after.id);
      });
      return toBuild(after);
    },
  );
}

/** POST /v1/builds/:id/cancel */
function cancelBuildRoute(app: App, shared: Shared): void {
  const {
    deps: { signals },
    buildContext,
  } = shared;
  app.post(
    '/v1/builds/:id/cancel',
    {
      config: { errors: ['BUILD_NOT_FOUND', 'INVALID_STATE_TRANSITION'] },
      schema: {
        tags: ['builds'],
        summary: 'Cancel a queued or building build',
        params: IdParams,
        body: optionalBody(
          Type.Object(
            { reason: Type.Optional(Type.String({ minLength: 1, maxLength: 200, pattern: PlainText })) },
            { additionalProperties: false },
          ),
        ),
        response: { 200: BuildSchema },
      },
    },
    async (request) => {
      const reason = (request.body as { reason?: string } | undefined)?.reason ?? 'cancelled';
      const cancel = { state: 'cancelled' as const, reason };
      const { after, settled } = await requestTransition(
        transactionOf(request),
        request.params.id,
        cancel,
        buildContext(request),
      );
      afterCommit(request, () => {
        reportSettlement(after, settled, request.log);
        signals.send('events', after.id);
        signals.send('cancelled', after.id);
      });
      return toBuild(after);
    },
  );
}

/** GET /v1/builds/:id/events */
function buildEventsRoute(app: App, shared: Shared): void {
  const {
    deps: { db },
  } = shared;
  app.get(
    '/v1/builds/:id/events',
    {
      config: { errors: ['BUILD_NOT_FOUND'] },
      schema: {
        tags: ['builds'],
        summary: "The build's events in order",
        params: IdParams,
        querystring: Type.Object(
          {
            after: After({ default: 0 }),
            limit: Type.Integer({ minimum: 1, maximum: 1000, default: 100 }),
          },
          { additionalProperties: false },
        ),
        response: { 200: Type.Object({ events: Type.Array(EventSchema) }) },
      },
    },
    async (request) => ({
      events: await getBuildEvents(db, request.params.id, request.query.after, request.query.limit),
    }),
  );
}

/** GET /v1/builds/:id/events/stream */
function buildEventStreamRoute(app: App, shared: Shared): void {
  const { deps } = shared;
  app.get(
    '/v1/builds/:id/events/stream',
    {
      config: { errors: ['BUILD_NOT_FOUND'] },
      schema: {
        tags: ['builds'],
        summary: 'The events as Server-Sent Events: live, resumable with Last-Event-ID, closed when the build ends',
        params: IdParams,
        querystring: Type.Object({ after: Type.Optional(After()) }, { additionalProperties: false }),
        headers: StreamHeaders,
        response: {
          200: {
            description: 'Server-Sent Events: `id: <seq>`, `event: <type>` (or `replay`), `data: <the event as JSON>`',
            content: { 'text/event-stream': { schema: Type.String() } },
          },
        },
      },
    },
    async (request, reply) => streamBuildEvents(request, reply, deps, request.params.id, request.query.after),
  );
}

const BatchItemSchema = Type.Omit(CreateBuildSchema, ['idempotencyKey'], { additionalProperties: false });
const validBatchItem = bodyValidator(BatchItemSchema);

/** The items of a batch that break the item schema, as issues naming their index and field (body.builds.<i>.…). */
function batchItemIssues(items: unknown[]): BatchIssue[] {
  return items.flatMap((item, index) => {
    if (validBatchItem(item)) return [];
    const failed = { validation: validBatchItem.errors ?? [], validationContext: `body.builds.${index}` };
    return validationIssues(failed as unknown as FastifyError).map(({ path, message }) => ({
      index,
      code: 'VALIDATION_ERROR' as const,
      reason: `${path} ${message}.`,
      path,
    }));
  });
}

/** POST /v1/builds/batch */
function createBuildsBatchRoute(app: App, shared: Shared): void {
  const {
    deps: { signals },
    buildContext,
  } = shared;
  app.post(
    '/v1/builds/batch',
    {
      config: {
        errors: ['PROJECT_NOT_FOUND', 'BUILD_ALREADY_EXISTS', 'INSUFFICIENT_CREDITS', 'BUILD_ALREADY_RUNNING'],
      },
      schema: {
        tags: ['builds'],
        summary: `Queue up to ${MAX_BATCH_BUILDS} builds in one transaction: all or nothing`,
        description:
          'Each item is a POST /v1/builds body. Any failing item fails the whole batch with its own error code, `data.index` and `data.reason` naming the first one and `data.errors` every one that could be known without running the batch; nothing is created and nothing is held.',
        body: Type.Object(
          {
            builds: Type.Array(Type.Unknown(), { minItems: 1, maxItems: MAX_BATCH_BUILDS }),
            idempotencyKey: Type.Optional(Type.String({ minLength: 1, maxLength: 257 })),
          },
          { additionalProperties: false },
        ),
        response: { 201: Type.Object({ builds: Type.Array(BuildSchema) }) },
      },
    },
    async (request, reply) => {
      const items = request.body.builds;
      const invalid = batchItemIssues(items);
      if (invalid.length) {
        const bad = new Set(invalid.map((i) => i.index));
        const valid = items.flatMap((input, index) =>
          bad.has(index) ? [] : [{ index, input: input as Static<typeof BatchItemSchema> }],
        );
        const all = [...invalid, ...(await checkBatch(transactionOf(request), valid))].sort(
          (a, b) => a.index - b.index,
        );
        throw batchError(all[0], all);
      }
      const builds = await createBuilds(
        transactionOf(request),
        items as Static<typeof BatchItemSchema>[],
        buildContext(request),
      );
      afterCommit(request, () => {
        for (const build of builds) signals.send('queued', build.id);
      });
      reply.code(201);
      return { builds: builds.map(toBuild) };
    },
  );
}

/** POST /v1/builds/:id/replay */
function replayEventsRoute(app: App, shared: Shared): void {
  const {
    deps: { signals },
  } = shared;
  app.post(
    '/v1/builds/:id/replay',
    {
      config: { errors: ['BUILD_NOT_FOUND'] },
      schema: {
        tags: ['builds'],
        summary: "Deliver a range of the build's events again, marked replay: true, to its webhook and open streams",
        params: IdParams,
        body: Type.Object(
          {
            fromSeq: Type.Integer({ minimum: 1, maximum: MAX_SEQ }),
            toSeq: Type.Optional(
              Type.Integer({ minimum: 1, maximum: MAX_SEQ, description: 'Default: the last event' }),
            ),
            idempotencyKey: Type.Optional(Type.String({ minLength: 1, maxLength: 257 })),
          },
          { additionalProperties: false },
        ),
        response: {
          200: Type.Object({
            replayed: Type.Integer({ description: 'Events in the range' }),
            fromSeq: Type.Integer(),
            toSeq: Type.Integer(),
            webhookDeliveries: Type.Integer({ description: 'Deliveries queued to the webhook (0 without one)' }),
          }),
        },
      },
    },
    async (request) => {
      const { fromSeq, toSeq } = request.body;
      const replay = await replayEvents(transactionOf(request), request.params.id, fromSeq, toSeq);
      // Streams of this build (in every process) send the range again; the delivery workers wake on the same topic.
      afterCommit(request, () =>
        signals.send('events', replayPayload(request.params.id, replay.fromSeq, replay.toSeq)),
      );
      return replay;
    },
  );
}

/** GET /v1/builds/:id/deliveries */
function deliveriesRoute(app: App, shared: Shared): void {
  const {
    deps: { db },
  } = shared;
  const Nullable = <T extends TSchema>(schema: T) => Type.Union([schema, Type.Null()]);
  const Attempt = Type.Object({
    attempt: Type.Integer(),
    attemptedAt: Type.String({ format: 'date-time' }),
    durationMs: Type.Integer(),
    statusCode: Nullable(Type.Integer()),
    outcome: Type.Union([Type.Literal('delivered'), Type.Literal('failed')]),
    failure: Nullable(
      Type.String({ description: 'Why the attempt failed, e.g. http_status, timeout, blocked_address' }),
    ),
    detail: Nullable(Type.String()),
    responseBody: Nullable(Type.String({ description: 'The first KiB of the answer' })),
  });
  const Delivery = Type.Object(
    {
      id: Type.Integer(),
      seq: Type.Integer(),
      eventType: Type.String(),
      replay: Type.Boolean(),
      status: Type.Union([Type.Literal('pending'), Type.Literal('delivered'), Type.Literal('failed')]),
      attempts: Type.Array(Attempt),
      nextAttemptAt: Nullable(
        Type.String({
          format: 'date-time',
          description: 'Null once finished, or while it waits behind an earlier message of its build',
        }),
      ),
      createdAt: Type.String({ format: 'date-time' }),
      finishedAt: Nullable(Type.String({ format: 'date-time' })),
      lastFailure: Nullable(Type.String()),
    },
    { title: 'WebhookDelivery' },
  );
  app.get(
    '/v1/builds/:id/deliveries',
    {
      config: { errors: ['BUILD_NOT_FOUND'] },
      schema: {
        tags: ['builds'],
        summary: "The build's webhook deliveries, oldest first, each with every attempt",
        params: IdParams,
        querystring: Type.Object(
          {
            limit: Type.Integer({ minimum: 1, maximum: 200, default: 50 }),
            cursor: Type.Optional(
              Type.String({ pattern: '^[0-9]{1,15}$', description: 'nextCursor of the previous page' }),
            ),
          },
          { additionalProperties: false },
        ),
        response: {
          200: Type.Object({ deliveries: Type.Array(Delivery), nextCursor: Nullable(Type.String()) }),
        },
      },
    },
    async (request) => buildDeliveries(db, request.params.id, request.query.cursor, request.query.limit),
  );
}
