-- Payouts draw only funds Stripe reports available (docs/adr/0007-payouts-from-available-funds.md).
-- Card funds are pending for days before they are available; "a transfer request fails when the amount
-- exceeds the platform's available account balance" (stripe.com/docs/connect/charges-transfers). The
-- webhook learns each paid order's charge and when its funds become available (the charge's balance
-- transaction, `available_on`) and records them on the order; a sale's credit may be paid out from then.
-- A payout beyond what is available now is refused 409 `funds-pending` with when enough will be, so that
-- Stripe never answers `balance_insufficient`. The payout minimum is per currency (private.currencies).

alter table events.orders
  add column if not exists stripe_charge_id text unique,
  add column if not exists funds_available_at timestamptz;

-- An organiser wallet's funds: what is available now (the entries' total less the sale credits whose funds
-- are still pending at Stripe), what is pending, and when at least `p_amount` will be available (null if
-- never, from the sales known so far).
create or replace function private.wallet_funds(p_wallet_id uuid, p_amount bigint default 0)
returns table (available bigint, pending bigint, available_at timestamptz)
language sql stable security definer set search_path = '' as $$
  with pending as (
    select t.amount_cents, o.funds_available_at as at
    from wallet.wallet_transactions t join events.orders o on o.id = t.order_id
    where t.wallet_id = p_wallet_id and t.type = 'sale' and o.funds_available_at > now()
  ),
  totals as (
    select w.entries_total_cents as total, coalesce((select sum(p.amount_cents) from pending p), 0)::bigint as pending
    from wallet.wallets w where w.id = p_wallet_id
  )
  select greatest(least(t.total - t.pending, t.total), 0)::bigint, t.pending,
    (select min(x.at) from (
       select p.at, sum(p.amount_cents) over (order by p.at) as released from pending p) as x
     where t.total - t.pending + x.released >= p_amount)
  from totals t
$$;

drop function if exists public.complete_order_payment(uuid, text, text, integer);
create function public.complete_order_payment(
  p_order_id uuid,
  p_stripe_session_id text,
  p_payment_intent_id text,
  p_amount_total integer,
  p_charge jsonb default null
) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v_order events.orders;
  v_event events.events;
  v_wallet wallet.wallets;
  v_item record;
  v_late boolean;
begin
  select * into v_order from events.orders o where o.id = p_order_id for update;
  if not found then
    raise exception 'Order % does not exist', p_order_id using errcode = 'PT404', hint = 'order-not-found';
  end if;
  if v_order.stripe_session_id is not null and v_order.stripe_session_id <> p_stripe_session_id then
    raise exception 'Order % belongs to Checkout Session %, not %', p_order_id, v_order.stripe_session_id,
      p_stripe_session_id using errcode = 'PT409';
  end if;
  if p_amount_total <> v_order.total_cents then
    raise exception 'Session % charged %, order % totals %', p_stripe_session_id, p_amount_total, p_order_id,
      v_order.total_cents using errcode = 'PT409';
  end if;
  if v_order.status not in ('pending', 'expired') then
    return jsonb_build_object('order_id', v_order.id, 'status', v_order.status, 'changed', false);
  end if;

  -- A payment after the holds were released (the order expired) is honoured: the tickets are issued even
  -- beyond capacity, and the order is flagged.
  v_late := v_order.status = 'expired';
  for v_item in
    select i.tier_id, i.quantity, h.id as hold_id, h.status as hold_status
    from events.order_items i
    left join events.holds h on h.order_id = i.order_id and h.tier_id = i.tier_id
    join events.ticket_tiers t on t.id = i.tier_id
    where i.order_id = p_order_id
    order by i.tier_id
    for update of t
  loop
    if v_item.hold_status = 'active' then
      update events.holds set status = 'consumed' where id = v_item.hold_id;
      update events.ticket_tiers set held = held - v_item.quantity, sold = sold + v_item.quantity where id = v_item.tier_id;
    else
      update events.ticket_tiers set sold = sold + v_item.quantity where id = v_item.tier_id;
    end if;
    insert into events.tickets (order_id, tier_id) select p_order_id, v_item.tier_id from generate_series(1, v_item.quantity);
  end loop;

  update events.orders o
  set status = 'paid', paid_at = now(), updated_at = now(), stripe_session_id = p_stripe_session_id,
      stripe_payment_intent_id = p_payment_intent_id,
      stripe_charge_id = coalesce(p_charge ->> 'id', o.stripe_charge_id),
      funds_available_at = to_timestamp((p_charge -> 'balance_transaction' ->> 'available_on')::bigint),
      oversold = v_late and exists (select from events.order_items i join events.ticket_tiers t on t.id = i.tier_id
        where i.order_id = p_order_id and t.sold + t.held > t.capacity)
  where o.id = p_order_id
  returning * into v_order;

  select * into v_event from events.events e where e.id = v_order.event_id;
  v_wallet := private.lock_wallet(v_event.organiser_id, v_order.currency);
  perform private.post_entry(v_wallet.id, 'sale', v_order.subtotal_cents, 'sale:' || p_order_id, p_order_id);
  return jsonb_build_object('order_id', v_order.id, 'status', v_order.status, 'changed', true,
    'oversold', v_order.oversold);
