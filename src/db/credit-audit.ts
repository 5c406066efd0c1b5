import type { Queryable } from './database';

/** One thing the audit found wrong. */
export interface AuditProblem {
  check: string;
  userId: string | null;
  reservationId: string | null;
  /** The build a build rule is about, or the build of the ledger entry a chain rule is about (when it has one). */
  buildId?: string | null;
  expected: number | null;
  actual: number | null;
}

/** The audit's answer (SPEC section 6). */
export interface AuditReport {
  ok: boolean;
  checkedUsers: number;
  checkedReservations: number;
  ledgerEntries: number;
  problems: AuditProblem[];
}

// Every check is a set of offending rows; $1 null means every user. Figures are compared as stored (a lapsed hold
// that is not yet marked expired is still in `reserved` and still active: both sides agree until it is marked).
//
// Per user, the ledger is one chain: each entry's balance_after is the previous entry's plus its amount, and
// reserved_after likewise with reserved_change, from 0, in id order (every writer holds the account's row lock while
// it takes its ids, so ids follow that lock's order). The window runs over id desc (lead = the previous entry), the
// order of credit_ledger_user, so it needs no sort.
//
// Per ended build, from the ledger entries naming it (matched by build_id, whoever wrote them): a deployed build is
// committed at most once and charged beyond its hold at most once, and paid (−amount of those entries) its actual
// credits less the shortfall recorded with it (NULL: unknown, skipped); a failed or cancelled build paid nothing; and
// nothing moved for it after it ended (its settlement is written in the transaction that ends it, so it shares
// that transaction's now() with finished_at; only builds whose last entry is later are looked at entry by entry).
//
// One user's audit is its own statement text, so its own prepared statement: sharing one with the full audit let
// PostgreSQL settle on a generic plan after five runs, which reads every user's rows (14 ms → 300 ms for one user
// at 200k ledger entries).
const PROBLEMS_SQL = `
with users as (
  select user_id from credit_accounts where $1::text is null or user_id = $1::text
  union
  select distinct user_id from credit_ledger where $1::text is null or user_id = $1::text
), sums as (
  select user_id, sum(amount)::bigint as balance, sum(reserved_change)::bigint as reserved, count(*)::bigint as n
    from credit_ledger where $1::text is null or user_id = $1::text group by user_id
), last_entry as (
  select distinct on (user_id) user_id, balance_after, reserved_after
    from credit_ledger where $1::text is null or user_id = $1::text order by user_id, id desc
), holds as (
  select user_id, sum(amount)::bigint as reserved from credit_reservations
   where state = 'active' and ($1::text is null or user_id = $1::text) group by user_id
), figures as (
  select u.user_id, coalesce(a.balance, 0) as balance, coalesce(a.reserved, 0) as reserved,
         coalesce(s.balance, 0) as ledger_balance, coalesce(s.reserved, 0) as ledger_reserved,
         coalesce(h.reserved, 0) as held, e.balance_after, e.reserved_after
    from users u
    left join credit_accounts a on a.user_id = u.user_id
    left join sums s on s.user_id = u.user_id
    left join holds h on h.user_id = u.user_id
    left join last_entry e on e.user_id = u.user_id
), resolutions as (
  select reservation_id, min(user_id) as user_id, count(*)::bigint as n from credit_ledger
   where type in ('commit', 'release', 'expire') and reservation_id is not null
     and ($1::text is null or user_id = $1::text)
   group by reservation_id
), reservations as (
  select c.id, c.user_id, c.state, coalesce(r.n, 0) as resolutions
    from credit_reservations c left join resolutions r on r.reservation_id = c.id
   where $1::text is null or c.user_id = $1::text
), chain as (
  select * from (
    select l.user_id, l.reservation_id, l.build_id, l.balance_after, l.reserved_after,
           coalesce(lead(l.balance_after) over w, 0) + l.amount as expected_balance,
           coalesce(lead(l.reserved_after) over w, 0) + l.reserved_change as expected_reserved
      from credit_ledger l
     where $1::text is null or l.user_id = $1::text
    window w as (partition by l.user_id order by l.id desc)) e
   where balance_after <> expected_balance or reserved_after <> expected_reserved
), per_build as (
  select l.build_id,
         count(*) filter (where l.type = 'commit') as commits,
         count(*) filter (where l.type = 'charge') as charges,
         coalesce(sum(-l.amount) filter (where l.type in ('commit', 'charge')), 0)::bigint as paid,
         max(l.created_at) as last_at
    from credit_ledger l
   where l.build_id is not null and ($1::text is null or l.user_id = $1::text)
   group by l.build_id
), ended as (
  select b.id, b.user_id, b.state, coalesce(b.actual_credits, 0) as used, b.uncollected_credits as uncollected,
         b.finished_at, coalesce(p.commits, 0) as commits, coalesce(p.charges, 0) as charges,
         coalesce(p.paid, 0) as paid, p.last_at
    from builds b left join per_build p on p.build_id = b.id
   where b.state in ('deployed', 'failed', 'cancelled') and ($1::text is null or b.user_id = $1::text)
), late as (
  select e.id, e.user_id, min(l.reservation_id) as reservation_id, count(*) as n
    from ended e join credit_ledger l on l.build_id = e.id and l.created_at > e.finished_at
   where e.last_at > e.finished_at
   group by e.id, e.user_id
)
select 'balance = sum of ledger amounts' as rule, user_id, null::text as reservation_id,
       ledger_balance as expected, balance as actual, null::text as build_id
  from figures where balance <> ledger_balance
union all
select 'reserved = sum of active holds', user_id, null, held, reserved, null from figures where reserved <> held
union all
select 'reserved = sum of ledger reserved changes', user_id, null, ledger_reserved, reserved, null
  from figures where reserved <> ledger_reserved
union all
select 'balance = last ledger balance_after', user_id, null, balance_after, balance, null
  from figures where balance_after is not null and balance <> balance_after
union all
select 'reserved = last ledger reserved_after', user_id, null, reserved_after, reserved, null
  from figures where reserved_after is not null and reserved <> reserved_after
union all
select 'no negative figures', user_id, null, 0, least(balance, reserved, balance - reserved), null
  from figures where balance < 0 or reserved < 0 or balance - reserved < 0
union all
select 'a reservation resolves at most once', user_id, reservation_id, 1, n, null from resolutions where n > 1
union all
select 'a resolved reservation has its ledger entry', user_id, id, case when state = 'active' then 0 else 1 end,
       resolutions, null
  from reservations where (state = 'active') <> (resolutions = 0)
union all
select 'balance_after = previous balance_after + amount', user_id, reservation_id, expected_balance, balance_after,
       build_id
  from chain where balance_after <> expected_balance
union all
select 'reserved_after = previous reserved_after + reserved_change', user_id, reservation_id, expected_reserved,
       reserved_after, build_id
  from chain where reserved_after <> expected_reserved
union all
select 'a deployed build is committed at most once', user_id, null, 1, commits, id
  from ended where state = 'deployed' and commits > 1
union all
select 'a deployed build is charged beyond its hold at most once', user_id, null, 1, charges, id
  from ended where state = 'deployed' and charges > 1
union all
select 'a deployed build pays its actual credits less its shortfall', user_id, null, used - uncollected, paid, id
  from ended where state = 'deployed' and uncollected is not null and paid <> used - uncollected
union all
select 'a failed or cancelled build pays nothing', user_id, null, 0, paid, id
  from ended where state in ('failed', 'cancelled') and paid <> 0
union all
select 'no credit movement for a build after its end', user_id, reservation_id, 0, n, id from late
order by 2, 1, 6
limit 1000`;
const ONE_USER_PROBLEMS_SQL = `${PROBLEMS_SQL} -- one user`;

