-- Dispute events that carry no balance transactions (Disputes.d.ts: "zero, one, or two balance transactions")
-- say what moved by their type. A funds_withdrawn event did (the disputed amount is debited), but a
-- funds_reinstated event, or a won dispute, reinstated only what the same event showed withdrawn: nothing, for
-- an event with no balance transactions, so a dispute won that way left the organiser debited and the order
-- disputed for good (found by tests/ledger.test.ts while killing the mutation sql-dispute-won). Now such an
-- event gives back all that was withdrawn, as recorded by earlier events, and a dispute recorded as won keeps
-- what was withdrawn and what came back equal when an older event arrives after it.

create or replace function private.record_stripe_dispute(p_type text, p_dispute jsonb) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v_order events.orders;
  v_dispute events.disputes;
  v_withdrawn integer;
  v_reinstated integer;
  v_fee integer;
  v_amount integer := (p_dispute ->> 'amount')::integer;
  v_status text := p_dispute ->> 'status';
  v_all_back boolean;
begin
  select o.* into v_order from events.orders o
  where o.stripe_payment_intent_id = p_dispute ->> 'payment_intent' or o.stripe_charge_id = p_dispute ->> 'charge'
  limit 1 for update;
  if not found or v_order.status in ('pending', 'expired') then
    return jsonb_build_object('park', coalesce(p_dispute ->> 'payment_intent', p_dispute ->> 'charge'));
  end if;
  -- what moved, from the dispute's balance transactions (Disputes.d.ts: balance_transactions); events that
  -- carry none say it by their type
  select coalesce(sum(-(b ->> 'amount')::integer) filter (where (b ->> 'amount')::integer < 0), 0),
         coalesce(sum((b ->> 'amount')::integer) filter (where (b ->> 'amount')::integer > 0), 0),
         coalesce(sum((b ->> 'fee')::integer) filter (where (b ->> 'amount')::integer < 0), 0)
  into v_withdrawn, v_reinstated, v_fee
  from jsonb_array_elements(coalesce(p_dispute -> 'balance_transactions', '[]')) as b;
  if v_withdrawn = 0 and p_type = 'charge.dispute.funds_withdrawn' then
    v_withdrawn := v_amount;
  end if;
  -- funds reinstated (or the dispute won) without the reinstatement's balance transaction: all that was withdrawn
  -- came back - what this event shows, or what an earlier event recorded
  v_all_back := v_reinstated = 0 and (p_type = 'charge.dispute.funds_reinstated' or v_status = 'won');

  insert into events.disputes as d (id, order_id, charge, amount_cents, currency, status, reason, withdrawn_cents,
    reinstated_cents)
  values (p_dispute ->> 'id', v_order.id, p_dispute ->> 'charge', v_amount, coalesce(p_dispute ->> 'currency',
    v_order.currency), v_status, p_dispute ->> 'reason', v_withdrawn,
    case when v_all_back then v_withdrawn else least(v_reinstated, v_withdrawn) end)
  on conflict (id) do update
  set withdrawn_cents = greatest(d.withdrawn_cents, excluded.withdrawn_cents),
      -- a won dispute gave back all that was withdrawn, whatever order its events arrive in
      reinstated_cents = case when v_all_back or d.status = 'won' then greatest(d.withdrawn_cents, excluded.withdrawn_cents)
        else least(greatest(d.reinstated_cents, excluded.reinstated_cents),
          greatest(d.withdrawn_cents, excluded.withdrawn_cents)) end,
      -- a closed dispute stays closed, whatever order its events arrive in
      status = case when d.status in ('won', 'lost', 'warning_closed') then d.status else excluded.status end,
      amount_cents = excluded.amount_cents, updated_at = now()
  returning * into v_dispute;

  if v_dispute.withdrawn_cents > 0 and v_fee > 0
     and (select s.dispute_fee_bearer from private.settings s) = 'organiser' then
    perform private.post_entry((private.lock_wallet(e.organiser_id, v_order.currency)).id, 'dispute_fee', -v_fee,
      'dispute_fee:' || v_dispute.id, v_order.id, null, null, v_dispute.id)
    from events.events e where e.id = v_order.event_id;
  end if;
  return jsonb_build_object('dispute_id', v_dispute.id, 'status', v_dispute.status)
    || private.settle_order(v_order.id, 'dispute', null, v_dispute.id);
end
$$;
