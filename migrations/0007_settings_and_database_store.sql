-- Settings that must outlive a restart, and the ephemeral store kept in the database when there is no Redis.
--
-- kiln_settings: facts about this deployment that configuration alone cannot keep. `deployment_id` namespaces every
-- Redis key and channel, so two deployments (two databases or schemas) sharing one Redis never read each other's
-- nonces or recorded responses; `hmac_v1_until` is the instant v1 signatures were retired, so a restart without
-- HMAC_V1_UNTIL never reopens them (SPEC sections 1 and 3).
--
-- store_entries and store_counters: nonces, copies and fixed-window rate counters for a deployment without Redis, so
-- that every process sharing the database shares them too (SPEC section 3). Rows past expires_at are dead; any
-- process purges them in batches.

create table kiln_settings (
  name text primary key,
  value text not null,
  updated_at timestamptz not null default now()
);

insert into kiln_settings (name, value) values ('deployment_id', replace(gen_random_uuid()::text, '-', ''));

create table store_entries (
  key text primary key,
  value text not null,
  expires_at timestamptz not null
);
create index store_entries_expiry on store_entries (expires_at);

create table store_counters (
  -- the counter's key and the start of its window (ms since the Unix epoch)
  key text primary key,
  count bigint not null,
  expires_at timestamptz not null
);
create index store_counters_expiry on store_counters (expires_at);

-- store_claim(nonce keys, mark keys, check keys, value, ttl ms, counter keys, counter window ms, read key?, async)
-- → (fresh, counts, resets_ms, read_value, epoch_ms).
-- The signed-request guard's one round trip: stores every nonce key with the value for the ttl unless any of them or
-- of the check keys is held (fresh = all were free; nothing is stored otherwise; check keys are never stored) and,
-- when fresh, the mark keys too (held or not), counts one hit in the current fixed window of each
-- counter (windows are aligned to the database clock, so every process agrees), and reads the read key (null when
-- absent or expired). With async commit the transaction does not wait for its WAL flush: the row locks of a hot
-- counter are held for microseconds instead of a disk flush. A crash can then lose the last claims, so epoch_ms is the
-- instant the server started: the guard refuses requests signed before it. Without async commit epoch_ms is 0 (the
-- claims are as durable as any commit). Empty key or a window <= 0 → KS001.
create function store_claim(p_nonces text[], p_marks text[], p_checks text[], p_value text, p_ttl_ms bigint,
                            p_counters text[], p_windows_ms bigint[], p_read text, p_async boolean)
returns table (fresh boolean, counts bigint[], resets_ms bigint[], read_value text, epoch_ms bigint)
language plpgsql as $$
declare
  v_now timestamptz := clock_timestamp();
  v_now_ms bigint := floor(extract(epoch from v_now) * 1000);
  v_start bigint;
  v_count bigint;
  v_stored integer;
  i integer;
begin
  if p_async then
    perform set_config('synchronous_commit', 'off', true);
  end if;
  if coalesce(array_length(p_counters, 1), 0) <> coalesce(array_length(p_windows_ms, 1), 0) then
    raise exception 'counters and windows differ in number' using errcode = 'KS001';
  end if;
  fresh := not exists (select 1 from store_entries e
                        where e.key = any(p_nonces || p_checks) and e.expires_at > v_now);
  if fresh and coalesce(array_length(p_nonces, 1), 0) > 0 then
    insert into store_entries (key, value, expires_at)
    select k, p_value, v_now + make_interval(secs => p_ttl_ms / 1000.0) from unnest(p_nonces) as k
    on conflict (key) do update set value = excluded.value, expires_at = excluded.expires_at
      where store_entries.expires_at <= v_now;
    get diagnostics v_stored = row_count;
    -- A claim made at the same instant by another transaction took one of the keys first.
    fresh := v_stored = array_length(p_nonces, 1);
  end if;
  if fresh and coalesce(array_length(p_marks, 1), 0) > 0 then
    insert into store_entries (key, value, expires_at)
    select k, p_value, v_now + make_interval(secs => p_ttl_ms / 1000.0) from unnest(p_marks) as k
    on conflict (key) do update set value = excluded.value, expires_at = excluded.expires_at;
  end if;
  counts := '{}';
  resets_ms := '{}';
  for i in 1 .. coalesce(array_length(p_counters, 1), 0) loop
    if p_windows_ms[i] is null or p_windows_ms[i] <= 0 or p_counters[i] is null or p_counters[i] = '' then
      raise exception 'bad counter % with window %', p_counters[i], p_windows_ms[i] using errcode = 'KS001';
    end if;
    v_start := v_now_ms - v_now_ms % p_windows_ms[i];
    insert into store_counters as c (key, count, expires_at)
    values (p_counters[i] || ':' || v_start, 1, to_timestamp((v_start + p_windows_ms[i]) / 1000.0))
    on conflict (key) do update set count = c.count + 1
    returning c.count into v_count;
    counts := counts || v_count;
    resets_ms := resets_ms || (v_start + p_windows_ms[i] - v_now_ms);
  end loop;
  if p_read is not null then
    select e.value into read_value from store_entries e where e.key = p_read and e.expires_at > v_now;
  end if;
  epoch_ms := case when p_async then floor(extract(epoch from pg_postmaster_start_time()) * 1000) else 0 end;
  return next;
end;
$$;
