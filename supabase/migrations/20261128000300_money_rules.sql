-- Money rules of the real API (docs.stripe.com/currencies; stripe@23.1.0 types):
-- - the currencies the platform settles in, each with Stripe's minimum charge and the platform's flat
--   service fee and payout minimum in its own minor units (a zero-decimal currency counts whole units);
--   supabase/functions/_shared/stripe_contract.ts CURRENCIES is the same list (a test holds them equal);
-- - an order totals at least the currency's minimum charge and at most 99,999,999 minor units, checked
--   before Stripe with a 422 that names the limits; events sell only in settled currencies;
-- - a refund `reason: fraudulent` (which adds the card and email to Stripe's block lists) is for platform
--   admins only;
-- - holds (and so a Checkout Session's `expires_at`) stay within Stripe's 24 hours.

create table if not exists private.currencies (
  code text primary key check (code ~ '^[a-z]{3}$'),
  exponent smallint not null check (exponent in (0, 2, 3)),
  minimum_charge integer not null check (minimum_charge > 0),
  service_fee_flat integer not null check (service_fee_flat >= 0),
  payout_minimum integer not null check (payout_minimum > 0)
);
alter table private.currencies enable row level security;
revoke all on table private.currencies from public, anon, authenticated, service_role;

-- usd keeps the flat fee and payout minimum the settings held so far; the others are set here.
insert into private.currencies (code, exponent, minimum_charge, service_fee_flat, payout_minimum)
select 'usd', 2, 50, s.service_fee_flat_cents, s.payout_minimum_cents from private.settings s
on conflict (code) do nothing;
insert into private.currencies (code, exponent, minimum_charge, service_fee_flat, payout_minimum) values
  ('eur', 2, 50, 179, 100),
  ('gbp', 2, 30, 149, 100),
  ('cad', 2, 50, 229, 100),
  ('aud', 2, 50, 249, 100),
  ('jpy', 0, 50, 250, 150)
on conflict (code) do nothing;

-- The flat fee now lives with its currency.
alter table private.settings drop column if exists service_fee_flat_cents;
drop function if exists private.service_fee_cents(integer);

-- Stripe's largest amount in one charge, refund or transfer: eight digits in minor units.
create or replace function private.max_amount() returns bigint
language sql immutable security definer set search_path = '' as $$
  select 99999999::bigint
$$;

-- The buyer's service fee in the currency's minor units: percent of the subtotal rounded half up (round() on
-- numeric rounds halves away from zero), plus the currency's flat fee per order.
create or replace function private.service_fee(p_subtotal bigint, p_currency private.currencies) returns bigint
language sql stable security definer set search_path = '' as $$
  select round(p_subtotal * s.service_fee_percent / 100)::bigint + p_currency.service_fee_flat
  from private.settings s
$$;

-- A Checkout Session expires at most 24 hours after it is created (Checkout/Sessions.d.ts, expires_at);
-- the hold ends with it.
alter table private.settings drop constraint if exists settings_hold_within_stripe_window;
alter table private.settings add constraint settings_hold_within_stripe_window
  check (hold_minutes * 60 + hold_grace_seconds <= 86400);

create or replace function private.begin_checkout(
  p_scope text,
  p_idempotency_key text,
  p_order_id uuid,
  p_event_id uuid,
  p_items jsonb,
  p_buyer_id uuid default null,
  p_guest_email text default null,
  p_client_ip text default null
) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v_settings private.settings;
  v_event events.events;
  v_order_id uuid;
  v_item record;
  v_currency private.currencies;
  v_subtotal bigint := 0;
  v_fee bigint;
  v_expires timestamptz;
  v_count integer;
  v_distinct integer;
begin
  if (p_buyer_id is null) = (p_guest_email is null) then
    raise exception 'A checkout needs a buyer or a guest email, not both' using errcode = '22023';
  end if;

  -- A retry of the same request (same caller, same Idempotency-Key) gets the same order.
  select o.id into v_order_id from events.orders o
  where o.idempotency_scope = p_scope and o.idempotency_key = p_idempotency_key;
  if found then
    if exists (select from events.orders o where o.id = v_order_id and o.event_id is distinct from p_event_id)
       or (select jsonb_agg(jsonb_build_array(i.tier_id, i.quantity) order by i.tier_id) from events.order_items i
           where i.order_id = v_order_id)
          is distinct from (select jsonb_agg(jsonb_build_array(x.tier_id, x.quantity) order by x.tier_id)
           from jsonb_to_recordset(p_items) as x (tier_id uuid, quantity integer)) then
      raise exception 'This Idempotency-Key was used for another checkout' using errcode = 'PT422',
        hint = 'idempotency-key-reused';
    end if;
    -- Long after the request's own key expired, the same key must not open a paid or expired order again.
    if exists (select from events.orders o where o.id = v_order_id and o.status <> 'pending') then
      raise exception 'The checkout of order % is closed', v_order_id using errcode = 'PT409', hint = 'checkout-closed',
        detail = jsonb_build_object('order_id', v_order_id)::text;
    end if;
    return private.order_json(v_order_id) || jsonb_build_object('replayed', true);
  end if;

  select * into v_settings from private.settings;
  if p_guest_email is not null then
    perform private.take_rate_limit('email:' || encode(sha256(convert_to(lower(p_guest_email), 'UTF8')), 'hex'),
      v_settings.guest_checkouts_per_email_per_minute);
    perform private.take_rate_limit('ip:' || coalesce(p_client_ip, 'unknown'), v_settings.guest_checkouts_per_ip_per_minute);
  end if;

  select * into v_event from events.events e where e.id = p_event_id;
  if not found then
    raise exception 'Event % does not exist', p_event_id using errcode = 'PT404', hint = 'event-not-found';
  end if;
  if not v_event.on_sale then
    raise exception 'Event % is not on sale', p_event_id using errcode = 'PT409', hint = 'event-not-on-sale';
  end if;
  if v_event.starts_at <= now() then
    raise exception 'Event % has already started', p_event_id using errcode = 'PT410', hint = 'event-started';
  end if;
  select * into v_currency from private.currencies c where c.code = v_event.currency;
  if not found then
    raise exception 'Event % sells in %, which the platform does not settle', p_event_id, v_event.currency
      using errcode = 'PT409', hint = 'currency-not-supported',
      detail = jsonb_build_object('currency', v_event.currency)::text;
  end if;

  if jsonb_typeof(p_items) <> 'array' or jsonb_array_length(p_items) = 0 then
    raise exception 'Choose at least one ticket tier' using errcode = 'PT400', hint = 'validation',
      detail = '{"errors": [{"field": "items", "message": "at least one item"}]}';
  end if;
  select count(*), count(distinct x.tier_id) into v_count, v_distinct
  from jsonb_to_recordset(p_items) as x (tier_id uuid, quantity integer);
  if v_count <> v_distinct then
    raise exception 'Each tier may appear once' using errcode = 'PT400', hint = 'validation',
      detail = '{"errors": [{"field": "items", "message": "each tier_id at most once"}]}';
  end if;

  for v_item in
    select e.idx - 1 as idx, (e.item ->> 'tier_id')::uuid as tier_id, (e.item ->> 'quantity')::integer as quantity,
      t.id as found_id, t.event_id, t.name, t.max_per_order
    from jsonb_array_elements(p_items) with ordinality as e (item, idx)
    left join events.ticket_tiers t on t.id = (e.item ->> 'tier_id')::uuid
    order by e.idx
  loop
    if v_item.found_id is null or v_item.event_id <> p_event_id then
      raise exception 'Tier % is not a tier of event %', v_item.tier_id, p_event_id
        using errcode = 'PT404', hint = 'tier-not-found';
    end if;
    if v_item.quantity is null or v_item.quantity < 1 or v_item.quantity > v_item.max_per_order then
      raise exception 'At most % tickets of % per order', v_item.max_per_order, v_item.name
        using errcode = 'PT400', hint = 'validation', detail = jsonb_build_object('errors', jsonb_build_array(
          jsonb_build_object('field', format('items[%s].quantity', v_item.idx),
            'message', format('between 1 and %s', v_item.max_per_order))))::text;
    end if;
  end loop;

  -- Lock the tiers in a fixed order (no deadlocks between buyers of the same tiers), then check capacity.
  for v_item in
    select t.id, t.name, t.price_cents, t.capacity, t.held, t.sold, x.quantity
    from events.ticket_tiers t join jsonb_to_recordset(p_items) as x (tier_id uuid, quantity integer) on x.tier_id = t.id
    order by t.id
    for update of t
  loop
    if v_item.sold + v_item.held + v_item.quantity > v_item.capacity then
      raise exception 'Only % tickets of % are left', greatest(v_item.capacity - v_item.sold - v_item.held, 0), v_item.name
        using errcode = 'PT409', hint = 'sold-out', detail = jsonb_build_object('tier_id', v_item.id,
          'available', greatest(v_item.capacity - v_item.sold - v_item.held, 0))::text;
    end if;
    v_subtotal := v_subtotal + v_item.price_cents::bigint * v_item.quantity;
  end loop;

  v_fee := private.service_fee(v_subtotal, v_currency);
  -- Stripe's limits for one charge in this currency (docs.stripe.com/currencies#minimum-and-maximum-charge-amounts)
  if v_subtotal + v_fee not between v_currency.minimum_charge and private.max_amount() then
    raise exception 'An order must total between % and % (minor units of %), this one totals %',
      v_currency.minimum_charge, private.max_amount(), v_currency.code, v_subtotal + v_fee
      using errcode = 'PT422', hint = 'amount-out-of-range',
      detail = jsonb_build_object('total', v_subtotal + v_fee, 'minimum', v_currency.minimum_charge,
        'maximum', private.max_amount(), 'currency', v_currency.code)::text;
  end if;
  v_expires := date_trunc('second', now())
    + make_interval(mins => v_settings.hold_minutes, secs => v_settings.hold_grace_seconds);
  insert into events.orders (id, event_id, buyer_id, guest_email, currency, subtotal_cents, fee_cents, total_cents,
    idempotency_scope, idempotency_key, hold_expires_at)
  values (p_order_id, p_event_id, p_buyer_id, lower(p_guest_email), v_event.currency, v_subtotal::integer, v_fee,
    (v_subtotal + v_fee)::integer, p_scope, p_idempotency_key, v_expires)
  returning id into v_order_id;

  insert into events.order_items (order_id, tier_id, quantity, unit_price_cents)
  select v_order_id, t.id, x.quantity, t.price_cents
  from jsonb_to_recordset(p_items) as x (tier_id uuid, quantity integer) join events.ticket_tiers t on t.id = x.tier_id;
  insert into events.holds (order_id, tier_id, quantity, expires_at)
  select v_order_id, x.tier_id, x.quantity, v_expires from jsonb_to_recordset(p_items) as x (tier_id uuid, quantity integer);
  update events.ticket_tiers t set held = t.held + x.quantity
  from jsonb_to_recordset(p_items) as x (tier_id uuid, quantity integer) where t.id = x.tier_id;

  return private.order_json(v_order_id) || jsonb_build_object('replayed', false);
end
$$;

create or replace function public.create_event(
  p_title text,
  p_starts_at timestamptz,
  p_tiers jsonb,
  p_currency text default 'usd',
  p_on_sale boolean default true,
  p_idempotency_key text default null
) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v_organiser uuid := auth.uid();
  v_event events.events;
  v_tier jsonb;
begin
  if v_organiser is null or auth.role() <> 'authenticated' then
    raise exception 'Sign in to create an event' using errcode = 'PT401', hint = 'unauthenticated';
  end if;
  if p_starts_at is null or p_starts_at <= now() then
    raise exception 'An event must start in the future' using errcode = 'PT400', hint = 'validation',
      detail = '{"errors": [{"field": "p_starts_at", "message": "must be in the future"}]}';
  end if;
  if not exists (select from private.currencies c where c.code = lower(p_currency)) then
    raise exception 'The platform does not settle %', p_currency using errcode = 'PT400', hint = 'validation',
      detail = jsonb_build_object('errors', jsonb_build_array(jsonb_build_object('field', 'p_currency',
        'message', 'one of ' || (select string_agg(c.code, ', ' order by c.code) from private.currencies c))))::text;
  end if;
  if jsonb_typeof(p_tiers) <> 'array' or jsonb_array_length(p_tiers) not between 1 and 20 then
    raise exception 'An event needs 1 to 20 ticket tiers' using errcode = 'PT400', hint = 'validation',
      detail = '{"errors": [{"field": "p_tiers", "message": "1 to 20 tiers"}]}';
  end if;

  if p_idempotency_key is not null then
    select * into v_event from events.events e
    where e.organiser_id = v_organiser and e.idempotency_key = p_idempotency_key;
    if found then
      if v_event.title <> p_title or v_event.starts_at <> p_starts_at or v_event.currency <> lower(p_currency) then
        raise exception 'This idempotency key created another event' using errcode = 'PT422',
          hint = 'idempotency-key-reused';
      end if;
      return private.event_json(v_event.id) || jsonb_build_object('replayed', true);
    end if;
  end if;

  insert into events.events (organiser_id, title, currency, starts_at, on_sale, idempotency_key)
  values (v_organiser, p_title, lower(p_currency), p_starts_at, coalesce(p_on_sale, true), p_idempotency_key)
  on conflict (organiser_id, idempotency_key) where idempotency_key is not null do nothing
  returning * into v_event;
  if not found then
    -- a concurrent call with the same key won: answer with its event
    select * into v_event from events.events e
    where e.organiser_id = v_organiser and e.idempotency_key = p_idempotency_key;
    return private.event_json(v_event.id) || jsonb_build_object('replayed', true);
  end if;

  for v_tier in select * from jsonb_array_elements(p_tiers) loop
    if (v_tier ->> 'price_cents')::bigint > private.max_amount() then
      raise exception 'A ticket may cost at most % minor units', private.max_amount() using errcode = 'PT400',
        hint = 'validation', detail = jsonb_build_object('errors', jsonb_build_array(jsonb_build_object(
          'field', 'p_tiers', 'message', format('price_cents at most %s', private.max_amount()))))::text;
    end if;
    insert into events.ticket_tiers (event_id, name, price_cents, capacity, max_per_order)
    values (v_event.id, v_tier ->> 'name', (v_tier ->> 'price_cents')::integer, (v_tier ->> 'capacity')::integer,
      coalesce((v_tier ->> 'max_per_order')::integer, 10));
  end loop;
  return private.event_json(v_event.id) || jsonb_build_object('replayed', false);
end
$$;

create or replace function public.create_refund(
  p_scope text,
  p_idempotency_key text,
  p_refund_id uuid,
  p_stripe_idempotency_key text,
  p_order_id uuid,
  p_requested_by uuid,
  p_is_admin boolean default false,
  p_amount_cents integer default null,
  p_reason text default null,
  p_lease_seconds integer default 60
) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v_order events.orders;
  v_refund events.refunds;
  v_organiser uuid;
  v_in_flight integer;
  v_refundable integer;
  v_amount integer;
begin
  select * into v_refund from events.refunds r
  where r.idempotency_scope = p_scope and r.idempotency_key = p_idempotency_key;
  if found then
    if v_refund.order_id <> p_order_id or p_amount_cents is distinct from v_refund.requested_amount_cents
       or p_reason is distinct from v_refund.reason then
      raise exception 'This Idempotency-Key was used for another refund' using errcode = 'PT422',
        hint = 'idempotency-key-reused';
    end if;
  else
    select o.* into v_order from events.orders o where o.id = p_order_id for update;
    select e.organiser_id into v_organiser from events.events e where e.id = v_order.event_id;
    -- Whoever may not refund it does not learn whether the order exists.
    if v_order.id is null or not (coalesce(p_is_admin, false) or v_organiser = p_requested_by) then
      raise exception 'Order % not found', p_order_id using errcode = 'PT404', hint = 'order-not-found';
    end if;
    -- `fraudulent` adds the card and the email to the platform's Stripe block lists (`Refunds.d.ts`, reason):
    -- a platform decision, not an organiser's.
    if p_reason = 'fraudulent' and not coalesce(p_is_admin, false) then
      raise exception 'Only a platform admin may refund as fraudulent' using errcode = 'PT403', hint = 'forbidden',
        detail = '{"errors": [{"field": "reason", "message": "fraudulent is for platform admins"}]}';
    end if;
    if v_order.status not in ('paid', 'partially_refunded') then
      raise exception 'Order % is %, not paid', p_order_id, v_order.status
        using errcode = 'PT409', hint = 'order-not-refundable';
    end if;
    if p_amount_cents is not null and p_amount_cents <= 0 then
      raise exception 'A refund must be at least 1 cent' using errcode = 'PT400', hint = 'validation',
        detail = '{"errors": [{"field": "amount_cents", "message": "must be positive"}]}';
    end if;

    select coalesce(sum(r.amount_cents), 0) into v_in_flight
    from events.refunds r where r.order_id = p_order_id and r.status in ('pending', 'succeeded');
    v_refundable := v_order.total_cents - v_in_flight;
    v_amount := coalesce(p_amount_cents, v_refundable);
    if v_amount > v_refundable or v_amount <= 0 then
      raise exception 'Cannot refund % cents of order %: % cents are refundable (paid %, refunded or in flight %)',
        v_amount, p_order_id, v_refundable, v_order.total_cents, v_in_flight
        using errcode = 'PT409', hint = 'refund-exceeds-refundable',
        detail = jsonb_build_object('requested_cents', v_amount, 'refundable_cents', v_refundable,
          'paid_cents', v_order.total_cents, 'refunded_or_in_flight_cents', v_in_flight)::text;
    end if;
    perform private.open_refund(v_order, v_amount, p_reason, p_requested_by, p_scope, p_idempotency_key, null,
      p_refund_id, p_amount_cents);
    select * into v_refund from events.refunds r where r.id = p_refund_id;
  end if;

  return jsonb_build_object(
    'refund', private.refund_json(v_refund.id),
    'stripe', private.claim_row_operation('refund:create', v_refund.id, p_stripe_idempotency_key,
      private.refund_params(v_refund.id), p_requested_by, p_lease_seconds, v_refund.stripe_refund_id,
      v_refund.status <> 'pending', v_refund.id = p_refund_id));
end
$$;


revoke execute on function
  private.max_amount(),
  private.service_fee(bigint, private.currencies)
from public, anon, authenticated, service_role;
