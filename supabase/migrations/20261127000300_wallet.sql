-- Organiser money: the wallet ledger, payments credited to it, refunds and payouts.
--
-- Charges land on the platform (separate charges and transfers). Each organiser has a wallet per
-- currency; `wallet.wallet_transactions` is append-only, one entry per money movement, unique on its
-- idempotency key:
--   sale            +subtotal of a paid order                       key sale:<order id>
--   refund          -the organiser's share of a refund              key refund:<refund id>
--   payout          -a payout, when it is requested                 key payout:<payout id>
--   payout_reversal +a payout that failed or that Stripe reversed   key payout_reversal:<payout id>[:<reversal>]
--   adjustment      +a refund debit given back (the refund failed)  key refund_reversal:<refund id>
-- A wallet's `entries_total_cents` is the sum of its entries, kept in the same transaction as each entry.
-- Reported: available = entries total; pending payouts = payouts in flight (already debited);
-- balance = available + pending payouts, so that available = balance - payouts in flight and, with no
-- payout in flight, balance = the sum of the entries.

create schema if not exists wallet;
revoke all on schema wallet from public, anon, authenticated;

create table if not exists wallet.wallets (
  id uuid primary key default gen_random_uuid(),
  organiser_id uuid not null references auth.users (id),
  currency text not null check (currency ~ '^[a-z]{3}$'),
  entries_total_cents bigint not null default 0,
  pending_payout_cents bigint not null default 0 check (pending_payout_cents >= 0),
  created_at timestamptz not null default now(),
  unique (organiser_id, currency)
);

create table if not exists wallet.wallet_transactions (
  id bigint generated always as identity primary key,
  wallet_id uuid not null references wallet.wallets (id),
  type text not null check (type in ('sale', 'refund', 'payout', 'payout_reversal', 'adjustment')),
  amount_cents bigint not null check (amount_cents <> 0),
  idempotency_key text not null unique,
  order_id uuid,
  refund_id uuid,
  payout_id uuid,
  created_at timestamptz not null default now()
);
create index if not exists wallet_transactions_wallet_idx on wallet.wallet_transactions (wallet_id);

create table if not exists wallet.payouts (
  id uuid primary key default gen_random_uuid(),
  organiser_id uuid not null references auth.users (id),
  wallet_id uuid not null references wallet.wallets (id),
  amount_cents bigint not null check (amount_cents > 0),
  currency text not null,
  destination text not null,
  status text not null default 'pending' check (status in ('pending', 'paid', 'failed', 'reversed')),
  stripe_transfer_id text unique,
  reversed_cents bigint not null default 0 check (reversed_cents between 0 and amount_cents),
  idempotency_scope text not null,
  idempotency_key text not null,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (idempotency_scope, idempotency_key)
);

create table if not exists events.refunds (
  id uuid primary key default gen_random_uuid(),
  order_id uuid not null references events.orders (id),
  amount_cents integer not null check (amount_cents > 0),
  -- what the request asked for (null: all that was refundable), to recognise a resent request
  requested_amount_cents integer,
  -- the organiser's share, debited from the wallet when the refund is requested
  wallet_debit_cents integer not null check (wallet_debit_cents >= 0),
  reason text check (reason in ('duplicate', 'fraudulent', 'requested_by_customer')),
  status text not null default 'pending' check (status in ('pending', 'succeeded', 'failed', 'canceled')),
  stripe_refund_id text unique,
  requested_by uuid references auth.users (id),
  idempotency_scope text,
  idempotency_key text,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (idempotency_scope, idempotency_key)
);
create index if not exists refunds_order_idx on events.refunds (order_id);

do $$
declare
  t text;
begin
  foreach t in array array['wallet.wallets', 'wallet.wallet_transactions', 'wallet.payouts', 'events.refunds'] loop
    execute format('alter table %s enable row level security', t);
    execute format('revoke all on table %s from public, anon, authenticated, service_role', t);
  end loop;
end
$$;

-- The ledger is append-only, for its owner too.
create or replace function private.refuse_ledger_change() returns trigger
language plpgsql security definer set search_path = '' as $$
begin
  raise exception 'wallet_transactions is append-only: % refused', tg_op using errcode = '42501';
end
$$;
drop trigger if exists wallet_transactions_append_only on wallet.wallet_transactions;
create trigger wallet_transactions_append_only before update or delete on wallet.wallet_transactions
  for each row execute function private.refuse_ledger_change();

