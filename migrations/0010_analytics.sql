-- Analytics (SPEC section 7): build patterns and credit usage, exact and fast at a million builds.
--
-- How it stays fast without slowing the writes: nothing new is written in a request's transaction but one column
-- per row, the inserting transaction's id (`xact`, the column's default). A fold job in every process (one at a time)
-- turns the settled rows of build_events and credit_ledger into hourly rollups: a row is settled once its xact is
-- below the xmin of the current snapshot, since no transaction that old can still commit a row, so folding in
-- (xact, key) order past a cursor folds every row exactly once, whatever the commit order. A query reads the rollups
-- and the rows past the cursor (seconds of writes) in one statement, hence one snapshot: exact counts and sums.
--
-- Every ledger entry now records the plan its user had when the credits moved and the operation of its build (usage
-- by segment is then the same whether it is read from the rollups or from the ledger, and needs no join); entries
-- written before this migration get the plan the user has now.

-- 1. The segments of every movement. The credit functions below write them: the plan from the account row they
-- already lock, the operation from the build they name.
alter table credit_ledger add column plan text;
alter table credit_ledger add column operation text;
alter table credit_ledger disable trigger credit_ledger_append_only;
update credit_ledger l
   set plan = coalesce((select a.plan from credit_accounts a where a.user_id = l.user_id), 'free'),
       operation = case when l.build_id is null then 'none'
                        else coalesce((select left(coalesce(b.metadata ->> 'operation', 'build'), 64)
                                         from builds b where b.id = l.build_id), 'build') end;
alter table credit_ledger enable trigger credit_ledger_append_only;

-- credit_operation(build?) → the operation a movement of that build counts under: the build's metadata.operation
-- (as estimates read it), 'build' when it has none, 'none' for a movement of no build.
-- plpgsql rather than sql: called from the credit functions, a sql function would plan its query on every call.
create function credit_operation(p_build text) returns text language plpgsql stable as $$
declare
  v_operation text;
begin
  if p_build is null then
    return 'none';
  end if;
  select left(coalesce(b.metadata ->> 'operation', 'build'), 64) into v_operation from builds b where b.id = p_build;
  return coalesce(v_operation, 'build');
end;
$$;

-- One user's movements over a time range (the usage of one user), from the index alone once vacuumed.
create index credit_ledger_user_time on credit_ledger (user_id, created_at)
  include (type, amount, reserved_change, plan, operation);

-- 2. The inserting transaction of every event and entry, and the order the fold reads them in. Rows that exist now
-- get this migration's transaction: settled once it commits, they are folded on the first run (history included).
alter table build_events add column xact xid8 not null default pg_current_xact_id();
alter table credit_ledger add column xact xid8 not null default pg_current_xact_id();
create index build_events_fold on build_events (xact, build_id, seq);
create index credit_ledger_fold on credit_ledger (xact, id);

-- A user's builds by creation time (the per-user analytics; it also serves the audit's "one user's ended builds", so
-- the narrower index 0008 made for that goes).
create index builds_user_created on builds (user_id, created_at);
drop index builds_user_ended;

-- 3. Where each source's fold has got to: every row at or before (xact, ref, n) in (xact, key) order is folded.
create table analytics_fold_cursors (
  source text primary key check (source in ('build_events', 'credit_ledger')),
  xact xid8 not null,
  ref text not null,
  n bigint not null,
  folded_at timestamptz not null default now()
);
insert into analytics_fold_cursors (source, xact, ref, n)
values ('build_events', '0'::xid8, '', 0), ('credit_ledger', '0'::xid8, '', 0);

-- 4. The rollups, by UTC hour. framework: the project's, '' when it has none.
create table analytics_builds_hourly (
  hour timestamptz not null,
  framework text not null,
  created integer not null default 0,
  started integer not null default 0,
  deployed integer not null default 0,
  failed integer not null default 0,
  cancelled integer not null default 0,
  primary key (hour, framework)
);

-- Failures by reason: Kiln's own reasons, anything else (a PATCH's words) as 'other'.
create table analytics_build_failures_hourly (
  hour timestamptz not null,
  framework text not null,
  reason text not null,
  failed integer not null,
  primary key (hour, framework, reason)
);

-- Durations as counts per logarithmic bucket (src/domain/analytics.ts): kind 'run' (building → deployed or failed,
-- counted at the end) and 'wait' (queued → building, counted at the start); by the hour, and by the UTC day (a
-- month of days is 30 rows a bucket where the hours are 720).
create table analytics_build_latency_hourly (
  hour timestamptz not null,
  kind text not null check (kind in ('run', 'wait')),
  bucket smallint not null,
  builds integer not null,
  -- covering, kind first: a month of one kind's hours (the waits by hour of day) is one range of the index alone
  primary key (kind, hour, bucket) include (builds)
);

