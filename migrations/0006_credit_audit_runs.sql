-- Every full credit audit is recorded (SPEC section 6: the audit is also exported as a metric). Any process's
-- /metrics reads the latest run, so the gauge says the same whichever process is scraped and whichever ran it.

create table credit_audit_runs (
  id bigserial primary key,
  ran_at timestamptz not null default now(),
  ok boolean not null,
  -- problems found (the audit lists at most 1000)
  problems integer not null check (problems >= 0),
  checked_users integer not null,
  checked_reservations integer not null,
  ledger_entries bigint not null,
  -- who ran it: the periodic auditor, the API route or the CLI
  source text not null check (source in ('auditor', 'api', 'cli')),
  constraint credit_audit_run_ok check (ok = (problems = 0))
);

create index credit_audit_runs_latest on credit_audit_runs (ran_at desc);
