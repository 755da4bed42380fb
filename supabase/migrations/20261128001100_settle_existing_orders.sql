-- Every order with refunds or disputes settled once by the one rule of migration 20261128000700
-- (private.settle_order). Orders refunded before it kept each refund's own debit: a refund that failed at
-- the bank after a later one left the organiser a cent over-debited (tests/upgrade.test.ts has one). Until
-- now such an order was put right only at its next refund or dispute; this posts the difference at once,
-- as an `adjustment` (or `refund`) entry keyed `share:<order>:<n>` like every other settlement.
do $$
declare
  v_order uuid;
begin
  for v_order in
    select o.id from events.orders o
    where o.status not in ('pending', 'expired')
      and (exists (select 1 from events.refunds r where r.order_id = o.id)
        or exists (select 1 from events.disputes d where d.order_id = o.id))
    order by o.id
  loop
    perform private.settle_order(v_order, 'refund', null, 'migration 20261128001100');
  end loop;
end
$$;
