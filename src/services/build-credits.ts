/**
 * A build's credits (SPEC sections 5 and 6): it holds its estimate from the moment it is queued, starts only with
 * a hold, and when it ends either pays what it used or gets its hold back, in the transaction that ends it.
 */

import { type DbBuild, findBuild, setBuildReservation, setBuildUncollected } from '../db/builds';
import type { Queryable } from '../db/database';
import { validNextStates } from '../domain/build-states';
import { ApiError } from '../domain/errors';
import type { CreditPackage } from '../domain/recommendation';
import { creditsUncollected } from '../metrics';
import {
  type Caller,
  chargeCredits,
  commitReservation,
  newReservationId,
  releaseReservation,
  renewReservation,
  reserveCredits,
} from './credits';

/** Where settlement and start-up checks say what happened (a request's or the runner's logger). */
export interface CreditLog {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
}

/** What settling a build's credits did. */
export interface Settlement {
  /** Credits taken from the balance: from the hold, plus any taken straight from the available balance. */
  charged: number;
  /** Credits of the hold given back. */
  refunded: number;
  /** Credits the build used that the user's balance could not cover (charged nowhere). */
  uncollected: number;
  /** The hold had been committed or released by someone else before the build ended: nothing was settled now. */
  settledElsewhere?: boolean;
}

/**
 * The hold is gone by itself: it expired (nobody renewed it in time) or it is not there. A hold committed or
 * released by someone else (the web app may resolve a build's hold through the credits API) is not lapsed: that
 * settlement stands, and the build is neither charged again nor given a new hold.
 */
const isLapsed = (error: unknown) =>
  error instanceof ApiError &&
  (error.code === 'RESERVATION_NOT_FOUND' ||
    (error.code === 'RESERVATION_NOT_ACTIVE' && error.data?.state === 'expired'));
const resolvedElsewhere = (error: unknown) =>
  error instanceof ApiError && error.code === 'RESERVATION_NOT_ACTIVE' && error.data?.state !== 'expired';

/**
 * A deployed build pays what it used: from its hold first (the rest of the hold is refunded), and what the hold
 * does not cover — all of it, if the hold lapsed — straight from the available balance, as far as that goes. What
 * the balance could not cover is recorded with the build (the audit checks it paid its actual credits less that);
 * when the hold was resolved outside the build, what it paid is not the build's to say, so that is unknown (null).
 */
async function chargeDeployed(q: Queryable, build: DbBuild, actor: Caller): Promise<Settlement> {
  const settled = await payDeployed(q, build, actor);
  if (settled.settledElsewhere) await setBuildUncollected(q, build.id, null);
  else if (settled.uncollected > 0) await setBuildUncollected(q, build.id, settled.uncollected);
  return settled;
}

async function payDeployed(q: Queryable, build: DbBuild, actor: Caller): Promise<Settlement> {
  const used = build.actual_credits ?? 0;
  const reason = `build ${build.id} deployed`;
  let fromHold = 0;
  let refunded = 0;
  // The hold to name on a charge entry: not one that is not there (the ledger refers to it).
  let holdId = build.reservation_id;
  if (build.reservation_id) {
    const commit = (actualCredits: number) =>
      commitReservation(q, {
        ...actor,
        reservationId: build.reservation_id!,
        actualCredits,
        buildId: build.id,
        reason,
      });
    try {
      ({ charged: fromHold, refunded } = await commit(used));
    } catch (error) {
      if (error instanceof ApiError && error.code === 'COMMIT_EXCEEDS_RESERVATION') {
        ({ charged: fromHold, refunded } = await commit(Number(error.data?.reserved)));
      } else if (resolvedElsewhere(error)) {
        return { charged: 0, refunded: 0, uncollected: 0, settledElsewhere: true };
      } else if (!isLapsed(error)) throw error;
      else if ((error as ApiError).code === 'RESERVATION_NOT_FOUND') holdId = null;
    }
  }
  const rest = used - fromHold;
  if (rest <= 0) return { charged: fromHold, refunded, uncollected: 0 };
  const direct = await chargeCredits(q, {
    ...actor,
    userId: build.user_id,
    credits: rest,
    buildId: build.id,
    reservationId: holdId,
    reason: `${reason}: ${rest} used beyond its hold`,
  });
  return { charged: fromHold + direct.charged, refunded, uncollected: direct.uncollected };
}

