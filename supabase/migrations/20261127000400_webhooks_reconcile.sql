-- Stripe webhooks (at-least-once, concurrent, out of order) and the reconciler, converging on
-- exactly-once effects.
--
-- A delivery is one RPC, handle_stripe_event: it claims the event (one upsert, which also serialises
-- concurrent duplicates on the event's row), applies its effect in a subtransaction, and records the
-- outcome. A failure is stored with its error and leaves the event eligible for the next delivery.
-- Every effect is idempotent per Stripe object (order, refund, payout), not only per event id.

------------------------------------------------------------------------------------------------------
-- The events table: the old plan's, adopted in place
------------------------------------------------------------------------------------------------------
create table if not exists public.stripe_webhook_events (
  stripe_event_id text primary key,
  event_type text not null,
  object_id text,
  payload_snapshot jsonb,
  status text not null default 'received',
  attempts integer not null default 0,
  error_message text,
  success boolean,
  received_at timestamptz not null default now(),
  processed_at timestamptz,
  updated_at timestamptz not null default now()
);

alter table public.stripe_webhook_events
  add column if not exists object_id text,
  add column if not exists status text,
  add column if not exists attempts integer,
  add column if not exists error_message text,
  add column if not exists success boolean,
  add column if not exists received_at timestamptz,
  add column if not exists processed_at timestamptz,
  add column if not exists updated_at timestamptz;

-- Old rows: success = true was handled; anything else was not, and stays eligible for redelivery.
update public.stripe_webhook_events
set status = case when success then 'processed' else 'failed' end,
    attempts = coalesce(attempts, 1),
    received_at = coalesce(received_at, processed_at, now()),
    updated_at = coalesce(updated_at, processed_at, now())
where status is null;

alter table public.stripe_webhook_events
  alter column status set default 'received',
  alter column status set not null,
  alter column attempts set default 0,
  alter column attempts set not null,
  alter column received_at set default now(),
  alter column received_at set not null,
  alter column updated_at set default now(),
  alter column updated_at set not null,
  drop constraint if exists stripe_webhook_events_status_check,
  add constraint stripe_webhook_events_status_check
    check (status in ('received', 'processing', 'processed', 'failed'));

do $$
begin
  -- the claim's conflict target: the event id must be unique (the old table had a surrogate key)
  if not exists (
    select from pg_catalog.pg_index i
    where i.indrelid = 'public.stripe_webhook_events'::regclass and i.indisunique
      and i.indkey::int2[] = array[(select attnum from pg_catalog.pg_attribute
        where attrelid = 'public.stripe_webhook_events'::regclass and attname = 'stripe_event_id')]::int2[]
  ) then
    create unique index stripe_webhook_events_event_id_key on public.stripe_webhook_events (stripe_event_id);
  end if;
end
$$;
create index if not exists stripe_webhook_events_purge_idx
  on public.stripe_webhook_events (processed_at) where status = 'processed';

alter table public.stripe_webhook_events enable row level security;
revoke all on table public.stripe_webhook_events from public, anon, authenticated, service_role;

------------------------------------------------------------------------------------------------------
-- Effects, each idempotent per Stripe object
------------------------------------------------------------------------------------------------------

-- A Stripe refund object (ours, by metadata or id; or one made in the dashboard): its status applied.
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
    -- made outside this system (the Stripe dashboard): record it against its order, with its debit
    select o.* into v_order from events.orders o where o.stripe_payment_intent_id = p_refund ->> 'payment_intent'
    for update;
    if not found then
      -- Most likely the payment's own event has not been processed yet: while the refund is young, fail, so
      -- that Stripe delivers it again rather than lose it. An old one belongs to another integration on the
      -- same Stripe account: acknowledged and ignored (the event stays on record).
      if to_timestamp((p_refund ->> 'created')::bigint) > now() - interval '6 hours' then
        raise exception 'No paid order has payment intent % yet', coalesce(p_refund ->> 'payment_intent', 'null')
          using errcode = 'PT409';
      end if;
      return jsonb_build_object('ignored', 'no order for payment intent ' || coalesce(p_refund ->> 'payment_intent', 'null'));
    end if;
    v_refund_id := private.open_refund(v_order, (p_refund ->> 'amount')::integer, p_refund ->> 'reason', null, null,
      null, p_refund ->> 'id');
  end if;
  perform private.apply_refund_status(v_refund_id, p_refund ->> 'status', p_refund ->> 'id');
  return jsonb_build_object('refund_id', v_refund_id, 'status', p_refund ->> 'status');
end
$$;

-- A Stripe transfer that was (partly) reversed: the reversed amount goes back to the organiser once.
create or replace function private.record_transfer_reversal(p_transfer jsonb) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v_payout wallet.payouts;
  v_meta text := p_transfer -> 'metadata' ->> 'payout_id';
  v_reversed bigint := (p_transfer ->> 'amount_reversed')::bigint;
begin
  if v_meta ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' then
    select * into v_payout from wallet.payouts p where p.id = v_meta::uuid for update;
  end if;
  if v_payout.id is null then
    select * into v_payout from wallet.payouts p where p.stripe_transfer_id = p_transfer ->> 'id' for update;
  end if;
  if v_payout.id is null then
    return jsonb_build_object('ignored', 'no payout for transfer ' || (p_transfer ->> 'id'));
  end if;
  if v_payout.status = 'pending' then
    -- the reversal arrived before the payout's own completion was recorded: the transfer exists
    perform private.settle_payout(v_payout.id, 'paid', p_transfer ->> 'id');
  end if;
  perform private.lock_wallet(v_payout.organiser_id, v_payout.currency);
  select * into v_payout from wallet.payouts p where p.id = v_payout.id;
  if v_reversed > v_payout.reversed_cents then
    perform private.post_entry(v_payout.wallet_id, 'payout_reversal', v_reversed - v_payout.reversed_cents,
      'payout_reversal:' || v_payout.id || ':' || v_reversed, null, null, v_payout.id);
    update wallet.payouts p
    set reversed_cents = v_reversed, status = case when v_reversed = p.amount_cents then 'reversed' else p.status end,
        updated_at = now()
    where p.id = v_payout.id;
  end if;
  return jsonb_build_object('payout_id', v_payout.id, 'reversed_cents', greatest(v_reversed, v_payout.reversed_cents));
end
$$;

-- One event's effect, by type. Unknown types are acknowledged and ignored.
create or replace function private.apply_stripe_event(p_type text, p_object jsonb) returns jsonb
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
        (p_object ->> 'amount_total')::integer);
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
create or replace function public.handle_stripe_event(p_event jsonb) returns jsonb
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
    v_effect := private.apply_stripe_event(p_event ->> 'type', p_event -> 'data' -> 'object');
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

