import type { UsageSample } from '../domain/estimate';
import type { Queryable } from './database';

/** How many recent builds an estimate looks at: recent behaviour matters more than old. */
const RECENT_BUILDS = 500;

/**
 * Percentiles of the actual credits of the most recent deployed builds of one project (or of all when projectId
 * is null) for an operation. A build's operation is its `metadata.operation`, `build` when it has none.
 */
export async function deployedUsage(q: Queryable, operation: string, projectId: string | null): Promise<UsageSample> {
  const { rows } = await q.query<{ n: unknown; p10: unknown; p50: unknown; p90: unknown }>(
    `with samples as (
       select actual_credits from builds
        where state = 'deployed' and actual_credits is not null
          and ($2::text is null or project_id = $2::text)
          and coalesce(metadata->>'operation', 'build') = $1::text
        order by finished_at desc nulls last, created_at desc
        limit ${RECENT_BUILDS})
     select count(*) as n,
            percentile_disc(0.1) within group (order by actual_credits) as p10,
            percentile_disc(0.5) within group (order by actual_credits) as p50,
            percentile_disc(0.9) within group (order by actual_credits) as p90
       from samples`,
    [operation, projectId],
  );
  const row = rows[0];
  return { count: Number(row.n), p10: Number(row.p10 ?? 0), p50: Number(row.p50 ?? 0), p90: Number(row.p90 ?? 0) };
}

/**
 * Whether any build carries this operation (`metadata.operation`, `build` when none), in any state; and, when
 * none does, up to `limit` operations that builds do carry, for the refusal's message. `build` is always known.
 */
export async function knownOperation(
  q: Queryable,
  operation: string,
  limit: number,
): Promise<{ known: true } | { known: false; others: string[] }> {
  if (operation === 'build') return { known: true };
  const { rows } = await q.query<{ found: boolean }>(
    `select exists (select 1 from builds where metadata->>'operation' = $1::text) as found`,
    [operation],
  );
  if (rows[0]?.found) return { known: true };
  const others = await q.query<{ operation: string }>(
    `select distinct metadata->>'operation' as operation from builds
      where metadata->>'operation' is not null order by 1 limit $1::int`,
    [limit],
  );
  return { known: false, others: ['build', ...others.rows.map((row) => row.operation).filter((op) => op !== 'build')] };
}
