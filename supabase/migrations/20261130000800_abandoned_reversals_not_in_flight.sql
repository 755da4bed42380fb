-- A reversal abandoned with its refund (another reversal of the same refund failed: migration
-- 20261130000700) stays 'pending' until a look-up settles it, up to 15 minutes for absence to count as
-- proof. It was never sent, or its fate is unknown: it is not money on its way back. Counted in flight by
-- private.reversals_in_flight, it hid a second refund's shortfall: that refund recovered nothing from the
-- organiser's transfers, the look-up then proved the reversal absent, and the organiser's wallet was below
-- zero by their own refund (tests/redteam_recovery.test.ts, R1). A pending reversal counts only while its
-- refund's recovery has not failed. An abandoned one found later is 'succeeded' and its credit posted
-- (counted again, less reversed_cents); one whose credit Stripe's event posted before its look-up makes the
-- figure smaller: more is recovered, never less than the share.

create or replace function private.reversals_in_flight(p_payout_id uuid) returns bigint
language sql stable security definer set search_path = '' as $$
  select greatest(0, coalesce((select sum(v.amount_cents) from wallet.transfer_reversals v
    where v.payout_id = p.id and (v.status = 'succeeded' or (v.status = 'pending' and not exists (
      select 1 from wallet.transfer_reversals f where f.refund_id = v.refund_id and f.status = 'failed')))), 0)
    - p.reversed_cents)::bigint
  from wallet.payouts p where p.id = p_payout_id
$$;
revoke execute on function private.reversals_in_flight(uuid) from public, anon, authenticated, service_role;

-- What a transfer has left to reverse at Stripe, as a refund's recovery plans it: never more than Stripe has.
-- Stripe's amount_reversed counts every reversal made, including those whose credit we have not posted yet
-- (pending here) and those made in the dashboard (in reversed_cents, without a row); we cannot tell whether a
-- pending reversal's credit is already in reversed_cents, so every pending one is taken off again. This can
-- only plan less on a transfer than Stripe would allow (the rest goes to an older transfer, or the refund is
-- refused 409 with the figures), never a reversal Stripe refuses as too large, which failed the refund
-- (tests/redteam_recovery.test.ts, R3: a dashboard reversal and a pending one on the newest transfer).
create or replace function private.transfer_reversible(p_payout_id uuid) returns bigint
language sql stable security definer set search_path = '' as $$
  select greatest(0, p.amount_cents - p.reversed_cents - coalesce((select sum(v.amount_cents)
    from wallet.transfer_reversals v where v.payout_id = p.id and v.status = 'pending'), 0))::bigint
  from wallet.payouts p where p.id = p_payout_id
$$;
revoke execute on function private.transfer_reversible(uuid) from public, anon, authenticated, service_role;

-- As in migration 20261130000600, with what each transfer has left to reverse from private.transfer_reversible.
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
      + coalesce((select sum(private.reversals_in_flight(p.id)) from wallet.payouts p
                  where p.organiser_id = v_organiser and p.currency = v_order.currency), 0))));
    if v_shortfall > 0 and not coalesce(p_is_admin, false) then
      select coalesce(sum(private.transfer_reversible(p.id)), 0)
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
        select p.id, private.transfer_reversible(p.id) as reversible
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
