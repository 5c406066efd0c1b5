/**
 * The idempotency records of SPEC section 4, as the HTTP layer's idempotency hooks use them: claim a key (its lock
 * and its record, with BEGIN, in one round trip), and record a response and commit (one round trip).
 */
export { claimKey, commitRecord, type IdempotencyRecord, type KeyClaim } from '../db/idempotency';
