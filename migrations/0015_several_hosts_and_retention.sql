-- Running on several hosts, and keeping only what is worth keeping.

-- service_instances: each process's health line. A process renews its line every third of its lease (last_seen_at,
-- and what it says of itself in `health`); any process marks a line not renewed within its lease dead (dead_at), and
-- a line dead for a day is removed. A process whose line was marked dead (it stalled, or lost the database) clears
-- the mark with its next renewal.
alter table service_instances
  add column lease_seconds integer not null default 60 check (lease_seconds between 3 and 3600),
  add column health jsonb not null default '{}'::jsonb,
  add column dead_at timestamptz;

-- build_preview_files: a deployed build's preview, written with the build's end by the process that ran it, so any
-- process serves it (GET /previews/:id/…) whatever disk the build ran on. `path` is relative to the preview
-- directory ('index.html', 'assets/app.js'). Pruned by retention (the latest deployed build of each project kept).
create table build_preview_files (
  build_id text not null references builds (id),
  path text not null check (path <> '' and path !~ '(^|/)\.\.?(/|$)' and left(path, 1) <> '/'),
  size integer not null check (size >= 0),
  body bytea not null,
  primary key (build_id, path)
);

-- The append-only tables that retention prunes (build_events, and webhook_attempts with the outbox rows they belong
-- to) refuse every update, and every delete but retention's own: src/db/retention.ts deletes in a transaction
-- that sets kiln.pruning to 'on' for itself (set_config(..., true)). Nothing else in Kiln sets it.
create function refuse_mutation_unless_pruning() returns trigger language plpgsql as $$
begin
  if tg_op = 'DELETE' and current_setting('kiln.pruning', true) = 'on' then
    return old;
  end if;
  raise exception '% is append-only: % refused', tg_table_name, tg_op using errcode = 'KL003';
end;
$$;

drop trigger build_events_append_only on build_events;
create trigger build_events_append_only before update or delete on build_events
  for each row execute function refuse_mutation_unless_pruning();
drop trigger webhook_attempts_append_only on webhook_attempts;
create trigger webhook_attempts_append_only before update or delete on webhook_attempts
  for each row execute function refuse_mutation_unless_pruning();

-- Retention finds old finished builds by finished_at (builds_finished, migration 0009) and the outbox rows that
-- ended long ago by theirs.
create index webhook_deliveries_finished on webhook_deliveries (finished_at, id) where status <> 'pending';
-- "Is a later build of this project deployed?" (the latest deployed build of each project keeps its preview and
-- workspace): one index probe per build retention looks at.
create index builds_project_deployed on builds (project_id, finished_at, id) where state = 'deployed';

-- How far event pruning has gone, in builds' (finished_at, id) order: each run starts past the builds whose events
-- it already removed, so the history it has done is never read again.
create table retention_cursors (
  kind text primary key check (kind in ('build_events')),
  finished_at timestamptz not null,
  build_id text not null
);
insert into retention_cursors (kind, finished_at, build_id) values ('build_events', '-infinity', '');
