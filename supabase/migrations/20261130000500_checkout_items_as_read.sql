-- Red team of migration 20261130000400 (a checkout takes its seats last):
-- 1. begin_checkout summed the prices it read without a lock, then inserted the order's items with the
--    prices a later statement read again. A price changed in between (a guest waits there for the event's
--    rate-limit bucket behind another guest's checkout) made an order whose items, and so its Checkout
--    Session, charge another total than the order's: the session was created for the new prices and the
--    checkout ended in a 500. The items now carry the prices the subtotal counted.
-- 2. The items' and holds' inserts took FOR KEY SHARE on the tiers (their foreign keys) in the order the
--    rows came (the table's physical order through a hash join), before take_seats locks them in id order;
--    expiring or completing an order locks its tiers FOR UPDATE in id order, which waits for KEY SHARE: a
--    checkout and an expiry of an order of the same two tiers could each wait for the other (a deadlock,
--    tests/redteam_final.test.ts). The rows are now inserted in tier id order.
-- Otherwise as in migration 20261130000400.

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
  v_lines jsonb := '[]';
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

  -- Without a lock: a tier already sold out is refused at once; private.take_seats decides at the end.
  for v_item in
    select t.id, t.name, t.price_cents, t.capacity, t.held, t.sold, x.quantity
    from events.ticket_tiers t join jsonb_to_recordset(p_items) as x (tier_id uuid, quantity integer) on x.tier_id = t.id
    order by t.id
  loop
    if v_item.sold + v_item.held + v_item.quantity > v_item.capacity then
      raise exception 'Only % tickets of % are left', greatest(v_item.capacity - v_item.sold - v_item.held, 0), v_item.name
        using errcode = 'PT409', hint = 'sold-out', detail = jsonb_build_object('tier_id', v_item.id,
          'available', greatest(v_item.capacity - v_item.sold - v_item.held, 0))::text;
    end if;
    v_subtotal := v_subtotal + v_item.price_cents::bigint * v_item.quantity;
    v_lines := v_lines || jsonb_build_object('tier_id', v_item.id, 'quantity', v_item.quantity,
      'unit_price_cents', v_item.price_cents);
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

  -- The prices read above, the ones the subtotal counted (not read again: a price changed since must not
  -- make items that add up to another total), inserted in tier id order: each row's foreign key takes
  -- FOR KEY SHARE on its tier, and in id order, as every other writer of the tiers locks them, no deadlock.
  insert into events.order_items (order_id, tier_id, quantity, unit_price_cents)
  select v_order_id, x.tier_id, x.quantity, x.unit_price_cents
  from jsonb_to_recordset(v_lines) as x (tier_id uuid, quantity integer, unit_price_cents integer)
  order by x.tier_id;
  insert into events.holds (order_id, tier_id, quantity, expires_at)
  select v_order_id, x.tier_id, x.quantity, v_expires
  from jsonb_to_recordset(v_lines) as x (tier_id uuid, quantity integer)
  order by x.tier_id;

  return private.order_json(v_order_id) || jsonb_build_object('replayed', false);
end
$$;
