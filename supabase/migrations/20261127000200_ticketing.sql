-- Ticketing: events, tiers, orders, holds, tickets and organisers' payout accounts, in the `events`
-- schema, which the Data API does not expose. Prices, capacity and fees are decided here and only here:
-- a client never sends an amount that is read.

create schema if not exists events;
revoke all on schema events from public, anon, authenticated;

------------------------------------------------------------------------------------------------------
-- Settings: one row
------------------------------------------------------------------------------------------------------
create table if not exists private.settings (
  id boolean primary key default true check (id),
  service_fee_percent numeric(5, 2) not null default 3.70 check (service_fee_percent between 0 and 50),
  service_fee_flat_cents integer not null default 179 check (service_fee_flat_cents >= 0),
  -- A hold lasts this long after the Checkout Session is created; Stripe's minimum is 30 minutes.
  hold_minutes integer not null default 30 check (hold_minutes between 30 and 1440),
  -- Holds also cover the time between reserving and creating the session, so that the session's
  -- expires_at (= the hold's end) is still at least hold_minutes away when Stripe receives it.
  hold_grace_seconds integer not null default 120 check (hold_grace_seconds between 0 and 3600),
  guest_checkouts_per_email_per_minute integer not null default 10 check (guest_checkouts_per_email_per_minute > 0),
  guest_checkouts_per_ip_per_minute integer not null default 30 check (guest_checkouts_per_ip_per_minute > 0),
  payout_minimum_cents integer not null default 100 check (payout_minimum_cents > 0)
);
insert into private.settings default values on conflict do nothing;
alter table private.settings enable row level security;
revoke all on table private.settings from public, anon, authenticated, service_role;

------------------------------------------------------------------------------------------------------
-- Catalogue
------------------------------------------------------------------------------------------------------
create table if not exists events.events (
  id uuid primary key default gen_random_uuid(),
  organiser_id uuid not null references auth.users (id),
  title text not null check (length(title) between 1 and 200),
  currency text not null default 'usd' check (currency ~ '^[a-z]{3}$'),
  starts_at timestamptz not null,
  on_sale boolean not null default false,
  idempotency_key text check (idempotency_key ~ '^[[:graph:]]{1,255}$'),
  created_at timestamptz not null default now()
);
create unique index if not exists events_organiser_idempotency_key_idx
  on events.events (organiser_id, idempotency_key) where idempotency_key is not null;
create index if not exists events_organiser_idx on events.events (organiser_id);

create table if not exists events.ticket_tiers (
  id uuid primary key default gen_random_uuid(),
  event_id uuid not null references events.events (id),
  name text not null check (length(name) between 1 and 100),
  price_cents integer not null check (price_cents > 0),
  capacity integer not null check (capacity > 0),
  max_per_order integer not null default 10 check (max_per_order between 1 and 100),
  -- Kept in the same transactions as the holds and tickets they count, under the tier's row lock.
  held integer not null default 0 check (held >= 0),
  sold integer not null default 0 check (sold >= 0),
  unique (event_id, name)
);

------------------------------------------------------------------------------------------------------
-- Orders
------------------------------------------------------------------------------------------------------
create table if not exists events.orders (
  id uuid primary key default gen_random_uuid(),
  event_id uuid not null references events.events (id),
  buyer_id uuid references auth.users (id),
  guest_email text,
  status text not null default 'pending'
    check (status in ('pending', 'paid', 'expired', 'refunded', 'partially_refunded')),
  currency text not null,
  subtotal_cents integer not null check (subtotal_cents > 0),
  fee_cents integer not null check (fee_cents >= 0),
  total_cents integer not null check (total_cents = subtotal_cents + fee_cents),
  refunded_cents integer not null default 0 check (refunded_cents between 0 and total_cents),
  -- The caller's Idempotency-Key: a retry of the same request finds this order.
  idempotency_scope text not null,
  idempotency_key text not null,
  hold_expires_at timestamptz not null,
  stripe_session_id text unique,
  stripe_payment_intent_id text unique,
  -- A payment that arrived after the hold was released may sell beyond capacity; it is honoured and flagged.
  oversold boolean not null default false,
  created_at timestamptz not null default now(),
  paid_at timestamptz,
  updated_at timestamptz not null default now(),
  unique (idempotency_scope, idempotency_key),
  check (buyer_id is not null or guest_email is not null)
);
create index if not exists orders_event_idx on events.orders (event_id);
create index if not exists orders_buyer_idx on events.orders (buyer_id) where buyer_id is not null;

create table if not exists events.order_items (
  order_id uuid not null references events.orders (id),
  tier_id uuid not null references events.ticket_tiers (id),
  quantity integer not null check (quantity > 0),
  unit_price_cents integer not null check (unit_price_cents > 0),
  primary key (order_id, tier_id)
);

create table if not exists events.holds (
  id uuid primary key default gen_random_uuid(),
  order_id uuid not null references events.orders (id),
  tier_id uuid not null references events.ticket_tiers (id),
  quantity integer not null check (quantity > 0),
  expires_at timestamptz not null,
  status text not null default 'active' check (status in ('active', 'consumed', 'released')),
  unique (order_id, tier_id)
);
create index if not exists holds_active_expiry_idx on events.holds (expires_at) where status = 'active';

create table if not exists events.tickets (
  id uuid primary key default gen_random_uuid(),
  order_id uuid not null references events.orders (id),
  tier_id uuid not null references events.ticket_tiers (id),
  status text not null default 'valid' check (status in ('valid', 'void')),
  created_at timestamptz not null default now()
);
create index if not exists tickets_order_idx on events.tickets (order_id);

create table if not exists events.payout_accounts (
  organiser_id uuid primary key references auth.users (id),
  stripe_account_id text not null unique check (stripe_account_id ~ '^acct_[A-Za-z0-9_]+$'),
  payouts_enabled boolean not null default false,
  created_at timestamptz not null default now()
);

-- Guest checkout rate limits: a counter per bucket (a hashed email, a client address) and minute.
create table if not exists private.rate_limits (
  bucket text not null,
  window_start timestamptz not null,
  hits integer not null,
  primary key (bucket, window_start)
);

do $$
declare
  t text;
begin
  foreach t in array array['events.events', 'events.ticket_tiers', 'events.orders', 'events.order_items',
    'events.holds', 'events.tickets', 'events.payout_accounts', 'private.rate_limits'] loop
    execute format('alter table %s enable row level security', t);
    execute format('revoke all on table %s from public, anon, authenticated, service_role', t);
  end loop;
end
$$;

------------------------------------------------------------------------------------------------------
-- Pricing
------------------------------------------------------------------------------------------------------

-- The buyer's service fee in integer cents: percent of the subtotal rounded half up to the cent (PostgreSQL's
-- round() on numeric rounds halves away from zero), plus the flat fee per order.
create or replace function private.service_fee_cents(p_subtotal_cents integer) returns integer
language sql stable security definer set search_path = '' as $$
  select (round(p_subtotal_cents * s.service_fee_percent / 100) + s.service_fee_flat_cents)::integer
  from private.settings s
