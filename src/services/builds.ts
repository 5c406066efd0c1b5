import {
  type Build,
  type BuildEvent,
  type BuildReader,
  type DbBuild,
  findBuild,
  listBuilds,
  listEvents,
  type NewBuild,
  type QueuedBuild,
  queueBuild,
  queuedRow,
  toBuild,
  transitionBuild,
  typicalDurationSeconds,
} from '../db/builds';
import { type Queryable, sqlState } from '../db/database';
import { findProjects } from '../db/projects';
import { creditsForDuration } from '../domain/build-pricing';
import { type BuildState, canTransition, etaSeconds, validNextStates } from '../domain/build-states';
import { ApiError, type ErrorCode } from '../domain/errors';
import type { CreditPackage } from '../domain/recommendation';
import { type CreditLog, holdForStart, type Settlement, settleBuildCredits } from './build-credits';
import { actorOf, type Caller, insufficient, newReservationId } from './credits';
import { estimate } from './estimate';
import type { OnceWrite } from './idempotency';
import { randomToken } from './ids';

/** A build and its events as the API shows them, converted from rows by the repository (db/builds.ts). */
export { type Build, type BuildEvent, type BuildReader, createBuildReader, toBuild } from '../db/builds';

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
  return `bld_${randomToken(9, 'base64url')}`;
}

export function buildNotFound(id: string): ApiError {
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
    // One active build per project: the HTTP layer derives x-ratelimit-reset, RateLimit and RateLimit-Policy.
    { 'retry-after': eta, 'x-ratelimit-limit': 1 },
  );
}

/** What build operations need from the configuration and the request. */
export interface BuildContext {
  /** Credits when neither the client nor any history gives an estimate. */
  defaultEstimateCredits: number;
  packages: readonly CreditPackage[];
  reservationTtlS: number;
  creditsPerMinute: number;
  /** Lease of a build moved to building through the API (no runner heartbeats): BUILD_TIMEOUT_S. */
  externalLeaseS: number;
  /** Who asks (for the ledger), and the tally of the transaction (what /metrics counts once it commits). */
  actor?: Caller;
  /** The request's logger: settlements and re-held credits are said there, with its ids. */
  log: CreditLog;
}

/**
 * Queue a build in the caller's transaction: check the project, insert the build as queued with its first event,
 * and hold its credits (the client's estimate, else the estimate from history). 429 when the project is busy, 402
 * when the user's credits are short; either way the caller's transaction rolls back and nothing remains.
 */
export async function createBuild(q: Queryable, input: CreateBuildInput, context: BuildContext): Promise<DbBuild> {
  const build = await newBuildOf(q, input, context);
  let queued: QueuedBuild;
  try {
    queued = await queueBuild(q, build);
  } catch (error) {
    if (sqlState(error) === '23505') {
      throw new ApiError(
        'BUILD_ALREADY_EXISTS',
        `A build with id ${build.id} already exists; read it or choose another id.`,
        { buildId: build.id },
      );
    }
    throw error;
  }
  const amount = build.estimatedCredits;
  const tally = context.actor?.tally;
  switch (queued.outcome) {
    case 'no_project':
      throw new ApiError(
        'PROJECT_NOT_FOUND',
        `No project ${input.projectId}; create it with POST /v1/projects first.`,
        {
          projectId: input.projectId,
        },
      );
    case 'busy':
      if (!queued.active)
        throw new Error(`insert of a build for ${input.projectId} conflicted, but no active build was found`);
      throw await alreadyRunning(q, queued.active);
    case 'insufficient':
      throw insufficient(input.userId, amount, queued.available, context.packages);
    default:
      tally?.credit('expire', queued.expired);
      tally?.credit('reserve', amount);
      tally?.transition(null, queued.build);
      return queued.build;
  }
}

/**
 * The build createBuild queues for `input`: its ids (the build's given or generated, its hold's generated), and the
 * credits it holds: the client's estimate, else the estimate from history (a read in `q`), at least one.
 */
