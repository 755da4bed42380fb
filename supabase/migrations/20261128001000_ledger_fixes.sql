-- Fixes from the red team of issue 11 (see the issue note):
-- - A refund's status only moves forward (pending/requires_action -> succeeded -> failed/canceled): an older
--   event delivered late never undoes a newer one (a finished refund pending again).
-- - A refund after a payout recovers only its own share, less what the wallet covers and what reversals
--   already on their way back will bring: never a second refund's shortfall twice, never an older debt
--   (later sales pay those, ADR 10).
-- - A refund whose recovery failed abandons its other reversals still to be sent.

create or replace function private.refund_status_rank(p_status text) returns integer
language sql immutable security definer set search_path = '' as $$
  select case p_status when 'pending' then 0 when 'requires_action' then 0 when 'succeeded' then 1 else 2 end
$$;

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
    -- a refund a look-up had declared absent, which Stripe then shows: reopened
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
  elsif private.refund_status_rank(p_status) < private.refund_status_rank(v_refund.status) then
    -- an older state, delivered late: what Stripe said since stands
    return;
  end if;
  update events.refunds r
  set status = p_status, stripe_refund_id = coalesce(r.stripe_refund_id, p_stripe_refund_id), updated_at = now()
  where r.id = p_refund_id;
  perform private.settle_order(v_refund.order_id, 'refund', p_refund_id, coalesce(p_stripe_refund_id, p_refund_id::text));
end
$$;

-- As in migration 20261128000800, and a failed recovery abandons the refund's other reversals still to be sent.
create or replace function private.settle_refund_recovery(p_refund_id uuid) returns void
language plpgsql security definer set search_path = '' as $$
declare
  v_failed boolean;
  v_pending boolean;
  v_error jsonb;
