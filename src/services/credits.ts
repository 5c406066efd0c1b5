/**
 * Credit use cases (SPEC section 6) over a Queryable, so builds can call them inside their own transaction.
 * Each operation is one round trip (a plpgsql function); refusals become ApiErrors here.
 */

import { type AuditReport, auditCredits } from '../db/credit-audit';
import { type AuditSource, recordAuditRun } from '../db/credit-audit-runs';
import {
  type Actor,
  type CreditAccount,
  chargeAvailable,
  extendReservation,
  findAccount,
  findReservation,
  grantCredits,
  insertReservation,
  type LedgerEntry,
  listLedger,
  type NewReservation,
  type Reservation,
  type Resolution,
  type ResolveOutcome,
  resolveReservation,
} from '../db/credits';
import type { Queryable } from '../db/database';
import { ApiError } from '../domain/errors';
import { type CreditPackage, DEFAULT_CREDIT_PACKAGES, insufficientCredits } from '../domain/recommendation';
import type { OnceWrite } from './idempotency';
import { randomToken } from './ids';
import type { Tally } from './tally';

export type { Actor, AuditReport, CreditAccount, LedgerEntry, Reservation };

/**
 * Who asks for a credit operation (for the ledger), and where to note what it moved: the tally of the transaction
 * it runs in, counted on /metrics once that commits (services/tally.ts). Without a tally nothing is counted.
 */
export interface Caller extends Partial<Actor> {
  tally?: Tally;
}

/** Ledger text: a reason or source without control characters, as stored. */
const DEFAULT_TTL_S = 1800;
const DEFAULT_REASON = { reserve: 'hold for a build', commit: 'commit of a hold' };

export function newReservationId(): string {
  return `res_${randomToken(12, 'base64url')}`;
}

/** Ids of a call made by Kiln itself (no HTTP request): a fresh request id, correlated to itself. */
export function internalActor(kind: string): Actor {
  const id = `${kind}_${randomToken(8, 'hex')}`;
  return { requestId: id, correlationId: id };
}

export function actorOf(input: Caller): Actor {
  const fallback = internalActor('internal');
  return {
    requestId: input.requestId ?? fallback.requestId,
    correlationId: input.correlationId ?? input.requestId ?? fallback.correlationId,
  };
}

export async function grant(
  q: Queryable,
  input: { userId: string; credits: number; reason: string; source: string; plan?: string } & Caller,
): Promise<CreditAccount> {
  const { expired, ...account } = await grantCredits(q, input, actorOf(input));
  input.tally?.credit('expire', expired);
  input.tally?.credit('grant', input.credits);
  return account;
}

/** The user's figures; a user Kiln never saw has zeros on the free plan. */
export async function getBalance(q: Queryable, userId: string): Promise<CreditAccount> {
  return (await findAccount(q, userId)) ?? { userId, plan: 'free', balance: 0, reserved: 0, available: 0 };
}

export interface ReserveInput extends Caller {
  /** Chosen by the caller when it must store the id first (a build row points at its hold); else generated. */
  reservationId?: string;
  userId: string;
  amount: number;
  buildId?: string | null;
  reason?: string;
  /** Hold lifetime: pass config.reservationTtlS (default 1800). */
  ttlS?: number;
  /** Packages for the 402 recommendation: pass config.creditPackages (default the built-in three). */
  packages?: readonly CreditPackage[];
}

/** 402 INSUFFICIENT_CREDITS: `userId` needs `amount` and has `available`; says which package covers the shortfall. */
export function insufficient(
  userId: string,
  amount: number,
  available: number,
  packages: readonly CreditPackage[] = DEFAULT_CREDIT_PACKAGES,
): ApiError {
  const { message, data } = insufficientCredits(amount, available, packages);
  return new ApiError('INSUFFICIENT_CREDITS', message, { userId, ...data });
}

/** The hold reserveCredits takes for `input` (its id generated unless given). */
function holdOf(input: ReserveInput): NewReservation {
  return {
    id: input.reservationId ?? newReservationId(),
    userId: input.userId,
    amount: input.amount,
    buildId: input.buildId ?? null,
    ttlS: input.ttlS ?? DEFAULT_TTL_S,
    reason: input.reason ?? DEFAULT_REASON.reserve,
  };
}

/** Hold `amount` credits; 402 INSUFFICIENT_CREDITS (with what to buy) when the user's available credits are short. */
export async function reserveCredits(
  q: Queryable,
  input: ReserveInput,
): Promise<{ reservationId: string; expiresAt: string; reserved: number; available: number }> {
  const hold = holdOf(input);
  const result = await insertReservation(q, hold, actorOf(input));
  const available = result.balance - result.reserved;
  input.tally?.credit('expire', result.expired);
  if (result.outcome === 'insufficient') {
    throw insufficient(input.userId, input.amount, available, input.packages ?? DEFAULT_CREDIT_PACKAGES);
  }
  input.tally?.credit('reserve', input.amount);
  return { reservationId: hold.id, expiresAt: result.expiresAt as string, reserved: input.amount, available };
}