$$;

------------------------------------------------------------------------------------------------------
-- create_event: for a signed-in organiser, idempotent on the organiser's key
------------------------------------------------------------------------------------------------------
create or replace function private.event_json(p_event_id uuid) returns jsonb
language sql stable security definer set search_path = '' as $$
  select jsonb_build_object(
    'id', e.id, 'organiser_id', e.organiser_id, 'title', e.title, 'currency', e.currency,
    'starts_at', e.starts_at, 'on_sale', e.on_sale,
    'tiers', coalesce((select jsonb_agg(jsonb_build_object('id', t.id, 'name', t.name, 'price_cents', t.price_cents,
      'capacity', t.capacity, 'max_per_order', t.max_per_order) order by t.price_cents, t.name)
      from events.ticket_tiers t where t.event_id = e.id), '[]'))
  from events.events e where e.id = p_event_id
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
    insert into events.ticket_tiers (event_id, name, price_cents, capacity, max_per_order)
    values (v_event.id, v_tier ->> 'name', (v_tier ->> 'price_cents')::integer, (v_tier ->> 'capacity')::integer,
      coalesce((v_tier ->> 'max_per_order')::integer, 10));
  end loop;
  return private.event_json(v_event.id) || jsonb_build_object('replayed', false);
end
$$;

