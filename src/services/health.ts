/** What readiness checks: the database answers a trivial statement (the store has its own ping). */
import { DatabaseUnavailableError, type Queryable } from '../db/database';
import { ping } from '../db/health';
import { within } from './shared-read';

export function databaseAnswers(q: Queryable): Promise<void> {
  return ping(q);
}

/** True when `error` says the database is away for now (a retry may succeed), not that a statement is wrong. */
export function isDatabaseAway(error: unknown): boolean {
  return error instanceof DatabaseUnavailableError;
}

/** In: the store's ping and how long it may take. Out: 'up' when it answered in time, else 'down'. Never rejects. */
export function storeState(ping: () => Promise<unknown>, ms: number): Promise<'up' | 'down'> {
  return within(ping(), ms).then(
    () => 'up' as const,
    () => 'down' as const,
  );
}