/**
 * reserveCredits as a keyed write of one statement (OnceWrite, services/idempotency.ts): the same hold and ledger
 * entry, or nothing when it would refuse (the request then runs reserveCredits, which says why). Its figures:
 * expires, available.
 */
export function reserveOnce(input: ReserveInput & { reservationId: string }): OnceWrite {
  return {
    effect: { op: 'reserve', args: { ...holdOf(input), ...actorOf(input) } },
    settle(result) {
      input.tally?.credit('expire', Number(result.expired));
      input.tally?.credit('reserve', input.amount);
    },
  };
}

function refusal(reservationId: string, result: ResolveOutcome, requested: number | null): ApiError {
  switch (result.outcome) {
    case 'not_found':
      return new ApiError(
        'RESERVATION_NOT_FOUND',
        `No reservation ${reservationId}; reserve credits first with POST /v1/credits/reserve.`,
        { reservationId },
      );
    case 'exceeds':
      return new ApiError(
        'COMMIT_EXCEEDS_RESERVATION',
        `Cannot charge ${requested} credits against a hold of ${result.amount}; commit at most ${result.amount}, and grant or reserve more for the rest.`,
        { reservationId, reserved: result.amount, requested },
      );
    case 'held_by_build':
      return new ApiError(
        'RESERVATION_HELD_BY_BUILD',
        `Reservation ${reservationId} is the credit hold of build ${result.buildId}, which is ${result.state}; the build's end settles it. To give the credits back, cancel the build with POST /v1/builds/${result.buildId}/cancel.`,
        { reservationId, buildId: result.buildId, state: result.state },
      );
    case 'build_mismatch':
      return new ApiError(
        'VALIDATION_ERROR',
        `Reservation ${reservationId} belongs to build ${result.buildId}; send that buildId or none.`,
        { issues: [{ path: 'body.buildId', message: `must be ${result.buildId}` }] },
      );
    default:
      return new ApiError(
        'RESERVATION_NOT_ACTIVE',
        `Reservation ${reservationId} is already ${result.state}; it resolves once. Read it with GET /v1/credits/reservations/${reservationId}.`,
        { reservationId, state: result.state },
      );
  }
}

/**
 * Charge `actualCredits` (≤ the hold) and refund the rest. A repeat with the same arguments answers as the first.
 * The hold of a queued or building build → 409 RESERVATION_HELD_BY_BUILD (cancel the build instead).
 */
export async function commitReservation(
  q: Queryable,
  input: CommitInput,
): Promise<{ charged: number; refunded: number; newBalance: number; replayed: boolean }> {
  const result = await resolveReservation(q, commitOf(input), actorOf(input));
  input.tally?.credit('expire', result.expired);
  if (result.outcome !== 'ok' && result.outcome !== 'repeat') {
    throw refusal(input.reservationId, result, input.actualCredits);
  }
  const charged = result.charged ?? 0;
  const refunded = (result.amount ?? 0) - charged;
  if (result.outcome === 'ok') {
    input.tally?.credit('commit', charged);
    input.tally?.credit('refund', refunded);
  }
  return {
    charged,
    refunded,
    newBalance: result.available ?? 0,
    replayed: result.outcome === 'repeat',
  };
}

export interface CommitInput extends Caller {
  reservationId: string;
  actualCredits: number;
  buildId?: string | null;
  reason?: string;
}

function commitOf(input: CommitInput): Resolution {
  return {
    reservationId: input.reservationId,
    action: 'commit',
    actual: input.actualCredits,
    buildId: input.buildId ?? null,
    reason: input.reason ?? DEFAULT_REASON.commit,
  };
}

export interface ReleaseInput extends Caller {
  reservationId: string;
  reason: string;
}

function releaseOf(input: ReleaseInput): Resolution {
  return { reservationId: input.reservationId, action: 'release', actual: null, buildId: null, reason: input.reason };
}

/**
 * Give the whole hold back. A repeat with the same reason answers as the first. The hold of a queued or building
 * build → 409 RESERVATION_HELD_BY_BUILD (cancel the build instead).
 */