------------------------------------------------------------------------------------------------------
-- begin_checkout: one transaction creates the order and holds its tickets (called by start_checkout)
------------------------------------------------------------------------------------------------------
create or replace function private.order_json(p_order_id uuid) returns jsonb
language sql stable security definer set search_path = '' as $$
  select jsonb_build_object(
    'order_id', o.id, 'event_id', o.event_id, 'event_title', e.title, 'status', o.status,
    'currency', o.currency, 'subtotal_cents', o.subtotal_cents, 'fee_cents', o.fee_cents,
    'total_cents', o.total_cents, 'expires_at', o.hold_expires_at, 'buyer_email', o.guest_email,
    'stripe_session_id', o.stripe_session_id,
    'items', (select jsonb_agg(jsonb_build_object('tier_id', i.tier_id, 'name', t.name, 'quantity', i.quantity,
        'unit_price_cents', i.unit_price_cents) order by t.price_cents, t.name)
      from events.order_items i join events.ticket_tiers t on t.id = i.tier_id where i.order_id = o.id))
  from events.orders o join events.events e on e.id = o.event_id
  where o.id = p_order_id
$$;

-- Counts one more hit on `p_bucket` in the current minute; raises 429 past `p_limit`.
create or replace function private.take_rate_limit(p_bucket text, p_limit integer) returns void
language plpgsql security definer set search_path = '' as $$
declare
  v_window timestamptz := date_trunc('minute', now());
  v_hits integer;
begin
  insert into private.rate_limits as r (bucket, window_start, hits) values (p_bucket, v_window, 1)
  on conflict (bucket, window_start) do update set hits = r.hits + 1
  returning r.hits into v_hits;
  if v_hits > p_limit then
    raise exception 'Too many checkouts; try again in a minute' using errcode = 'PT429', hint = 'rate-limited',
      detail = jsonb_build_object('retry_after',
        greatest(1, ceil(extract(epoch from v_window + interval '1 minute' - now()))::integer))::text;
  end if;
end
$$;

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
  v_subtotal integer := 0;
  v_fee integer;
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
    v_subtotal := v_subtotal + v_item.price_cents * v_item.quantity;
  end loop;

  v_fee := private.service_fee_cents(v_subtotal);
  v_expires := date_trunc('second', now())
    + make_interval(mins => v_settings.hold_minutes, secs => v_settings.hold_grace_seconds);
  insert into events.orders (id, event_id, buyer_id, guest_email, currency, subtotal_cents, fee_cents, total_cents,
    idempotency_scope, idempotency_key, hold_expires_at)
  values (p_order_id, p_event_id, p_buyer_id, lower(p_guest_email), v_event.currency, v_subtotal, v_fee,
    v_subtotal + v_fee, p_scope, p_idempotency_key, v_expires)
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

-- Releases an order's active holds (the order expired or its session could not be created).
create or replace function private.release_holds(p_order_id uuid) returns void
language plpgsql security definer set search_path = '' as $$
declare
  v_hold record;
begin
  for v_hold in
    select h.id, h.tier_id, h.quantity from events.holds h
    join events.ticket_tiers t on t.id = h.tier_id
    where h.order_id = p_order_id and h.status = 'active'
    order by h.tier_id
    for update of h, t
  loop
    update events.holds set status = 'released' where id = v_hold.id;
    update events.ticket_tiers set held = held - v_hold.quantity where id = v_hold.tier_id;
  end loop;
