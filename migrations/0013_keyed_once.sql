-- A keyed write in one statement (issue 18): claim the key, apply the effect, record the response and (in autocommit)
-- commit, in one round trip, for the writes whose answer is known but for a few figures only the database has:
-- queueing a build and the credit movements. The response body is serialized by Kiln before the call, with a
-- placeholder for each of those figures; the statement writes them in, records the body and returns it, and Kiln
-- sends it as it was stored. Anything but success declines (KI300) and rolls the statement back whole; Kiln then runs
-- the request the general way (0012: claim, effect, record), which says every refusal in its own words.

-- idempotency_once(key, lease, method, path, body hash, request, ttl_s, status, headers, body, mark, op, args)
-- → (body, expires_at, result). `op` and `args` (jsonb, the names Kiln's db layer gives the effect's input):
-- - 'reserve': {id, userId, amount, buildId, ttlS, reason, requestId, correlationId} → credit_reserve; figures:
--   expires, available;
-- - 'resolve': {reservationId, action ('commit'|'release'), actual, buildId, reason, requestId, correlationId} →
--   credit_resolve; figures: charged, refunded, released, newBalance; a repeat of the same resolution answers as the
--   first did;
-- - 'build': {id, projectId, userId, reservationId, estimatedCredits, metadata, holdTtlS, holdReason, requestId,
--   correlationId} → build_create; figure: createdAt.
-- In the body each figure is the JSON string "@<mark>:<figure>@", replaced by its JSON value (dates as
-- YYYY-MM-DDTHH:MM:SS.mmmZ, as JavaScript writes them); the mark is Kiln's own random text, so no text a client sent
-- can name a figure. `result`: the effect's own row, as jsonb. Raises, so that nothing remains: KI409 when another
-- transaction holds the key, KI200 when the key has a live record, KI300 when the effect refused (any outcome but
-- success); and whatever the effect raises (KB402, 23505, …).
create function idempotency_once(p_key text, p_lease text, p_method text, p_path text, p_body_hash text,
                                 p_request text, p_ttl_s integer, p_status integer, p_headers jsonb, p_body text,
                                 p_mark text, p_op text, p_args jsonb)
returns table (body text, expires_at timestamptz, result jsonb)
language plpgsql as $$
declare
  v_claim text;
  v_figures jsonb;
  v_name text;
  v_value jsonb;
  v_reserve record;
  v_resolve record;
  v_build build_create_result;
begin
  -- The lease bounds this statement's every lock wait: it runs in autocommit, so statement_timeout (which
  -- idempotency_claim sets for the statements after it) never applies to it, and a statement left waiting on a row
  -- lock for a client that died would hold the key's lock as long as that wait lasts.
  perform set_config('lock_timeout', p_lease, true);
  -- The lock, then the lookup in a statement of its own (its snapshot follows the lock): see idempotency_claim.
  select c.outcome into v_claim from idempotency_claim(p_key, p_lease) c;
  if v_claim = 'locked' then
    raise exception 'idempotency key % is held by a running request', p_key using errcode = 'KI409';
  elsif v_claim = 'recorded' then
    raise exception 'idempotency key % has a recorded response', p_key using errcode = 'KI200';
  end if;
  if p_op = 'reserve' then
    select * into v_reserve from credit_reserve(p_args->>'id', p_args->>'userId', (p_args->>'amount')::bigint,
      p_args->>'buildId', (p_args->>'ttlS')::integer, p_args->>'requestId', p_args->>'correlationId',
      p_args->>'reason');
    if v_reserve.outcome <> 'ok' then
      raise exception 'reserve declined: %', v_reserve.outcome using errcode = 'KI300';
    end if;
    result := to_jsonb(v_reserve);
    v_figures := jsonb_build_object(
      'expires', to_char(v_reserve.expires_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
      'available', v_reserve.balance - v_reserve.reserved);
  elsif p_op = 'resolve' then
    select * into v_resolve from credit_resolve(p_args->>'reservationId', p_args->>'action',
      (p_args->>'actual')::bigint, p_args->>'buildId', p_args->>'reason', p_args->>'requestId',
      p_args->>'correlationId');
    if v_resolve.outcome not in ('ok', 'repeat') then
      raise exception '% declined: %', p_args->>'action', v_resolve.outcome using errcode = 'KI300';
    end if;
    result := to_jsonb(v_resolve);
    v_figures := jsonb_build_object(
      'charged', coalesce(v_resolve.charged, 0),
      'refunded', coalesce(v_resolve.amount, 0) - coalesce(v_resolve.charged, 0),
      'released', coalesce(v_resolve.amount, 0),
      'newBalance', coalesce(v_resolve.available, 0));
  elsif p_op = 'build' then
    v_build := build_create(p_args->>'id', p_args->>'projectId', p_args->>'userId', p_args->>'reservationId',
      (p_args->>'estimatedCredits')::bigint, p_args->'metadata', (p_args->>'holdTtlS')::integer,
      p_args->>'requestId', p_args->>'correlationId', p_args->>'holdReason');
    if v_build.outcome <> 'created' then
      raise exception 'build declined: %', v_build.outcome using errcode = 'KI300';
    end if;
    result := to_jsonb(v_build);
    v_figures := jsonb_build_object(
      'createdAt', to_char(v_build.created_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'));
  else
    raise exception 'unknown operation %', p_op using errcode = '22023';
  end if;
  body := p_body;
  for v_name, v_value in select * from jsonb_each(v_figures) loop
    body := replace(body, '"@' || p_mark || ':' || v_name || '@"', v_value::text);
  end loop;
  expires_at := idempotency_record(p_key, p_method, p_path, p_body_hash, p_status, body, p_headers, p_request,
                                   p_ttl_s);
  return next;
end;
$$;
