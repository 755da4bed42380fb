-- Money that moves outside our API calls: the organiser's ledger follows what Stripe did.
--
-- - One rule for the organiser's share of an order's refunds and disputes (private.settle_order): the
--   cumulative share is floor(min(refunded + reserved + disputed, total) x subtotal / total), where
--   refunded = what Stripe refunded (succeeded refunds), reserved = refunds still in flight (pending; the
--   reservation goes when they fail) and disputed = what Stripe withdrew for disputes and did not reinstate.
--   Every change of any refund or dispute of the order, made through our API or outside it, recomputes it
--   and posts the difference from what the ledger holds: one entry per change, keyed share:<order>:<n>.
--   The order's status and tickets follow from the same facts.
-- - Disputes (charge.dispute.*): the share of the withdrawn amount is debited once, the order is `disputed`
--   and its tickets void; reinstated (won): credited back, tickets valid again; lost: stays debited. Stripe's
--   dispute fee is the platform's unless private.settings.dispute_fee_bearer says 'organiser' (ADR 9).
-- - No event about our money is dropped for age: an event about a payment we have not recorded yet is
--   parked (acknowledged, kept) and applied in the transaction that records the payment; the reconciler
--   decides parked events whose payment is provably not ours by looking it up in Stripe.
-- - A refund whose look-up said "not created" but which Stripe then shows is reopened and applied.
-- - A paid session whose charge has no balance transaction yet (asynchronous capture) leaves the sale's funds
--   pending until `charge.updated` tells when they are available.

------------------------------------------------------------------------------------------------------
-- Tables
------------------------------------------------------------------------------------------------------
alter table events.orders drop constraint if exists orders_status_check;
alter table events.orders add constraint orders_status_check
  check (status in ('pending', 'paid', 'expired', 'refunded', 'partially_refunded', 'disputed'));
alter table events.orders add column if not exists disputed_cents integer not null default 0
  check (disputed_cents >= 0);

-- The share a refund debited is no longer a property of the refund: it is recomputed per order.
alter table events.refunds drop column if exists wallet_debit_cents;
alter table events.refunds drop constraint if exists refunds_status_check;
alter table events.refunds add constraint refunds_status_check
  check (status in ('pending', 'requires_action', 'succeeded', 'failed', 'canceled'));

alter table wallet.wallet_transactions drop constraint if exists wallet_transactions_type_check;
alter table wallet.wallet_transactions add constraint wallet_transactions_type_check
  check (type in ('sale', 'refund', 'payout', 'payout_reversal', 'adjustment', 'dispute', 'dispute_reversal',
    'dispute_fee'));
-- The Stripe object (or our id) whose change an entry follows.
alter table wallet.wallet_transactions add column if not exists source text;

