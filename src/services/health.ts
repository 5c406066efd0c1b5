/** What readiness checks: the database answers a trivial statement (the store has its own ping). */
import { DatabaseUnavailableError, type Queryable } from '../db/database';
import { ping } from '../db/health';
import { countInstances } from '../db/instances';

export function databaseAnswers(q: Queryable): Promise<void> {
  return ping(q);
}

/** True when `error` says the database is away for now (a retry may succeed), not that a statement is wrong. */
export function isDatabaseAway(error: unknown): boolean {
  return error instanceof DatabaseUnavailableError;
}

/** Kiln processes live and dead by their lines in service_instances (each line's lease decides). */
export function instancesByState(q: Queryable): Promise<{ live: number; dead: number }> {
  return countInstances(q);
}
