import type { BuildAnalyticsRows, CreditFigures, UsageAnalyticsRows } from '../domain/analytics-report';
import type { Queryable } from './database';

/**
 * The analytics reads (SPEC section 7), each one statement, so one snapshot: the rollups that migration 0010's fold
 * keeps and the rows past its cursor are read together, and every row counts exactly once. Everyone's figures come
 * from the rollups; one project's or user's from their own rows (analytics_build_row_facts, analytics_usage_entries
 * on the indexes by project, user and time). Rows are returned as the statement's JSON document, converted here.
 */

/** Who the figures are about: everyone (the rollups), or one project, user, or both. */
export interface AnalyticsFilter {
  projectId?: string;
  userId?: string;
}

const everyone = (filter: AnalyticsFilter) => filter.projectId === undefined && filter.userId === undefined;

/**
 * The figures of the range as rollup-shaped sets: hc counts and hf failures by hour and framework, hl durations by
 * hour, hd durations by UTC day, hw queue waits alone by hour (the hour-of-day percentiles: read on their own, a
 * month's hourly rollup of waits is half the rows of both kinds), hx features by hour. Everyone: the rollups and the rows past the fold's cursor;
 * one project or user: their builds' own facts.
 */
function buildSources(filter: AnalyticsFilter): string {
  if (everyone(filter)) {
    return `
      cur as (select xact, ref, n from analytics_fold_cursors where source = 'build_events'),
      tail as (select f.* from cur, analytics_build_facts(cur.xact, cur.ref, cur.n, null, null) f
                where f.kind is not null and f.hour >= $1 and f.hour < $2),
      hc as (select hour, framework, created, started, deployed, failed, cancelled from analytics_builds_hourly
              where hour >= $1 and hour < $2
             union all
             select hour, framework, (kind = 'created')::int, (kind = 'started')::int, (kind = 'deployed')::int,
                    (kind = 'failed')::int, (kind = 'cancelled')::int from tail),
      hf as (select hour, framework, reason, failed from analytics_build_failures_hourly where hour >= $1 and hour < $2
             union all select hour, framework, reason, 1 from tail where kind = 'failed'),
      tail_latency as (select hour, case when kind = 'started' then 'wait' else 'run' end as kind, latency as bucket
                         from tail where latency is not null),
      hl as (select hour, kind, bucket, builds from analytics_build_latency_hourly
              where kind in ('run', 'wait') and hour >= $1 and hour < $2
             union all select hour, kind, bucket, 1 from tail_latency),
      hw as (select hour, bucket, builds from analytics_build_latency_hourly
              where kind = 'wait' and hour >= $1 and hour < $2
             union all select hour, bucket, 1 from tail_latency where kind = 'wait'),
      hd as (select (day::timestamp at time zone 'UTC') as day, kind, bucket, builds from analytics_build_latency_daily
              where day >= ($1::timestamptz at time zone 'UTC')::date and day < ($2::timestamptz at time zone 'UTC')::date
             union all select date_trunc('day', hour at time zone 'UTC') at time zone 'UTC', kind, bucket, 1
                         from tail_latency),
      hx as (select hour, feature, builds from analytics_build_features_hourly where hour >= $1 and hour < $2
             union all select hour, t.feature, 1 from tail, unnest(tail.features) t(feature) where kind = 'created')`;
  }
  return `
      tail as (select f.* from analytics_build_row_facts f
                where ($5::text is null or f.project_id = $5::text) and ($6::text is null or f.user_id = $6::text)
                  and f.created_at < $2 and (f.finished_at is null or f.finished_at >= $1)
                  and f.hour >= $1 and f.hour < $2),
      hc as (select hour, framework, (kind = 'created')::int as created, (kind = 'started')::int as started,
                    (kind = 'deployed')::int as deployed, (kind = 'failed')::int as failed,
                    (kind = 'cancelled')::int as cancelled from tail),
      hf as (select hour, framework, reason, 1 as failed from tail where kind = 'failed'),
      hl as (select hour, case when kind = 'started' then 'wait' else 'run' end as kind, latency as bucket,
                    1 as builds from tail where latency is not null),
      hd as (select date_trunc('day', hour at time zone 'UTC') at time zone 'UTC' as day, kind, bucket, builds from hl),
      hw as (select hour, bucket, builds from hl where kind = 'wait'),
      hx as (select hour, t.feature, 1 as builds from tail, unnest(tail.features) t(feature) where kind = 'created')`;
}