------------------------------------------------------------------------------------------------------
-- Ledger primitives
------------------------------------------------------------------------------------------------------

-- The organiser's wallet in a currency, created on first use and locked for this transaction.
create or replace function private.lock_wallet(p_organiser_id uuid, p_currency text) returns wallet.wallets
language plpgsql security definer set search_path = '' as $$
declare
  v_wallet wallet.wallets;
begin
  insert into wallet.wallets (organiser_id, currency) values (p_organiser_id, p_currency)
  on conflict (organiser_id, currency) do nothing;
  select * into v_wallet from wallet.wallets w
  where w.organiser_id = p_organiser_id and w.currency = p_currency
  for update;
  return v_wallet;
end
$$;

-- Appends an entry unless its key exists; keeps the wallet's total in step. True when appended.
create or replace function private.post_entry(
  p_wallet_id uuid, p_type text, p_amount_cents bigint, p_key text,
  p_order_id uuid default null, p_refund_id uuid default null, p_payout_id uuid default null
) returns boolean
language plpgsql security definer set search_path = '' as $$
begin
  if p_amount_cents = 0 then
    return false;
  end if;
  insert into wallet.wallet_transactions (wallet_id, type, amount_cents, idempotency_key, order_id, refund_id, payout_id)
  values (p_wallet_id, p_type, p_amount_cents, p_key, p_order_id, p_refund_id, p_payout_id)
  on conflict (idempotency_key) do nothing;
  if not found then
    return false;
  end if;
  update wallet.wallets w set entries_total_cents = w.entries_total_cents + p_amount_cents where w.id = p_wallet_id;
  return true;
end
$$;

