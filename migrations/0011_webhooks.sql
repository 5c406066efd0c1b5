-- Webhooks (SPEC section 5): a project's endpoint and signing secrets, an outbox row per event written by the
-- event's own transaction (a trigger, so every path that writes an event — routes, runners, the reaper — enqueues
-- it), and every attempt kept for the delivery log.

alter table projects
  add column webhook_url text check (webhook_url is null or length(webhook_url) between 1 and 2048),
  -- whsec_<base64>: the secret that signs; the previous one also signs until webhook_previous_secret_until
  add column webhook_secret text,
  add column webhook_previous_secret text,
  add column webhook_previous_secret_until timestamptz,
  -- the first failed attempt since the last success (null while the endpoint works), and the latest one: a failure
  -- long after the previous one (the endpoint was idle, not failing) starts the failing period again
  add column webhook_failing_since timestamptz,
  add column webhook_last_failure_at timestamptz,
  -- set when the endpoint answered 410 Gone or failed for WEBHOOK_DISABLE_AFTER_S; naming the URL again clears it
  add column webhook_disabled_at timestamptz,
  add column webhook_disabled_reason text,
  add constraint webhook_secret_with_url check ((webhook_url is null) = (webhook_secret is null));

-- One row per message: an event (replay = false, enqueued by the trigger) or a replay of one (POST …/replay).
-- Rows of a build are delivered in id order: a row waits while an earlier pending row of its build exists. Only a
-- build's first pending row (its head) has a real next_attempt_at; the rows behind it wait at 'infinity' and the
-- head's settlement moves the next one to now(), so the claim's scan of due rows never reads the rows waiting
-- behind a retrying head (a dead endpoint's backlog costs nothing per claim).
create table webhook_deliveries (
  id bigint generated always as identity primary key,
  build_id text not null,
  seq integer not null,
  project_id text not null references projects (id),
  replay boolean not null default false,
  status text not null default 'pending' check (status in ('pending', 'delivered', 'failed')),
  -- attempts started; a claim adds one and moves next_attempt_at past the attempt's timeout (a lease: a process
  -- killed mid-attempt leaves the row to be claimed again once it passes)
  attempts integer not null default 0,
  next_attempt_at timestamptz not null default now(),
  created_at timestamptz not null default now(),
  finished_at timestamptz,
  last_failure text,
  foreign key (build_id, seq) references build_events (build_id, seq)
);
create index webhook_deliveries_due on webhook_deliveries (next_attempt_at, id) where status = 'pending';
create index webhook_deliveries_build_pending on webhook_deliveries (build_id, id) where status = 'pending';
create index webhook_deliveries_build on webhook_deliveries (build_id, id);
create index webhook_deliveries_project_pending on webhook_deliveries (project_id) where status = 'pending';

create table webhook_attempts (
  delivery_id bigint not null references webhook_deliveries (id),
  attempt integer not null check (attempt >= 1),
  build_id text not null,
  attempted_at timestamptz not null,
  duration_ms integer not null check (duration_ms >= 0),
  -- the HTTP status when there was an answer
  status_code integer,
  outcome text not null check (outcome in ('delivered', 'failed')),
  -- a SendFailure (src/delivery/sender.ts) when the attempt failed
  failure text,
  detail text,
  -- the first KiB of the answer
  response_body text,
  primary key (delivery_id, attempt)
);
create index webhook_attempts_build on webhook_attempts (build_id, delivery_id, attempt);

-- webhook_enqueue(): after insert on build_events. Writes the event's outbox row when the build's project has an
-- endpoint that is not disabled; nothing otherwise. One indexed lookup per event (two with an endpoint).
-- The row is its build's head (due now) unless an earlier message of the build is still pending.
create function webhook_enqueue() returns trigger language plpgsql as $$
begin
  insert into webhook_deliveries (build_id, seq, project_id, next_attempt_at)
  select new.build_id, new.seq, p.id,
         case when exists (select 1 from webhook_deliveries e where e.build_id = new.build_id and e.status = 'pending')
              then 'infinity'::timestamptz else now() end
    from builds b join projects p on p.id = b.project_id
   where b.id = new.build_id and p.webhook_url is not null and p.webhook_disabled_at is null;
  return null;
end;
$$;