const COUNTS = `sum(created)::int as created, sum(started)::int as started, sum(deployed)::int as deployed,
                sum(failed)::int as failed, sum(cancelled)::int as cancelled`;

/**
 * In: [from, to), the starts of its buckets (sorted; the first is from), the time zone of the hour-of-day and weekday
 * patterns, whether the buckets are UTC days (their durations then come from the daily rollup: a month is 30 rows a
 * duration bucket rather than 720), and who. Out: counts per bucket, framework, hour of day and weekday; failures by
 * reason; the nearest-rank p50/p95/p99 of run time and queue wait per bucket, in total and (waits) per hour of day,
 * as analytics_latency_bucket buckets; the ten most requested features. Errors: only the database's own.
 */
export async function readBuildAnalytics(
  q: Queryable,
  range: { from: Date; to: Date; starts: Date[]; timeZone: string; utcDays: boolean },
  filter: AnalyticsFilter,
): Promise<BuildAnalyticsRows> {
  const local = 'hour at time zone $4::text';
  // The durations the series and totals read: by UTC day for UTC day buckets, else by hour.
  const series = range.utcDays
    ? 'select day as t, kind, bucket, builds from hd'
    : 'select hour as t, kind, bucket, builds from hl';
  const { rows } = await q.query<{ doc: BuildAnalyticsRows }>(
    `with ${buildSources(filter)},
     hs as (${series}),
     latency as (
       select g, i, hod, kind, bucket, n,
              sum(n) over (partition by g, i, hod, kind order by bucket) as cum,
              sum(n) over (partition by g, i, hod, kind) as total
         from (select 'series' as g, width_bucket(t, $3::timestamptz[]) as i, null::int as hod, kind, bucket,
                      sum(builds) as n from hs group by 2, kind, bucket
               union all
               select 'total', null, null, kind, bucket, sum(builds) from hs group by kind, bucket
               union all
               select 'hour', null, extract(hour from ${local})::int, 'wait', bucket, sum(builds)
                 from hw group by 3, bucket) x),
     percentiles as (
       select g, i, hod, kind,
              min(bucket) filter (where cum >= ceil(0.5 * total)) as p50,
              min(bucket) filter (where cum >= ceil(0.95 * total)) as p95,
              min(bucket) filter (where cum >= ceil(0.99 * total)) as p99
         from latency group by g, i, hod, kind)
     select json_build_object(
       'counts', (select coalesce(json_agg(x order by x.i), '[]') from (
                   select width_bucket(hour, $3::timestamptz[]) as i, ${COUNTS} from hc group by 1) x),
       'frameworks', (select coalesce(json_agg(x order by x.framework), '[]') from (
                   select framework, ${COUNTS} from hc group by 1) x),
       'hours', (select coalesce(json_agg(x order by x.hour), '[]') from (
                   select extract(hour from ${local})::int as hour, sum(created)::int as created from hc group by 1) x),
       'weekdays', (select coalesce(json_agg(x order by x.weekday), '[]') from (
                   select extract(isodow from ${local})::int as weekday, sum(created)::int as created
                     from hc group by 1) x),
       'failures', (select coalesce(json_agg(x), '[]') from (
                   select width_bucket(hour, $3::timestamptz[]) as i, reason, sum(failed)::int as failed
                     from hf group by 1, 2) x),
       'percentiles', (select coalesce(json_agg(p), '[]') from percentiles p),
       'features', (select coalesce(json_agg(x order by x.builds desc, x.feature), '[]') from (
                   select feature, sum(builds)::int as builds from hx group by 1 order by 2 desc, 1 limit 10) x)
     ) as doc`,
    everyone(filter)
      ? [range.from, range.to, range.starts, range.timeZone]
      : [range.from, range.to, range.starts, range.timeZone, filter.projectId ?? null, filter.userId ?? null],
  );
  return rows[0].doc;
}

const SUMS = `sum(granted)::bigint as granted, sum(reserved)::bigint as reserved, sum(charged)::bigint as charged,
              sum(refunded)::bigint as refunded, sum(released)::bigint as released, sum(expired)::bigint as expired`;

/**
 * In: [from, to), the starts of its buckets, the segment (plan or operation), the UTC days for the top users
 * ([fromDay, toDay)), whether the buckets are UTC days, how many top users, and one user or everyone. Out: credits
 * moved per bucket and segment (with the number of ledger entries), and the top users by credits charged (one user:
 * that user, with the plan of their latest entry in the range). Everyone's figures come from the rollups and the
 * entries past the fold's cursor; one user's from their daily rollup when the buckets are UTC days, else from their
 * own entries (the index by user and time). Errors: only the database's own.
 */
