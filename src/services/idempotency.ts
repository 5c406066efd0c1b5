/**
 * The idempotency records of SPEC section 4, as the HTTP layer's idempotency hooks use them: claim a key (its lock
 * and its record, with BEGIN, in one round trip), and record a response and commit (one round trip); or, for the
 * writes that can, all of it in one statement (runOnce).
 */
import type { OnceEffect } from '../db/idempotency';

export {
  claimKey,
  commitRecord,
  type IdempotencyRecord,
  type KeyClaim,
  type OnceEffect,
  runOnce,
} from '../db/idempotency';

/**
 * A keyed write that can run as one statement with its record (runOnce): the effect, and what to note from the
 * effect's row (its function's columns, as JSON) once it has committed. The services that have one make it from the
 * same input as their general form, so the two write the same thing.
 */
export interface OnceWrite {
  effect: OnceEffect;
  settle(result: Record<string, unknown>): void;
}