begin
  select coalesce(bool_or(v.status = 'failed'), false), coalesce(bool_or(v.status = 'pending'), false)
  into v_failed, v_pending
  from wallet.transfer_reversals v where v.refund_id = p_refund_id;
  if v_failed then
    v_error := jsonb_build_object('status', 409, 'type', 'recovery_failed',
      'message', 'The organiser''s transfers could not be reversed to cover their share of this refund');
    update public.stripe_idempotency_keys k
    set status = 'failed', error = jsonb_build_object('status', 409, 'type', 'recovery_abandoned',
          'message', 'Not sent: another reversal of the same refund failed'),
        locked_until = null, last_error = 'abandoned with its refund', completed_at = now(), updated_at = now(),
        expires_at = now() + interval '30 days'
    from wallet.transfer_reversals v
    where v.refund_id = p_refund_id and v.status = 'pending' and k.operation_type = 'transfer_reversal:create'
      and k.operation_id = v.id::text and k.status = 'in_progress';
    update wallet.transfer_reversals v set status = 'failed', updated_at = now()
    where v.refund_id = p_refund_id and v.status = 'pending';
    update public.stripe_idempotency_keys k
    set status = 'failed', error = v_error, locked_until = null, last_error = v_error ->> 'message',
        completed_at = now(), updated_at = now(), expires_at = now() + interval '30 days'
    where k.operation_type = 'refund:create' and k.operation_id = p_refund_id::text and k.status = 'in_progress';
    perform private.apply_refund_status(p_refund_id, 'failed', null);
  elsif not v_pending then
    update public.stripe_idempotency_keys k set locked_until = now(), updated_at = now()
    where k.operation_type = 'refund:create' and k.operation_id = p_refund_id::text and k.status = 'in_progress'
      and k.locked_until = 'infinity';
  end if;
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
  p_lease_seconds integer default 60,
  p_reversal_ids uuid[] default '{}',
  p_reversal_keys text[] default '{}'
) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v_order events.orders;
  v_refund events.refunds;
  v_organiser uuid;
  v_in_flight integer;
  v_refundable integer;
  v_amount integer;
  v_wallet wallet.wallets;
  v_shortfall bigint := 0;
  v_recoverable bigint;
  v_transfer record;
  v_take bigint;
  v_n integer := 0;
  v_stripe jsonb;
  v_reversals jsonb;
  v_created boolean := false;
  v_before bigint;
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
    from events.refunds r where r.order_id = p_order_id and r.status in ('pending', 'requires_action', 'succeeded');
    v_refundable := v_order.total_cents - v_in_flight;
    v_amount := coalesce(p_amount_cents, v_refundable);
    if v_amount > v_refundable or v_amount <= 0 then
      raise exception 'Cannot refund % cents of order %: % cents are refundable (paid %, refunded or in flight %)',
        v_amount, p_order_id, v_refundable, v_order.total_cents, v_in_flight
        using errcode = 'PT409', hint = 'refund-exceeds-refundable',
        detail = jsonb_build_object('requested_cents', v_amount, 'refundable_cents', v_refundable,
          'paid_cents', v_order.total_cents, 'refunded_or_in_flight_cents', v_in_flight)::text;
    end if;
    select coalesce((select w.entries_total_cents from wallet.wallets w
                     where w.organiser_id = v_organiser and w.currency = v_order.currency), 0)
    into v_before;
    perform private.open_refund(v_order, v_amount, p_reason, p_requested_by, p_scope, p_idempotency_key, null,
      p_refund_id, p_amount_cents);
    select * into v_refund from events.refunds r where r.id = p_refund_id;
    v_created := true;

    -- The organiser's share of this refund is reserved now; what the wallet cannot cover of it, counting the
    -- reversals already on their way back, is recovered from their transfers (never an older debt).
    select * into v_wallet from wallet.wallets w where w.organiser_id = v_organiser and w.currency = v_order.currency;
    v_shortfall := least(v_before - v_wallet.entries_total_cents, greatest(0, -(v_wallet.entries_total_cents
      + coalesce((select sum(v.amount_cents) from wallet.transfer_reversals v join wallet.payouts p on p.id = v.payout_id
                  where p.organiser_id = v_organiser and p.currency = v_order.currency and v.status = 'pending'), 0))));
    if v_shortfall > 0 and not coalesce(p_is_admin, false) then
      select coalesce(sum(p.amount_cents - p.reversed_cents - coalesce((select sum(v.amount_cents)
               from wallet.transfer_reversals v where v.payout_id = p.id and v.status = 'pending'), 0)), 0)
      into v_recoverable
      from wallet.payouts p
      where p.organiser_id = v_organiser and p.currency = v_order.currency and p.status = 'paid'
        and p.stripe_transfer_id is not null;
      if v_recoverable < v_shortfall then
        raise exception 'The organiser''s balance cannot cover their share of this refund: % short, % recoverable from their transfers',
          v_shortfall, v_recoverable using errcode = 'PT409', hint = 'insufficient-organiser-balance',
          detail = jsonb_build_object('shortfall_cents', v_shortfall, 'recoverable_cents', v_recoverable,
            'balance_cents', coalesce(v_wallet.entries_total_cents, 0))::text;
      end if;
      for v_transfer in
        select p.id, p.amount_cents - p.reversed_cents - coalesce((select sum(v.amount_cents)
                 from wallet.transfer_reversals v where v.payout_id = p.id and v.status = 'pending'), 0) as reversible
        from wallet.payouts p
        where p.organiser_id = v_organiser and p.currency = v_order.currency and p.status = 'paid'
          and p.stripe_transfer_id is not null
        order by p.created_at desc
      loop
        exit when v_shortfall = 0;
        continue when v_transfer.reversible <= 0;
        v_n := v_n + 1;
        if v_n > coalesce(array_length(p_reversal_ids, 1), 0) or v_n > coalesce(array_length(p_reversal_keys, 1), 0) then
          raise exception 'create_refund needs more reversal ids and keys than the % given', v_n - 1
            using errcode = '22023';
        end if;
        v_take := least(v_shortfall, v_transfer.reversible);
        insert into wallet.transfer_reversals (id, payout_id, refund_id, amount_cents)
        values (p_reversal_ids[v_n], v_transfer.id, p_refund_id, v_take);
        v_reversals := coalesce(v_reversals, '[]') || jsonb_build_object('reversal_id', p_reversal_ids[v_n],
          'stripe', public.claim_stripe_operation('transfer_reversal:create', p_reversal_ids[v_n]::text,
            p_reversal_keys[v_n], private.transfer_reversal_params(p_reversal_ids[v_n]), p_requested_by, '{}',
            p_lease_seconds));
        v_shortfall := v_shortfall - v_take;
      end loop;
    end if;
  end if;

  v_stripe := private.claim_row_operation('refund:create', v_refund.id, p_stripe_idempotency_key,
    private.refund_params(v_refund.id), p_requested_by, p_lease_seconds, v_refund.stripe_refund_id,
    v_refund.status <> 'pending', v_created);
  if v_created and v_reversals is not null then
    -- not to be sent before the recovery: parked until settle_refund_recovery releases it
    update public.stripe_idempotency_keys k set locked_until = 'infinity'
    where k.operation_type = 'refund:create' and k.operation_id = v_refund.id::text;
    v_stripe := jsonb_set(v_stripe, '{outcome}', '"in_progress"') || jsonb_build_object('locked_until', 'infinity');
  end if;

  return jsonb_build_object(
    'refund', private.refund_json(v_refund.id),
    'stripe', v_stripe,
    -- the recovery's reversals still to settle, each with its claim (one held by another request answers
    -- in_progress); an existing reversal's operation exists, so the candidate key is never stored
    'reversals', coalesce(v_reversals, (select jsonb_agg(jsonb_build_object('reversal_id', v.id,
        'stripe', public.claim_stripe_operation('transfer_reversal:create', v.id::text, 'unused:' || v.id,
          private.transfer_reversal_params(v.id), p_requested_by, '{}', p_lease_seconds)) order by v.created_at)
      from wallet.transfer_reversals v where v.refund_id = v_refund.id and v.status = 'pending'), '[]'));
