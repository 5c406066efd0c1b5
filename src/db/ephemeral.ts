import type { Queryable } from './database';

/**
 * The ephemeral store's SQL when there is no Redis (migration 0007): entries with an expiry (nonces, copies of
 * recorded responses) in store_entries, fixed-window counters in store_counters. src/store/database.ts adapts these
 * to the EphemeralStore interface.
 */

export interface StoreClaimRow {
  fresh: boolean;
  /** Per counter, its count in the current window (this hit included). */
  counts: number[];
  /** Per counter, the ms left in its window. */
  resetsMs: number[];
  /** The read key's value, null when absent; undefined when no key was read. */
  read?: string | null;
  /** Requests signed before this instant (ms) must be refused: claims before it may have been lost. 0: none lost. */
  epochMs: number;
}

/**
 * One call of store_claim: the nonce keys stored together or not at all (and the marks with them), a hit on each
 * counter, and one read. In: the nonce keys and marks, their value and TTL; counter keys with their windows (ms); the key to read, if any; `async`:
 * commit without waiting for the WAL flush (PostgreSQL; the answer's epochMs then covers what a crash may lose).
 * Out: StoreClaimRow. Errors: KS001 for an empty counter key or a window <= 0.
 */
export async function storeClaim(
  q: Queryable,
  claim: {
    nonceKeys: readonly string[];
    /** Stored with the nonce keys when the claim is fresh, whether or not they exist. */
    marks?: readonly string[];
    /** Keys that must be absent for the claim to be fresh; never stored. */
    checks?: readonly string[];
    value: string;
    ttlMs: number;
    counters: readonly { key: string; windowMs: number }[];
    read?: string;
    async: boolean;
  },
): Promise<StoreClaimRow> {
  const { rows } = await q.query<{
    fresh: boolean;
    counts: (number | string)[];
    resets_ms: (number | string)[];
    read_value: string | null;
    epoch_ms: number | string;
  }>(
    `select fresh, counts, resets_ms, read_value, epoch_ms
       from store_claim($1::text[], $2::text[], $3::text[], $4::text, $5::bigint, $6::text[], $7::bigint[], $8::text,
                        $9::boolean)`,
    [
      claim.nonceKeys,
      claim.marks ?? [],
      claim.checks ?? [],
      claim.value,
      claim.ttlMs,
      claim.counters.map((c) => c.key),
      claim.counters.map((c) => c.windowMs),
      claim.read ?? null,
      claim.async,
    ],
  );
  const row = rows[0];
  const result: StoreClaimRow = {
    fresh: row.fresh,
    counts: row.counts.map(Number),
    resetsMs: row.resets_ms.map(Number),
    epochMs: Number(row.epoch_ms),
  };
  if (claim.read !== undefined) result.read = row.read_value;
  return result;
}

/** In: a key. Out: its live value, or null. Errors: only the database's own. */
export async function storeGet(q: Queryable, key: string): Promise<string | null> {
  const { rows } = await q.query<{ value: string }>(
    'select value from store_entries where key = $1::text and expires_at > clock_timestamp()',
    [key],
  );
  return rows[0]?.value ?? null;
}

/**
 * Store a value for `ttlMs`; with `onlyIfAbsent`, only when the key holds no live value.
 * In: key, value, TTL in ms. Out: true when stored. Errors: only the database's own.
 */
export async function storeSet(
  q: Queryable,
  key: string,
  value: string,
  ttlMs: number,
  onlyIfAbsent: boolean,
): Promise<boolean> {
  const { rowCount } = await q.query(
    `insert into store_entries (key, value, expires_at)
     values ($1::text, $2::text, clock_timestamp() + make_interval(secs => $3::bigint / 1000.0))
     on conflict (key) do update set value = excluded.value, expires_at = excluded.expires_at
       where not $4::boolean or store_entries.expires_at <= clock_timestamp()`,
    [key, value, ttlMs, onlyIfAbsent],
  );
  return rowCount === 1;
}

/** In: a key. Out: nothing (an absent key is fine). Errors: only the database's own. */
export async function storeDelete(q: Queryable, key: string): Promise<void> {
  await q.query('delete from store_entries where key = $1::text', [key]);
}

/**
 * Delete up to `limit` dead entries and counters (each table its own batch); returns how many went.
 * In: the batch size. Out: rows deleted. Errors: only the database's own.
 */
export async function purgeStore(q: Queryable, limit = 1000): Promise<number> {
  const { rows } = await q.query<{ n: number | string }>(
    `with e as (
       delete from store_entries where key in (
         select key from store_entries where expires_at <= clock_timestamp() order by expires_at limit $1::int)
       returning 1),
     c as (
       delete from store_counters where key in (
         select key from store_counters where expires_at <= clock_timestamp() order by expires_at limit $1::int)
       returning 1)
     select (select count(*) from e) + (select count(*) from c) as n`,
    [limit],
  );
  return Number(rows[0].n);
}

/**
 * Send a NOTIFY on `channel` (the wake-ups of a deployment without Redis), in its own statement.
 * In: channel name and payload. Out: nothing. Errors: only the database's own.
 */
export async function notify(q: Queryable, channel: string, payload: string): Promise<void> {
  await q.query('select pg_notify($1::text, $2::text)', [channel, payload]);
}
