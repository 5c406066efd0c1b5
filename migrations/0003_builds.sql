-- Builds and their events (SPEC section 5). The database is the last word on the state machine:
-- the CHECK from the requirements, a trigger refusing every other transition with SQLSTATE KL001,
-- and a partial unique index allowing one active build per project unless it was created concurrent.

create table builds (
  id text primary key check (id ~ '^[A-Za-z0-9_-]{1,64}$'),
  project_id text not null references projects (id),
  user_id text not null,
  state text not null check (state in ('queued', 'building', 'deployed', 'failed', 'cancelled')),
  previous_state text check (previous_state in ('queued', 'building', 'deployed', 'failed', 'cancelled')),
  -- true unless the project allowed concurrent builds when this one was created
  exclusive boolean not null default true,
  estimated_credits integer not null check (estimated_credits >= 0),
  actual_credits integer check (actual_credits >= 0),
  reservation_id text,
  preview_url text,
  error text,
  -- why a build ended as it did: exit_code, timeout, worker_lost, cancelled, or what a PATCH said
  reason text,
  metadata jsonb not null default '{}'::jsonb check (jsonb_typeof(metadata) = 'object'),
  created_at timestamptz not null default now(),
  started_at timestamptz,
  finished_at timestamptz,
  -- the runner that holds the build while it is building, and until when (renewed by heartbeats)
  lease_owner text,
  lease_expires_at timestamptz,
  -- the seq of the last event written (events are numbered per build)
  last_event_seq integer not null default 0,
  -- The requirements' CHECK, made null-safe: with plain `=` a NULL previous_state makes the expression NULL,
  -- and a CHECK passes on NULL.
  constraint valid_build_transitions check (coalesce(
    (previous_state is null and state = 'queued')
    or (previous_state = 'queued' and state in ('building', 'cancelled'))
    or (previous_state = 'building' and state in ('deployed', 'failed', 'cancelled')),
    false))
);

create unique index builds_one_active_per_project on builds (project_id)
  where state in ('queued', 'building') and exclusive;
create index builds_queued on builds (created_at, id) where state = 'queued';
create index builds_building_lease on builds (lease_expires_at) where state = 'building';
create index builds_project_created on builds (project_id, created_at desc, id desc);
create index builds_created on builds (created_at desc, id desc);

-- enforce_build_transition(): before insert or update of builds. A new build must be queued with no previous
-- state. On update: inputs old and new rows; sets previous_state to the
-- state being left; raises KL001 (with the from/to states in DETAIL) for any transition not in the table:
-- queued → building | cancelled; building → deployed | failed | cancelled.
create function enforce_build_transition() returns trigger language plpgsql as $$
begin
  if tg_op = 'INSERT' then
    if new.state is distinct from 'queued' or new.previous_state is not null then
      raise exception 'a build starts queued, got % (previous %)', new.state, new.previous_state
        using errcode = 'KL001', detail = coalesce(new.previous_state, '') || '->' || coalesce(new.state, '');
    end if;
    return new;
  end if;
  if new.state is distinct from old.state then
    if not ((old.state = 'queued' and new.state in ('building', 'cancelled'))
         or (old.state = 'building' and new.state in ('deployed', 'failed', 'cancelled'))) then
      raise exception 'invalid build transition % -> % for build %', old.state, new.state, old.id
        using errcode = 'KL001', detail = old.state || '->' || new.state;
    end if;
    new.previous_state := old.state;
  else
    new.previous_state := old.previous_state;
  end if;
  if new.id is distinct from old.id or new.project_id is distinct from old.project_id then
    raise exception 'a build''s id and project cannot change' using errcode = 'KL002';
  end if;
  return new;
end;
$$;

create trigger builds_enforce_transition before insert or update on builds
  for each row execute function enforce_build_transition();

create table build_events (
  build_id text not null references builds (id),
  seq integer not null check (seq >= 1),
  type text not null check (type in ('queued', 'started', 'progress', 'log', 'deployed', 'failed', 'cancelled')),
  phase text,
  message text,
  progress real check (progress >= 0 and progress <= 1),
  data jsonb,
  created_at timestamptz not null default now(),
  primary key (build_id, seq)
);

-- refuse_mutation(): before update or delete on append-only tables; raises KL003 naming the table.
create function refuse_mutation() returns trigger language plpgsql as $$
begin
  raise exception '% is append-only: % refused', tg_table_name, tg_op using errcode = 'KL003';
end;
$$;

create trigger build_events_append_only before update or delete on build_events
  for each row execute function refuse_mutation();
