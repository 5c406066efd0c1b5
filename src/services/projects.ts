import { activeBuildsOf } from '../db/builds';
import type { Database, Queryable } from '../db/database';
import {
  findProject,
  findProjects,
  insertProject,
  lockProjectForDeletion,
  markProjectDeleted,
  type Project,
  type ProjectFields,
  projectIdTaken,
  updateProject,
} from '../db/projects';
import { ApiError } from '../domain/errors';
import { mergePatch } from '../domain/merge-patch';
import { randomToken } from './ids';
import { applyWebhookUrl, checkWebhookUrl, type ProjectWithSecret, type WebhookSettings } from './webhooks';

export type { Project };

/** Input of create and replace: every writable field, optional ones defaulted. */
export interface ProjectInput {
  id?: string;
  ownerId: string;
  name: string;
  framework?: string | null;
  settings?: Record<string, unknown>;
  allowConcurrentBuilds?: boolean;
  /** Where build events are POSTed; null or absent: nowhere. */
  webhookUrl?: string | null;
}

export function newProjectId(): string {
  return `prj_${randomToken(9, 'base64url')}`;
}

function fieldsOf(input: Omit<ProjectInput, 'id'>): ProjectFields {
  return {
    ownerId: input.ownerId,
    name: input.name,
    framework: input.framework ?? null,
    settings: input.settings ?? {},
    allowConcurrentBuilds: input.allowConcurrentBuilds ?? false,
  };
}

function notFound(id: string): ApiError {
  return new ApiError('PROJECT_NOT_FOUND', `No project ${id}; create it with POST /v1/projects.`, { projectId: id });
}

/** Ids that a route's path owns (`GET /v1/projects/batch`): a project so named could never be read. */
const RESERVED_IDS = new Set(['batch']);

export async function createProject(
  q: Queryable,
  input: ProjectInput,
  webhooks: WebhookSettings,
): Promise<ProjectWithSecret> {
  checkWebhookUrl(input.webhookUrl, webhooks);
  if (input.id !== undefined && RESERVED_IDS.has(input.id)) {
    throw new ApiError('VALIDATION_ERROR', `The id ${input.id} is reserved by the API's own paths; choose another.`, {
      issues: [{ path: 'body.id', message: 'is reserved' }],
    });
  }
  const id = input.id ?? newProjectId();
  const project = await insertProject(q, id, fieldsOf(input));
  if (!project) {
    const deleted = (await projectIdTaken(q, id))?.deleted === true;
    throw new ApiError(
      'PROJECT_ALREADY_EXISTS',
      deleted
        ? `The id ${id} was a project's that was deleted; its builds keep it, so it is not reused: choose another id.`
        : `A project with id ${id} already exists; read it or choose another id.`,
      { projectId: id, ...(deleted ? { deleted: true } : {}) },
    );
  }
  return applyWebhookUrl(q, project, input.webhookUrl ?? undefined, webhooks);
}

export async function getProject(q: Queryable, id: string): Promise<Project> {
  const project = await findProject(q, id);
  if (!project) throw notFound(id);
  return project;
}

/** Up to 100 projects by id, in the order asked; the ids not found are listed apart. */
export async function getProjectsBatch(
  q: Queryable,
  ids: string[],
): Promise<{ projects: Project[]; notFound: string[] }> {
  const unique = [...new Set(ids)];
  const found = new Map((await findProjects(q, unique)).map((p) => [p.id, p]));
  return {
    projects: unique.flatMap((id) => found.get(id) ?? []),
    notFound: unique.filter((id) => !found.has(id)),
  };
}

/**
 * Rewrite a project under its row lock. `ifMatch`: the versions the client accepts (If-Match), if it named any.
 * `change` gives the new fields, or undefined for no change (the project is answered as it is, at its version).
 */
