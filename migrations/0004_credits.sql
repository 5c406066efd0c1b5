-- Credits (SPEC section 6): accounts, holds (reservations) and an append-only ledger. Every operation is one
-- plpgsql function, so one round trip, atomic under concurrency: each locks the user's account row first (the one
-- lock order everywhere: account, then its reservations), expires the user's lapsed holds, then acts.
-- Business refusals (insufficient, not found, not active, exceeds) are returned as an `outcome`, not raised, so a
-- caller's transaction (a build's) stays usable; invalid arguments raise KC001.
-- An expired hold stops counting at its expires_at: operations expire lapsed holds before they act, and reads
-- subtract lapsed holds (credit_reserved_now); the sweeper only writes the expiry into the ledger.

create table credit_accounts (
  user_id text primary key check (user_id ~ '^[\w.:@-]{1,128}$'),
  plan text not null default 'free' check (plan ~ '^[\w-]{1,32}$'),
  balance bigint not null default 0,
  reserved bigint not null default 0,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint credit_balance_non_negative check (balance >= 0),
  constraint credit_reserved_non_negative check (reserved >= 0),
  constraint credit_available_non_negative check (balance - reserved >= 0)
);

create table credit_reservations (
  id text primary key check (id ~ '^[A-Za-z0-9_-]{1,64}$'),
  user_id text not null references credit_accounts (user_id),
  build_id text,
  amount bigint not null check (amount > 0),
  state text not null default 'active' check (state in ('active', 'committed', 'released', 'expired')),
  expires_at timestamptz not null,
  -- set by a commit: what was charged (the rest of amount was refunded)
  charged bigint check (charged >= 0 and charged <= amount),
  resolved_at timestamptz,
  -- the commit's or release's reason; a repeated release must give the same one to get the first answer
  resolution_reason text,
  -- available balance right after the resolution, answered again to an identical repeat
  resolution_available bigint,
  request_id text not null,
  correlation_id text not null,
  reason text not null,
  created_at timestamptz not null default now(),
  constraint credit_reservation_resolved check ((state = 'active') = (resolved_at is null)),
  constraint credit_reservation_charged check ((state = 'committed') = (charged is not null))
);

create index credit_reservations_lapsing on credit_reservations (expires_at) where state = 'active';
create index credit_reservations_user_active on credit_reservations (user_id, expires_at) where state = 'active';
create index credit_reservations_build on credit_reservations (build_id) where build_id is not null;

create table credit_ledger (
  id bigserial primary key,
  user_id text not null,
  type text not null check (type in ('grant', 'reserve', 'commit', 'release', 'expire')),
  -- signed change of balance (grant +, commit -, else 0): balance = sum(amount)
  amount bigint not null,
  -- signed change of reserved (reserve +, commit/release/expire -): reserved = sum(reserved_change)
  reserved_change bigint not null default 0,
  balance_after bigint not null check (balance_after >= 0),
  reserved_after bigint not null check (reserved_after >= 0),
  reservation_id text references credit_reservations (id),
  build_id text,
  request_id text not null,
  correlation_id text not null,
  reason text not null,
  -- where granted credits came from (purchase, promotion, adjustment, ...)
  source text,
  created_at timestamptz not null default now()
);

create index credit_ledger_user on credit_ledger (user_id, id desc);
create index credit_ledger_reservation on credit_ledger (reservation_id) where reservation_id is not null;

create trigger credit_ledger_append_only before update or delete on credit_ledger
  for each row execute function refuse_mutation();
create trigger credit_ledger_no_truncate before truncate on credit_ledger
  for each statement execute function refuse_mutation();

-- Builds point at their hold. Nullable, and checked at commit so a build and its hold may be written in either order.
alter table builds add constraint builds_reservation_fk foreign key (reservation_id)
  references credit_reservations (id) deferrable initially deferred;

-- credit_expire_lapsed(user, now, request, correlation) → integer. Internal: the caller holds the account's row
-- lock. Marks the user's active holds whose expires_at <= now expired, lowers reserved, writes one `expire`
-- ledger entry each (the state change from active happens once, under the lock, so each expiry is written once).
create function credit_expire_lapsed(p_user text, p_now timestamptz, p_request text, p_correlation text)
returns integer language plpgsql as $$
declare
  r record;
  v_balance bigint;
  v_reserved bigint;
  n integer := 0;
