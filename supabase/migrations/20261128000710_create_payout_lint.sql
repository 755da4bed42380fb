-- create_payout as in migration 20261128000600, reading the wallet's funds with select ... into, which
-- plpgsql_check (supabase db lint) can follow; a record assigned from a set-returning call it cannot.
create or replace function public.create_payout(
  p_scope text,
  p_idempotency_key text,
  p_payout_id uuid,
  p_stripe_idempotency_key text,
  p_organiser_id uuid,
  p_amount_cents bigint,
  p_currency text default 'usd',
  p_lease_seconds integer default 60,
  p_platform_available bigint default null
) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v_payout wallet.payouts;
  v_account events.payout_accounts;
  v_minimum integer;
  v_wallet wallet.wallets;
  v_funds record;
  v_in_flight bigint;
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
    select * into v_funds from private.wallet_funds(v_wallet.id, p_amount_cents);
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

    -- And the platform's own available balance at Stripe (p_platform_available, read by the function just
    -- before this call) must cover it, less the payouts that may have left since that read: every payout is
    -- taken from the same platform balance, which refunds and Stripe's fees draw on too (docs/adr/0007).
    -- Payouts in one currency are serialised on its row so that two cannot spend the same balance.
    if p_platform_available is null then
      raise exception 'create_payout needs the platform''s available balance' using errcode = '22023';
    end if;
    perform 1 from private.currencies c where c.code = v_wallet.currency for update;
    select coalesce(sum(p.amount_cents), 0) into v_in_flight from wallet.payouts p
    where p.currency = v_wallet.currency
      and (p.status = 'pending' or (p.status = 'paid' and p.updated_at > now() - interval '5 minutes'));
    if p_amount_cents > p_platform_available - v_in_flight then
      raise exception 'Cannot pay out % cents yet: the platform''s available balance at Stripe does not cover it',
        p_amount_cents using errcode = 'PT409', hint = 'funds-pending',
        detail = jsonb_build_object('requested_cents', p_amount_cents, 'available_cents', v_funds.available,
          'reason', 'platform-balance', 'retry_after', 3600)::text;
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
