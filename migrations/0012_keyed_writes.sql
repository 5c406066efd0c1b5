-- Keyed writes in fewer round trips (issue 18). A request with an Idempotency-Key used to send BEGIN, the key's lock,
-- the record's lookup, a savepoint, each statement of its effect, the record and COMMIT, one round trip each. Now:
-- BEGIN, the claim below and the savepoint go in one round trip, the effect in one (a build's in build_create), the
-- record and COMMIT in one. What commits together is unchanged: the record and the effect, or neither.

-- idempotency_claim(key, lease) → (outcome, and the live record when there is one). In the request's transaction:
-- bounds it by the lock lease (SPEC section 4: an idle transaction ends after the lease, a statement running for a
-- client that died is cancelled after it), then tries the key's transaction-scoped advisory lock: 'locked' when
-- another transaction (any process) runs a request with this key now. Else the key's live record, if any
-- ('recorded', with its columns), or 'claimed': the caller runs the request. The lookup is a statement of its own in
-- this volatile function, so its snapshot is taken after the lock: a record committed by the lock's previous holder is
-- seen (one statement doing both could miss it, and run the request twice). The lock key is the one every version of
-- Kiln takes, so processes of the old and the new code exclude each other during a rolling deploy.
create function idempotency_claim(p_key text, p_lease text)
returns table (outcome text, method text, path text, body_hash text, status_code integer, response_body text,
               response_headers jsonb, request_id text, expires_at timestamptz)
language plpgsql as $$
begin
  perform set_config('idle_in_transaction_session_timeout', p_lease, true),
          set_config('statement_timeout', p_lease, true);
  if not pg_try_advisory_xact_lock(hashtextextended('kiln.idempotency:' || current_schema() || ':' || p_key, 0)) then
    outcome := 'locked';
    return next;
    return;
  end if;
  return query
    select 'recorded'::text, k.method, k.path, k.body_hash, k.status_code, k.response_body, k.response_headers,
           k.request_id, k.expires_at
      from idempotency_keys k where k.key = p_key and k.expires_at > now();
  if not found then
    outcome := 'claimed';
    return next;
  end if;
end;
$$;

-- idempotency_record(key, method, path, body hash, status, body, headers, request, ttl_s) → when the record expires.
-- Records a finished request under its key's lock; an expired record of the key is replaced. A live record raises
-- KI001 rather than being kept silently: the caller sends COMMIT in the same round trip, and an error is what stops
-- it from committing an effect without its record.
create function idempotency_record(p_key text, p_method text, p_path text, p_body_hash text, p_status integer,
                                   p_body text, p_headers jsonb, p_request text, p_ttl_s integer)
returns timestamptz language plpgsql as $$
declare
  v_expires timestamptz;
begin
  insert into idempotency_keys
    (key, method, path, body_hash, status_code, response_body, response_headers, request_id, expires_at)
  values (p_key, p_method, p_path, p_body_hash, p_status, p_body, p_headers, p_request,
          now() + make_interval(secs => p_ttl_s))
  on conflict (key) do update set
    method = excluded.method, path = excluded.path, body_hash = excluded.body_hash,
    status_code = excluded.status_code, response_body = excluded.response_body,
    response_headers = excluded.response_headers, request_id = excluded.request_id,
    created_at = now(), expires_at = excluded.expires_at
  where idempotency_keys.expires_at <= now()
  returning idempotency_keys.expires_at into v_expires;
  if v_expires is null then
    raise exception 'idempotency key % already has a live record', p_key using errcode = 'KI001';
  end if;
  return v_expires;
end;
$$;

-- What build_create returns: its outcome, the account's figures from the hold, and the build's columns (the new
-- build; for 'busy', the project's active build; none for 'no_project').
create type build_create_result as (
  outcome text,
  balance bigint,
  reserved bigint,
  expired bigint,
  id text,
  project_id text,
  user_id text,
  state text,
  previous_state text,
  estimated_credits bigint,
  actual_credits bigint,
  reservation_id text,
  preview_url text,
  error text,
  reason text,
  metadata jsonb,
  created_at timestamptz,
  started_at timestamptz,
  finished_at timestamptz,
  lease_owner text
);

-- build_create(id, project, user, reservation, credits, metadata, ttl_s, request, correlation, reason) → one
-- build_create_result. Queues a build and holds its credits, in the caller's transaction, as one statement:
-- - 'no_project': no such project; nothing written;
-- - 'busy': the project allows one active build and has one (returned); nothing written;
-- - 'created': the build (state queued, its first event 'queued') and its hold (reservation, build_id = the build);
--   `expired`: the credits of the user's lapsed holds credit_reserve expired first.
-- Raises, so that nothing of the statement remains (it may run alone, in autocommit): KB402 when the user's available
-- credits are short (DETAIL: the credits available, balance − reserved), 23505 (unique_violation) when the build id
-- exists.
create function build_create(p_id text, p_project text, p_user text, p_reservation text, p_amount bigint,
                             p_metadata jsonb, p_ttl_s integer, p_request text, p_correlation text, p_reason text)
returns build_create_result language plpgsql as $$
declare
  v_concurrent boolean;
  v_hold record;
  v_result build_create_result;
begin
  select p.allow_concurrent_builds into v_concurrent from projects p where p.id = p_project;
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