/**
 * Settle a build's credits in the transaction that ended it: deployed → it pays what it used (chargeDeployed);
 * failed or cancelled → its hold is released (a hold that lapsed, or that someone else resolved, has nothing left
 * to give back). Say it with reportSettlement once that transaction has committed.
 */
export async function settleBuildCredits(q: Queryable, build: DbBuild, actor: Caller): Promise<Settlement | undefined> {
  if (build.state === 'deployed') return chargeDeployed(q, build, actor);
  if ((build.state === 'failed' || build.state === 'cancelled') && build.reservation_id) {
    try {
      const done = await releaseReservation(q, {
        ...actor,
        reservationId: build.reservation_id,
        reason: `build ${build.state}${build.reason ? `: ${build.reason}` : ''}`.slice(0, 200),
      });
      return { charged: 0, refunded: done.released, uncollected: 0 };
    } catch (error) {
      if (!isLapsed(error) && !resolvedElsewhere(error)) throw error;
      return { charged: 0, refunded: 0, uncollected: 0, settledElsewhere: resolvedElsewhere(error) };
    }
  }
  return undefined;
}

/**
 * Say what a committed settlement did: in the log, and credits the balance could not cover in
 * kiln_credits_uncollected_total. Called after commit, so a rolled-back settlement is never reported.
 */
export function reportSettlement(build: DbBuild, settled: Settlement | undefined, log: CreditLog): void {
  if (!settled) return;
  const fields = {
    buildId: build.id,
    userId: build.user_id,
    state: build.state,
    used: build.actual_credits,
    ...settled,
  };
  if (settled.settledElsewhere) {
    log.warn({ ...fields, reservationId: build.reservation_id }, 'build hold was already resolved; nothing settled');
  } else if (settled.uncollected > 0) {
    creditsUncollected.inc(settled.uncollected);
    log.warn(fields, 'build used more credits than the user had; the rest was not charged');
  } else if (build.state === 'deployed') log.info(fields, 'build charged');
  else log.info(fields, settled.refunded > 0 ? 'build hold released' : 'build hold had lapsed; nothing to release');
}

/** What holding a build's credits needs from the configuration. */
export interface HoldContext {
  reservationTtlS: number;
  /** For the 402's recommendation (default: the built-in catalog). */
  packages?: readonly CreditPackage[];
  actor?: Caller;
}

/**
 * A build starts only with its credits held: renew its hold, and if the hold lapsed while it waited (no process was
 * up to renew it), hold its estimate again — 402 INSUFFICIENT_CREDITS, nothing changed, when the user can no
 * longer afford it. A hold someone else resolved stays resolved: 409 RESERVATION_NOT_ACTIVE; a build that ended
 * meanwhile (a cancel raced its start) is not held again: 409 INVALID_STATE_TRANSITION. Returns the build as it now
 * stands (with its new hold's id when there is one). Call it in a transaction: the new hold and the build's pointer
 * to it are written together, or not at all.
 */
export async function holdForStart(
  q: Queryable,
  build: DbBuild,
  context: HoldContext,
  log: CreditLog,
): Promise<DbBuild> {
  if (!build.reservation_id) return build;
  try {
    await renewReservation(q, build.reservation_id, context.reservationTtlS, context.actor);
    return build;
  } catch (error) {
    if (!isLapsed(error)) throw error;
  }
  const reservationId = newReservationId();
  await reserveCredits(q, {
    ...context.actor,
    reservationId,
    userId: build.user_id,
    amount: build.estimated_credits,
    buildId: build.id,
    ttlS: context.reservationTtlS,
    packages: context.packages,
    reason: `hold for build ${build.id} (its first hold lapsed before it started)`,
  });
  if (!(await setBuildReservation(q, build.id, reservationId))) {
    // It ended (a cancel raced its start) after its old hold was settled: the new hold must not outlive it. Thrown
    // so that the caller's transaction, and the hold with it, rolls back.
    const now = await findBuild(q, build.id);
    const state = now?.state ?? build.state;
    throw new ApiError(
      'INVALID_STATE_TRANSITION',
      `Build ${build.id} is ${state}; it cannot become building. It has ended; start a new build.`,
      { buildId: build.id, currentState: state, requestedState: 'building', validNextStates: validNextStates(state) },
    );
  }
  log.warn(
    { buildId: build.id, lapsedReservationId: build.reservation_id, reservationId },
    'build hold had lapsed before it started; held its estimate again',
  );
  return { ...build, reservation_id: reservationId };
}