create table if not exists events.disputes (
  id text primary key,
  order_id uuid not null references events.orders (id),
  charge text,
  amount_cents integer not null check (amount_cents > 0),
  currency text not null,
  status text not null,
  reason text,
  -- what Stripe withdrew from the platform for it and what it gave back (from the dispute's balance transactions)
  withdrawn_cents integer not null default 0 check (withdrawn_cents >= 0),
  reinstated_cents integer not null default 0 check (reinstated_cents between 0 and withdrawn_cents),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
create index if not exists disputes_order_idx on events.disputes (order_id);
alter table events.disputes enable row level security;
revoke all on table events.disputes from public, anon, authenticated, service_role;

alter table private.settings add column if not exists dispute_fee_bearer text not null default 'platform'
  check (dispute_fee_bearer in ('platform', 'organiser'));

alter table public.stripe_webhook_events add column if not exists parked_on text;
alter table public.stripe_webhook_events drop constraint if exists stripe_webhook_events_status_check;
alter table public.stripe_webhook_events add constraint stripe_webhook_events_status_check
  check (status in ('received', 'processing', 'processed', 'failed', 'parked', 'ignored'));
create index if not exists stripe_webhook_events_parked_idx
  on public.stripe_webhook_events (parked_on) where status = 'parked';

------------------------------------------------------------------------------------------------------
-- Ledger primitives
------------------------------------------------------------------------------------------------------
drop function if exists private.post_entry(uuid, text, bigint, text, uuid, uuid, uuid);
-- Appends an entry unless its key exists; keeps the wallet's total in step. True when appended.
create function private.post_entry(
  p_wallet_id uuid, p_type text, p_amount_cents bigint, p_key text,
  p_order_id uuid default null, p_refund_id uuid default null, p_payout_id uuid default null,
  p_source text default null
) returns boolean
language plpgsql security definer set search_path = '' as $$
begin
  if p_amount_cents = 0 then
    return false;
  end if;
  insert into wallet.wallet_transactions (wallet_id, type, amount_cents, idempotency_key, order_id, refund_id,
    payout_id, source)
  values (p_wallet_id, p_type, p_amount_cents, p_key, p_order_id, p_refund_id, p_payout_id, p_source)
  on conflict (idempotency_key) do nothing;
  if not found then
    return false;
  end if;
  update wallet.wallets w set entries_total_cents = w.entries_total_cents + p_amount_cents where w.id = p_wallet_id;
  return true;
end
$$;

-- The one rule: an order's status, tickets and the organiser's share of its refunds and disputes, from the
-- facts recorded about it. Locks the order; posts the difference between the share and what the ledger holds
-- (a debit or a credit back), attributed to `p_cause` ('refund' or 'dispute') and the object that changed.
create or replace function private.settle_order(
  p_order_id uuid, p_cause text, p_refund_id uuid default null, p_source text default null
) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v_order events.orders;
  v_refunded bigint;
  v_reserved bigint;
  v_disputed bigint;
  v_lost boolean;
  v_target bigint;
  v_posted bigint;
  v_delta bigint;
  v_status text;
  v_organiser uuid;
  v_wallet wallet.wallets;
  v_seq integer;
begin
  select * into v_order from events.orders o where o.id = p_order_id for update;
  if v_order.status in ('pending', 'expired') then
    return jsonb_build_object('order_id', p_order_id, 'status', v_order.status, 'changed', false);
  end if;
  select coalesce(sum(r.amount_cents) filter (where r.status = 'succeeded'), 0),
         coalesce(sum(r.amount_cents) filter (where r.status in ('pending', 'requires_action')), 0)
  into v_refunded, v_reserved
  from events.refunds r where r.order_id = p_order_id;
  select coalesce(sum(d.withdrawn_cents - d.reinstated_cents), 0), coalesce(bool_or(d.status = 'lost'), false)
  into v_disputed, v_lost
  from events.disputes d where d.order_id = p_order_id;

  v_target := floor(least(v_refunded + v_reserved + v_disputed, v_order.total_cents)::numeric
    * v_order.subtotal_cents / v_order.total_cents);
  select coalesce(-sum(t.amount_cents), 0) into v_posted from wallet.wallet_transactions t
  where t.order_id = p_order_id and t.type in ('refund', 'adjustment', 'dispute', 'dispute_reversal');
  v_status := case when v_disputed > 0 or v_lost then 'disputed'
                   when v_refunded >= v_order.total_cents then 'refunded'
                   when v_refunded > 0 then 'partially_refunded'
                   else 'paid' end;

  update events.orders o
  set refunded_cents = least(v_refunded, o.total_cents), disputed_cents = v_disputed, status = v_status,
      updated_at = now()
  where o.id = p_order_id
    and (o.refunded_cents, o.disputed_cents, o.status) is distinct from (least(v_refunded, o.total_cents), v_disputed::integer, v_status);
  update events.tickets k
  set status = case when v_status in ('paid', 'partially_refunded') then 'valid' else 'void' end
  where k.order_id = p_order_id
    and k.status <> case when v_status in ('paid', 'partially_refunded') then 'valid' else 'void' end;

  v_delta := v_posted - v_target;
  if v_delta <> 0 then
    select e.organiser_id into v_organiser from events.events e where e.id = v_order.event_id;
    v_wallet := private.lock_wallet(v_organiser, v_order.currency);
    select count(*) + 1 into v_seq from wallet.wallet_transactions t
    where t.order_id = p_order_id and t.idempotency_key like 'share:%';
    perform private.post_entry(v_wallet.id,
      case when p_cause = 'dispute' then case when v_delta < 0 then 'dispute' else 'dispute_reversal' end
           else case when v_delta < 0 then 'refund' else 'adjustment' end end,
      v_delta, 'share:' || p_order_id || ':' || v_seq, p_order_id, p_refund_id, null, p_source);
  end if;
  return jsonb_build_object('order_id', p_order_id, 'status', v_status, 'refunded_cents', v_refunded,
    'reserved_cents', v_reserved, 'disputed_cents', v_disputed, 'share_cents', v_target, 'posted_cents', v_delta);
end
$$;

------------------------------------------------------------------------------------------------------
-- Refunds
------------------------------------------------------------------------------------------------------
drop function if exists private.open_refund(events.orders, integer, text, uuid, text, text, text, uuid, integer);
-- Opens a refund of an order (locked by the caller) and settles the order's share.
create function private.open_refund(
  p_order events.orders, p_amount_cents integer, p_reason text, p_requested_by uuid,
  p_scope text, p_idempotency_key text, p_stripe_refund_id text, p_refund_id uuid default null,
  p_requested_amount_cents integer default null, p_status text default 'pending'
) returns uuid
language plpgsql security definer set search_path = '' as $$
declare
  v_refund_id uuid;
begin
  insert into events.refunds (id, order_id, amount_cents, requested_amount_cents, reason, status, requested_by,
    idempotency_scope, idempotency_key, stripe_refund_id)
  values (coalesce(p_refund_id, gen_random_uuid()), p_order.id, p_amount_cents, p_requested_amount_cents,
    -- the object may carry a reason the API does not take on create (expired_uncaptured_charge)
    case when p_reason in ('duplicate', 'fraudulent', 'requested_by_customer') then p_reason end,
    p_status, p_requested_by, p_scope, p_idempotency_key, p_stripe_refund_id)
  returning id into v_refund_id;
  perform private.settle_order(p_order.id, 'refund', v_refund_id, coalesce(p_stripe_refund_id, v_refund_id::text));
  return v_refund_id;
end
$$;

-- Applies Stripe's status for one of our refunds, idempotently, then settles its order. A failed or canceled
-- refund stays so, unless it failed only because a look-up found no refund (`not_created`) and Stripe now
-- shows it: then it is reopened, its operation completed with the object, and its effect applied.
create or replace function private.apply_refund_status(p_refund_id uuid, p_status text, p_stripe_refund_id text)
returns void
language plpgsql security definer set search_path = '' as $$
declare
  v_refund events.refunds;
  v_reopen boolean := false;
begin
  -- the order first, as every path that changes an order's money does
  perform 1 from events.orders o join events.refunds r on r.order_id = o.id where r.id = p_refund_id for update of o;
  select * into v_refund from events.refunds r where r.id = p_refund_id for update;
  if v_refund.id is null or p_status not in ('pending', 'requires_action', 'succeeded', 'failed', 'canceled') then
    return;
  end if;
  if v_refund.status in ('failed', 'canceled') and p_status in ('pending', 'requires_action', 'succeeded') then
    select coalesce(k.error ->> 'type' = 'not_created', false) into v_reopen from public.stripe_idempotency_keys k
    where k.operation_type = 'refund:create' and k.operation_id = p_refund_id::text;
    if not coalesce(v_reopen, false) then
      return;
    end if;
    update public.stripe_idempotency_keys k
    set status = 'completed', stripe_resource_id = p_stripe_refund_id, error = null, updated_at = now(),
        response = jsonb_build_object('id', p_stripe_refund_id, 'status', p_status),
        last_error = 'reopened: a look-up had found no refund, Stripe then showed ' || p_stripe_refund_id
    where k.operation_type = 'refund:create' and k.operation_id = p_refund_id::text;
  elsif v_refund.status in ('failed', 'canceled') then
    return;
  end if;
  update events.refunds r
  set status = p_status, stripe_refund_id = coalesce(r.stripe_refund_id, p_stripe_refund_id), updated_at = now()
  where r.id = p_refund_id;
  perform private.settle_order(v_refund.order_id, 'refund', p_refund_id, coalesce(p_stripe_refund_id, p_refund_id::text));
end
$$;

-- A Stripe refund object: one of ours (by metadata or id), one made outside our API (the dashboard: recorded
-- against its order), or about a payment we have not recorded yet (parked until we do).
create or replace function private.record_stripe_refund(p_refund jsonb) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v_refund_id uuid;
  v_order events.orders;
  v_meta text := p_refund -> 'metadata' ->> 'refund_id';
begin
  if v_meta ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' then
    select r.id into v_refund_id from events.refunds r where r.id = v_meta::uuid;
  end if;
  if v_refund_id is null then
    select r.id into v_refund_id from events.refunds r where r.stripe_refund_id = p_refund ->> 'id';
  end if;
  if v_refund_id is null then
    select o.* into v_order from events.orders o where o.stripe_payment_intent_id = p_refund ->> 'payment_intent'
    for update;
    if not found or v_order.status in ('pending', 'expired') then
      return jsonb_build_object('park', coalesce(p_refund ->> 'payment_intent', p_refund ->> 'charge'));
    end if;
    -- lock order, then look again: a concurrent delivery of the same refund may have recorded it meanwhile
    select r.id into v_refund_id from events.refunds r where r.stripe_refund_id = p_refund ->> 'id';
    if v_refund_id is null then
      v_refund_id := private.open_refund(v_order, (p_refund ->> 'amount')::integer, p_refund ->> 'reason', null, null,
        null, p_refund ->> 'id', null, null, 'pending');
    end if;
  end if;
  perform private.apply_refund_status(v_refund_id, p_refund ->> 'status', p_refund ->> 'id');
  return jsonb_build_object('refund_id', v_refund_id, 'status', p_refund ->> 'status');
end
$$;

------------------------------------------------------------------------------------------------------
-- Disputes
------------------------------------------------------------------------------------------------------

-- A Stripe dispute object, from any charge.dispute.* event: recorded against its order (parked when the
-- payment is not recorded yet), with what Stripe withdrew and reinstated, then the order settled.
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
  if v_reinstated = 0 and (p_type = 'charge.dispute.funds_reinstated' or v_status = 'won') then
    v_reinstated := v_withdrawn;
  end if;

  insert into events.disputes as d (id, order_id, charge, amount_cents, currency, status, reason, withdrawn_cents,
    reinstated_cents)
  values (p_dispute ->> 'id', v_order.id, p_dispute ->> 'charge', v_amount, coalesce(p_dispute ->> 'currency',
    v_order.currency), v_status, p_dispute ->> 'reason', v_withdrawn, least(v_reinstated, v_withdrawn))
  on conflict (id) do update
  set withdrawn_cents = greatest(d.withdrawn_cents, excluded.withdrawn_cents),
      reinstated_cents = least(greatest(d.reinstated_cents, excluded.reinstated_cents),
        greatest(d.withdrawn_cents, excluded.withdrawn_cents)),
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

------------------------------------------------------------------------------------------------------
-- Payments, their funds, and the events parked until a payment is recorded
------------------------------------------------------------------------------------------------------

-- Applies the events parked on `p_keys` (a payment intent, a charge) in the order Stripe created them; one
-- that fails stays parked with its error, for the reconciler to try again.
create or replace function private.apply_parked_events(p_keys text[]) returns integer
language plpgsql security definer set search_path = '' as $$
declare
  v_event public.stripe_webhook_events;
  v_effect jsonb;
  v_applied integer := 0;
  v_state text;
  v_message text;
begin
  for v_event in
    select * from public.stripe_webhook_events w
    where w.status = 'parked' and w.parked_on = any(p_keys)
    order by (w.payload_snapshot ->> 'created')::bigint, w.received_at
    for update
  loop
    begin
      v_effect := private.apply_stripe_event(v_event.event_type, v_event.payload_snapshot -> 'data' -> 'object', null);
      if v_effect ? 'park' then
        continue;
      end if;
      update public.stripe_webhook_events w
      set status = 'processed', success = true, parked_on = null, error_message = null, processed_at = now(),
          updated_at = now()
      where w.stripe_event_id = v_event.stripe_event_id;
      v_applied := v_applied + 1;
    exception when others then
      get stacked diagnostics v_state = returned_sqlstate, v_message = message_text;
      update public.stripe_webhook_events w set error_message = left(v_state || ': ' || v_message, 2000),
        updated_at = now()
      where w.stripe_event_id = v_event.stripe_event_id;
    end;
  end loop;
  return v_applied;
end
$$;

-- When the charge's funds become available at Stripe: its balance transaction's `available_on`; unknown
-- ('infinity': pending) while Stripe has not made the balance transaction yet (asynchronous capture).
create or replace function private.funds_available_at(p_charge jsonb) returns timestamptz
language sql immutable security definer set search_path = '' as $$
  select case when jsonb_typeof(p_charge -> 'balance_transaction') = 'object'
              then to_timestamp((p_charge -> 'balance_transaction' ->> 'available_on')::bigint)
              else 'infinity'::timestamptz end
$$;

drop function if exists public.complete_order_payment(uuid, text, text, integer, jsonb);
-- A paid order: tickets issued, holds consumed, the organiser credited once, the charge and its funds'
-- availability kept, and the events that waited for this payment applied. Called by the webhook.
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
      funds_available_at = private.funds_available_at(p_charge),
      oversold = v_late and exists (select from events.order_items i join events.ticket_tiers t on t.id = i.tier_id
        where i.order_id = p_order_id and t.sold + t.held > t.capacity)
  where o.id = p_order_id
  returning * into v_order;

  select * into v_event from events.events e where e.id = v_order.event_id;
  v_wallet := private.lock_wallet(v_event.organiser_id, v_order.currency);
  perform private.post_entry(v_wallet.id, 'sale', v_order.subtotal_cents, 'sale:' || p_order_id, p_order_id, null,
    null, v_order.stripe_charge_id);
  return jsonb_build_object('order_id', v_order.id, 'status', 'paid', 'changed', true, 'oversold', v_order.oversold,
    'parked_applied', private.apply_parked_events(array_remove(array[p_payment_intent_id, v_order.stripe_charge_id], null)));
end
$$;

-- A charge whose balance transaction Stripe made later (`charge.updated`): when the sale's funds will be
-- available, if that was not known yet.
create or replace function private.record_charge_funds(p_charge jsonb) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v_order_id uuid;
begin
  update events.orders o set funds_available_at = private.funds_available_at(p_charge), updated_at = now()
  where (o.stripe_charge_id = p_charge ->> 'id' or o.stripe_payment_intent_id = p_charge ->> 'payment_intent')
    and o.funds_available_at = 'infinity' and private.funds_available_at(p_charge) <> 'infinity'
  returning o.id into v_order_id;
  return jsonb_build_object('order_id', v_order_id, 'funds_known', v_order_id is not null);
end
$$;

-- An organiser wallet's funds, as in migration 20261128000400, with funds whose availability is not known
-- yet counted as pending, and `available_at` null when no known date makes `p_amount` available.
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
    nullif((select min(x.at) from (
       select p.at, sum(p.amount_cents) over (order by p.at) as released from pending p) as x
     where t.total - t.pending + x.released >= p_amount), 'infinity')
  from totals t
$$;

------------------------------------------------------------------------------------------------------
-- Events
------------------------------------------------------------------------------------------------------

-- One event's effect, by type. An effect `{"park": <payment>}` asks for the event to wait for that payment.
create or replace function private.apply_stripe_event(p_type text, p_object jsonb, p_charge jsonb) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v_order_id uuid;
  v_refund jsonb;
  v_results jsonb := '[]'::jsonb;
  v_effect jsonb;
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

  case
    when p_type in ('checkout.session.completed', 'checkout.session.async_payment_succeeded') then
      if p_object ->> 'payment_status' <> 'paid' then
        return jsonb_build_object('ignored', 'payment_status is ' || coalesce(p_object ->> 'payment_status', 'null'));
      end if;
      return public.complete_order_payment(v_order_id, p_object ->> 'id', p_object ->> 'payment_intent',
        (p_object ->> 'amount_total')::integer, p_charge);
    when p_type in ('checkout.session.expired', 'checkout.session.async_payment_failed') then
      return jsonb_build_object('order_id', v_order_id, 'expired', private.expire_order(v_order_id));
    when p_type in ('refund.created', 'refund.updated', 'refund.failed') then
      return private.record_stripe_refund(p_object);
    when p_type = 'charge.refunded' then
      -- the charge lists its refunds only where Stripe includes them (not since 2022-11-15); refund.* events
      -- carry each one too
      for v_refund in select * from jsonb_array_elements(coalesce(p_object -> 'refunds' -> 'data', '[]')) loop
        v_effect := private.record_stripe_refund(v_refund);
        if v_effect ? 'park' then
          return v_effect;
        end if;
        v_results := v_results || v_effect;
      end loop;
      return jsonb_build_object('refunds', v_results);
    when p_type = 'charge.updated' then
      return private.record_charge_funds(coalesce(p_charge, p_object));
    when p_type like 'charge.dispute.%' then
      return private.record_stripe_dispute(p_type, p_object);
    when p_type = 'transfer.reversed' then
      return private.record_transfer_reversal(p_object);
    else
      return jsonb_build_object('ignored', 'event type not handled');
  end case;
end
$$;

-- One delivery: claim (one upsert; a processed, parked or ignored event is a duplicate), effect, outcome.
create or replace function public.handle_stripe_event(p_event jsonb, p_charge jsonb default null) returns jsonb
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
    where w.status not in ('processed', 'parked', 'ignored')
  returning w.attempts into v_attempts;
  if not found then
    return jsonb_build_object('event_id', v_id, 'status', 'duplicate');
  end if;

  begin
    v_effect := private.apply_stripe_event(p_event ->> 'type', p_event -> 'data' -> 'object', p_charge);
    if v_effect ? 'park' then
      update public.stripe_webhook_events w
      set status = 'parked', parked_on = v_effect ->> 'park', error_message = null, updated_at = now()
      where w.stripe_event_id = v_id;
      return jsonb_build_object('event_id', v_id, 'status', 'parked', 'attempts', v_attempts, 'effect', v_effect);
    end if;
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

-- Parked events waiting for a payment for a while, for the reconciler to ask Stripe whose payment it is.
create or replace function public.claim_parked_events(p_older_than_seconds integer default 600, p_limit integer default 50)
returns jsonb
language sql stable security definer set search_path = '' as $$
  select coalesce(jsonb_agg(jsonb_build_object('event_id', w.stripe_event_id, 'type', w.event_type,
    'parked_on', w.parked_on) order by w.received_at), '[]')
  from (select * from public.stripe_webhook_events w
        where w.status = 'parked' and w.received_at < now() - make_interval(secs => p_older_than_seconds)
        order by w.received_at limit least(greatest(p_limit, 1), 500)) as w
$$;

-- The reconciler's verdict on a parked event after looking its payment up in Stripe: `ignored` when the
-- payment is provably not ours (no order of ours in its metadata); else it is applied if its payment is
-- recorded by now, and stays parked otherwise.
create or replace function public.settle_parked_event(p_event_id text, p_ours boolean) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v_event public.stripe_webhook_events;
begin
  select * into v_event from public.stripe_webhook_events w where w.stripe_event_id = p_event_id and w.status = 'parked'
  for update;
  if not found then
    return jsonb_build_object('event_id', p_event_id, 'status', 'not parked');
  end if;
  if not p_ours then
    update public.stripe_webhook_events w
    set status = 'ignored', success = true, processed_at = now(), updated_at = now(),
        error_message = 'payment ' || v_event.parked_on || ' is not one of ours (looked up in Stripe)'
    where w.stripe_event_id = p_event_id;
    return jsonb_build_object('event_id', p_event_id, 'status', 'ignored');
  end if;
  perform private.apply_parked_events(array[v_event.parked_on]);
  return jsonb_build_object('event_id', p_event_id, 'status',
    (select w.status from public.stripe_webhook_events w where w.stripe_event_id = p_event_id));
end
$$;

------------------------------------------------------------------------------------------------------
-- get_order, with disputes
------------------------------------------------------------------------------------------------------
create or replace function public.get_order(p_order_id uuid) returns jsonb
language plpgsql stable security definer set search_path = '' as $$
declare
  v_result jsonb;
begin
  select jsonb_build_object(
    'order_id', o.id, 'event_id', o.event_id, 'status', o.status, 'currency', o.currency,
    'subtotal_cents', o.subtotal_cents, 'fee_cents', o.fee_cents, 'total_cents', o.total_cents,
    'refunded_cents', o.refunded_cents, 'disputed_cents', o.disputed_cents,
    'ticket_count', (select count(*) from events.tickets k where k.order_id = o.id and k.status = 'valid'),
    'created_at', o.created_at, 'paid_at', o.paid_at)
  into v_result
  from events.orders o join events.events e on e.id = o.event_id
  where o.id = p_order_id and auth.uid() is not null and (o.buyer_id = auth.uid() or e.organiser_id = auth.uid());
  if v_result is null then
    raise exception 'Order % not found', p_order_id using errcode = 'PT404', hint = 'order-not-found';
  end if;
  return v_result;
end
$$;

------------------------------------------------------------------------------------------------------
-- Grants
------------------------------------------------------------------------------------------------------
revoke execute on function
  private.post_entry(uuid, text, bigint, text, uuid, uuid, uuid, text),
  private.settle_order(uuid, text, uuid, text),
  private.open_refund(events.orders, integer, text, uuid, text, text, text, uuid, integer, text),
  private.record_stripe_dispute(text, jsonb),
  private.apply_parked_events(text[]),
  private.funds_available_at(jsonb),
  private.record_charge_funds(jsonb)
from public, anon, authenticated, service_role;

revoke execute on function
  public.complete_order_payment(uuid, text, text, integer, jsonb),
  public.claim_parked_events(integer, integer),
  public.settle_parked_event(text, boolean)
from public, anon, authenticated;
grant execute on function
  public.complete_order_payment(uuid, text, text, integer, jsonb),
  public.claim_parked_events(integer, integer),
  public.settle_parked_event(text, boolean)
to service_role;
