-- Close the holes at the edges of a build's credits (issue 13): a build's credit figures are bigint; the credits
-- routes cannot resolve the hold of an active build; and a deployed build's shortfall is recorded, so the audit can
-- prove what each build paid (with the indexes its build rules read).
--
-- A build's credit figures are bigint, like every other credit figure: a command reporting 3 000 000 000 credits
-- overflowed builds.actual_credits (integer), the transaction that ended the build failed, and the build was reaped
-- and never charged.

alter table builds alter column estimated_credits type bigint, alter column actual_credits type bigint;

-- A build never reaches `deployed` without its credits held (SPEC section 6): the hold of a queued or building
-- build could be released or committed through the credits routes, and the build then deployed charged 0 with a
-- clean audit. credit_resolve now refuses that, under the account's lock. A build's own settlement (runner, reaper,
-- PATCH, cancel) calls it after the build's transition in the same transaction, so by then the build has ended and
-- the hold resolves as before.

-- Finds the build a hold belongs to while it is active (credit_resolve looks it up on every call).
create index builds_active_reservation on builds (reservation_id) where state in ('queued', 'building');

-- credit_resolve(reservation, action 'commit'|'release', actual?, build?, reason, request, correlation)
-- → (outcome, state, amount, charged, available, build_id, user_id).
-- outcome: 'ok' (resolved now), 'repeat' (already resolved by the same action with the same arguments: the
-- figures are the first answer's), 'not_found', 'not_active' (resolved otherwise, or expired), 'held_by_build' (the
-- active hold of a build that is queued or building: nothing written; build_id and state are that build's id and
-- state, for the caller to say "cancel the build"), 'exceeds' (actual > amount), 'build_mismatch' (the hold belongs
-- to another build). A commit charges actual and refunds the rest of the hold; a release refunds all of it. Bad
-- action or actual < 0 → KC001. As in 0005 otherwise; the build check reads after the account's row lock, which
-- every settlement of the hold also takes, so a build that ends concurrently is seen either still active (refused)
-- or ended with its hold already resolved.
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
  v_holder record;
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

-- The audit proves what a build paid (src/db/credit-audit.ts). A deployed build pays its actual credits less what
-- the user's balance could not cover; that shortfall is recorded with the build when it is settled. NULL means
-- unknown: builds that ended before this migration (and a build whose hold was resolved through the credits API
-- before the rule above), which the audit's "pays what it used" rule skips. Builds still queued or building now
-- end under the new code, so they start from 0 like new ones.
alter table builds add column uncollected_credits bigint check (uncollected_credits >= 0);
alter table builds alter column uncollected_credits set default 0;
update builds set uncollected_credits = 0 where state in ('queued', 'building');

-- The audit's build rules read a build's ledger entries, and one user's ended builds.
create index credit_ledger_build on credit_ledger (build_id) where build_id is not null;
create index builds_user_ended on builds (user_id) where state in ('deployed', 'failed', 'cancelled');
