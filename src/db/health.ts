import type { Queryable } from './database';

/** In: nothing. Out: resolves when the database answers a trivial statement. Errors: only the database's own. */
export async function ping(q: Queryable): Promise<void> {
  await q.query('select 1');
}