create table analytics_build_latency_daily (
  day date not null,
  kind text not null check (kind in ('run', 'wait')),
  bucket smallint not null,
  builds integer not null,
  primary key (day, kind, bucket) include (builds)
);

-- Builds created carrying each metadata.features tag.
create table analytics_build_features_hourly (
  hour timestamptz not null,
  feature text not null,
  builds integer not null,
  primary key (hour, feature)
);

-- Credits moved, by the movement's plan and operation (the build's metadata.operation, 'build' when it has none;
-- 'none' for movements of no build: grants, holds taken through the credits API).
create table analytics_usage_hourly (
  hour timestamptz not null,
  plan text not null,
  operation text not null,
  granted bigint not null default 0,
  reserved bigint not null default 0,
  charged bigint not null default 0,
  refunded bigint not null default 0,
  released bigint not null default 0,
  expired bigint not null default 0,
  entries integer not null default 0,
  primary key (hour, plan, operation)
);

-- Credits each user moved per UTC day: the top users of a range.
create table analytics_usage_user_daily (
  day date not null,
  user_id text not null,
  plan text not null,
  granted bigint not null default 0,
  reserved bigint not null default 0,
  charged bigint not null default 0,
  refunded bigint not null default 0,
  released bigint not null default 0,
  expired bigint not null default 0,
  primary key (day, user_id)
);
create index analytics_usage_user_daily_top on analytics_usage_user_daily (day, charged desc, user_id);

-- Credits one user moved per UTC day, plan and operation: one user's usage by UTC day without reading each entry.
create table analytics_usage_user_segments_daily (
  user_id text not null,
  day date not null,
  plan text not null,
  operation text not null,
  granted bigint not null default 0,
  reserved bigint not null default 0,
  charged bigint not null default 0,
  refunded bigint not null default 0,
  released bigint not null default 0,
  expired bigint not null default 0,
  entries integer not null default 0,
  primary key (user_id, day, plan, operation)
);

-- 5. Facts: what one state event says, in the rollups' terms. analytics_latency_bucket mirrors latencyBucket() of
-- src/domain/analytics.ts (0: under 1 ms; b: [1 ms × 1.1^(b−1), 1 ms × 1.1^b); at most 250).
create function analytics_latency_bucket(p_seconds double precision) returns smallint
language sql immutable parallel safe as $$
  select case when p_seconds is null then null
              when p_seconds < 0.001 then 0
              else least(250, 1 + floor(ln(p_seconds / 0.001) / ln(1.1)))::smallint end
$$;

-- analytics_failure_reason(reason) → the reason as analytics and metrics label it (a bounded set).
create function analytics_failure_reason(p_reason text) returns text language sql immutable parallel safe as $$
  select case when p_reason in ('exit_code', 'timeout', 'worker_lost', 'hold_expired', 'hold_lost', 'hold_resolved',
                                'executor_error', 'shutdown') then p_reason else 'other' end
$$;


-- analytics_features(metadata) → the build's metadata.features tags: strings, distinct, at most 20 of ≤ 100
-- characters each (null when it has none).
create function analytics_features(p_metadata jsonb) returns text[] language sql immutable parallel safe as $$
  select case when jsonb_typeof(p_metadata -> 'features') = 'array'
              then array(select distinct left(f, 100) from jsonb_array_elements_text(p_metadata -> 'features') f
                          where f <> '' limit 20) end
$$;

-- analytics_build_row_facts: what each build says, as the facts of its state events would: created (with its
-- features), started (with its queue wait), ended (with its run time and failure reason). The analytics of one
-- project or user read it (their builds are few, on builds_project_created and builds_user_created); everyone's come
-- from the rollups, which analytics_build_facts fills from the events themselves.
create view analytics_build_row_facts as
  select b.id as build_id, b.project_id, b.user_id, b.created_at, b.finished_at, 'created' as kind,
         date_trunc('hour', b.created_at) as hour, coalesce(p.framework, '') as framework, null::text as reason,
         null::smallint as latency, analytics_features(b.metadata) as features
    from builds b left join projects p on p.id = b.project_id
  union all
  select b.id, b.project_id, b.user_id, b.created_at, b.finished_at, 'started', date_trunc('hour', b.started_at),
         coalesce(p.framework, ''), null, analytics_latency_bucket(extract(epoch from b.started_at - b.created_at)::float8),
         null
    from builds b left join projects p on p.id = b.project_id
   where b.started_at is not null
  union all
  select b.id, b.project_id, b.user_id, b.created_at, b.finished_at, b.state, date_trunc('hour', b.finished_at),
         coalesce(p.framework, ''), case when b.state = 'failed' then analytics_failure_reason(b.reason) end,
         case when b.state in ('deployed', 'failed') and b.started_at is not null
              then analytics_latency_bucket(extract(epoch from b.finished_at - b.started_at)::float8) end,
         null
    from builds b left join projects p on p.id = b.project_id
   where b.finished_at is not null;

