-- Projects can be deleted (DELETE /v1/projects/:id). The row stays, marked deleted: its builds, their events and
-- their credit movements keep the project they were for, and its id is not given to another project. A deleted
-- project is not found by the API and takes no new builds; one with an active build cannot be deleted.
alter table projects add column deleted_at timestamptz;

-- build_create(id, project, user, reservation, credits, metadata, ttl_s, request, correlation, reason) → one
-- build_create_result. Queues a build and holds its credits, in the caller's transaction, as one statement:
-- - 'no_project': no such project, or it was deleted; nothing written;
-- - 'busy': the project allows one active build and has one (returned); nothing written;
-- - 'created': the build (state queued, its first event 'queued') and its hold (reservation, build_id = the build);
--   `expired`: the credits of the user's lapsed holds credit_reserve expired first.
-- Raises, so that nothing of the statement remains (it may run alone, in autocommit): KB402 when the user's available
-- credits are short (DETAIL: the credits available, balance − reserved), 23505 (unique_violation) when the build id
-- exists.
create or replace function build_create(p_id text, p_project text, p_user text, p_reservation text, p_amount bigint,
                             p_metadata jsonb, p_ttl_s integer, p_request text, p_correlation text, p_reason text)
returns build_create_result language plpgsql as $$
declare
  v_concurrent boolean;
  v_hold record;
  v_result build_create_result;
begin
  -- FOR KEY SHARE: a deletion (lockProjectForDeletion, FOR UPDATE) waits for this build to commit and then sees it;
  -- a build arriving while a deletion holds the row waits, then finds it deleted (the row is checked again after the
  -- wait). Plain updates of the project (webhook settlement, rotation) do not conflict with it.
  select p.allow_concurrent_builds into v_concurrent from projects p
   where p.id = p_project and p.deleted_at is null
     for key share;
  if not found then
    v_result.outcome := 'no_project';
    return v_result;
  end if;
  insert into builds (id, project_id, user_id, state, exclusive, estimated_credits, metadata, reservation_id,
                      last_event_seq)
  values (p_id, p_project, p_user, 'queued', not v_concurrent, p_amount, p_metadata, p_reservation, 1)
  on conflict (project_id) where state in ('queued', 'building') and exclusive do nothing;
  if not found then
    select 'busy', null, null, null, b.id, b.project_id, b.user_id, b.state, b.previous_state, b.estimated_credits,
           b.actual_credits, b.reservation_id, b.preview_url, b.error, b.reason, b.metadata, b.created_at,
           b.started_at, b.finished_at, b.lease_owner
      into v_result
      from builds b where b.project_id = p_project and b.state in ('queued', 'building') and b.exclusive
     limit 1;
    v_result.outcome := 'busy';
    return v_result;
  end if;
  insert into build_events (build_id, seq, type, message) values (p_id, 1, 'queued', 'Build queued');
  select * into v_hold from credit_reserve(p_reservation, p_user, p_amount, p_id, p_ttl_s, p_request, p_correlation,
                                           p_reason);
  if v_hold.outcome <> 'ok' then
    raise exception 'user % has % credits available, needs %', p_user, v_hold.balance - v_hold.reserved, p_amount
      using errcode = 'KB402', detail = (v_hold.balance - v_hold.reserved)::text;
  end if;
  select 'created', v_hold.balance, v_hold.reserved,
         v_hold.expired, b.id, b.project_id, b.user_id, b.state, b.previous_state, b.estimated_credits,
         b.actual_credits, b.reservation_id, b.preview_url, b.error, b.reason, b.metadata, b.created_at,
         b.started_at, b.finished_at, b.lease_owner
    into v_result
    from builds b where b.id = p_id;
  return v_result;
end;
$$;