async function rewrite(
  q: Queryable,
  id: string,
  ifMatch: number[] | undefined,
  change: (current: Project) => ProjectFields | undefined,
  webhook: { url: string | null | undefined; settings: WebhookSettings },
): Promise<ProjectWithSecret> {
  checkWebhookUrl(webhook.url, webhook.settings);
  const current = await findProject(q, id, true);
  if (!current) throw notFound(id);
  if (ifMatch !== undefined && !ifMatch.includes(current.version)) {
    const expected = ifMatch.length === 1 ? ifMatch[0] : ifMatch;
    throw new ApiError(
      'VERSION_CONFLICT',
      `The project is at version ${current.version}, not ${ifMatch.join(' or ')}; read it again, reapply your change, and send If-Match: "${current.version}".`,
      { projectId: id, version: current.version, expected },
    );
  }
  const fields = change(current);
  if (fields === undefined) return current;
  const updated = await updateProject(q, id, current.version, fields);
  if (!updated) throw new Error(`project ${id} changed under its row lock`);
  return applyWebhookUrl(q, updated, webhook.url, webhook.settings);
}

/** PUT: replace every writable field (a webhookUrl left out is removed, like any optional field). */
export function replaceProject(
  q: Queryable,
  id: string,
  ifMatch: number[] | undefined,
  input: ProjectInput,
  webhooks: WebhookSettings,
): Promise<ProjectWithSecret> {
  if (input.id !== undefined && input.id !== id) {
    throw new ApiError('VALIDATION_ERROR', 'The body id differs from the path id; a project cannot be renamed.', {
      issues: [{ path: 'body.id', message: `must equal ${id}` }],
    });
  }
  return rewrite(q, id, ifMatch, () => fieldsOf(input), { url: input.webhookUrl ?? null, settings: webhooks });
}

/**
 * PATCH: JSON merge patch (RFC 7396) over the writable fields; the result must still be a valid project. An empty
 * patch changes nothing (no new version).
 */
export function patchProject(
  q: Queryable,
  id: string,
  ifMatch: number[] | undefined,
  patch: Record<string, unknown>,
  webhooks: WebhookSettings,
): Promise<ProjectWithSecret> {
  const url = 'webhookUrl' in patch ? (patch.webhookUrl as string | null) : undefined;
  return rewrite(
    q,
    id,
    ifMatch,
    (current) => {
      if (Object.keys(patch).length === 0) return undefined;
      const {
        id: _id,
        version: _v,
        createdAt: _c,
        updatedAt: _u,
        webhook: _w,
        webhookUrl: _url,
        ...writable
      } = current;
      const merged = mergePatch(writable, patch) as Partial<ProjectFields>;
      const issues = [
        ...(typeof merged.name !== 'string' ? [{ path: 'body.name', message: 'cannot be removed' }] : []),
        ...(typeof merged.ownerId !== 'string' ? [{ path: 'body.ownerId', message: 'cannot be removed' }] : []),
      ];
      if (issues.length)
        throw new ApiError('VALIDATION_ERROR', 'The patch would leave the project invalid.', { issues });
      return fieldsOf(merged as ProjectFields);
    },
    { url, settings: webhooks },
  );
}

/** Active builds named in a refused deletion, at most. */
const NAMED_ACTIVE_BUILDS = 20;

/**
 * Delete a project: it is no longer found and takes no builds; its builds, their events and credit movements stay
 * readable, and its id is not reused. Idempotent: deleting a deleted project succeeds again. Refused (409
 * PROJECT_HAS_ACTIVE_BUILDS) while a build of it is queued or building; 404 for an id that never was a project.
 */
export async function deleteProject(db: Database, id: string): Promise<{ alreadyDeleted: boolean }> {
  return db.transaction(async (tx) => {
    const state = await lockProjectForDeletion(tx, id);
    if (state === 'missing') throw notFound(id);
    if (state === 'deleted') return { alreadyDeleted: true };
    // After the lock, in a statement of its own: it sees every build queued before the lock was granted.
    const active = await activeBuildsOf(tx, id, NAMED_ACTIVE_BUILDS);
    if (active.total > 0) {
      const named = active.builds.map((b) => `${b.id} ${b.state}`).join(', ');
      throw new ApiError(
        'PROJECT_HAS_ACTIVE_BUILDS',
        `Project ${id} has ${active.total === 1 ? 'an active build' : `${active.total} active builds`} (${named}${active.total > active.builds.length ? ', …' : ''}); cancel ${active.total === 1 ? 'it' : 'them'} with POST /v1/builds/:id/cancel or let ${active.total === 1 ? 'it' : 'them'} finish, then delete the project again.`,
        { projectId: id, activeBuilds: active.builds, activeBuildCount: active.total },
      );
    }
    await markProjectDeleted(tx, id);
    return { alreadyDeleted: false };
  });
}
