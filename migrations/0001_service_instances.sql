-- Every Kiln process registers itself at start and refreshes last_seen_at while it lives, so operators
-- (and later the runner) can tell which processes share this database.
create table service_instances (
  id text primary key,
  hostname text not null,
  pid integer not null,
  version text not null,
  started_at timestamptz not null default now(),
  last_seen_at timestamptz not null default now()
);
