-- Builds pay what they used, and the credit functions read the clock once they hold the account's lock.
--
-- A deployed build was charged at most its hold, and nothing at all when its hold had lapsed. It now pays the rest
-- from the user's available balance as far as that goes (credit_charge): a `charge` ledger entry lowers balance and
-- leaves reserved as it is, so balance = sum(amount) and reserved = sum(reserved_change) still hold. What the
-- balance cannot cover is not charged; the caller records it (the build's event, the log, a metric).

alter table credit_ledger drop constraint credit_ledger_type_check;
alter table credit_ledger add constraint credit_ledger_type_check
  check (type in ('grant', 'reserve', 'commit', 'release', 'expire', 'charge'));

-- credit_charge(user, credits, build?, reservation?, reason, request, correlation)
-- → (charged, uncollected, balance, reserved). Charges min(credits, available) straight from the balance, with no
-- hold, and writes one `charge` entry when that is more than 0; uncollected = credits − charged. A user Kiln never
-- saw has nothing to charge. credits <= 0 → KC001.
create function credit_charge(p_user text, p_credits bigint, p_build text, p_reservation text, p_reason text,
                              p_request text, p_correlation text)
returns table (charged bigint, uncollected bigint, balance bigint, reserved bigint) language plpgsql as $$
declare
  v_now timestamptz;
begin
  if p_credits is null or p_credits <= 0 then
    raise exception 'credits must be a positive integer, got %', p_credits using errcode = 'KC001';
  end if;
  perform 1 from credit_accounts a where a.user_id = p_user for update;
  if not found then
    charged := 0; uncollected := p_credits; balance := 0; reserved := 0;
    return next;
    return;
  end if;
  v_now := clock_timestamp();
  perform credit_expire_lapsed(p_user, v_now, p_request, p_correlation);
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

-- It reads clock_timestamp(), so its result can change within a statement: volatile, not stable.
alter function credit_reserved_now(text) volatile;

-- The same functions as in 0004, reading the clock after the account's row lock rather than before it: an operation
-- that waited for the lock judged which holds had lapsed, and when its own hold expires, by the time it started
-- waiting. Only where v_now is set differs.

create or replace function credit_grant(p_user text, p_credits bigint, p_plan text, p_reason text, p_source text,
                                        p_request text, p_correlation text)
returns table (plan text, balance bigint, reserved bigint) language plpgsql as $$
declare
  v_now timestamptz;
begin
  if p_credits is null or p_credits <= 0 then
    raise exception 'credits must be a positive integer, got %', p_credits using errcode = 'KC001';
  end if;
  insert into credit_accounts (user_id) values (p_user) on conflict (user_id) do nothing;
  perform 1 from credit_accounts a where a.user_id = p_user for update;
  v_now := clock_timestamp();
  perform credit_expire_lapsed(p_user, v_now, p_request, p_correlation);
  update credit_accounts a set balance = a.balance + p_credits, plan = coalesce(p_plan, a.plan), updated_at = v_now
   where a.user_id = p_user returning a.plan, a.balance, a.reserved into plan, balance, reserved;
  insert into credit_ledger (user_id, type, amount, reserved_change, balance_after, reserved_after,
                             request_id, correlation_id, reason, source)
  values (p_user, 'grant', p_credits, 0, balance, reserved, p_request, p_correlation, p_reason, p_source);
  return next;
end;
$$;

create or replace function credit_reserve(p_id text, p_user text, p_amount bigint, p_build text, p_ttl_s integer,
                                          p_request text, p_correlation text, p_reason text)
returns table (outcome text, expires_at timestamptz, balance bigint, reserved bigint) language plpgsql as $$
declare
  v_now timestamptz;
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
  v_now := clock_timestamp();
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

create or replace function credit_resolve(p_reservation text, p_action text, p_actual bigint, p_build text,
                                          p_reason text, p_request text, p_correlation text)
returns table (outcome text, state text, amount bigint, charged bigint, available bigint, build_id text,
               user_id text)
language plpgsql as $$
declare
  v_now timestamptz;
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
  v_now := clock_timestamp();
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

create or replace function credit_renew(p_reservation text, p_seconds integer, p_request text, p_correlation text)
returns table (outcome text, state text, expires_at timestamptz) language plpgsql as $$
declare
  v_now timestamptz;
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
  v_now := clock_timestamp();
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