end
$$;

create or replace function public.create_payout(
  p_scope text,
  p_idempotency_key text,
  p_payout_id uuid,
  p_stripe_idempotency_key text,
  p_organiser_id uuid,
  p_amount_cents bigint,
  p_currency text default 'usd',
  p_lease_seconds integer default 60
) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v_payout wallet.payouts;
  v_account events.payout_accounts;
  v_minimum integer;
  v_wallet wallet.wallets;
  v_funds record;
begin
  select * into v_payout from wallet.payouts p
  where p.idempotency_scope = p_scope and p.idempotency_key = p_idempotency_key;
  if found then
    if v_payout.amount_cents <> p_amount_cents or v_payout.currency <> lower(p_currency) then
      raise exception 'This Idempotency-Key was used for another payout' using errcode = 'PT422',
        hint = 'idempotency-key-reused';
    end if;
  else
    select * into v_account from events.payout_accounts a where a.organiser_id = p_organiser_id;
    if not found then
      raise exception 'No payout account: connect a Stripe account first' using errcode = 'PT403',
        hint = 'no-payout-account';
    end if;
    if not v_account.payouts_enabled then
      raise exception 'Payouts are not enabled on % yet', v_account.stripe_account_id using errcode = 'PT409',
        hint = 'payouts-disabled';
    end if;
    select c.payout_minimum into v_minimum from private.currencies c where c.code = lower(p_currency);
    if v_minimum is null then
      raise exception 'The platform does not settle %', p_currency using errcode = 'PT400', hint = 'validation',
        detail = '{"errors": [{"field": "currency", "message": "not a settlement currency"}]}';
    end if;
    if p_amount_cents is null or p_amount_cents < v_minimum then
      raise exception 'A payout must be at least % (minor units of %)', v_minimum, lower(p_currency)
        using errcode = 'PT400', hint = 'validation',
        detail = jsonb_build_object('errors', jsonb_build_array(jsonb_build_object('field', 'amount_cents',
          'message', format('at least %s', v_minimum))))::text;
    end if;

    v_wallet := private.lock_wallet(p_organiser_id, lower(p_currency));
    v_funds := private.wallet_funds(v_wallet.id, p_amount_cents);
    if p_amount_cents > v_wallet.entries_total_cents then
      raise exception 'Cannot pay out % cents: % cents are available', p_amount_cents, v_funds.available
        using errcode = 'PT409', hint = 'insufficient-funds',
        detail = jsonb_build_object('requested_cents', p_amount_cents, 'available_cents', v_funds.available)::text;
    end if;
    -- Only money Stripe reports available may leave (docs/adr/0007): a sale's funds are pending until its
    -- charge's balance transaction is available (docs.stripe.com/payments/balances).
    if p_amount_cents > v_funds.available then
      raise exception 'Cannot pay out % cents yet: % cents are available now, the rest of the sales'' funds from %',
        p_amount_cents, v_funds.available, v_funds.available_at
        using errcode = 'PT409', hint = 'funds-pending',
        detail = jsonb_build_object('requested_cents', p_amount_cents, 'available_cents', v_funds.available,
          'pending_cents', v_funds.pending, 'available_at', v_funds.available_at,
          'retry_after', greatest(1, ceil(extract(epoch from v_funds.available_at - now()))::bigint))::text;
    end if;

    insert into wallet.payouts (id, organiser_id, wallet_id, amount_cents, currency, destination, idempotency_scope,
      idempotency_key)
    values (p_payout_id, p_organiser_id, v_wallet.id, p_amount_cents, v_wallet.currency, v_account.stripe_account_id,
      p_scope, p_idempotency_key)
    returning * into v_payout;
    perform private.post_entry(v_wallet.id, 'payout', -p_amount_cents, 'payout:' || v_payout.id, null, null, v_payout.id);
    update wallet.wallets w set pending_payout_cents = w.pending_payout_cents + p_amount_cents where w.id = v_wallet.id;
  end if;

  return jsonb_build_object(
    'payout', private.payout_json(v_payout.id),
    'stripe', private.claim_row_operation('payout:create', v_payout.id, p_stripe_idempotency_key,
      private.payout_params(v_payout.id), p_organiser_id, p_lease_seconds, v_payout.stripe_transfer_id,
      v_payout.status <> 'pending', v_payout.id = p_payout_id));
end
$$;


-- The calling organiser's wallet: available now, pending at Stripe, and in flight to their account.
create or replace function public.get_wallet(p_currency text default 'usd') returns jsonb
language sql stable security definer set search_path = '' as $$
  select jsonb_build_object(
    'currency', lower(p_currency),
    'balance_cents', coalesce(w.entries_total_cents + w.pending_payout_cents, 0),
    'available_cents', coalesce(f.available, 0),
    'pending_funds_cents', coalesce(f.pending, 0),
    'pending_payout_cents', coalesce(w.pending_payout_cents, 0))
  from (select 1) as one
  left join wallet.wallets w on w.organiser_id = auth.uid() and w.currency = lower(p_currency)
  left join lateral private.wallet_funds(w.id) f on true
