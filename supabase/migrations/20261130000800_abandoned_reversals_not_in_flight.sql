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
