-- The record of every idempotent request, written in the same transaction as its effect (SPEC section 4).
-- A key is bound to (method, path, body_hash); the recorded response is replayed byte for byte.
create table idempotency_keys (
  key text primary key check (length(key) between 1 and 255),
  method text not null,
  path text not null,
  body_hash text not null,
  status_code integer not null check (status_code between 200 and 599),
  response_body text not null,
  response_headers jsonb not null default '{}'::jsonb,
  request_id text not null,
  created_at timestamptz not null default now(),
  expires_at timestamptz not null
);
create index idempotency_keys_expires_at on idempotency_keys (expires_at);

create table projects (
  id text primary key check (id ~ '^[A-Za-z0-9_-]{1,64}$'),
  owner_id text not null,
  name text not null check (length(name) between 1 and 200),
  framework text,
  settings jsonb not null default '{}'::jsonb check (jsonb_typeof(settings) = 'object'),
  allow_concurrent_builds boolean not null default false,
  version integer not null default 1 check (version >= 1),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
create index projects_owner_id on projects (owner_id);