-- analytics_usage_entries: every ledger entry with its hour, UTC day, plan, operation and what it moved by kind
-- (granted; reserved; charged = commit and charge; refunded = the rest of a committed hold; released; expired). The
-- fold reads it past its cursor; one user's analytics read it on credit_ledger_user.
create view analytics_usage_entries as
  select l.xact, l.id, l.user_id, l.created_at, date_trunc('hour', l.created_at) as hour,
         (l.created_at at time zone 'UTC')::date as day, coalesce(l.plan, 'free') as plan,
         coalesce(l.operation, 'none') as operation,
         case when l.type = 'grant' then l.amount else 0 end as granted,
         case when l.type = 'reserve' then l.reserved_change else 0 end as reserved,
         case when l.type in ('commit', 'charge') then -l.amount else 0 end as charged,
         case when l.type = 'commit' then -l.reserved_change + l.amount else 0 end as refunded,
         case when l.type = 'release' then -l.reserved_change else 0 end as released,
         case when l.type = 'expire' then -l.reserved_change else 0 end as expired
    from credit_ledger l;

-- analytics_build_facts(from (xact, build, seq) exclusive, horizon xact exclusive, limit) → one row per event of
-- build_events past the cursor and settled (xact < horizon), in fold order, with what the rollups count for it: a
-- `queued` event creates (with the build's features), `started` starts (with its queue wait), a final state ends
-- (with its run time, deployed and failed only, and its reason when failed); progress and log events count nothing
-- (kind null) but move the cursor. The horizon null: every row visible (a query's tail).
create function analytics_build_facts(p_xact xid8, p_ref text, p_n bigint, p_horizon xid8, p_limit integer)
returns table (xact xid8, build_id text, seq integer, kind text, hour timestamptz, framework text, reason text,
               latency smallint, features text[])
language sql stable as $$
  select e.xact, e.build_id, e.seq,
         case when e.type = 'queued' then 'created'
              when e.type = 'started' then 'started'
              when e.type in ('deployed', 'failed', 'cancelled') then e.type end,
         date_trunc('hour', case when e.type = 'queued' then b.created_at
                                 when e.type = 'started' then b.started_at
                                 else b.finished_at end),
         coalesce(p.framework, ''),
         case when e.type = 'failed' then analytics_failure_reason(b.reason) end,
         case when e.type = 'started'
                then analytics_latency_bucket(extract(epoch from b.started_at - b.created_at)::float8)
              when e.type in ('deployed', 'failed') and b.started_at is not null
                then analytics_latency_bucket(extract(epoch from b.finished_at - b.started_at)::float8) end,
         case when e.type = 'queued' then analytics_features(b.metadata) end
    from build_events e
    join builds b on b.id = e.build_id
    left join projects p on p.id = b.project_id
   where (e.xact, e.build_id, e.seq) > (p_xact, p_ref, p_n::integer)
     and (p_horizon is null or e.xact < p_horizon)
   order by e.xact, e.build_id, e.seq
   limit p_limit
$$;

-- analytics_usage_facts(from (xact, id) exclusive, horizon exclusive, limit) → the ledger entries past the cursor
-- and settled (xact < horizon; null: every visible one), in fold order, as analytics_usage_entries shows them.
create function analytics_usage_facts(p_xact xid8, p_id bigint, p_horizon xid8, p_limit integer)
returns setof analytics_usage_entries language sql stable as $$
  select * from analytics_usage_entries v
   where (v.xact, v.id) > (p_xact, p_id)
     and (p_horizon is null or v.xact < p_horizon)
   order by v.xact, v.id
   limit p_limit
$$;

-- analytics_fold(limit) → (events, entries): fold up to `limit` settled rows of each source past its cursor into the
-- rollups and move the cursors, in this transaction. Settled: the row's transaction is older than every transaction
-- still running (pg_snapshot_xmin), so nothing before the new cursor can appear later. One fold at a time across
-- processes (a transaction-scoped advisory lock): a process that finds another folding answers (-1, -1) and leaves.
-- Each rollup upsert groups by its key, so a batch touches each rollup row once.
create function analytics_fold(p_limit integer) returns table (events integer, entries integer)
language plpgsql as $$
declare
  v_horizon xid8 := pg_snapshot_xmin(pg_current_snapshot());
  c record;
begin
  if not pg_try_advisory_xact_lock(hashtextextended('kiln.analytics-fold:' || current_schema(), 0)) then
    events := -1; entries := -1;
    return next;
    return;
  end if;

  select * into c from analytics_fold_cursors where source = 'build_events' for update;
  with batch as (
    select * from analytics_build_facts(c.xact, c.ref, c.n, v_horizon, p_limit)),
  counts as (
    insert into analytics_builds_hourly as h (hour, framework, created, started, deployed, failed, cancelled)
    select f.hour, f.framework, count(*) filter (where f.kind = 'created'), count(*) filter (where f.kind = 'started'),
           count(*) filter (where f.kind = 'deployed'), count(*) filter (where f.kind = 'failed'),
           count(*) filter (where f.kind = 'cancelled')
      from batch f where f.kind is not null and f.hour is not null
     group by f.hour, f.framework
    on conflict (hour, framework) do update
       set created = h.created + excluded.created, started = h.started + excluded.started,
           deployed = h.deployed + excluded.deployed, failed = h.failed + excluded.failed,
           cancelled = h.cancelled + excluded.cancelled),
  failures as (
    insert into analytics_build_failures_hourly as h (hour, framework, reason, failed)
    select f.hour, f.framework, f.reason, count(*) from batch f where f.kind = 'failed' and f.hour is not null
     group by f.hour, f.framework, f.reason
    on conflict (hour, framework, reason) do update set failed = h.failed + excluded.failed),
  latency as (
    insert into analytics_build_latency_hourly as h (hour, kind, bucket, builds)
    select f.hour, case when f.kind = 'started' then 'wait' else 'run' end, f.latency, count(*)
      from batch f where f.latency is not null and f.hour is not null
     group by 1, 2, 3
    on conflict (hour, kind, bucket) do update set builds = h.builds + excluded.builds),
  latency_daily as (
    insert into analytics_build_latency_daily as h (day, kind, bucket, builds)
    select (f.hour at time zone 'UTC')::date, case when f.kind = 'started' then 'wait' else 'run' end, f.latency,
           count(*)
      from batch f where f.latency is not null and f.hour is not null
     group by 1, 2, 3
    on conflict (day, kind, bucket) do update set builds = h.builds + excluded.builds),
  features as (
    insert into analytics_build_features_hourly as h (hour, feature, builds)
    select f.hour, t.feature, count(*) from batch f, unnest(f.features) t(feature)
     where f.kind = 'created' and f.hour is not null
     group by 1, 2
    on conflict (hour, feature) do update set builds = h.builds + excluded.builds),
  last as (
    select b.xact, b.build_id, b.seq from batch b order by b.xact desc, b.build_id desc, b.seq desc limit 1),
  moved as (
    update analytics_fold_cursors k set xact = last.xact, ref = last.build_id, n = last.seq, folded_at = now()
      from last where k.source = 'build_events')
  select count(*)::int into events from batch;

  select * into c from analytics_fold_cursors where source = 'credit_ledger' for update;
  with batch as (
    select * from analytics_usage_facts(c.xact, c.n, v_horizon, p_limit)),
  hourly as (
    insert into analytics_usage_hourly as h
           (hour, plan, operation, granted, reserved, charged, refunded, released, expired, entries)
    select f.hour, f.plan, f.operation, sum(f.granted), sum(f.reserved), sum(f.charged), sum(f.refunded),
           sum(f.released), sum(f.expired), count(*)
      from batch f group by f.hour, f.plan, f.operation
    on conflict (hour, plan, operation) do update
       set granted = h.granted + excluded.granted, reserved = h.reserved + excluded.reserved,
           charged = h.charged + excluded.charged, refunded = h.refunded + excluded.refunded,
           released = h.released + excluded.released, expired = h.expired + excluded.expired,
           entries = h.entries + excluded.entries),
  daily as (
    insert into analytics_usage_user_daily as h
           (day, user_id, plan, granted, reserved, charged, refunded, released, expired)
    select f.day, f.user_id, (array_agg(f.plan order by f.xact desc, f.id desc))[1], sum(f.granted), sum(f.reserved),
           sum(f.charged), sum(f.refunded), sum(f.released), sum(f.expired)
      from batch f group by f.day, f.user_id
    on conflict (day, user_id) do update
       set plan = excluded.plan, granted = h.granted + excluded.granted, reserved = h.reserved + excluded.reserved,
           charged = h.charged + excluded.charged, refunded = h.refunded + excluded.refunded,
           released = h.released + excluded.released, expired = h.expired + excluded.expired),
  user_segments as (
    insert into analytics_usage_user_segments_daily as h
           (user_id, day, plan, operation, granted, reserved, charged, refunded, released, expired, entries)
    select f.user_id, f.day, f.plan, f.operation, sum(f.granted), sum(f.reserved), sum(f.charged), sum(f.refunded),
           sum(f.released), sum(f.expired), count(*)
      from batch f group by f.user_id, f.day, f.plan, f.operation
    on conflict (user_id, day, plan, operation) do update
       set granted = h.granted + excluded.granted, reserved = h.reserved + excluded.reserved,
           charged = h.charged + excluded.charged, refunded = h.refunded + excluded.refunded,
           released = h.released + excluded.released, expired = h.expired + excluded.expired,
           entries = h.entries + excluded.entries),
  last as (select b.xact, b.id from batch b order by b.xact desc, b.id desc limit 1),
  moved as (
    update analytics_fold_cursors k set xact = last.xact, ref = '', n = last.id, folded_at = now()
      from last where k.source = 'credit_ledger')
  select count(*)::int into entries from batch;
  return next;
end;
$$;

create index analytics_usage_user_daily_user on analytics_usage_user_daily (user_id, day);

-- analytics_top_users(from day, to day exclusive, k) → the k users who were charged the most credits over those UTC
-- days (ties by user id; only users charged something), with their plan (the latest of the range) and every figure,
-- from the daily rollup and the ledger past the fold's cursor. Exact, and fast when usage is skewed, as it is: the
-- candidates are the top n users of each day, and a user outside them was charged at most the sum over the days of
-- each day's (n+1)-th figure; once the k-th candidate is above that bound no one else can be in the top k. Otherwise
-- n grows (×4); past 4096 it aggregates every user of the range.
create function analytics_top_users(p_from date, p_to date, p_k integer)
returns table (user_id text, plan text, granted bigint, reserved bigint, charged bigint, refunded bigint,
               released bigint, expired bigint)
language plpgsql stable as $$
declare
  v_n integer := greatest(4 * p_k, 32);
  v_candidates text[];
  v_bound bigint;
  v_kth bigint;
  v_count integer;
  c record;
begin
  select * into c from analytics_fold_cursors k where k.source = 'credit_ledger';
  loop
    with days as (select d::date as day from generate_series(p_from, p_to - 1, interval '1 day') d),
    ranked as (
      select u.user_id, u.charged, u.rn
        from days d
        cross join lateral (
          select r.user_id, r.charged, row_number() over (order by r.charged desc, r.user_id) as rn
            from (select a.user_id, a.charged from analytics_usage_user_daily a
                   where a.day = d.day and a.charged > 0
                   order by a.charged desc, a.user_id limit v_n + 1) r) u)
    select array_agg(distinct r.user_id) filter (where r.rn <= v_n),
           coalesce(sum(r.charged) filter (where r.rn = v_n + 1), 0)
      into v_candidates, v_bound
      from ranked r;
    v_candidates := coalesce(v_candidates, '{}')
                    || array(select f.user_id from analytics_usage_facts(c.xact, c.n, null, null) f
                              where f.day >= p_from and f.day < p_to);
    select count(*), min(x.charged) into v_count, v_kth
      from (select coalesce(d.charged, 0) + coalesce(t.charged, 0) as charged
              from unnest(v_candidates) u(user_id)
              left join lateral (select sum(a.charged) as charged from analytics_usage_user_daily a
                                  where a.user_id = u.user_id and a.day >= p_from and a.day < p_to) d on true
              left join (select f.user_id, (array_agg(f.plan order by f.xact desc, f.id desc))[1] as plan, sum(f.granted) as granted,
                     sum(f.reserved) as reserved, sum(f.charged) as charged, sum(f.refunded) as refunded,
                     sum(f.released) as released, sum(f.expired) as expired
                from analytics_usage_facts(c.xact, c.n, null, null) f
               where f.day >= p_from and f.day < p_to
               group by f.user_id) t on t.user_id = u.user_id
             group by u.user_id, d.charged, t.charged
             order by 1 desc limit p_k) x
     where x.charged > 0;
    exit when v_bound = 0 or (v_count = p_k and v_kth > v_bound) or v_n > 4096;
    v_n := v_n * 4;
  end loop;
  if v_n > 4096 and not (v_bound = 0 or (v_count = p_k and v_kth > v_bound)) then
    v_candidates := array(select distinct a.user_id from analytics_usage_user_daily a
                           where a.day >= p_from and a.day < p_to and a.charged > 0)
                    || array(select f.user_id from analytics_usage_facts(c.xact, c.n, null, null) f
                              where f.day >= p_from and f.day < p_to);
  end if;
  return query
  select u.user_id,
         coalesce(t.plan, d.plan),
         (coalesce(d.granted, 0) + coalesce(t.granted, 0))::bigint,
         (coalesce(d.reserved, 0) + coalesce(t.reserved, 0))::bigint,
         (coalesce(d.charged, 0) + coalesce(t.charged, 0))::bigint,
         (coalesce(d.refunded, 0) + coalesce(t.refunded, 0))::bigint,
         (coalesce(d.released, 0) + coalesce(t.released, 0))::bigint,
         (coalesce(d.expired, 0) + coalesce(t.expired, 0))::bigint
    from (select distinct x as user_id from unnest(v_candidates) x) u
    left join lateral (
      select (array_agg(a.plan order by a.day desc))[1] as plan, sum(a.granted) as granted,
             sum(a.reserved) as reserved, sum(a.charged) as charged, sum(a.refunded) as refunded,
             sum(a.released) as released, sum(a.expired) as expired
        from analytics_usage_user_daily a
       where a.user_id = u.user_id and a.day >= p_from and a.day < p_to) d on true
    left join (select f.user_id, (array_agg(f.plan order by f.xact desc, f.id desc))[1] as plan, sum(f.granted) as granted,
                     sum(f.reserved) as reserved, sum(f.charged) as charged, sum(f.refunded) as refunded,
                     sum(f.released) as released, sum(f.expired) as expired
                from analytics_usage_facts(c.xact, c.n, null, null) f
               where f.day >= p_from and f.day < p_to
               group by f.user_id) t on t.user_id = u.user_id
   where coalesce(d.charged, 0) + coalesce(t.charged, 0) > 0
   order by 5 desc, 1
   limit p_k;
end;
$$;

-- 6. The credit functions of 0009, writing into every ledger entry the plan of the account they lock and the
-- operation of its build (and otherwise unchanged).

-- credit_expire_lapsed(user, now, request, correlation) → bigint: the credits of the holds it expired. Internal:
-- the caller holds the account's row lock. Marks the user's active holds whose expires_at <= now expired, lowers
-- reserved, writes one `expire` ledger entry each (the state change from active happens once, under the lock, so
-- each expiry is written once).
create or replace function credit_expire_lapsed(p_user text, p_now timestamptz, p_request text, p_correlation text)
returns bigint language plpgsql as $$
declare
  r record;
  v_balance bigint;
  v_reserved bigint;
  v_credits bigint := 0;
  v_plan text;
begin
  for r in
    update credit_reservations c set state = 'expired', resolved_at = p_now, resolution_reason = 'expired'
     where c.user_id = p_user and c.state = 'active' and c.expires_at <= p_now
    returning c.id, c.amount, c.build_id, c.expires_at
  loop
    update credit_accounts a set reserved = a.reserved - r.amount, updated_at = p_now
     where a.user_id = p_user returning a.balance, a.reserved, a.plan into v_balance, v_reserved, v_plan;
    insert into credit_ledger (user_id, type, amount, reserved_change, balance_after, reserved_after,
                               reservation_id, build_id, request_id, correlation_id, reason, plan, operation)
    values (p_user, 'expire', 0, -r.amount, v_balance, v_reserved, r.id, r.build_id, p_request, p_correlation,
            'hold of ' || r.amount || ' expired at ' || to_char(r.expires_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'), v_plan,
            case when r.build_id is null then 'none' else credit_operation(r.build_id) end);
    v_credits := v_credits + r.amount;
  end loop;
  return v_credits;
end;
$$;

-- credit_grant(user, credits, plan?, reason, source, request, correlation) → (plan, balance, reserved, expired).
-- Creates the account if needed, adds credits (> 0, else KC001), sets the plan when given, writes a `grant` entry.
create or replace function credit_grant(p_user text, p_credits bigint, p_plan text, p_reason text, p_source text,
                             p_request text, p_correlation text)
returns table (plan text, balance bigint, reserved bigint, expired bigint) language plpgsql as $$
declare
  v_now timestamptz;
begin
  if p_credits is null or p_credits <= 0 then
    raise exception 'credits must be a positive integer, got %', p_credits using errcode = 'KC001';
  end if;
  insert into credit_accounts (user_id) values (p_user) on conflict (user_id) do nothing;
  perform 1 from credit_accounts a where a.user_id = p_user for update;
  v_now := clock_timestamp();
  expired := credit_expire_lapsed(p_user, v_now, p_request, p_correlation);
  update credit_accounts a set balance = a.balance + p_credits, plan = coalesce(p_plan, a.plan), updated_at = v_now
   where a.user_id = p_user returning a.plan, a.balance, a.reserved into plan, balance, reserved;
  insert into credit_ledger (user_id, type, amount, reserved_change, balance_after, reserved_after,
                             request_id, correlation_id, reason, source, plan, operation)
  values (p_user, 'grant', p_credits, 0, balance, reserved, p_request, p_correlation, p_reason, p_source,
          credit_grant.plan, 'none');
  return next;
end;
$$;

-- credit_reserve(id, user, amount, build?, ttl_s, request, correlation, reason) → (outcome, expires_at, balance,
-- reserved, expired). outcome 'ok' (held, with its `reserve` entry) or 'insufficient' (nothing held; lapsed holds
-- may still have been expired, and `expired` says how many credits). amount or ttl <= 0 → KC001.
create or replace function credit_reserve(p_id text, p_user text, p_amount bigint, p_build text, p_ttl_s integer,
                               p_request text, p_correlation text, p_reason text)
returns table (outcome text, expires_at timestamptz, balance bigint, reserved bigint, expired bigint)
language plpgsql as $$
declare
  v_now timestamptz;
  v_plan text;
begin
  if p_amount is null or p_amount <= 0 or p_ttl_s is null or p_ttl_s <= 0 then
    raise exception 'amount and ttl must be positive, got % and %', p_amount, p_ttl_s using errcode = 'KC001';
  end if;
  expired := 0;
  perform 1 from credit_accounts a where a.user_id = p_user for update;
  if not found then
    outcome := 'insufficient'; balance := 0; reserved := 0;
    return next;
    return;
  end if;
  v_now := clock_timestamp();
  expired := credit_expire_lapsed(p_user, v_now, p_request, p_correlation);
  select a.balance, a.reserved into balance, reserved from credit_accounts a where a.user_id = p_user;
  if balance - reserved < p_amount then
    outcome := 'insufficient';
    return next;
    return;
  end if;
  expires_at := v_now + make_interval(secs => p_ttl_s);
  insert into credit_reservations (id, user_id, build_id, amount, expires_at, request_id, correlation_id, reason)
  values (p_id, p_user, p_build, p_amount, expires_at, p_request, p_correlation, p_reason);
  update credit_accounts a set reserved = a.reserved + p_amount, updated_at = v_now
   where a.user_id = p_user returning a.balance, a.reserved, a.plan into balance, reserved, v_plan;
  insert into credit_ledger (user_id, type, amount, reserved_change, balance_after, reserved_after,
                             reservation_id, build_id, request_id, correlation_id, reason, plan, operation)
  values (p_user, 'reserve', 0, p_amount, balance, reserved, p_id, p_build, p_request, p_correlation, p_reason,
          v_plan, case when p_build is null then 'none' else credit_operation(p_build) end);
  outcome := 'ok';
  return next;
end;
$$;

-- credit_resolve(reservation, action 'commit'|'release', actual?, build?, reason, request, correlation)
-- → (outcome, state, amount, charged, available, build_id, user_id, expired). As in 0008: outcome 'ok', 'repeat',
-- 'not_found', 'not_active', 'held_by_build', 'exceeds' or 'build_mismatch'; bad action or actual < 0 → KC001.
-- `expired`: credits of the account's lapsed holds it expired first (whatever the outcome, but not_found: 0).
create or replace function credit_resolve(p_reservation text, p_action text, p_actual bigint, p_build text,
                               p_reason text, p_request text, p_correlation text)
returns table (outcome text, state text, amount bigint, charged bigint, available bigint, build_id text,
               user_id text, expired bigint)
language plpgsql as $$
declare
  v_now timestamptz;
  r credit_reservations%rowtype;
  v_charge bigint;
  v_balance bigint;
  v_reserved bigint;
  v_holder record;
  v_plan text;
begin
  if p_action not in ('commit', 'release') or (p_action = 'commit' and (p_actual is null or p_actual < 0)) then
    raise exception 'bad resolution % of %', p_action, p_actual using errcode = 'KC001';
  end if;
  expired := 0;
  select c.user_id into user_id from credit_reservations c where c.id = p_reservation;
  if not found then
    outcome := 'not_found';
    return next;
    return;
  end if;
  perform 1 from credit_accounts a where a.user_id = credit_resolve.user_id for update;
  v_now := clock_timestamp();
  expired := credit_expire_lapsed(credit_resolve.user_id, v_now, p_request, p_correlation);
  select * into r from credit_reservations c where c.id = p_reservation;
  state := r.state; amount := r.amount; charged := r.charged; available := r.resolution_available;
  build_id := r.build_id;
  if r.state <> 'active' then
    outcome := case
      when p_action = 'commit' and r.state = 'committed' and r.charged = p_actual
           and (p_build is null or p_build = r.build_id) then 'repeat'
      when p_action = 'release' and r.state = 'released' and r.resolution_reason = p_reason then 'repeat'
      else 'not_active' end;
    return next;
    return;
  end if;
  select b.id, b.state into v_holder from builds b
   where b.reservation_id = p_reservation and b.state in ('queued', 'building')
   limit 1;
  if found then
    outcome := 'held_by_build'; build_id := v_holder.id; state := v_holder.state;
    return next;
    return;
  end if;
  if p_build is not null and r.build_id is not null and p_build <> r.build_id then
    outcome := 'build_mismatch';
    return next;
    return;
  end if;
  if p_action = 'commit' and p_actual > r.amount then
    outcome := 'exceeds';
    return next;
    return;
  end if;
  v_charge := case when p_action = 'commit' then p_actual else 0 end;
  update credit_accounts a set balance = a.balance - v_charge, reserved = a.reserved - r.amount, updated_at = v_now
   where a.user_id = r.user_id returning a.balance, a.reserved, a.plan into v_balance, v_reserved, v_plan;
  state := case when p_action = 'commit' then 'committed' else 'released' end;
  charged := case when p_action = 'commit' then v_charge end;
  available := v_balance - v_reserved;
  build_id := coalesce(r.build_id, p_build);
  update credit_reservations c
     set state = credit_resolve.state, charged = credit_resolve.charged, resolved_at = v_now,
         resolution_reason = p_reason, resolution_available = credit_resolve.available,
         build_id = credit_resolve.build_id
   where c.id = p_reservation;
  insert into credit_ledger (user_id, type, amount, reserved_change, balance_after, reserved_after,
                             reservation_id, build_id, request_id, correlation_id, reason, plan, operation)
  values (r.user_id, p_action, -v_charge, -r.amount, v_balance, v_reserved, p_reservation, credit_resolve.build_id,
          p_request, p_correlation, p_reason, v_plan, case when credit_resolve.build_id is null then 'none' else credit_operation(credit_resolve.build_id) end);
  outcome := 'ok';
  return next;
end;
$$;

-- credit_charge(user, credits, build?, reservation?, reason, request, correlation)
-- → (charged, uncollected, balance, reserved, expired). As in 0005: charges min(credits, available) with no hold,
-- one `charge` entry when that is more than 0; uncollected = credits − charged. credits <= 0 → KC001.
create or replace function credit_charge(p_user text, p_credits bigint, p_build text, p_reservation text, p_reason text,
                              p_request text, p_correlation text)
returns table (charged bigint, uncollected bigint, balance bigint, reserved bigint, expired bigint)
language plpgsql as $$
declare
  v_now timestamptz;
  v_plan text;
begin
  if p_credits is null or p_credits <= 0 then
    raise exception 'credits must be a positive integer, got %', p_credits using errcode = 'KC001';
  end if;
  expired := 0;
  perform 1 from credit_accounts a where a.user_id = p_user for update;
  if not found then
    charged := 0; uncollected := p_credits; balance := 0; reserved := 0;
    return next;
    return;
  end if;
  v_now := clock_timestamp();
  expired := credit_expire_lapsed(p_user, v_now, p_request, p_correlation);
  select a.balance, a.reserved into balance, reserved from credit_accounts a where a.user_id = p_user;
  charged := least(p_credits, balance - reserved);
  uncollected := p_credits - charged;
  if charged > 0 then
    update credit_accounts a set balance = a.balance - charged, updated_at = v_now
     where a.user_id = p_user returning a.balance, a.reserved, a.plan into balance, reserved, v_plan;
    insert into credit_ledger (user_id, type, amount, reserved_change, balance_after, reserved_after,
                               reservation_id, build_id, request_id, correlation_id, reason, plan, operation)
    values (p_user, 'charge', -charged, 0, balance, reserved, p_reservation, p_build, p_request, p_correlation,
            p_reason, v_plan, case when p_build is null then 'none' else credit_operation(p_build) end);
  end if;
  return next;
end;
$$;