/** Prove the books from the ledger, for one user or all. */
export async function auditCredits(q: Queryable, userId?: string): Promise<AuditReport> {
  const { rows } = await q.query<{
    rule: string;
    user_id: string | null;
    reservation_id: string | null;
    expected: unknown;
    actual: unknown;
    build_id: string | null;
  }>(userId === undefined ? PROBLEMS_SQL : ONE_USER_PROBLEMS_SQL, [userId ?? null]);
  const counts = await q.query<{ users: unknown; reservations: unknown; entries: unknown }>(
    `select (select count(*) from (select user_id from credit_accounts where $1::text is null or user_id = $1::text
                                   union select user_id from credit_ledger where $1::text is null or user_id = $1::text) u)
              as users,
            (select count(*) from credit_reservations where $1::text is null or user_id = $1::text) as reservations,
            (select count(*) from credit_ledger where $1::text is null or user_id = $1::text) as entries`,
    [userId ?? null],
  );
  const problems = rows.map(
    (row): AuditProblem => ({
      check: row.rule,
      userId: row.user_id,
      reservationId: row.reservation_id,
      ...(row.build_id === null ? {} : { buildId: row.build_id }),
      expected: row.expected === null ? null : Number(row.expected),
      actual: row.actual === null ? null : Number(row.actual),
    }),
  );
  const c = counts.rows[0];
  return {
    ok: problems.length === 0,
    checkedUsers: Number(c.users),
    checkedReservations: Number(c.reservations),
    ledgerEntries: Number(c.entries),
    problems,
  };
}
