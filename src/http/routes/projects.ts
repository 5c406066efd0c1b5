import { type Static, Type } from '@sinclair/typebox';
import type { FastifyReply } from 'fastify';
import {
  createProject,
  deleteProject,
  getProject,
  getProjectsBatch,
  type Project,
  type ProjectInput,
  patchProject,
  replaceProject,
} from '../../services/projects';
import { rotateWebhookSecret, type WebhookSettings } from '../../services/webhooks';
import type { App, AppDeps } from '../app';
import { ApiError } from '../errors';
import { transactionOf } from '../idempotency';
import { Id, PlainText, Token } from '../schemas';
import { optionalBody } from '../validation';

const Framework = Type.Union([Type.String({ minLength: 1, maxLength: 64, pattern: PlainText }), Type.Null()]);
// TypeBox drops a Record key schema's limits (the keys become a pattern): propertyNames keeps the key length checked.
const Settings = Type.Record(Type.String(), Type.Unknown(), { maxProperties: 200, propertyNames: { maxLength: 128 } });

const NullableDate = Type.Union([Type.String({ format: 'date-time' }), Type.Null()]);

const ProjectSchema = Type.Object(
  {
    id: Id,
    ownerId: Token,
    name: Type.String(),
    framework: Type.Union([Type.String(), Type.Null()]),
    settings: Type.Record(Type.String(), Type.Unknown()),
    allowConcurrentBuilds: Type.Boolean(),
    webhookUrl: Type.Union([Type.String(), Type.Null()]),
    webhook: Type.Union([
      Type.Object(
        {
          status: Type.Union([Type.Literal('active'), Type.Literal('failing'), Type.Literal('disabled')]),
          failingSince: NullableDate,
          disabledAt: NullableDate,
          disabledReason: Type.Union([Type.String(), Type.Null()], {
            description: 'gone (the endpoint answered 410) or failing (it failed for WEBHOOK_DISABLE_AFTER_S)',
          }),
          previousSecretValidUntil: NullableDate,
        },
        { title: 'WebhookStatus' },
      ),
      Type.Null(),
    ]),
    webhookSecret: Type.Optional(
      Type.String({
        description:
          'The signing secret (whsec_…), only in the response that set a new webhookUrl or rotated the secret: keep it',
      }),
    ),
    version: Type.Integer({ minimum: 1 }),
    createdAt: Type.String({ format: 'date-time' }),
    updatedAt: Type.String({ format: 'date-time' }),
  },
  { title: 'Project' },
);

const WebhookUrl = Type.String({
  minLength: 1,
  maxLength: 2048,
  description: 'https:// URL build events are POSTed to (Standard Webhooks); a new URL gets a new webhookSecret',
});

const writable = {
  ownerId: Token,
  name: Type.String({ minLength: 1, maxLength: 200, pattern: PlainText }),
  framework: Type.Optional(Framework),
  settings: Type.Optional(Settings),
  allowConcurrentBuilds: Type.Optional(Type.Boolean()),
  webhookUrl: Type.Optional(Type.Union([WebhookUrl, Type.Null()])),
};
// The id is checked against the reserved ones by the service (its message says why): stated here for the document.
const ChosenId = Type.String({
  ...Id,
  description:
    'Your own id (1-64 of A-Z a-z 0-9 _ -), except batch (reserved: GET /v1/projects/batch); omitted: Kiln makes one',
});
const ProjectInputSchema = Type.Object({ id: Type.Optional(ChosenId), ...writable }, { additionalProperties: false });
// RFC 7396: null removes a field (a defaulted one goes back to its default; a required one cannot go, which the
// service says), and an empty patch changes nothing.
const ProjectPatchSchema = Type.Object(
  {
    ownerId: Type.Optional(Type.Union([Token, Type.Null()])),
    name: Type.Optional(Type.Union([writable.name, Type.Null()])),
    framework: Type.Optional(Framework),
    settings: Type.Optional(Type.Union([Settings, Type.Null()])),
    allowConcurrentBuilds: Type.Optional(Type.Union([Type.Boolean(), Type.Null()])),
    webhookUrl: Type.Optional(Type.Union([WebhookUrl, Type.Null()])),
  },
  { additionalProperties: false },
);
const IdParams = Type.Object({ id: Id });
const IfMatchHeaders = Type.Object({
  'if-match': Type.Optional(
    Type.String({
      maxLength: 256,
      // Its form (IF_MATCH_PATTERN) is stated in the document only: parseIfMatch checks it, with a message that
      // says what to send, which a schema pattern's would not.
      description:
        'The ETag of the version you read, e.g. "3" (W/"3", or a list "3", "4", also pass; * or none: no condition). ' +
        'A stale one → 409 VERSION_CONFLICT with the current version.',
      examples: ['"3"'],
    }),
  ),
});