end
$$;


revoke execute on function private.refund_status_rank(text) from public, anon, authenticated, service_role;

-- One order as the audit compares it, with its refunds as we hold them (their status against Stripe's).
create or replace function public.audit_order(p_order_id uuid) returns jsonb
language sql stable security definer set search_path = '' as $$
  select jsonb_build_object('order_id', o.id, 'status', o.status, 'total_cents', o.total_cents,
    'refunded_cents', o.refunded_cents, 'disputed_cents', o.disputed_cents,
    'stripe_session_id', o.stripe_session_id, 'stripe_payment_intent_id', o.stripe_payment_intent_id,
    'stripe_charge_id', o.stripe_charge_id,
    'refunds', coalesce((select jsonb_object_agg(r.stripe_refund_id, r.status) from events.refunds r
      where r.order_id = o.id and r.stripe_refund_id is not null), '{}'))
  from events.orders o where o.id = p_order_id
$$;

-- The audit's batch: each order exactly as audit_order shows it (one place for what the audit compares).
create or replace function public.audit_begin(p_batch_size integer default 100) returns jsonb
language sql stable security definer set search_path = '' as $$
  select jsonb_build_object(
    'events_since', s.events_since,
    'orders', coalesce((select jsonb_agg(public.audit_order(o.id) order by o.id)
      from (select o.id from events.orders o
            where o.id > coalesce(s.orders_after, '00000000-0000-0000-0000-000000000000')
              and o.stripe_session_id is not null
            order by o.id limit least(greatest(p_batch_size, 1), 1000)) as o), '[]'),
    'payouts', coalesce((select jsonb_agg(jsonb_build_object('payout_id', p.id, 'status', p.status,
        'amount_cents', p.amount_cents, 'reversed_cents', p.reversed_cents,
        'stripe_transfer_id', p.stripe_transfer_id) order by p.id)
      from (select * from wallet.payouts p
            where p.id > coalesce(s.payouts_after, '00000000-0000-0000-0000-000000000000')
              and p.stripe_transfer_id is not null
            order by p.id limit least(greatest(p_batch_size, 1), 1000)) as p), '[]'))
  from private.audit_state s
$$;
