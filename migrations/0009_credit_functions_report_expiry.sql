-- Every credit function says how many credits it expired on the way (SPEC section 7: credit_usage_total counts
-- what each process moved, expiries included). A lapsed hold is written as expired by whichever operation on its
-- account comes first (or by the sweeper); without this figure the process that wrote the expiry could not count it.
-- The functions are those of 0005 (grant, reserve, charge, renew) and 0008 (resolve), each with one more output
-- column, `expired`, and unchanged otherwise; credit_sweep also answers the credits. A return type cannot be changed
-- by `create or replace`, hence the drops (callers name their columns, so the added one changes nothing for them).

drop function credit_grant(text, bigint, text, text, text, text, text);
drop function credit_reserve(text, text, bigint, text, integer, text, text, text);
drop function credit_resolve(text, text, bigint, text, text, text, text);
drop function credit_charge(text, bigint, text, text, text, text, text);
drop function credit_renew(text, integer, text, text);
drop function credit_sweep(integer, text);
drop function credit_expire_lapsed(text, timestamptz, text, text);

-- credit_expire_lapsed(user, now, request, correlation) → bigint: the credits of the holds it expired. Internal:
-- the caller holds the account's row lock. Marks the user's active holds whose expires_at <= now expired, lowers
-- reserved, writes one `expire` ledger entry each (the state change from active happens once, under the lock, so
-- each expiry is written once).
create function credit_expire_lapsed(p_user text, p_now timestamptz, p_request text, p_correlation text)
returns bigint language plpgsql as $$
declare
  r record;
  v_balance bigint;
  v_reserved bigint;
  v_credits bigint := 0;
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
    v_credits := v_credits + r.amount;
  end loop;
  return v_credits;
end;
$$;

-- credit_grant(user, credits, plan?, reason, source, request, correlation) → (plan, balance, reserved, expired).
-- Creates the account if needed, adds credits (> 0, else KC001), sets the plan when given, writes a `grant` entry.
create function credit_grant(p_user text, p_credits bigint, p_plan text, p_reason text, p_source text,
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
                             request_id, correlation_id, reason, source)
  values (p_user, 'grant', p_credits, 0, balance, reserved, p_request, p_correlation, p_reason, p_source);
  return next;
end;
$$;

-- credit_reserve(id, user, amount, build?, ttl_s, request, correlation, reason) → (outcome, expires_at, balance,
-- reserved, expired). outcome 'ok' (held, with its `reserve` entry) or 'insufficient' (nothing held; lapsed holds
-- may still have been expired, and `expired` says how many credits). amount or ttl <= 0 → KC001.
create function credit_reserve(p_id text, p_user text, p_amount bigint, p_build text, p_ttl_s integer,
                               p_request text, p_correlation text, p_reason text)
returns table (outcome text, expires_at timestamptz, balance bigint, reserved bigint, expired bigint)
language plpgsql as $$
declare
  v_now timestamptz;
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
   where a.user_id = p_user returning a.balance, a.reserved into balance, reserved;
  insert into credit_ledger (user_id, type, amount, reserved_change, balance_after, reserved_after,
                             reservation_id, build_id, request_id, correlation_id, reason)
  values (p_user, 'reserve', 0, p_amount, balance, reserved, p_id, p_build, p_request, p_correlation, p_reason);
  outcome := 'ok';
  return next;
end;
$$;

-- credit_resolve(reservation, action 'commit'|'release', actual?, build?, reason, request, correlation)
-- → (outcome, state, amount, charged, available, build_id, user_id, expired). As in 0008: outcome 'ok', 'repeat',
-- 'not_found', 'not_active', 'held_by_build', 'exceeds' or 'build_mismatch'; bad action or actual < 0 → KC001.
-- `expired`: credits of the account's lapsed holds it expired first (whatever the outcome, but not_found: 0).
create function credit_resolve(p_reservation text, p_action text, p_actual bigint, p_build text,
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

-- credit_charge(user, credits, build?, reservation?, reason, request, correlation)
-- → (charged, uncollected, balance, reserved, expired). As in 0005: charges min(credits, available) with no hold,
-- one `charge` entry when that is more than 0; uncollected = credits − charged. credits <= 0 → KC001.
create function credit_charge(p_user text, p_credits bigint, p_build text, p_reservation text, p_reason text,
                              p_request text, p_correlation text)
returns table (charged bigint, uncollected bigint, balance bigint, reserved bigint, expired bigint)
language plpgsql as $$
declare
  v_now timestamptz;
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
     where a.user_id = p_user returning a.balance, a.reserved into balance, reserved;
    insert into credit_ledger (user_id, type, amount, reserved_change, balance_after, reserved_after,
                               reservation_id, build_id, request_id, correlation_id, reason)
    values (p_user, 'charge', -charged, 0, balance, reserved, p_reservation, p_build, p_request, p_correlation,
            p_reason);
  end if;
  return next;
end;
$$;

-- credit_renew(reservation, seconds, request, correlation) → (outcome, state, expires_at, expired). As in 0005:
-- extends an active hold to at least now + seconds; 'ok', 'not_found', or 'not_active' with its state (a hold that
-- lapsed is expired first, and counted in `expired`). seconds <= 0 → KC001.
create function credit_renew(p_reservation text, p_seconds integer, p_request text, p_correlation text)
returns table (outcome text, state text, expires_at timestamptz, expired bigint) language plpgsql as $$
declare
  v_now timestamptz;
  v_user text;
begin
  if p_seconds is null or p_seconds <= 0 then
    raise exception 'seconds must be positive, got %', p_seconds using errcode = 'KC001';
  end if;
  expired := 0;
  select c.user_id into v_user from credit_reservations c where c.id = p_reservation;
  if not found then
    outcome := 'not_found';
    return next;
    return;
  end if;
  perform 1 from credit_accounts a where a.user_id = v_user for update;
  v_now := clock_timestamp();
  expired := credit_expire_lapsed(v_user, v_now, p_request, p_correlation);
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

-- credit_sweep(limit, request) → (holds, credits): writes the expiry of lapsed holds into the ledger for up to
-- `limit` users, skipping accounts another transaction holds (so many sweepers, and operations, never wait on or
-- duplicate each other). Answers the number of holds expired and their credits.
create function credit_sweep(p_limit integer, p_request text)
returns table (holds integer, credits bigint) language plpgsql as $$
declare
  v_now timestamptz := clock_timestamp();
  u record;
  v_before bigint;
begin
  holds := 0;
  credits := 0;
  for u in
    select a.user_id from credit_accounts a
     where a.user_id in (select c.user_id from credit_reservations c
                          where c.state = 'active' and c.expires_at <= v_now)
     limit p_limit
       for update of a skip locked
  loop
    select count(*) into v_before from credit_reservations c
     where c.user_id = u.user_id and c.state = 'active' and c.expires_at <= v_now;
    credits := credits + credit_expire_lapsed(u.user_id, v_now, p_request, p_request);
    holds := holds + v_before;
  end loop;
  return next;
end;
$$;

-- The live page (GET /dashboard) reads the builds that ended in the last hour and the ledger of the last hour.
create index builds_finished on builds (finished_at) where finished_at is not null;
create index credit_ledger_created on credit_ledger (created_at);