const ENTITY_TAG = /^(?:W\/)?"?(\d{1,9})"?$/;

/**
 * The versions an `If-Match` accepts: `"3"` (or `3`, or `W/"3"`: a proxy that compresses responses may weaken the
 * ETag it passes on, and a version number means the same either way), or a list of them (`"3", "4"`); `*` or
 * absent → no condition.
 */
export function parseIfMatch(header: string | undefined): number[] | undefined {
  if (header === undefined || header.trim() === '*') return undefined;
  const versions = header.split(',').map((tag) => ENTITY_TAG.exec(tag.trim())?.[1]);
  if (versions.some((v) => v === undefined)) {
    throw new ApiError('VALIDATION_ERROR', 'If-Match must be the ETag you read, e.g. "3".', {
      issues: [{ path: 'headers.if-match', message: 'must be version ETags such as "3" (a list: "3", "4")' }],
    });
  }
  return versions.map(Number);
}

function withEtag(reply: FastifyReply, project: Project): Project {
  reply.header('etag', `"${project.version}"`);
  return project;
}

/** Projects (SPEC section 5): create, read with ETag, replace, merge-patch, batch read. */
export function registerProjectRoutes(app: App, deps: AppDeps): void {
  const webhooks: WebhookSettings = {
    allowHttp: deps.config.webhookAllowHttp,
    allowedNetworks: deps.config.webhookAllowedNetworks,
    secretOverlapS: deps.config.webhookSecretOverlapS,
  };
  createProjectRoute(app, webhooks);
  projectsBatchRoute(app, deps);
  getProjectRoute(app, deps);
  replaceProjectRoute(app, webhooks);
  patchProjectRoute(app, webhooks);
  rotateWebhookSecretRoute(app, webhooks);
  deleteProjectRoute(app, deps);
}

/** POST /v1/projects */
function createProjectRoute(app: App, webhooks: WebhookSettings): void {
  app.post(
    '/v1/projects',
    {
      config: { errors: ['PROJECT_ALREADY_EXISTS'] },
      schema: {
        tags: ['projects'],
        summary: 'Create a project (the client may choose its id)',
        body: ProjectInputSchema,
        response: { 201: ProjectSchema },
      },
    },
    async (request, reply) => {
      const project = await createProject(transactionOf(request), request.body as ProjectInput, webhooks);
      reply.code(201).header('location', `/v1/projects/${project.id}`);
      return withEtag(reply, project);
    },
  );
}

/** GET /v1/projects/batch */
function projectsBatchRoute(app: App, deps: AppDeps): void {
  app.get(
    '/v1/projects/batch',
    {
      schema: {
        tags: ['projects'],
        summary: 'Read up to 100 projects at once',
        querystring: Type.Object(
          {
            ids: Type.String({
              minLength: 1,
              maxLength: 6600,
              description: 'Comma-separated project ids, at most 100',
            }),
          },
          { additionalProperties: false },
        ),
        response: {
          200: Type.Object({ projects: Type.Array(ProjectSchema), notFound: Type.Array(Type.String()) }),
        },
      },
    },
    async (request) => {
      const ids = request.query.ids.split(',').map((id) => id.trim());
      const issues = ids.flatMap((id, index) =>
        /^[A-Za-z0-9_-]{1,64}$/.test(id)
          ? []
          : [{ path: `query.ids.${index}`, message: 'must be 1-64 of A-Z a-z 0-9 _ -' }],
      );
      if (ids.length > 100) issues.push({ path: 'query.ids', message: `at most 100 ids, got ${ids.length}` });
      if (issues.length) throw new ApiError('VALIDATION_ERROR', 'Fix the ids and send the request again.', { issues });
      return getProjectsBatch(deps.db, ids);
    },
  );
}

