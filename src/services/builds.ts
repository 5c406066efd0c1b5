import { randomBytes } from 'node:crypto';
import {
  type Build,
  type BuildEvent,
  type DbBuild,
  findActiveBuild,
  findBuild,
  insertBuild,
  listBuilds,
  listEvents,
  toBuild,
  transitionBuild,
  typicalDurationSeconds,
} from '../db/builds';
import { type Queryable, sqlState } from '../db/database';
import { findProject } from '../db/projects';
import { type BuildState, canTransition, etaSeconds, validNextStates } from '../domain/build-states';
import { ApiError } from '../domain/errors';

/** Without history, a build is expected to take this long (seconds) for ETAs. */
export const DEFAULT_BUILD_SECONDS = 120;

export interface CreateBuildInput {
  id?: string;
  projectId: string;
  userId: string;
  estimatedCredits?: number;
  metadata?: Record<string, unknown>;
}

export function newBuildId(): string {
  return `bld_${randomBytes(9).toString('base64url')}`;
}

function buildNotFound(id: string): ApiError {
  return new ApiError('BUILD_NOT_FOUND', `No build ${id}; list builds with GET /v1/builds.`, { buildId: id });
}

/** 429 BUILD_ALREADY_RUNNING for the project's active build, with an ETA from its past durations. */
async function alreadyRunning(q: Queryable, active: DbBuild): Promise<ApiError> {
  const typical = await typicalDurationSeconds(q, active.project_id);
  const now = new Date();
  const eta = etaSeconds({ state: active.state, startedAt: active.started_at }, typical, DEFAULT_BUILD_SECONDS, now);
  return new ApiError(
    'BUILD_ALREADY_RUNNING',
    `Project ${active.project_id} already has build ${active.id} ${active.state}; retry after ${eta} s, or cancel it with POST /v1/builds/${active.id}/cancel.`,
    {
      activeBuildId: active.id,
      state: active.state,
      etaSeconds: eta,
      estimatedCompletionAt: new Date(now.getTime() + eta * 1000).toISOString(),
      basedOn: typical === undefined ? 'default' : 'project history',
    },
    { 'retry-after': eta },
  );
}

/**
 * Queue a build: check the project, insert the build as queued with its first event (one statement). The caller's
 * transaction also holds the credits reservation and the idempotency record.
 */
export async function createBuild(q: Queryable, input: CreateBuildInput, estimate: number): Promise<DbBuild> {
  const project = await findProject(q, input.projectId);
  if (!project) {
    throw new ApiError('PROJECT_NOT_FOUND', `No project ${input.projectId}; create it with POST /v1/projects first.`, {
      projectId: input.projectId,
    });
  }
  let build: DbBuild | undefined;
  try {
    build = await insertBuild(q, {
      id: input.id ?? newBuildId(),
      projectId: project.id,
      userId: input.userId,
      exclusive: !project.allowConcurrentBuilds,
      estimatedCredits: input.estimatedCredits ?? estimate,
      metadata: input.metadata ?? {},
    });
  } catch (error) {
    if (sqlState(error) === '23505') {
      throw new ApiError(
        'BUILD_ALREADY_EXISTS',
        `A build with id ${input.id} already exists; read it or choose another id.`,
        {
          buildId: input.id,
        },
      );
    }
    throw error;
  }
  if (build) return build;
  const active = await findActiveBuild(q, project.id);
  if (!active) throw new Error(`insert of a build for ${project.id} conflicted, but no active build was found`);
  throw await alreadyRunning(q, active);
}

export async function getBuild(q: Queryable, id: string): Promise<DbBuild> {
  const build = await findBuild(q, id);
  if (!build) throw buildNotFound(id);
  return build;
}

export interface TransitionRequest {
  state: BuildState;
  reason?: string;
  actualCredits?: number;
  previewUrl?: string;
  error?: string;
}

function invalidTransition(build: DbBuild, to: BuildState): ApiError {
  const next = validNextStates(build.state);
  return new ApiError(
    'INVALID_STATE_TRANSITION',
    `Build ${build.id} is ${build.state}; it cannot become ${to}. ${next.length ? `It can become: ${next.join(', ')}.` : 'It has ended; start a new build.'}`,
    { buildId: build.id, currentState: build.state, requestedState: to, validNextStates: next },
  );
}

/**
 * Apply a transition asked for by the API (external runner or web app). Checked against the table first for a
 * good message; the conditional update and the trigger are the last word under races.
 */
export async function requestTransition(
  q: Queryable,
  id: string,
  change: TransitionRequest,
): Promise<{ before: DbBuild; after: DbBuild }> {
  const build = await getBuild(q, id);
  if (!canTransition(build.state, change.state)) throw invalidTransition(build, change.state);
  let after: DbBuild | undefined;
  try {
    after = await transitionBuild(q, id, {
      from: build.state,
      to: change.state,
      reason: change.reason ?? (change.state === 'cancelled' ? 'cancelled' : null),
      error: change.error,
      previewUrl: change.previewUrl,
      actualCredits: change.actualCredits,
      event: {
        message: change.reason ? `Build ${change.state}: ${change.reason}` : `Build ${change.state}`,
        data: { source: 'api', ...(change.reason ? { reason: change.reason } : {}) },
      },
    });
  } catch (error) {
    if (sqlState(error) === 'KL001') throw invalidTransition(await getBuild(q, id), change.state);
    throw error;
  }
  if (!after) throw invalidTransition(await getBuild(q, id), change.state);
  return { before: build, after };
}

export interface BuildPage {
  builds: Build[];
  nextCursor: string | null;
}

export function encodeCursor(build: DbBuild): string {
  return Buffer.from(`${build.created_at.toISOString()}|${build.id}`).toString('base64url');
}

export function decodeCursor(cursor: string): { createdAt: Date; id: string } {
  const [at, id] = Buffer.from(cursor, 'base64url').toString('utf8').split('|');
  const createdAt = new Date(at ?? '');
  if (!id || Number.isNaN(createdAt.getTime())) {
    throw new ApiError('VALIDATION_ERROR', 'The cursor is not one Kiln gave; pass nextCursor from the previous page.', {
      issues: [{ path: 'query.cursor', message: 'is not a valid cursor' }],
    });
  }
  return { createdAt, id };
}

export async function listBuildPage(
  q: Queryable,
  filter: { projectId?: string; state?: BuildState; userId?: string; limit: number; cursor?: string },
): Promise<BuildPage> {
  const rows = await listBuilds(q, {
    projectId: filter.projectId,
    state: filter.state,
    userId: filter.userId,
    limit: filter.limit + 1,
    after: filter.cursor ? decodeCursor(filter.cursor) : undefined,
  });
  const page = rows.slice(0, filter.limit);
  return {
    builds: page.map(toBuild),
    nextCursor: rows.length > filter.limit ? encodeCursor(page[page.length - 1]) : null,
  };
}

export async function getBuildEvents(q: Queryable, id: string, after: number, limit: number): Promise<BuildEvent[]> {
  await getBuild(q, id);
  return listEvents(q, id, after, limit);
}
