-- Keyed writes in groups (issue 18): the keyed writes one process has ready at the same moment run in one statement,
-- so they share one round trip, one transaction and one commit, each still whole or absent on its own.
--
-- idempotency_once_batch(items, lock_wait, ttl_s, mark) → one row per item: (n, body, expires_at, result, state,
-- message). `items` is a JSON array; each item is what idempotency_once (0013) takes, by name: {key, method, path,
-- bodyHash, requestId, status, headers, body, op, args}; `n` is the item's place in the array (from 1). Each item runs
-- idempotency_once in a subtransaction of its own: on success, `body`, `expires_at` and `result` are its, and `state`
-- is null; on any error its writes are undone (its key's lock too), the others' kept, and `state` and `message` say
-- why: KI409, KI200, KI300, KB402, 23505 (declined, as idempotency_once); 55P03 (it would have waited for a lock
-- longer than `lock_wait`); anything else, an error. A cancellation (statement timeout, shutdown) ends the whole
-- statement, and then nothing of it remains.
--
-- `lock_wait` (an interval, '200ms') is what each item may wait for a lock, in place of idempotency_once's lease: a
-- group then never waits long on one item, whatever another transaction holds, and never waits long enough to take
-- part in a deadlock (deadlock_timeout: 1 s); the caller runs an item refused with 55P03 again alone, with the full
-- lease. The items run ordered by the user whose account each locks (a resolution's user is its hold's), then by
-- place, so two groups take account locks in one order. What an item locked stays locked until the group commits.
create function idempotency_once_batch(p_items jsonb, p_lock_wait text, p_ttl_s integer, p_mark text)
returns table (n integer, body text, expires_at timestamptz, result jsonb, state text, message text)
language plpgsql as $$
declare
  v_n integer;
  v_item jsonb;
begin
  for v_n, v_item in
    select e.n::integer, e.item
      from jsonb_array_elements(p_items) with ordinality e(item, n)
     order by coalesce(e.item->'args'->>'userId',
                       (select r.user_id from credit_reservations r
                         where r.id = e.item->'args'->>'reservationId')), e.n
  loop
    n := v_n;
    begin
      select o.body, o.expires_at, o.result into body, expires_at, result
        from idempotency_once(v_item->>'key', p_lock_wait, v_item->>'method', v_item->>'path', v_item->>'bodyHash',
                              v_item->>'requestId', p_ttl_s, (v_item->>'status')::integer, v_item->'headers',
                              v_item->>'body', p_mark, v_item->>'op', v_item->'args') o;
      state := null;
      message := null;
    exception when others then
      body := null;
      expires_at := null;
      result := null;
      get stacked diagnostics state = returned_sqlstate, message = message_text;
    end;
    return next;
  end loop;
end;
$$;
