/**
 * A build's credits (SPEC sections 5 and 6): it holds its estimate from the moment it is queued, starts only with
 * a hold, and when it ends either pays what it used or gets its hold back, in the transaction that ends it.
 */
import type { CreditPackage } from '../config';
import { type DbBuild, setBuildReservation } from '../db/builds';
import type { Queryable } from '../db/database';
import { ApiError } from '../domain/errors';
import { creditsUncollected } from '../metrics';
import {
  type Actor,
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
}

const isLapsed = (error: unknown) =>
  error instanceof ApiError && (error.code === 'RESERVATION_NOT_ACTIVE' || error.code === 'RESERVATION_NOT_FOUND');

/**
 * A deployed build pays what it used: from its hold first (the rest of the hold is refunded), and what the hold
 * does not cover — all of it, if the hold lapsed — straight from the available balance, as far as that goes.
 */
async function chargeDeployed(q: Queryable, build: DbBuild, actor: Partial<Actor>): Promise<Settlement> {
  const used = build.actual_credits ?? 0;
  const reason = `build ${build.id} deployed`;
  let fromHold = 0;
  let refunded = 0;
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
      } else if (!isLapsed(error)) throw error;
    }
  }
  const rest = used - fromHold;
  if (rest <= 0) return { charged: fromHold, refunded, uncollected: 0 };
  const direct = await chargeCredits(q, {
    ...actor,
    userId: build.user_id,
    credits: rest,
    buildId: build.id,
    reservationId: build.reservation_id,
    reason: `${reason}: ${rest} used beyond its hold`,
  });
  return { charged: fromHold + direct.charged, refunded, uncollected: direct.uncollected };
}

/**
 * Settle a build's credits in the transaction that ended it: deployed → it pays what it used (chargeDeployed);
 * failed or cancelled → its hold is released (a hold that already lapsed has nothing left to give back). Said in
 * the log; credits the balance could not cover are also counted in kiln_credits_uncollected_total.
 */
export async function settleBuildCredits(
  q: Queryable,
  build: DbBuild,
  actor: Partial<Actor>,
  log: CreditLog,
): Promise<Settlement | undefined> {
  if (build.state === 'deployed') {
    const settled = await chargeDeployed(q, build, actor);
    const fields = { buildId: build.id, userId: build.user_id, used: build.actual_credits ?? 0, ...settled };
    if (settled.uncollected > 0) {
      creditsUncollected.inc(settled.uncollected);
      log.warn(fields, 'build used more credits than the user had; the rest was not charged');
    } else log.info(fields, 'build charged');
    return settled;
  }
  if ((build.state === 'failed' || build.state === 'cancelled') && build.reservation_id) {
    try {
      const done = await releaseReservation(q, {
        ...actor,
        reservationId: build.reservation_id,
        reason: `build ${build.state}${build.reason ? `: ${build.reason}` : ''}`.slice(0, 200),
      });
      return { charged: 0, refunded: done.released, uncollected: 0 };
    } catch (error) {
      if (!isLapsed(error)) throw error;
      log.info({ buildId: build.id, reservationId: build.reservation_id }, 'build hold had lapsed; nothing to release');
      return { charged: 0, refunded: 0, uncollected: 0 };
    }
  }
  return undefined;
}

/** What holding a build's credits needs from the configuration. */
export interface HoldContext {
  reservationTtlS: number;
  packages: readonly CreditPackage[];
  actor?: Partial<Actor>;
}

/**
 * A build starts only with its credits held: renew its hold, and if the hold lapsed while it waited (no process was
 * up to renew it), hold its estimate again — 402 INSUFFICIENT_CREDITS, nothing changed, when the user can no
 * longer afford it. Returns the build as it now stands (with its new hold's id when there is one).
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
  await setBuildReservation(q, build.id, reservationId);
  log.warn(
    { buildId: build.id, lapsedReservationId: build.reservation_id, reservationId },
    'build hold had lapsed before it started; held its estimate again',
  );
  return { ...build, reservation_id: reservationId };
}