------------------------------------------------------------------------------------------------------
-- The reconciler
------------------------------------------------------------------------------------------------------

-- Claims Stripe operations whose lease ran out, for re-sending with their stored key and parameters:
-- one statement, `for update skip locked`, so concurrent reconcilers share the work without doubling it.
-- Those past Stripe's key window (private.stripe_key_window_passed) are not re-sent: they become
-- needs_attention.
create or replace function public.claim_stale_stripe_operations(
  p_limit integer default 25,
  p_lease_seconds integer default 300
) returns jsonb
language sql security definer set search_path = '' as $$
  with stale as (
    select k.id, private.stripe_key_window_passed(k.created_at, k.request_params) as too_old
    from public.stripe_idempotency_keys k
    where k.status = 'in_progress' and k.locked_until <= now()
    order by k.locked_until
    limit least(greatest(p_limit, 1), 500)
    for update skip locked
  ),
  attention as (
    update public.stripe_idempotency_keys k
    set status = 'needs_attention', locked_until = null, updated_at = now(),
        last_error = 'not re-sent: older than Stripe''s idempotency window or without stored parameters'
    from stale where k.id = stale.id and stale.too_old
    returning k.operation_type, k.operation_id, k.stripe_idempotency_key, k.created_at
  ),
  claimed as (
    update public.stripe_idempotency_keys k
    set locked_until = now() + make_interval(secs => p_lease_seconds), fencing_token = k.fencing_token + 1,
        attempts = k.attempts + 1, updated_at = now()
    from stale where k.id = stale.id and not stale.too_old
    returning k.operation_type, k.operation_id, k.stripe_idempotency_key, k.fencing_token, k.attempts, k.request_params
  )
  select jsonb_build_object(
    'claimed', coalesce((select jsonb_agg(to_jsonb(c)) from claimed c), '[]'),
    'needs_attention', coalesce((select jsonb_agg(to_jsonb(a)) from attention a), '[]'))
$$;

-- Expires unpaid orders whose holds ran out (bounded, skip locked) and purges what is past keeping.
create or replace function public.reconcile_housekeeping(p_batch_size integer default 1000) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v_order uuid;
  v_expired integer := 0;
  v_events integer;
  v_limits integer;