async function newBuildOf(q: Queryable, input: CreateBuildInput, context: BuildContext): Promise<NewBuild> {
  const operation = typeof input.metadata?.operation === 'string' ? input.metadata.operation : 'build';
  // Every build holds at least one credit: a build that holds nothing could run for a user who has nothing.
  const amount = Math.max(
    1,
    input.estimatedCredits ??
      (
        await estimate(
          q,
          { operation, projectId: input.projectId },
          { defaultCredits: context.defaultEstimateCredits, packages: context.packages },
        )
      ).estimatedCredits,
  );
  const id = input.id ?? newBuildId();
  return {
    id,
    reservationId: newReservationId(),
    projectId: input.projectId,
    userId: input.userId,
    estimatedCredits: amount,
    metadata: input.metadata ?? {},
    holdTtlS: context.reservationTtlS,
    holdReason: `hold for build ${id}`,
    ...actorOf(context.actor ?? {}),
  };
}

/**
 * createBuild as a keyed write of one statement (OnceWrite, services/idempotency.ts): the same build, first event and
 * hold, or nothing when it would refuse (the request then runs createBuild, which says why). The estimate, when the
 * client gives none, is read first, in `q`. Out: the write, and the build as it is queued but for its creation time
 * (the figure createdAt), and `input` with its id and estimate, for createBuild to queue the same build when the
 * write declines.
 */
export async function createBuildOnce(
  q: Queryable,
  input: CreateBuildInput,
  context: BuildContext,
): Promise<{ write: OnceWrite; queued: (createdAt: Date) => DbBuild; input: CreateBuildInput & { id: string } }> {
  const build = await newBuildOf(q, input, context);
  const queued = (createdAt: Date) => queuedRow(build, createdAt);
  return {
    queued,
    input: { ...input, id: build.id, estimatedCredits: build.estimatedCredits },
    write: {
      effect: { op: 'build', args: build },
      settle(result) {
        const tally = context.actor?.tally;
        tally?.credit('expire', Number(result.expired));
        tally?.credit('reserve', build.estimatedCredits);
        tally?.transition(null, queued(new Date(result.created_at as string)));
      },
    },
  };
}

/** Most builds one batch may queue. */
export const MAX_BATCH_BUILDS = 50;

/** Why an item of a batch fails: its index, the error code it would get alone, and what to fix. */
export interface BatchIssue {
  index: number;
  code: ErrorCode;
  reason: string;
  path?: string;
}

/** The error of a failed batch: the first failing item's code and status, naming it; every issue known listed. */
export function batchError(first: BatchIssue, all: BatchIssue[], cause?: ApiError): ApiError {
  const issues = all
    .filter((i) => i.code === 'VALIDATION_ERROR' && i.path)
    .map((i) => ({ path: i.path, message: i.reason }));
  return new ApiError(
    first.code,
    `Item ${first.index} of the batch: ${first.reason} Nothing was created; fix it and send the whole batch again.`,
    {
      ...cause?.data,
      index: first.index,
      reason: first.reason,
      errors: all,
      ...(issues.length ? { issues } : {}),
    },
    cause?.headers,
  );
}

/**
 * What can be known to fail in a batch without running it: an id used twice, a project that does not exist, two
 * builds for a project that allows one active build. In: the items that passed validation, with their index.
 */
export async function checkBatch(
  q: Queryable,
  items: { index: number; input: CreateBuildInput }[],
): Promise<BatchIssue[]> {
  const issues: BatchIssue[] = [];
  const ids = new Map<string, number>();
  for (const { index, input } of items) {
    if (input.id === undefined) continue;
    const first = ids.get(input.id);
    if (first === undefined) ids.set(input.id, index);
    else {
      issues.push({
        index,
        code: 'VALIDATION_ERROR',
        reason: `id ${input.id} is also item ${first}'s; each build needs its own id.`,
        path: `body.builds.${index}.id`,
      });
    }
  }
  const projects = new Map(
    (await findProjects(q, [...new Set(items.map((i) => i.input.projectId))])).map((p) => [p.id, p]),
  );
  const queuedFor = new Map<string, number>();
  for (const { index, input } of items) {
    const project = projects.get(input.projectId);
    if (!project) {
      issues.push({
        index,
        code: 'PROJECT_NOT_FOUND',
        reason: `No project ${input.projectId}; create it with POST /v1/projects first.`,
      });
      continue;
    }
    if (project.allowConcurrentBuilds) continue;
    const first = queuedFor.get(project.id);
    if (first === undefined) queuedFor.set(project.id, index);
    else {
      issues.push({
        index,
        code: 'VALIDATION_ERROR',
        reason: `project ${project.id} allows one active build, and item ${first} already queues one.`,
        path: `body.builds.${index}.projectId`,
      });
    }
  }
  return issues.sort((a, b) => a.index - b.index);
}

