import type { Queryable } from './database';

/**
 * Credits repository (SPEC section 6): one call to one plpgsql function of migrations/0004_credits.sql per
 * operation, and the reads. Rows are converted to camelCase here; bigint columns become numbers (credit figures
 * stay far below 2^53).
 */

/** Who asked, for the ledger. */
export interface Actor {
  requestId: string;
  correlationId: string;
}

/** A user's credit account as the API shows it. */
export interface CreditAccount {
  userId: string;
  plan: string;
  balance: number;
  reserved: number;
  available: number;
}

export type ReservationState = 'active' | 'committed' | 'released' | 'expired';

/** A hold as the API shows it. */
export interface Reservation {
  reservationId: string;
  userId: string;
  buildId: string | null;
  reserved: number;
  state: ReservationState;
  expires: string;
  charged: number | null;
  refunded: number | null;
  reason: string;
  resolutionReason: string | null;
  createdAt: string;
  resolvedAt: string | null;
}

/** One ledger entry as the API shows it. */
export interface LedgerEntry {
  id: string;
  userId: string;
  type: 'grant' | 'reserve' | 'commit' | 'release' | 'expire' | 'charge';
  amount: number;
  reservedChange: number;
  balanceAfter: number;
  reservedAfter: number;
  reservationId: string | null;
  buildId: string | null;
  requestId: string;
  correlationId: string;
  reason: string;
  source: string | null;
  createdAt: string;
}

const num = (value: unknown): number => Number(value);
const numOrNull = (value: unknown): number | null => (value === null || value === undefined ? null : Number(value));
const iso = (value: unknown): string => new Date(value as Date | string).toISOString();

/**
 * Credits of the account's lapsed holds that an operation wrote as expired before it acted (every credit function
 * does so under the account's lock; migration 0009), for credit_usage_total.
 */
export interface Expired {
  expired: number;
}

/**
 * One call of credit_grant: add credits (creating the account, setting the plan when given) with its ledger entry.
 * In: user, credits > 0, plan?, reason, source, and who asked. Out: the account after it, and the credits it expired.
 * Errors: KC001 for credits <= 0 (the route's schema refuses them first), and the database's own.
 */
export async function grantCredits(
  q: Queryable,
  input: { userId: string; credits: number; plan?: string; reason: string; source: string },
  actor: Actor,
): Promise<CreditAccount & Expired> {
  const { rows } = await q.query<{ plan: string; balance: unknown; reserved: unknown; expired: unknown }>(
    `select plan, balance, reserved, expired
       from credit_grant($1::text, $2::bigint, $3::text, $4::text, $5::text, $6::text, $7::text)`,
    [input.userId, input.credits, input.plan ?? null, input.reason, input.source, actor.requestId, actor.correlationId],
  );
  const row = rows[0];
  const balance = num(row.balance);
  const reserved = num(row.reserved);
  return {
    userId: input.userId,
    plan: row.plan,
    balance,
    reserved,
    available: balance - reserved,
    expired: num(row.expired),
  };
}

/** The account now (lapsed holds excluded); undefined when the user never had one. */
export async function findAccount(q: Queryable, userId: string): Promise<CreditAccount | undefined> {
  const { rows } = await q.query<{ plan: string; balance: unknown; reserved: unknown }>(
    `select plan, balance, credit_reserved_now(user_id) as reserved from credit_accounts where user_id = $1::text`,
    [userId],
  );
  if (!rows[0]) return undefined;
  const balance = num(rows[0].balance);
  const reserved = num(rows[0].reserved);
  return { userId, plan: rows[0].plan, balance, reserved, available: balance - reserved };
}

export interface ReserveOutcome extends Expired {
  outcome: 'ok' | 'insufficient';
  expiresAt: string | null;
  balance: number;
  reserved: number;
}

/** A hold to take: its id, the user, the credits, the build it is for, how long it lasts (s), the ledger's reason. */
export interface NewReservation {
  id: string;
  userId: string;
  amount: number;
  buildId: string | null;
  ttlS: number;
  reason: string;
}

/**
 * One call of credit_reserve: hold `amount` for `ttlS` under the given id, with its ledger entry. In: the hold and who
 * asked. Out: 'ok' with the expiry, or 'insufficient' (nothing written), with balance and reserved. Errors: KC001 for
 * an amount or TTL <= 0, and the database's own.
 */