begin
  if p_batch_size not between 1 and 10000 then
    raise exception 'Batch size must be between 1 and 10000, got %', p_batch_size using errcode = '22023';
  end if;
  for v_order in
    select o.id from events.orders o
    where o.status = 'pending' and o.hold_expires_at <= now()
    order by o.hold_expires_at limit p_batch_size
    for update skip locked
  loop
    if private.expire_order(v_order) then
      v_expired := v_expired + 1;
    end if;
  end loop;

  with doomed as (
    select w.stripe_event_id from public.stripe_webhook_events w
    where w.status = 'processed' and w.processed_at < now() - interval '30 days'
    order by w.processed_at limit p_batch_size for update skip locked
  )
  delete from public.stripe_webhook_events w using doomed where w.stripe_event_id = doomed.stripe_event_id;
  get diagnostics v_events = row_count;

  with doomed as (
    select r.bucket, r.window_start from private.rate_limits r
    where r.window_start < now() - interval '1 hour'
    limit p_batch_size for update skip locked
  )
  delete from private.rate_limits r using doomed where r.bucket = doomed.bucket and r.window_start = doomed.window_start;
  get diagnostics v_limits = row_count;

  return jsonb_build_object('holds_expired', v_expired, 'webhook_events_purged', v_events,
    'rate_limit_windows_purged', v_limits, 'idempotency_purged', public.purge_expired_idempotency(p_batch_size));
end
$$;

-- For an operator: settles an operation that needs attention (or whose holder vanished) with what the
-- Stripe dashboard shows - the object (p_result, e.g. {"id": "re_...", "status": "succeeded"}) or why there
-- is none (p_error) - through the same RPCs as the functions, so the order, refund or payout is settled
-- in the same transaction.
create or replace function public.resolve_stripe_operation(
  p_operation_type text,
  p_operation_id text,
  p_result jsonb default null,
  p_error jsonb default null
) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v_row public.stripe_idempotency_keys;
  v_ok boolean := p_result is not null;
begin
  if (p_result is null) = (p_error is null) then
    raise exception 'Give either the Stripe object (p_result) or why there is none (p_error)' using errcode = '22023';
  end if;
  select * into v_row from public.stripe_idempotency_keys k
  where k.operation_type = p_operation_type and k.operation_id = p_operation_id
  for update;
  if not found or v_row.status not in ('needs_attention', 'in_progress')
     or (v_row.status = 'in_progress' and v_row.locked_until > now()) then
    raise exception 'Operation %/% is %: nothing to resolve', p_operation_type, p_operation_id,
      coalesce(v_row.status, 'unknown') using errcode = 'PT409';
  end if;
  case p_operation_type
    when 'checkout:create' then
      return case when v_ok then public.complete_checkout_session(p_operation_id::uuid, v_row.fencing_token, p_result)
                  else public.fail_checkout_session(p_operation_id::uuid, v_row.fencing_token, p_error) end;
    when 'refund:create' then
      return case when v_ok then public.complete_refund(p_operation_id::uuid, v_row.fencing_token, p_result)
                  else public.fail_refund(p_operation_id::uuid, v_row.fencing_token, p_error) end;
    when 'payout:create' then
      return case when v_ok then public.complete_payout(p_operation_id::uuid, v_row.fencing_token, p_result)
                  else public.fail_payout(p_operation_id::uuid, v_row.fencing_token, p_error) end;
    else
      raise exception 'No business row for operation type %: use record_stripe_idempotency', p_operation_type
        using errcode = '22023';
  end case;
end
$$;

------------------------------------------------------------------------------------------------------
-- Grants
------------------------------------------------------------------------------------------------------
revoke execute on function
  private.record_stripe_refund(jsonb),
  private.record_transfer_reversal(jsonb),
  private.apply_stripe_event(text, jsonb)
from public, anon, authenticated, service_role;

revoke execute on function
  public.resolve_stripe_operation(text, text, jsonb, jsonb),
  public.handle_stripe_event(jsonb),
  public.claim_stale_stripe_operations(integer, integer),
  public.reconcile_housekeeping(integer)
from public, anon, authenticated;

grant execute on function
  public.resolve_stripe_operation(text, text, jsonb, jsonb),
  public.handle_stripe_event(jsonb),
  public.claim_stale_stripe_operations(integer, integer),
  public.reconcile_housekeeping(integer)
to service_role;