/**
 * POST /v1/builds/batch: queue every build in the caller's transaction, in order, or none. The first item that
 * fails — found beforehand by checkBatch, or when it runs (a busy project, short credits) — fails the batch with its
 * own code; the caller's transaction rolls back, so nothing is created and nothing is held.
 */
export async function createBuilds(
  q: Queryable,
  inputs: CreateBuildInput[],
  context: BuildContext,
): Promise<DbBuild[]> {
  const known = await checkBatch(
    q,
    inputs.map((input, index) => ({ index, input })),
  );
  // Items before the first known failure run: one of them may fail first (a busy project, short credits).
  const firstKnown = known[0]?.index ?? inputs.length;
  const builds: DbBuild[] = [];
  for (const [index, input] of inputs.slice(0, firstKnown).entries()) {
    try {
      builds.push(await createBuild(q, input, context));
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      const issue: BatchIssue = { index, code: error.code, reason: error.message };
      throw batchError(issue, [issue, ...known], error);
    }
  }
  if (known.length) throw batchError(known[0], known);
  return builds;
}

export async function getBuild(q: Queryable, id: string): Promise<DbBuild> {
  const build = await findBuild(q, id);
  if (!build) throw buildNotFound(id);
  return build;
}

/** As getBuild, through a BuildReader (reads outside a transaction, batched per event-loop turn). */
export async function readBuild(read: BuildReader, id: string): Promise<DbBuild> {
  const build = await read(id);
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
 * good message; the conditional update and the trigger are the last word under races. A build that moved on
 * between the read and the update (a runner claimed it while a cancel was on its way) is read again and, if the
 * transition is still allowed from its new state, tried again — so a valid request never gets a false 409.
 */
export async function requestTransition(
  q: Queryable,
  id: string,
  change: TransitionRequest,
  context: Omit<BuildContext, 'defaultEstimateCredits'>,
): Promise<{ before: DbBuild; after: DbBuild; settled: Settlement | undefined }> {
  for (let attempt = 0; ; attempt++) {
    let build = await getBuild(q, id);
    if (!canTransition(build.state, change.state)) throw invalidTransition(build, change.state);
    if (change.state === 'building') build = await holdForStart(q, build, context, context.log);
    const after = await tryTransition(q, build, change, context);
    if (after) {
      context.actor?.tally?.transition(build.state, after);
      return { before: build, after, settled: await settleBuildCredits(q, after, context.actor ?? {}) };
    }
    // Each retry follows a real state change, and the states only move forward: a few rounds at most.
    if (attempt >= 3) throw invalidTransition(await getBuild(q, id), change.state);
  }
}

async function tryTransition(
  q: Queryable,
  build: DbBuild,
  change: TransitionRequest,
  context: Pick<BuildContext, 'creditsPerMinute' | 'externalLeaseS'>,
): Promise<DbBuild | undefined> {
  // Deployed without a figure: priced from the time it spent building.
  const actualCredits =
    change.actualCredits ??
    (change.state === 'deployed' && build.started_at
      ? creditsForDuration(Date.now() - build.started_at.getTime(), context.creditsPerMinute)
      : undefined);
  try {
    return await transitionBuild(q, build.id, {
      from: build.state,
      to: change.state,
      reason: change.reason ?? (change.state === 'cancelled' ? 'cancelled' : null),
      error: change.error,
      previewUrl: change.previewUrl,
      actualCredits,
      // Started through the API (external runner): no heartbeats will come, so the lease is the build timeout;
      // past it the reaper fails the build as worker_lost and releases its hold.
      leaseSeconds: change.state === 'building' ? context.externalLeaseS : undefined,
      event: {
        message: change.reason ? `Build ${change.state}: ${change.reason}` : `Build ${change.state}`,
        data: { source: 'api', ...(change.reason ? { reason: change.reason } : {}) },
      },
    });
  } catch (error) {
    if (sqlState(error) === 'KL001') return undefined;
    throw error;
  }
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

/** The build's events after `after`, at most `limit`, in seq order (no check that the build exists: a stream's reads). */
export function eventsAfter(q: Queryable, id: string, after: number, limit: number): Promise<BuildEvent[]> {
  return listEvents(q, id, after, limit);
}
