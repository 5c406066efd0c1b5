import type { Queryable } from './database';

/** One thing the audit found wrong. */
export interface AuditProblem {
  check: string;
  userId: string | null;
  reservationId: string | null;
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
   where type in ('commit', 'release', 'expire') and ($1::text is null or user_id = $1::text)
   group by reservation_id
), reservations as (
  select c.id, c.user_id, c.state, coalesce(r.n, 0) as resolutions
    from credit_reservations c left join resolutions r on r.reservation_id = c.id
   where $1::text is null or c.user_id = $1::text
)
select 'balance = sum of ledger amounts' as rule, user_id, null::text as reservation_id,
       ledger_balance as expected, balance as actual from figures where balance <> ledger_balance
union all
select 'reserved = sum of active holds', user_id, null, held, reserved from figures where reserved <> held
union all
select 'reserved = sum of ledger reserved changes', user_id, null, ledger_reserved, reserved
  from figures where reserved <> ledger_reserved
union all
select 'balance = last ledger balance_after', user_id, null, balance_after, balance
  from figures where balance_after is not null and balance <> balance_after
union all
select 'reserved = last ledger reserved_after', user_id, null, reserved_after, reserved
  from figures where reserved_after is not null and reserved <> reserved_after
union all
select 'no negative figures', user_id, null, 0, least(balance, reserved, balance - reserved)
  from figures where balance < 0 or reserved < 0 or balance - reserved < 0
union all
select 'a reservation resolves at most once', user_id, reservation_id, 1, n from resolutions where n > 1
union all
select 'a resolved reservation has its ledger entry', user_id, id, case when state = 'active' then 0 else 1 end,
       resolutions
  from reservations where (state = 'active') <> (resolutions = 0)
order by 2, 1
limit 1000`;

/** Prove the books from the ledger, for one user or all. */
export async function auditCredits(q: Queryable, userId?: string): Promise<AuditReport> {
  const { rows } = await q.query<{
    rule: string;
    user_id: string | null;
    reservation_id: string | null;
    expected: unknown;
    actual: unknown;
  }>(PROBLEMS_SQL, [userId ?? null]);
  const counts = await q.query<{ users: unknown; reservations: unknown; entries: unknown }>(
    `select (select count(*) from (select user_id from credit_accounts where $1::text is null or user_id = $1::text
                                   union select user_id from credit_ledger where $1::text is null or user_id = $1::text) u)
              as users,
            (select count(*) from credit_reservations where $1::text is null or user_id = $1::text) as reservations,
            (select count(*) from credit_ledger where $1::text is null or user_id = $1::text) as entries`,
    [userId ?? null],
  );
  const problems = rows.map((row) => ({
    check: row.rule,
    userId: row.user_id,
    reservationId: row.reservation_id,
    expected: row.expected === null ? null : Number(row.expected),
    actual: row.actual === null ? null : Number(row.actual),
  }));
  const c = counts.rows[0];
  return {
    ok: problems.length === 0,
    checkedUsers: Number(c.users),
    checkedReservations: Number(c.reservations),
    ledgerEntries: Number(c.entries),
    problems,
  };
}