/** GET /v1/projects/:id */
function getProjectRoute(app: App, deps: AppDeps): void {
  app.get(
    '/v1/projects/:id',
    {
      config: { errors: ['PROJECT_NOT_FOUND'] },
      schema: {
        tags: ['projects'],
        summary: 'Read a project (ETag = version)',
        params: IdParams,
        response: { 200: ProjectSchema },
      },
    },
    async (request, reply) => withEtag(reply, await getProject(deps.db, request.params.id)),
  );
}

/** DELETE /v1/projects/:id */
function deleteProjectRoute(app: App, deps: AppDeps): void {
  app.delete(
    '/v1/projects/:id',
    {
      config: { errors: ['PROJECT_NOT_FOUND', 'PROJECT_HAS_ACTIVE_BUILDS'] },
      schema: {
        tags: ['projects'],
        summary:
          'Delete a project (idempotent: a deleted one answers 204 again); its builds stay readable, its id is not reused',
        params: IdParams,
        response: {
          204: Type.Null({ description: 'Deleted, now or before: the project is no longer found and takes no builds' }),
        },
      },
    },
    async (request, reply) => {
      const { alreadyDeleted } = await deleteProject(deps.db, request.params.id);
      request.log.info({ projectId: request.params.id, alreadyDeleted }, 'project deleted');
      return reply.code(204).send(null);
    },
  );
}

/** PUT /v1/projects/:id */
function replaceProjectRoute(app: App, webhooks: WebhookSettings): void {
  app.put(
    '/v1/projects/:id',
    {
      config: { errors: ['PROJECT_NOT_FOUND', 'VERSION_CONFLICT'] },
      schema: {
        tags: ['projects'],
        summary: 'Replace a project (If-Match optional; stale → 409 VERSION_CONFLICT)',
        params: IdParams,
        headers: IfMatchHeaders,
        body: ProjectInputSchema,
        response: { 200: ProjectSchema },
      },
    },
    async (request, reply) => {
      const ifMatch = parseIfMatch(request.headers['if-match']);
      const project = await replaceProject(
        transactionOf(request),
        request.params.id,
        ifMatch,
        request.body as ProjectInput,
        webhooks,
      );
      return withEtag(reply, project);
    },
  );
}

/** PATCH /v1/projects/:id */
function patchProjectRoute(app: App, webhooks: WebhookSettings): void {
  app.patch(
    '/v1/projects/:id',
    {
      config: { errors: ['PROJECT_NOT_FOUND', 'VERSION_CONFLICT'] },
      schema: {
        tags: ['projects'],
        summary: 'Merge-patch a project (RFC 7396; If-Match optional)',
        params: IdParams,
        headers: IfMatchHeaders,
        body: ProjectPatchSchema,
        response: { 200: ProjectSchema },
      },
    },
    async (request, reply) => {
      const ifMatch = parseIfMatch(request.headers['if-match']);
      const patch = request.body as Static<typeof ProjectPatchSchema>;
      return withEtag(reply, await patchProject(transactionOf(request), request.params.id, ifMatch, patch, webhooks));
    },
  );
}

/** POST /v1/projects/:id/webhook-secret */
function rotateWebhookSecretRoute(app: App, webhooks: WebhookSettings): void {
  app.post(
    '/v1/projects/:id/webhook-secret',
    {
      config: { errors: ['PROJECT_NOT_FOUND', 'WEBHOOK_NOT_SET'] },
      schema: {
        tags: ['projects'],
        summary:
          'Rotate the webhook signing secret: the new one is in webhookSecret (shown once); the old one signs too until webhook.previousSecretValidUntil',
        params: IdParams,
        body: optionalBody(Type.Object({}, { additionalProperties: false })),
        response: { 200: ProjectSchema },
      },
    },
    async (request, reply) =>
      withEtag(reply, await rotateWebhookSecret(transactionOf(request), request.params.id, webhooks)),
  );
}
