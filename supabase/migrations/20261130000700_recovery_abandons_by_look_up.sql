-- A refund's recovery that failed (one of its transfer reversals failed) abandoned the refund's other
-- reversals by failing their operations outright, whether or not a holder was executing one at Stripe at that
-- moment: `npm run chaos` found a reversal Stripe made whose operation was recorded failed (its holder's
-- completion then refused by fencing). Nothing may fail an operation that could be executing. Now the other
-- reversals are abandoned as a saved 5xx is: their keys count as burned (key_burned_at), so that no holder
-- sends them again, and each is settled by look-up like any other: the object found is recorded (its credit
-- posted), absence counts as proof 15 minutes later (private.stripe_operation_json's absent_is_proof).
-- The refund itself is failed only while it is still held back for its recovery (leased until 'infinity':
-- never released, so never sent); a refund released to be sent settles by its own operation.

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
    update public.stripe_idempotency_keys k
    set key_burned_at = coalesce(k.key_burned_at, now()), updated_at = now(),
        last_error = 'abandoned with its refund: settled by look-up, never sent again'
    from wallet.transfer_reversals v
    where v.refund_id = p_refund_id and v.status = 'pending' and k.operation_type = 'transfer_reversal:create'
      and k.operation_id = v.id::text and k.status = 'in_progress';
    v_error := jsonb_build_object('status', 409, 'type', 'recovery_failed',
      'message', 'The organiser''s transfers could not be reversed to cover their share of this refund');
    update public.stripe_idempotency_keys k
    set status = 'failed', error = v_error, locked_until = null, last_error = v_error ->> 'message',
        completed_at = now(), updated_at = now(), expires_at = now() + interval '30 days'
    where k.operation_type = 'refund:create' and k.operation_id = p_refund_id::text and k.status = 'in_progress'
      and k.locked_until = 'infinity';
    if found then
      perform private.apply_refund_status(p_refund_id, 'failed', null);
    end if;
  elsif not v_pending then
    update public.stripe_idempotency_keys k set locked_until = now(), updated_at = now()
    where k.operation_type = 'refund:create' and k.operation_id = p_refund_id::text and k.status = 'in_progress'
      and k.locked_until = 'infinity';
  end if;
end
$$;