end
$$;

-- An unpaid order whose hold ran out (or whose session expired): expired, holds back on sale.
create or replace function private.expire_order(p_order_id uuid) returns boolean
language plpgsql security definer set search_path = '' as $$
begin
  perform 1 from events.orders o where o.id = p_order_id and o.status = 'pending' for update;
  if not found then
    return false;
  end if;
  perform private.release_holds(p_order_id);
  update events.orders o set status = 'expired', updated_at = now() where o.id = p_order_id;
  return true;
end
$$;

-- Records the Checkout Session of an order with the Stripe operation that created it (one transaction).
create or replace function public.complete_checkout_session(
  p_order_id uuid,
  p_fencing_token bigint,
  p_result jsonb
) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v_session_id text := p_result ->> 'id';
  v_current text;
begin
  perform public.complete_stripe_operation('checkout:create', p_order_id::text, p_fencing_token, v_session_id, p_result);
  update events.orders o set stripe_session_id = v_session_id, updated_at = now()
  where o.id = p_order_id and o.stripe_session_id is null;
  select o.stripe_session_id into v_current from events.orders o where o.id = p_order_id;
  if v_current is distinct from v_session_id then
    raise exception 'Order % already has Checkout Session %, not %', p_order_id, v_current, v_session_id
      using errcode = 'PT409';
  end if;
  return private.order_json(p_order_id);
end
$$;

-- Stripe refused to create the session for good: the order cannot be paid, its holds go back on sale.
create or replace function public.fail_checkout_session(
  p_order_id uuid,
  p_fencing_token bigint,
  p_error jsonb
) returns jsonb
language plpgsql security definer set search_path = '' as $$
begin
  perform public.fail_stripe_operation('checkout:create', p_order_id::text, p_fencing_token, p_error);
  perform private.expire_order(p_order_id);
  return private.order_json(p_order_id);
end
$$;

------------------------------------------------------------------------------------------------------
-- get_order: the buyer, or the organiser of the order's event; nobody else learns it exists
------------------------------------------------------------------------------------------------------
create or replace function public.get_order(p_order_id uuid) returns jsonb
language plpgsql stable security definer set search_path = '' as $$
declare
  v_result jsonb;
begin
  select jsonb_build_object(
    'order_id', o.id, 'event_id', o.event_id, 'status', o.status, 'currency', o.currency,
    'subtotal_cents', o.subtotal_cents, 'fee_cents', o.fee_cents, 'total_cents', o.total_cents,
    'refunded_cents', o.refunded_cents,
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
  private.service_fee_cents(integer),
  private.event_json(uuid),
  private.order_json(uuid),
  private.take_rate_limit(text, integer),
  private.release_holds(uuid),
  private.expire_order(uuid),
  private.begin_checkout(text, text, uuid, uuid, jsonb, uuid, text, text)
from public, anon, authenticated, service_role;

revoke execute on function
  public.create_event(text, timestamptz, jsonb, text, boolean, text),
  public.complete_checkout_session(uuid, bigint, jsonb),
  public.fail_checkout_session(uuid, bigint, jsonb),
  public.get_order(uuid)
from public, anon, authenticated;

-- The signed-in users' RPCs: authenticated only (not even the service role, which has no use for them).
revoke execute on function public.create_event(text, timestamptz, jsonb, text, boolean, text), public.get_order(uuid)
from service_role;
grant execute on function public.create_event(text, timestamptz, jsonb, text, boolean, text) to authenticated;
grant execute on function public.get_order(uuid) to authenticated;
grant execute on function
  public.complete_checkout_session(uuid, bigint, jsonb),
  public.fail_checkout_session(uuid, bigint, jsonb)
to service_role;