export async function insertReservation(q: Queryable, input: NewReservation, actor: Actor): Promise<ReserveOutcome> {
  const { rows } = await q.query<{
    outcome: 'ok' | 'insufficient';
    expires_at: unknown;
    balance: unknown;
    reserved: unknown;
    expired: unknown;
  }>(
    `select outcome, expires_at, balance, reserved, expired
       from credit_reserve($1::text, $2::text, $3::bigint, $4::text, $5::int, $6::text, $7::text, $8::text)`,
    [
      input.id,
      input.userId,
      input.amount,
      input.buildId,
      input.ttlS,
      actor.requestId,
      actor.correlationId,
      input.reason,
    ],
  );
  const row = rows[0];
  return {
    outcome: row.outcome,
    expiresAt: row.expires_at ? iso(row.expires_at) : null,
    balance: num(row.balance),
    reserved: num(row.reserved),
    expired: num(row.expired),
  };
}

export interface ResolveOutcome extends Expired {
  outcome: 'ok' | 'repeat' | 'not_found' | 'not_active' | 'held_by_build' | 'exceeds' | 'build_mismatch';
  /** The hold's state; for held_by_build, the state of the build holding it (queued or building). */
  state: ReservationState | 'queued' | 'building' | null;
  amount: number | null;
  charged: number | null;
  available: number | null;
  buildId: string | null;
  userId: string | null;
}

/** A hold's resolution: commit `actual` (the rest refunded) or release it all; the build it must belong to, if any. */
export interface Resolution {
  reservationId: string;
  action: 'commit' | 'release';
  actual: number | null;
  buildId: string | null;
  reason: string;
}

/**
 * Commit (charge `actual`, refund the rest) or release (refund all) a hold, once. The hold of a queued or building
 * build is refused (held_by_build, with that build's id and state): the build's own end settles it.
 */
export async function resolveReservation(q: Queryable, input: Resolution, actor: Actor): Promise<ResolveOutcome> {
  const { rows } = await q.query<Record<string, unknown>>(
    `select outcome, state, amount, charged, available, build_id, user_id, expired
       from credit_resolve($1::text, $2::text, $3::bigint, $4::text, $5::text, $6::text, $7::text)`,
    [
      input.reservationId,
      input.action,
      input.actual,
      input.buildId,
      input.reason,
      actor.requestId,
      actor.correlationId,
    ],
  );
  const row = rows[0];
  return {
    outcome: row.outcome as ResolveOutcome['outcome'],
    state: (row.state as ResolveOutcome['state']) ?? null,
    amount: numOrNull(row.amount),
    charged: numOrNull(row.charged),
    available: numOrNull(row.available),
    buildId: (row.build_id as string | null) ?? null,
    userId: (row.user_id as string | null) ?? null,
    expired: num(row.expired),
  };
}

/**
 * Charge up to `credits` straight from the available balance, with no hold (a build that used more than it held, or
 * whose hold lapsed): what the balance covers is charged, the rest is answered as uncollected.
 */
export async function chargeAvailable(
  q: Queryable,
  input: { userId: string; credits: number; buildId: string | null; reservationId: string | null; reason: string },
  actor: Actor,
): Promise<{ charged: number; uncollected: number; available: number } & Expired> {
  const { rows } = await q.query<{
    charged: unknown;
    uncollected: unknown;
    balance: unknown;
    reserved: unknown;
    expired: unknown;
  }>(
    `select charged, uncollected, balance, reserved, expired
       from credit_charge($1::text, $2::bigint, $3::text, $4::text, $5::text, $6::text, $7::text)`,
    [
      input.userId,
      input.credits,
      input.buildId,
      input.reservationId,
      input.reason,
      actor.requestId,
      actor.correlationId,
    ],
  );
  const row = rows[0];
  return {
    charged: num(row.charged),
    uncollected: num(row.uncollected),
    available: num(row.balance) - num(row.reserved),
    expired: num(row.expired),
  };
}

/**
 * One call of credit_renew: extend an active hold to at least now + `seconds`. In: the hold's id, seconds and who
 * asked. Out: 'ok' with the new expiry, 'not_found', or 'not_active' with its state (a lapsed hold is expired
 * first). Errors: KC001 for seconds <= 0, and the database's own.
 */
export async function extendReservation(
  q: Queryable,
  reservationId: string,
  seconds: number,
  actor: Actor,
): Promise<
  { outcome: 'ok' | 'not_found' | 'not_active'; state: ReservationState | null; expiresAt: string | null } & Expired