create trigger build_events_webhook after insert on build_events
  for each row execute function webhook_enqueue();

create trigger webhook_attempts_append_only before update or delete on webhook_attempts
  for each row execute function refuse_mutation();

-- webhook_settle(): record one attempt and move its delivery on, in one call (src/db/webhooks.ts, settleDelivery).
-- Inputs: the delivery and attempt number, its build and project, the URL attempted, when, its duration, the HTTP
-- status (null without an answer), whether it delivered, the failure and its detail, the first KiB of the answer,
-- seconds until the retry (null: no retry left), a reason to disable the endpoint now (410: 'gone'), how long an
-- endpoint may fail before it is disabled ('failing'), and after how long without a failure a new one starts the
-- failing period again. Output: whether the delivery was still at this attempt (else only the attempt is logged: a
-- lapsed claim was taken again, and neither the delivery nor the endpoint changes), its status, why the endpoint
-- was disabled by this attempt (null if it was not) and how many pending messages of the project failed with it.
-- A delivered or failed message makes its build's next one due. The build's row is read `for share` first: a
-- transaction writing the build's next event holds that row until it commits, so the promotion sees its row.
create function webhook_settle(
  p_delivery bigint, p_attempt int, p_build text, p_project text, p_url text, p_at timestamptz, p_duration_ms int,
  p_status_code int, p_delivered boolean, p_failure text, p_detail text, p_body text, p_retry_in_s float8,
  p_disable text, p_disable_after_s int, p_failing_reset_s int,
  out applied boolean, out status text, out disabled_reason text, out abandoned int)
language plpgsql as $$
declare
  v_failing_since timestamptz;
begin
  perform 1 from builds where id = p_build for share;
  insert into webhook_attempts (delivery_id, attempt, build_id, attempted_at, duration_ms, status_code, outcome,
                                failure, detail, response_body)
  values (p_delivery, p_attempt, p_build, p_at, greatest(0, p_duration_ms), p_status_code,
          case when p_delivered then 'delivered' else 'failed' end, p_failure, p_detail, p_body)
  on conflict do nothing;
  status := case when p_delivered then 'delivered' when p_retry_in_s is not null then 'pending' else 'failed' end;
  update webhook_deliveries d
     set status = webhook_settle.status,
         next_attempt_at = case when p_retry_in_s is null then d.next_attempt_at
                                else now() + make_interval(secs => p_retry_in_s) end,
         finished_at = case when webhook_settle.status = 'pending' then null else now() end, last_failure = p_failure
   where d.id = p_delivery and d.attempts = p_attempt and d.status = 'pending';
  applied := found;
  abandoned := 0;
  if not applied then
    return;
  end if;
  if status <> 'pending' then
    update webhook_deliveries set next_attempt_at = now()
     where id = (select id from webhook_deliveries where build_id = p_build and webhook_deliveries.status = 'pending'
                  order by id limit 1)
       and next_attempt_at = 'infinity'::timestamptz;
  end if;
  -- The endpoint's state follows attempts at its current URL only (not one in flight when the URL changed).
  if p_delivered then
    update projects set webhook_failing_since = null, webhook_last_failure_at = null
     where id = p_project and webhook_url = p_url and webhook_failing_since is not null;
    return;
  end if;
  update projects
     set webhook_failing_since = case
           when webhook_last_failure_at is null
             or webhook_last_failure_at < p_at - make_interval(secs => p_failing_reset_s) then p_at
           else coalesce(webhook_failing_since, p_at) end,
         webhook_last_failure_at = p_at
   where id = p_project and webhook_url = p_url and webhook_disabled_at is null
  returning webhook_failing_since into v_failing_since;
  if not found then
    return;
  end if;
  disabled_reason := coalesce(p_disable,
                              case when v_failing_since < p_at - make_interval(secs => p_disable_after_s)
                                   then 'failing' end);
  if disabled_reason is null then
    return;
  end if;
  update projects set webhook_disabled_at = now(), webhook_disabled_reason = disabled_reason where id = p_project;
  update webhook_deliveries set status = 'failed', finished_at = now(), last_failure = 'endpoint_disabled'
   where project_id = p_project and webhook_deliveries.status = 'pending';
  get diagnostics abandoned = row_count;
  status := 'failed';
end;
$$;
