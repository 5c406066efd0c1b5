/**
 * The idempotency records of SPEC section 4, as the HTTP layer's idempotency hooks use them: take a key's lock, find
 * its record, record a response, and bound an effect so that an error undoes it but keeps its record. Each runs in
 * the request's own transaction.
 */
export {
  findRecord,
  type IdempotencyRecord,
  insertRecord as recordResponse,
  markEffectStart,
  tryLockKey,
  undoEffect,
} from '../db/idempotency';