------------------------------------------------------------------------------------------------------
-- A paid order: tickets issued, holds consumed, the organiser credited once (the webhook calls this)
------------------------------------------------------------------------------------------------------
create or replace function public.complete_order_payment(
  p_order_id uuid,
  p_stripe_session_id text,
  p_payment_intent_id text,
  p_amount_total integer
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

------------------------------------------------------------------------------------------------------
-- Refunds
------------------------------------------------------------------------------------------------------
create or replace function private.refund_json(p_refund_id uuid) returns jsonb
language sql stable security definer set search_path = '' as $$
  select jsonb_build_object(
    'refund_id', r.id, 'order_id', r.order_id, 'amount_cents', r.amount_cents, 'reason', r.reason,
    'status', r.status, 'stripe_refund_id', r.stripe_refund_id, 'payment_intent', o.stripe_payment_intent_id,
    'order_status', o.status, 'currency', o.currency)
  from events.refunds r join events.orders o on o.id = r.order_id
  where r.id = p_refund_id
$$;

-- Opens a refund of an order (locked by the caller): the row and the organiser's pro-rata debit.
-- The organiser bears refunds pro rata to the subtotal: after each refund its cumulative debit is
-- floor(refunded x subtotal / total), so a full refund debits exactly the subtotal and the debits
-- never exceed the sale credit.
create or replace function private.open_refund(
  p_order events.orders, p_amount_cents integer, p_reason text, p_requested_by uuid,
  p_scope text, p_idempotency_key text, p_stripe_refund_id text, p_refund_id uuid default null,
  p_requested_amount_cents integer default null
) returns uuid
language plpgsql security definer set search_path = '' as $$
declare
  v_in_flight integer;
  v_debited integer;
  v_share integer;
  v_refund_id uuid;
  v_organiser uuid;
  v_wallet wallet.wallets;
begin
  select coalesce(sum(r.amount_cents), 0), coalesce(sum(r.wallet_debit_cents), 0) into v_in_flight, v_debited
  from events.refunds r where r.order_id = p_order.id and r.status in ('pending', 'succeeded');
  v_share := greatest(0, least(
    floor(least(v_in_flight + p_amount_cents, p_order.total_cents)::numeric * p_order.subtotal_cents / p_order.total_cents)::integer
      - floor(least(v_in_flight, p_order.total_cents)::numeric * p_order.subtotal_cents / p_order.total_cents)::integer,
    p_order.subtotal_cents - v_debited));
  insert into events.refunds (id, order_id, amount_cents, requested_amount_cents, wallet_debit_cents, reason,
    requested_by, idempotency_scope, idempotency_key, stripe_refund_id)
  values (coalesce(p_refund_id, gen_random_uuid()), p_order.id, p_amount_cents, p_requested_amount_cents, v_share,
    p_reason, p_requested_by, p_scope, p_idempotency_key, p_stripe_refund_id)
  returning id into v_refund_id;
  select e.organiser_id into v_organiser from events.events e where e.id = p_order.event_id;
  v_wallet := private.lock_wallet(v_organiser, p_order.currency);
  perform private.post_entry(v_wallet.id, 'refund', -v_share, 'refund:' || v_refund_id, p_order.id, v_refund_id);
  return v_refund_id;
end
$$;

-- The Stripe operation of a business row (a refund, a payout), claimed in the caller's transaction. The
-- business row decides first: with its Stripe object it answers as a replay of it, settled without one it
-- is closed. Only a row created in this same transaction may create its operation (and so a Stripe key);
-- an older row's operation is claimed only if it still exists, locked against a concurrent purge. A row
-- whose operation is gone without a result needs a person: nothing is ever sent again with a new key.
create or replace function private.claim_row_operation(
  p_operation_type text, p_operation_id uuid, p_stripe_idempotency_key text, p_params jsonb, p_user_id uuid,
  p_lease_seconds integer, p_stripe_resource_id text, p_settled boolean, p_new boolean
) returns jsonb
language plpgsql security definer set search_path = '' as $$
begin
  if p_stripe_resource_id is not null then
    return jsonb_build_object('outcome', 'replay', 'status', 'completed', 'stripe_resource_id', p_stripe_resource_id,
      'response', jsonb_build_object('id', p_stripe_resource_id));
  end if;
  if p_settled then
    raise exception '% % was settled without a Stripe object', p_operation_type, p_operation_id
      using errcode = 'PT409', hint = 'operation-closed';
  end if;
  if not p_new then
    perform 1 from public.stripe_idempotency_keys k
    where k.operation_type = p_operation_type and k.operation_id = p_operation_id::text
    for update;
    if not found then
      raise exception '% % has no record of its Stripe call; an operator must settle it', p_operation_type,
        p_operation_id using errcode = 'PT409', hint = 'operation-needs-attention';
    end if;
  end if;
  return public.claim_stripe_operation(p_operation_type, p_operation_id::text, p_stripe_idempotency_key, p_params,
    p_user_id, '{}', p_lease_seconds);
end
$$;

-- The Stripe parameters of a refund: from its row and its order, nothing from the request.
create or replace function private.refund_params(p_refund_id uuid) returns jsonb
language sql stable security definer set search_path = '' as $$
  select jsonb_strip_nulls(jsonb_build_object(
    'payment_intent', o.stripe_payment_intent_id, 'amount', r.amount_cents, 'reason', r.reason,
    'metadata', jsonb_build_object('refund_id', r.id, 'order_id', r.order_id)))
  from events.refunds r join events.orders o on o.id = r.order_id
  where r.id = p_refund_id
$$;

-- Requests a refund of a paid order: the organiser of its event or a platform admin; all or part of what
-- is still refundable (paid - refunded - refunds in flight), under the order's row lock. Creates the
-- refund (pending), debits the organiser's share from the wallet and claims the Stripe refund, in this
-- one transaction: there is no moment when a refund exists without its claimed operation.
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

-- Applies Stripe's status for a refund, idempotently: succeeded counts on the order (a full refund voids
-- its tickets); failed or canceled gives the organiser's debit back, and undoes the count if the refund
-- had succeeded before (a bank can refuse a refund later; voided tickets stay void).
create or replace function private.apply_refund_status(p_refund_id uuid, p_status text, p_stripe_refund_id text)
returns void
language plpgsql security definer set search_path = '' as $$
declare
  v_refund events.refunds;
  v_order events.orders;
  v_organiser uuid;
  v_wallet wallet.wallets;
  v_refunded integer;