export async function readUsageAnalytics(
  q: Queryable,
  range: { from: Date; to: Date; starts: Date[]; fromDay: string; toDay: string; utcDays: boolean },
  segment: 'plan' | 'operation',
  topUsers: number,
  userId: string | undefined,
): Promise<UsageAnalyticsRows> {
  const figures = 'granted, reserved, charged, refunded, released, expired';
  const cursor = "cur as (select xact, n from analytics_fold_cursors where source = 'credit_ledger')";
  const tail = (who: string) =>
    `select f.hour, f.plan, f.operation, ${figures.replace(/(\w+)/g, 'f.$1')}, 1
       from cur, analytics_usage_facts(cur.xact, cur.n, null, null) f
      where ${who} f.hour >= $1 and f.hour < $2`;
  let source: string;
  if (userId === undefined) {
    source = `${cursor},
         hu as (select hour, plan, operation, ${figures}, entries from analytics_usage_hourly
                 where hour >= $1 and hour < $2
                union all ${tail('')}),
         top as (select t.user_id, t.plan, ${figures} from analytics_top_users($5::date, $6::date, $7::int) t)`;
  } else {
    const entries = range.utcDays
      ? `${cursor},
         hu as (select (day::timestamp at time zone 'UTC') as hour, plan, operation, ${figures}, entries
                  from analytics_usage_user_segments_daily
                 where user_id = $5::text and day >= $6::date and day < $7::date
                union all ${tail('f.user_id = $5::text and')})`
      : `hu as (select hour, plan, operation, ${figures}, 1 as entries from analytics_usage_entries
                 where user_id = $5::text and created_at >= $1 and created_at < $2)`;
    source = `${entries},
         top as (select $5::text as user_id,
                        (select coalesce(l.plan, 'free') from credit_ledger l
                          where l.user_id = $5::text and l.created_at >= $1 and l.created_at < $2
                          order by l.created_at desc, l.id desc limit 1) as plan, ${SUMS}
                   from hu having count(*) > 0)`;
  }
  const { rows } = await q.query<{ doc: { series: UsageAnalyticsRows['series']; top: Record<string, unknown>[] } }>(
    `with ${source}
     select json_build_object(
       'series', (select coalesce(json_agg(x), '[]') from (
                   select width_bucket(hour, $3::timestamptz[]) as i,
                          case when $4::text = 'plan' then plan else operation end as segment,
                          ${SUMS}, sum(entries)::int as entries
                     from hu group by 1, 2) x),
       'top', (select coalesce(json_agg(t), '[]') from top t)
     ) as doc`,
    userId === undefined
      ? [range.from, range.to, range.starts, segment, range.fromDay, range.toDay, topUsers]
      : range.utcDays
        ? [range.from, range.to, range.starts, segment, userId, range.fromDay, range.toDay]
        : [range.from, range.to, range.starts, segment, userId],
  );
  const { series, top } = rows[0].doc;
  return {
    series: series.map((s) => ({ ...s, ...numbers(s) })),
    topUsers: top.map((t) => ({ userId: String(t.user_id), plan: String(t.plan), ...numbers(t) })),
  };
}

function numbers(row: object): CreditFigures {
  const r = row as Record<string, unknown>;
  return {
    granted: Number(r.granted),
    reserved: Number(r.reserved),
    charged: Number(r.charged),
    refunded: Number(r.refunded),
    released: Number(r.released),
    expired: Number(r.expired),
  };
}

/**
 * In: how many rows of each source to fold at most. Out: the events and ledger entries folded into the rollups by
 * this call (one transaction), or -1 each when another process was folding. Errors: only the database's own.
 */
export async function foldAnalytics(q: Queryable, limit: number): Promise<{ events: number; entries: number }> {
  const { rows } = await q.query<{ events: number; entries: number }>(
    'select events, entries from analytics_fold($1::int)',
    [limit],
  );
  return rows[0];
}

/** In: nothing. Out: when each source was last folded (null before the first fold). Errors: the database's own. */
export async function foldCursors(q: Queryable): Promise<{ source: string; foldedAt: Date }[]> {
  const { rows } = await q.query<{ source: string; folded_at: Date }>(
    'select source, folded_at from analytics_fold_cursors order by source',
  );
  return rows.map((r) => ({ source: r.source, foldedAt: new Date(r.folded_at) }));
}
