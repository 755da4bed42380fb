-- Refunds after payouts: an organiser's refund never leaves the platform paying for it.
--
-- When the organiser's wallet cannot cover their share of a refund (they were paid out already), the
-- refund first recovers the shortfall by reversing the organiser's latest transfers: one Stripe transfer
-- reversal per transfer, each a registered Stripe operation (`transfer_reversal:create`) claimed in the same
-- transaction as the refund. The refund's own operation is claimed then too, but parked (leased until
-- 'infinity') until every reversal has succeeded: then it is released and sent (by the function, or the
-- reconciler); if a reversal fails (the connected account's balance is gone), the refund fails without
-- ever being sent and its reservation is given back. When the transfers cannot cover the shortfall at all,
-- the refund is refused: 409 `insufficient-organiser-balance` with the figures. A platform admin's refund
-- is never held back: the wallet may go negative, and later sales pay it back before any payout.
-- With separate charges and transfers, reversing transfers is the platform's job: `reverse_transfer` on a
-- refund applies only to destination charges (Refunds.d.ts; docs.stripe.com/api/transfer_reversals).

create table if not exists wallet.transfer_reversals (
  id uuid primary key,
  payout_id uuid not null references wallet.payouts (id),
  refund_id uuid references events.refunds (id),
  amount_cents bigint not null check (amount_cents > 0),
  status text not null default 'pending' check (status in ('pending', 'succeeded', 'failed')),
  stripe_reversal_id text unique,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
create index if not exists transfer_reversals_refund_idx on wallet.transfer_reversals (refund_id);
create index if not exists transfer_reversals_payout_idx on wallet.transfer_reversals (payout_id);
alter table wallet.transfer_reversals enable row level security;
revoke all on table wallet.transfer_reversals from public, anon, authenticated, service_role;

-- The Stripe parameters of a reversal: the transfer (the call's path) and what is sent in the body.
create or replace function private.transfer_reversal_params(p_reversal_id uuid) returns jsonb
language sql stable security definer set search_path = '' as $$
  select jsonb_build_object('transfer', p.stripe_transfer_id, 'amount', v.amount_cents,
    'metadata', jsonb_strip_nulls(jsonb_build_object('reversal_id', v.id, 'payout_id', v.payout_id,
      'refund_id', v.refund_id)))
  from wallet.transfer_reversals v join wallet.payouts p on p.id = v.payout_id
  where v.id = p_reversal_id
$$;

create or replace function private.transfer_reversal_json(p_reversal_id uuid) returns jsonb
language sql stable security definer set search_path = '' as $$
  select jsonb_build_object('reversal_id', v.id, 'payout_id', v.payout_id, 'refund_id', v.refund_id,
    'amount_cents', v.amount_cents, 'status', v.status, 'stripe_reversal_id', v.stripe_reversal_id)
  from wallet.transfer_reversals v where v.id = p_reversal_id
$$;

-- The refund's own operation waits for its recovery: leased until 'infinity' (no one may claim it), released
-- when every reversal has succeeded, failed with the refund when one has failed.
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

create or replace function public.complete_transfer_reversal(p_reversal_id uuid, p_fencing_token bigint, p_result jsonb)
returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v_reversal wallet.transfer_reversals;
begin
  perform public.complete_stripe_operation('transfer_reversal:create', p_reversal_id::text, p_fencing_token,
    p_result ->> 'id', p_result);
  update wallet.transfer_reversals v set status = 'succeeded', stripe_reversal_id = p_result ->> 'id', updated_at = now()
  where v.id = p_reversal_id returning * into v_reversal;
  -- the organiser's money is back with the platform: credited as Stripe counts it, the transfer's cumulative
  -- amount_reversed, as transfer.reversed events do (one rule for both, no double credit)
  perform private.record_transfer_reversal(jsonb_build_object('id', p_result ->> 'transfer',
    'amount_reversed', p_result -> 'transfer_amount_reversed',
    'metadata', jsonb_build_object('payout_id', v_reversal.payout_id)));
  if v_reversal.refund_id is not null then
    perform private.settle_refund_recovery(v_reversal.refund_id);
  end if;
  return private.transfer_reversal_json(p_reversal_id);
end
$$;

create or replace function public.fail_transfer_reversal(p_reversal_id uuid, p_fencing_token bigint, p_error jsonb)
returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v_reversal wallet.transfer_reversals;
begin
  perform public.fail_stripe_operation('transfer_reversal:create', p_reversal_id::text, p_fencing_token, p_error);
  update wallet.transfer_reversals v set status = 'failed', updated_at = now()
  where v.id = p_reversal_id returning * into v_reversal;
  if v_reversal.refund_id is not null then
    perform private.settle_refund_recovery(v_reversal.refund_id);
  end if;
  return private.transfer_reversal_json(p_reversal_id);
end
$$;

insert into private.stripe_operation_types (operation_type, complete_fn, fail_fn) values
  ('transfer_reversal:create', 'public.complete_transfer_reversal(uuid, bigint, jsonb)',
   'public.fail_transfer_reversal(uuid, bigint, jsonb)')
on conflict (operation_type) do update set complete_fn = excluded.complete_fn, fail_fn = excluded.fail_fn;

-- Requests a refund of a paid order (see migration 20261128000300 for the rules it keeps: who may refund,
-- fraudulent for admins only, never more than paid - refunded - in flight). New: when the organiser's wallet
-- cannot cover their share, the shortfall is recovered from their latest transfers first (the header
-- above), with reversal ids and Stripe keys the caller generated (p_reversal_ids, p_reversal_keys: as many
-- as transfers may be needed, in order); or the refund is refused 409 `insufficient-organiser-balance`.
drop function if exists public.create_refund(text, text, uuid, text, uuid, uuid, boolean, integer, text, integer);
create function public.create_refund(
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
    perform private.open_refund(v_order, v_amount, p_reason, p_requested_by, p_scope, p_idempotency_key, null,
      p_refund_id, p_amount_cents);
    select * into v_refund from events.refunds r where r.id = p_refund_id;
    v_created := true;

    -- The organiser's share is reserved now; what the wallet cannot cover is recovered from their transfers.
    select * into v_wallet from wallet.wallets w where w.organiser_id = v_organiser and w.currency = v_order.currency;
    v_shortfall := greatest(0, -coalesce(v_wallet.entries_total_cents, 0));
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

revoke execute on function
  private.transfer_reversal_params(uuid),
  private.transfer_reversal_json(uuid),
  private.settle_refund_recovery(uuid)
from public, anon, authenticated, service_role;
revoke execute on function
  public.complete_transfer_reversal(uuid, bigint, jsonb),
  public.fail_transfer_reversal(uuid, bigint, jsonb),
  public.create_refund(text, text, uuid, text, uuid, uuid, boolean, integer, text, integer, uuid[], text[])
from public, anon, authenticated;
grant execute on function
  public.complete_transfer_reversal(uuid, bigint, jsonb),
  public.fail_transfer_reversal(uuid, bigint, jsonb),
  public.create_refund(text, text, uuid, text, uuid, uuid, boolean, integer, text, integer, uuid[], text[])
to service_role;