begin
  select * into v_refund from events.refunds r where r.id = p_refund_id for update;
  update events.refunds r set stripe_refund_id = coalesce(r.stripe_refund_id, p_stripe_refund_id), updated_at = now()
  where r.id = p_refund_id;
  if p_status is not distinct from v_refund.status or p_status not in ('succeeded', 'failed', 'canceled')
     or v_refund.status in ('failed', 'canceled') then
    return;
  end if;
  update events.refunds r set status = p_status where r.id = p_refund_id;
  select * into v_order from events.orders o where o.id = v_refund.order_id for update;
  v_refunded := v_order.refunded_cents + case
    when p_status = 'succeeded' then v_refund.amount_cents
    when v_refund.status = 'succeeded' then -v_refund.amount_cents
    else 0 end;
  update events.orders o
  set refunded_cents = v_refunded,
      status = case when v_refunded = o.total_cents then 'refunded' when v_refunded > 0 then 'partially_refunded'
                    else 'paid' end,
      updated_at = now()
  where o.id = v_order.id;
  if v_refunded = v_order.total_cents then
    update events.tickets k set status = 'void' where k.order_id = v_order.id;
  end if;
  if p_status <> 'succeeded' then
    select e.organiser_id into v_organiser from events.events e where e.id = v_order.event_id;
    v_wallet := private.lock_wallet(v_organiser, v_order.currency);
    perform private.post_entry(v_wallet.id, 'adjustment', v_refund.wallet_debit_cents, 'refund_reversal:' || p_refund_id,
      v_order.id, p_refund_id);
  end if;
end
$$;

create or replace function public.complete_refund(p_refund_id uuid, p_fencing_token bigint, p_result jsonb)
returns jsonb
language plpgsql security definer set search_path = '' as $$
begin
  perform public.complete_stripe_operation('refund:create', p_refund_id::text, p_fencing_token, p_result ->> 'id', p_result);
  perform private.apply_refund_status(p_refund_id, p_result ->> 'status', p_result ->> 'id');
  return private.refund_json(p_refund_id);
end
$$;

create or replace function public.fail_refund(p_refund_id uuid, p_fencing_token bigint, p_error jsonb)
returns jsonb
language plpgsql security definer set search_path = '' as $$
begin
  perform public.fail_stripe_operation('refund:create', p_refund_id::text, p_fencing_token, p_error);
  perform private.apply_refund_status(p_refund_id, 'failed', null);
  return private.refund_json(p_refund_id);
end
$$;

------------------------------------------------------------------------------------------------------
-- Payouts
------------------------------------------------------------------------------------------------------
create or replace function private.payout_json(p_payout_id uuid) returns jsonb
language sql stable security definer set search_path = '' as $$
  select jsonb_build_object('payout_id', p.id, 'amount_cents', p.amount_cents, 'currency', p.currency,
    'destination', p.destination, 'status', p.status, 'stripe_transfer_id', p.stripe_transfer_id)
  from wallet.payouts p where p.id = p_payout_id
$$;

-- The Stripe parameters of a payout's transfer: from its row, nothing from the request.
create or replace function private.payout_params(p_payout_id uuid) returns jsonb
language sql stable security definer set search_path = '' as $$
  select jsonb_build_object('amount', p.amount_cents, 'currency', p.currency, 'destination', p.destination,
    'transfer_group', 'payout_' || p.id, 'metadata', jsonb_build_object('payout_id', p.id))
  from wallet.payouts p where p.id = p_payout_id
$$;

-- Requests a payout of available balance to the organiser's connected account: under the wallet's row
-- lock, amount <= available; creates the payout (pending) and its debit, and claims the Stripe transfer,
-- in this one transaction.
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
    select s.payout_minimum_cents into v_minimum from private.settings s;
    if p_amount_cents is null or p_amount_cents < v_minimum then
      raise exception 'A payout must be at least % cents', v_minimum using errcode = 'PT400', hint = 'validation',
        detail = jsonb_build_object('errors', jsonb_build_array(jsonb_build_object('field', 'amount_cents',
          'message', format('at least %s', v_minimum))))::text;
    end if;

    v_wallet := private.lock_wallet(p_organiser_id, lower(p_currency));
    if p_amount_cents > v_wallet.entries_total_cents then
      raise exception 'Cannot pay out % cents: % cents are available', p_amount_cents,
        greatest(v_wallet.entries_total_cents, 0) using errcode = 'PT409', hint = 'insufficient-funds',
        detail = jsonb_build_object('requested_cents', p_amount_cents,
          'available_cents', greatest(v_wallet.entries_total_cents, 0))::text;
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

-- Settles a payout in flight: paid (the transfer exists) or failed (its debit is reversed). Idempotent.
create or replace function private.settle_payout(p_payout_id uuid, p_status text, p_transfer_id text) returns void
language plpgsql security definer set search_path = '' as $$
declare
  v_payout wallet.payouts;