export async function releaseReservation(
  q: Queryable,
  input: ReleaseInput,
): Promise<{ released: number; newBalance: number; replayed: boolean }> {
  const result = await resolveReservation(q, releaseOf(input), actorOf(input));
  input.tally?.credit('expire', result.expired);
  if (result.outcome !== 'ok' && result.outcome !== 'repeat') throw refusal(input.reservationId, result, null);
  if (result.outcome === 'ok') input.tally?.credit('release', result.amount);
  return { released: result.amount ?? 0, newBalance: result.available ?? 0, replayed: result.outcome === 'repeat' };
}

/**
 * commitReservation or releaseReservation as a keyed write of one statement (OnceWrite): the same resolution, or
 * nothing when it would refuse. Its figures: charged, refunded, newBalance (commit); released, newBalance (release).
 */
export function resolveOnce(input: { commit: CommitInput } | { release: ReleaseInput }): OnceWrite {
  const caller = 'commit' in input ? input.commit : input.release;
  const resolution = 'commit' in input ? commitOf(input.commit) : releaseOf(input.release);
  return {
    effect: { op: 'resolve', args: { ...resolution, ...actorOf(caller) } },
    settle(result) {
      const tally = caller.tally;
      tally?.credit('expire', Number(result.expired));
      if (result.outcome !== 'ok') return;
      const amount = Number(result.amount ?? 0);
      const charged = Number(result.charged ?? 0);
      if (resolution.action === 'release') tally?.credit('release', amount);
      else {
        tally?.credit('commit', charged);
        tally?.credit('refund', amount - charged);
      }
    },
  };
}

/**
 * Charge up to `credits` from the user's available balance, with no hold: for a build that used more than it held,
 * or whose hold lapsed. Never overdraws; what the balance cannot cover is answered as `uncollected`.
 */
export async function chargeCredits(
  q: Queryable,
  input: {
    userId: string;
    credits: number;
    buildId?: string | null;
    reservationId?: string | null;
    reason: string;
  } & Caller,
): Promise<{ charged: number; uncollected: number; available: number }> {
  const { expired, ...result } = await chargeAvailable(
    q,
    {
      userId: input.userId,
      credits: input.credits,
      buildId: input.buildId ?? null,
      reservationId: input.reservationId ?? null,
      reason: input.reason,
    },
    actorOf(input),
  );
  input.tally?.credit('expire', expired);
  input.tally?.credit('charge', result.charged);
  return result;
}

/**
 * Extend an active hold to at least now + `untilSeconds` (builds renew their hold with their lease).
 * 404 RESERVATION_NOT_FOUND, or 409 RESERVATION_NOT_ACTIVE once it was resolved or has lapsed.
 */
export async function renewReservation(
  q: Queryable,
  reservationId: string,
  untilSeconds: number,
  actor: Caller = {},
): Promise<{ expiresAt: string }> {
  const result = await extendReservation(q, reservationId, untilSeconds, actorOf(actor));
  actor.tally?.credit('expire', result.expired);
  if (result.outcome === 'ok') return { expiresAt: result.expiresAt as string };
  throw refusal(
    reservationId,
    { ...result, amount: null, charged: null, available: null, buildId: null, userId: null },
    null,
  );
}

export async function getReservation(q: Queryable, reservationId: string): Promise<Reservation> {
  const reservation = await findReservation(q, reservationId);
  if (!reservation) {
    throw new ApiError('RESERVATION_NOT_FOUND', `No reservation ${reservationId}; check the id you were given.`, {
      reservationId,
    });
  }
  return reservation;
}

/** A ledger cursor is an entry id: a positive bigint, at most 18 digits (far below 2^63). */
const LEDGER_CURSOR = /^[1-9][0-9]{0,17}$/;

/** A page of the ledger, newest first; `nextCursor` is null on the last page. */
export async function getLedger(
  q: Queryable,
  userId: string,
  cursor: string | undefined,
  limit: number,
): Promise<{ entries: LedgerEntry[]; nextCursor: string | null }> {
  if (cursor !== undefined && !LEDGER_CURSOR.test(cursor)) {
    throw new ApiError('VALIDATION_ERROR', 'The cursor is not one Kiln gave; pass nextCursor from the previous page.', {
      issues: [{ path: 'query.cursor', message: 'must be the nextCursor of a previous page (an entry id)' }],
    });
  }
  const entries = await listLedger(q, userId, cursor, limit + 1);
  const page = entries.slice(0, limit);
  return { entries: page, nextCursor: entries.length > limit ? page[page.length - 1].id : null };
}

/**
 * Prove the books: one user's, or every user's when userId is undefined. A full audit run for a `source` (the
 * auditor, the API, the CLI) is recorded, so that the audit gauges on /metrics show it.
 */
export async function audit(q: Queryable, userId?: string, source?: AuditSource): Promise<AuditReport> {
  const report = await auditCredits(q, userId);
  if (userId === undefined && source !== undefined) await recordAuditRun(q, report, source);
  return report;
}