> {
  const { rows } = await q.query<{
    outcome: 'ok' | 'not_found' | 'not_active';
    state: ReservationState | null;
    expires_at: unknown;
    expired: unknown;
  }>('select outcome, state, expires_at, expired from credit_renew($1::text, $2::int, $3::text, $4::text)', [
    reservationId,
    seconds,
    actor.requestId,
    actor.correlationId,
  ]);
  const row = rows[0];
  return {
    outcome: row.outcome,
    state: row.state,
    expiresAt: row.expires_at ? iso(row.expires_at) : null,
    expired: num(row.expired),
  };
}

interface DbReservation {
  id: string;
  user_id: string;
  build_id: string | null;
  amount: unknown;
  state: ReservationState;
  expires_at: unknown;
  charged: unknown;
  reason: string;
  resolution_reason: string | null;
  created_at: unknown;
  resolved_at: unknown;
}

/** A hold by id; one that lapsed but is not yet marked shows as expired (it stopped counting at expires_at). */
export async function findReservation(q: Queryable, id: string): Promise<Reservation | undefined> {
  const { rows } = await q.query<DbReservation>(
    `select id, user_id, build_id, amount,
            case when state = 'active' and expires_at <= clock_timestamp() then 'expired' else state end as state,
            expires_at, charged, reason, resolution_reason, created_at,
            case when state = 'active' and expires_at <= clock_timestamp() then expires_at else resolved_at end
              as resolved_at
       from credit_reservations where id = $1::text`,
    [id],
  );
  const row = rows[0];
  if (!row) return undefined;
  const amount = num(row.amount);
  const charged = numOrNull(row.charged);
  return {
    reservationId: row.id,
    userId: row.user_id,
    buildId: row.build_id,
    reserved: amount,
    state: row.state,
    expires: iso(row.expires_at),
    charged,
    refunded: row.state === 'committed' ? amount - (charged ?? 0) : row.state === 'active' ? null : amount,
    reason: row.reason,
    resolutionReason: row.resolution_reason,
    createdAt: iso(row.created_at),
    resolvedAt: row.resolved_at ? iso(row.resolved_at) : null,
  };
}

interface DbLedgerEntry {
  id: unknown;
  user_id: string;
  type: LedgerEntry['type'];
  amount: unknown;
  reserved_change: unknown;
  balance_after: unknown;
  reserved_after: unknown;
  reservation_id: string | null;
  build_id: string | null;
  request_id: string;
  correlation_id: string;
  reason: string;
  source: string | null;
  created_at: unknown;
}

/** A page of a user's ledger, newest first, entries with id < `before` when given. */
export async function listLedger(
  q: Queryable,
  userId: string,
  before: string | undefined,
  limit: number,
): Promise<LedgerEntry[]> {
  const { rows } = await q.query<DbLedgerEntry>(
    `select id, user_id, type, amount, reserved_change, balance_after, reserved_after, reservation_id, build_id,
            request_id, correlation_id, reason, source, created_at
       from credit_ledger
      where user_id = $1::text and ($2::bigint is null or id < $2::bigint)
      order by id desc
      limit $3::int`,
    [userId, before ?? null, limit],
  );
  return rows.map((row) => ({
    id: String(row.id),
    userId: row.user_id,
    type: row.type,
    amount: num(row.amount),
    reservedChange: num(row.reserved_change),
    balanceAfter: num(row.balance_after),
    reservedAfter: num(row.reserved_after),
    reservationId: row.reservation_id,
    buildId: row.build_id,
    requestId: row.request_id,
    correlationId: row.correlation_id,
    reason: row.reason,
    source: row.source,
    createdAt: iso(row.created_at),
  }));
}

/**
 * Write the expiry of lapsed holds into the ledger for up to `limit` users (one call of credit_sweep). In: the limit
 * and the sweep's request id. Out: how many holds expired, and their credits. Errors: only the database's own.
 */
export async function sweepLapsedHolds(
  q: Queryable,
  limit: number,
  requestId: string,
): Promise<{ holds: number; credits: number }> {
  const { rows } = await q.query<{ holds: unknown; credits: unknown }>(
    'select holds, credits from credit_sweep($1::int, $2::text)',
    [limit, requestId],
  );
  return { holds: num(rows[0].holds), credits: num(rows[0].credits) };
}