begin
  select * into v_payout from wallet.payouts p where p.id = p_payout_id for update;
  if v_payout.status <> 'pending' then
    return;
  end if;
  perform private.lock_wallet(v_payout.organiser_id, v_payout.currency);
  update wallet.payouts p set status = p_status, stripe_transfer_id = p_transfer_id, updated_at = now()
  where p.id = p_payout_id;
  update wallet.wallets w set pending_payout_cents = w.pending_payout_cents - v_payout.amount_cents
  where w.id = v_payout.wallet_id;
  if p_status = 'failed' then
    perform private.post_entry(v_payout.wallet_id, 'payout_reversal', v_payout.amount_cents,
      'payout_reversal:' || p_payout_id, null, null, p_payout_id);
  end if;
end
$$;

create or replace function public.complete_payout(p_payout_id uuid, p_fencing_token bigint, p_result jsonb)
returns jsonb
language plpgsql security definer set search_path = '' as $$
begin
  perform public.complete_stripe_operation('payout:create', p_payout_id::text, p_fencing_token, p_result ->> 'id', p_result);
  perform private.settle_payout(p_payout_id, 'paid', p_result ->> 'id');
  return private.payout_json(p_payout_id);
end
$$;

create or replace function public.fail_payout(p_payout_id uuid, p_fencing_token bigint, p_error jsonb)
returns jsonb
language plpgsql security definer set search_path = '' as $$
begin
  perform public.fail_stripe_operation('payout:create', p_payout_id::text, p_fencing_token, p_error);
  perform private.settle_payout(p_payout_id, 'failed', null);
  return private.payout_json(p_payout_id);
end
$$;

------------------------------------------------------------------------------------------------------
-- get_wallet: the calling organiser's wallet
------------------------------------------------------------------------------------------------------
create or replace function public.get_wallet(p_currency text default 'usd') returns jsonb
language sql stable security definer set search_path = '' as $$
  select jsonb_build_object(
    'currency', lower(p_currency),
    'balance_cents', coalesce(w.entries_total_cents + w.pending_payout_cents, 0),
    'available_cents', greatest(coalesce(w.entries_total_cents, 0), 0),
    'pending_payout_cents', coalesce(w.pending_payout_cents, 0))
  from (select 1) as one
  left join wallet.wallets w on w.organiser_id = auth.uid() and w.currency = lower(p_currency)
$$;

------------------------------------------------------------------------------------------------------
-- Grants
------------------------------------------------------------------------------------------------------
revoke execute on function
  private.refuse_ledger_change(),
  private.open_refund(events.orders, integer, text, uuid, text, text, text, uuid, integer),
  private.claim_row_operation(text, uuid, text, jsonb, uuid, integer, text, boolean, boolean),
  private.refund_params(uuid),
  private.payout_params(uuid),
  private.lock_wallet(uuid, text),
  private.post_entry(uuid, text, bigint, text, uuid, uuid, uuid),
  private.refund_json(uuid),
  private.apply_refund_status(uuid, text, text),
  private.payout_json(uuid),
  private.settle_payout(uuid, text, text)
from public, anon, authenticated, service_role;

revoke execute on function
  public.complete_order_payment(uuid, text, text, integer),
  public.create_refund(text, text, uuid, text, uuid, uuid, boolean, integer, text, integer),
  public.complete_refund(uuid, bigint, jsonb),
  public.fail_refund(uuid, bigint, jsonb),
  public.create_payout(text, text, uuid, text, uuid, bigint, text, integer),
  public.complete_payout(uuid, bigint, jsonb),
  public.fail_payout(uuid, bigint, jsonb),
  public.get_wallet(text)
from public, anon, authenticated;

revoke execute on function public.get_wallet(text) from service_role;
grant execute on function public.get_wallet(text) to authenticated;
grant execute on function
  public.complete_order_payment(uuid, text, text, integer),
  public.create_refund(text, text, uuid, text, uuid, uuid, boolean, integer, text, integer),
  public.complete_refund(uuid, bigint, jsonb),
  public.fail_refund(uuid, bigint, jsonb),
  public.create_payout(text, text, uuid, text, uuid, bigint, text, integer),
  public.complete_payout(uuid, bigint, jsonb),
  public.fail_payout(uuid, bigint, jsonb)
to service_role;