begin
  for r in
    update credit_reservations c set state = 'expired', resolved_at = p_now, resolution_reason = 'expired'
     where c.user_id = p_user and c.state = 'active' and c.expires_at <= p_now
    returning c.id, c.amount, c.build_id, c.expires_at
  loop
    update credit_accounts a set reserved = a.reserved - r.amount, updated_at = p_now
     where a.user_id = p_user returning a.balance, a.reserved into v_balance, v_reserved;
    insert into credit_ledger (user_id, type, amount, reserved_change, balance_after, reserved_after,
                               reservation_id, build_id, request_id, correlation_id, reason)
    values (p_user, 'expire', 0, -r.amount, v_balance, v_reserved, r.id, r.build_id, p_request, p_correlation,
            'hold of ' || r.amount || ' expired at ' || to_char(r.expires_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'));
    n := n + 1;
  end loop;
  return n;
end;
$$;

-- credit_reserved_now(user) → bigint: reserved as of this instant (account.reserved minus holds that lapsed but
-- are not yet marked expired). For reads that take no lock.
create function credit_reserved_now(p_user text) returns bigint language sql stable as $$
  select coalesce((select a.reserved from credit_accounts a where a.user_id = p_user), 0)
       - coalesce((select sum(c.amount) from credit_reservations c
                    where c.user_id = p_user and c.state = 'active' and c.expires_at <= clock_timestamp()), 0)::bigint
$$;

-- credit_grant(user, credits, plan?, reason, source, request, correlation) → (plan, balance, reserved).
-- Creates the account if needed, adds credits (> 0, else KC001), sets the plan when given, writes a `grant` entry.
create function credit_grant(p_user text, p_credits bigint, p_plan text, p_reason text, p_source text,
                             p_request text, p_correlation text)
returns table (plan text, balance bigint, reserved bigint) language plpgsql as $$
declare
  v_now timestamptz := clock_timestamp();
begin
  if p_credits is null or p_credits <= 0 then
    raise exception 'credits must be a positive integer, got %', p_credits using errcode = 'KC001';
  end if;
  insert into credit_accounts (user_id) values (p_user) on conflict (user_id) do nothing;
  perform 1 from credit_accounts a where a.user_id = p_user for update;
  perform credit_expire_lapsed(p_user, v_now, p_request, p_correlation);
  update credit_accounts a set balance = a.balance + p_credits, plan = coalesce(p_plan, a.plan), updated_at = v_now
   where a.user_id = p_user returning a.plan, a.balance, a.reserved into plan, balance, reserved;
  insert into credit_ledger (user_id, type, amount, reserved_change, balance_after, reserved_after,
                             request_id, correlation_id, reason, source)
  values (p_user, 'grant', p_credits, 0, balance, reserved, p_request, p_correlation, p_reason, p_source);
  return next;
end;
$$;

-- credit_reserve(id, user, amount, build?, ttl_s, request, correlation, reason) → (outcome, expires_at, balance,
-- reserved). outcome: 'ok' (hold created with that id) or 'insufficient' (nothing written; balance and reserved
-- as they are). amount <= 0 or ttl_s <= 0 → KC001.
create function credit_reserve(p_id text, p_user text, p_amount bigint, p_build text, p_ttl_s integer,
                               p_request text, p_correlation text, p_reason text)
returns table (outcome text, expires_at timestamptz, balance bigint, reserved bigint) language plpgsql as $$
declare
  v_now timestamptz := clock_timestamp();
begin
  if p_amount is null or p_amount <= 0 or p_ttl_s is null or p_ttl_s <= 0 then
    raise exception 'amount and ttl must be positive, got % and %', p_amount, p_ttl_s using errcode = 'KC001';
  end if;
  perform 1 from credit_accounts a where a.user_id = p_user for update;
  if not found then
    outcome := 'insufficient'; balance := 0; reserved := 0;
    return next;
    return;
  end if;
  perform credit_expire_lapsed(p_user, v_now, p_request, p_correlation);
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
   where a.user_id = p_user returning a.balance, a.reserved into balance, reserved;
  insert into credit_ledger (user_id, type, amount, reserved_change, balance_after, reserved_after,
                             reservation_id, build_id, request_id, correlation_id, reason)
  values (p_user, 'reserve', 0, p_amount, balance, reserved, p_id, p_build, p_request, p_correlation, p_reason);
  outcome := 'ok';
  return next;
end;
$$;

-- credit_resolve(reservation, action 'commit'|'release', actual?, build?, reason, request, correlation)
-- → (outcome, state, amount, charged, available, build_id, user_id).
-- outcome: 'ok' (resolved now), 'repeat' (already resolved by the same action with the same arguments: the
-- figures are the first answer's), 'not_found', 'not_active' (resolved otherwise, or expired), 'exceeds'
-- (actual > amount), 'build_mismatch' (the hold belongs to another build). A commit charges actual and refunds
-- the rest of the hold; a release refunds all of it. Bad action or actual < 0 → KC001.
create function credit_resolve(p_reservation text, p_action text, p_actual bigint, p_build text, p_reason text,
                               p_request text, p_correlation text)
returns table (outcome text, state text, amount bigint, charged bigint, available bigint, build_id text,
               user_id text)
language plpgsql as $$
declare
  v_now timestamptz := clock_timestamp();
  r credit_reservations%rowtype;
  v_charge bigint;
  v_balance bigint;
  v_reserved bigint;
begin
  if p_action not in ('commit', 'release') or (p_action = 'commit' and (p_actual is null or p_actual < 0)) then
    raise exception 'bad resolution % of %', p_action, p_actual using errcode = 'KC001';
  end if;
  select c.user_id into user_id from credit_reservations c where c.id = p_reservation;
  if not found then
    outcome := 'not_found';
    return next;
    return;
  end if;
  perform 1 from credit_accounts a where a.user_id = credit_resolve.user_id for update;
  perform credit_expire_lapsed(credit_resolve.user_id, v_now, p_request, p_correlation);
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
   where a.user_id = r.user_id returning a.balance, a.reserved into v_balance, v_reserved;
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
                             reservation_id, build_id, request_id, correlation_id, reason)
  values (r.user_id, p_action, -v_charge, -r.amount, v_balance, v_reserved, p_reservation, credit_resolve.build_id,
          p_request, p_correlation, p_reason);
  outcome := 'ok';
  return next;
end;
$$;

-- credit_renew(reservation, seconds, request, correlation) → (outcome, state, expires_at). Extends an active
-- hold to at least now + seconds (never shortens it). outcome: 'ok', 'not_found', 'not_active' (with its state;
-- a hold that lapsed is expired first and cannot be renewed). seconds <= 0 → KC001.
create function credit_renew(p_reservation text, p_seconds integer, p_request text, p_correlation text)
returns table (outcome text, state text, expires_at timestamptz) language plpgsql as $$
declare
  v_now timestamptz := clock_timestamp();
  v_user text;
begin
  if p_seconds is null or p_seconds <= 0 then
    raise exception 'seconds must be positive, got %', p_seconds using errcode = 'KC001';
  end if;
  select c.user_id into v_user from credit_reservations c where c.id = p_reservation;
  if not found then
    outcome := 'not_found';
    return next;
    return;
  end if;
  perform 1 from credit_accounts a where a.user_id = v_user for update;
  perform credit_expire_lapsed(v_user, v_now, p_request, p_correlation);
  update credit_reservations c set expires_at = greatest(c.expires_at, v_now + make_interval(secs => p_seconds))
   where c.id = p_reservation and c.state = 'active'
  returning c.state, c.expires_at into state, expires_at;
  if found then
    outcome := 'ok';
  else
    outcome := 'not_active';
    select c.state, c.expires_at into state, expires_at from credit_reservations c where c.id = p_reservation;
  end if;
  return next;
end;
$$;

-- credit_sweep(limit, request) → integer: writes the expiry of lapsed holds into the ledger for up to `limit`
-- users, skipping accounts another transaction holds (so many sweepers, and operations, never wait on or
-- duplicate each other). Returns the number of holds expired.
create function credit_sweep(p_limit integer, p_request text) returns integer language plpgsql as $$
declare
  v_now timestamptz := clock_timestamp();
  u record;
  n integer := 0;
begin
  for u in
    select a.user_id from credit_accounts a
     where a.user_id in (select c.user_id from credit_reservations c
                          where c.state = 'active' and c.expires_at <= v_now)
     limit p_limit
       for update of a skip locked
  loop
    n := n + credit_expire_lapsed(u.user_id, v_now, p_request, p_request);
  end loop;
  return n;
end;
$$;
