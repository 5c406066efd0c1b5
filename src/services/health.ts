/** What readiness checks: the database answers a trivial statement (the store has its own ping). */
import type { Queryable } from '../db/database';
import { ping } from '../db/health';

export function databaseAnswers(q: Queryable): Promise<void> {
  return ping(q);
}