$$;

-- A delivery, with the charge of a paid session as the webhook looked it up in Stripe (p_charge: its id,
-- amount and balance transaction), so that the sale's funds are known to be pending until `available_on`.
drop function if exists public.handle_stripe_event(jsonb);
drop function if exists private.apply_stripe_event(text, jsonb);
-- One event's effect, by type. Unknown types are acknowledged and ignored.
create function private.apply_stripe_event(p_type text, p_object jsonb, p_charge jsonb) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v_order_id uuid;
  v_refund jsonb;
  v_results jsonb := '[]'::jsonb;
begin
  if p_type like 'checkout.session.%' then
    if coalesce(p_object -> 'metadata' ->> 'order_id', '')
       !~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' then
      return jsonb_build_object('ignored', 'no order_id in the session metadata');
    end if;
    v_order_id := (p_object -> 'metadata' ->> 'order_id')::uuid;
    if not exists (select from events.orders o where o.id = v_order_id) then
      return jsonb_build_object('ignored', 'unknown order ' || v_order_id);
    end if;
  end if;

  case p_type
    when 'checkout.session.completed', 'checkout.session.async_payment_succeeded' then
      if p_object ->> 'payment_status' <> 'paid' then
        return jsonb_build_object('ignored', 'payment_status is ' || coalesce(p_object ->> 'payment_status', 'null'));
      end if;
      return public.complete_order_payment(v_order_id, p_object ->> 'id', p_object ->> 'payment_intent',
        (p_object ->> 'amount_total')::integer, p_charge);
    when 'checkout.session.expired', 'checkout.session.async_payment_failed' then
      return jsonb_build_object('order_id', v_order_id, 'expired', private.expire_order(v_order_id));
    when 'refund.created', 'refund.updated', 'refund.failed' then
      return private.record_stripe_refund(p_object);
    when 'charge.refunded' then
      -- the charge lists its refunds only where Stripe includes them; refund.* events carry each one too
      for v_refund in select * from jsonb_array_elements(coalesce(p_object -> 'refunds' -> 'data', '[]')) loop
        v_results := v_results || private.record_stripe_refund(v_refund);
      end loop;
      return jsonb_build_object('refunds', v_results);
    when 'transfer.reversed' then
      return private.record_transfer_reversal(p_object);
    else
      return jsonb_build_object('ignored', 'event type not handled');
  end case;
end
$$;

-- One delivery: claim (one upsert; a processed event is a duplicate), effect, outcome - one RPC.
create function public.handle_stripe_event(p_event jsonb, p_charge jsonb default null) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v_id text := p_event ->> 'id';
  v_attempts integer;
  v_effect jsonb;
  v_state text;
  v_message text;
begin
  if v_id is null or p_event ->> 'type' is null then
    raise exception 'An event needs an id and a type' using errcode = '22023';
  end if;
  insert into public.stripe_webhook_events as w (stripe_event_id, event_type, object_id, payload_snapshot, status,
    attempts)
  values (v_id, p_event ->> 'type', p_event -> 'data' -> 'object' ->> 'id', p_event, 'processing', 1)
  on conflict (stripe_event_id) do update
    set status = 'processing', attempts = w.attempts + 1, payload_snapshot = excluded.payload_snapshot,
        updated_at = now()
    where w.status <> 'processed'
  returning w.attempts into v_attempts;
  if not found then
    return jsonb_build_object('event_id', v_id, 'status', 'duplicate');
  end if;

  begin
    v_effect := private.apply_stripe_event(p_event ->> 'type', p_event -> 'data' -> 'object', p_charge);
    update public.stripe_webhook_events w
    set status = 'processed', success = true, error_message = null, processed_at = now(), updated_at = now()
    where w.stripe_event_id = v_id;
    return jsonb_build_object('event_id', v_id, 'status', 'processed', 'attempts', v_attempts, 'effect', v_effect);
  exception when others then
    get stacked diagnostics v_state = returned_sqlstate, v_message = message_text;
    update public.stripe_webhook_events w
    set status = 'failed', success = false, error_message = left(v_state || ': ' || v_message, 2000), updated_at = now()
    where w.stripe_event_id = v_id;
    return jsonb_build_object('event_id', v_id, 'status', 'failed', 'attempts', v_attempts,
      'error', v_state || ': ' || v_message);
  end;
end
$$;


-- The payout minimum lives with its currency now.
alter table private.settings drop column if exists payout_minimum_cents;

revoke execute on function
  private.wallet_funds(uuid, bigint),
  private.apply_stripe_event(text, jsonb, jsonb)
from public, anon, authenticated, service_role;
revoke execute on function public.handle_stripe_event(jsonb, jsonb) from public, anon, authenticated;
grant execute on function public.handle_stripe_event(jsonb, jsonb) to service_role;
revoke execute on function public.complete_order_payment(uuid, text, text, integer, jsonb)
from public, anon, authenticated;
grant execute on function public.complete_order_payment(uuid, text, text, integer, jsonb) to service_role;
