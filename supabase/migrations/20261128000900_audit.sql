-- The ledger audited against Stripe (stripe-audit, scheduled). Each run:
-- 1. catches up on Stripe's events since a stored cursor (GET /v1/events keeps 30 days), applying each one
--    the webhook did not get as if it had been delivered (handle_stripe_event: processed once per event id);
-- 2. compares a batch of orders (stored cursor, round robin) with Stripe: the session of an order still
--    pending here, and the charge of a paid one (amount_captured, amount_refunded, disputed); what differs
--    is repaired from Stripe's own objects (apply_stripe_object: a refund or dispute recorded with its ledger
--    effect, a payment recorded), and what still differs is reported with the ids;
-- 3. compares a batch of payouts with their transfers (amount, amount_reversed) the same way;
-- and stores its report (private.audit_runs) and cursors (private.audit_state).

create table if not exists private.audit_state (
  id boolean primary key default true check (id),
  events_since bigint not null default 0,
  orders_after uuid,
  payouts_after uuid
);
insert into private.audit_state default values on conflict do nothing;

create table if not exists private.audit_runs (
  id bigint generated always as identity primary key,
  finished_at timestamptz not null default now(),
  report jsonb not null
);
create index if not exists audit_runs_finished_idx on private.audit_runs (finished_at);

alter table private.audit_state enable row level security;
alter table private.audit_runs enable row level security;
revoke all on table private.audit_state, private.audit_runs from public, anon, authenticated, service_role;

-- Where the audit stands: its cursors, and the next batches of orders and payouts to compare.
create or replace function public.audit_begin(p_batch_size integer default 100) returns jsonb
language sql stable security definer set search_path = '' as $$
  select jsonb_build_object(
    'events_since', s.events_since,
    'orders', coalesce((select jsonb_agg(jsonb_build_object('order_id', o.id, 'status', o.status,
        'total_cents', o.total_cents, 'refunded_cents', o.refunded_cents, 'disputed_cents', o.disputed_cents,
        'stripe_session_id', o.stripe_session_id, 'stripe_payment_intent_id', o.stripe_payment_intent_id,
        'stripe_charge_id', o.stripe_charge_id) order by o.id)
      from (select * from events.orders o
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

-- A Stripe object the audit found, applied as an event of `p_type` about it would be (idempotent per object).
create or replace function public.apply_stripe_object(p_type text, p_object jsonb, p_charge jsonb default null)
returns jsonb
language sql security definer set search_path = '' as $$
  select private.apply_stripe_event(p_type, p_object, p_charge)
$$;

-- Stores a run's report and moves the cursors (null orders_after / payouts_after: start over).
create or replace function public.audit_finish(
  p_report jsonb, p_events_since bigint, p_orders_after uuid, p_payouts_after uuid
) returns jsonb
language plpgsql security definer set search_path = '' as $$
begin
  update private.audit_state s
  set events_since = greatest(s.events_since, coalesce(p_events_since, 0)), orders_after = p_orders_after,
      payouts_after = p_payouts_after;
  insert into private.audit_runs (report) values (p_report);
  delete from private.audit_runs r where r.finished_at < now() - interval '30 days';
  return p_report;
end
$$;

revoke execute on function
  public.audit_begin(integer),
  public.apply_stripe_object(text, jsonb, jsonb),
  public.audit_finish(jsonb, bigint, uuid, uuid)
from public, anon, authenticated;
grant execute on function
  public.audit_begin(integer),
  public.apply_stripe_object(text, jsonb, jsonb),
  public.audit_finish(jsonb, bigint, uuid, uuid)
to service_role;

-- One order as the audit compares it (after a repair, to see whether it agrees now).
create or replace function public.audit_order(p_order_id uuid) returns jsonb
language sql stable security definer set search_path = '' as $$
  select jsonb_build_object('order_id', o.id, 'status', o.status, 'total_cents', o.total_cents,
    'refunded_cents', o.refunded_cents, 'disputed_cents', o.disputed_cents,
    'stripe_session_id', o.stripe_session_id, 'stripe_payment_intent_id', o.stripe_payment_intent_id,
    'stripe_charge_id', o.stripe_charge_id)
  from events.orders o where o.id = p_order_id
$$;

revoke execute on function public.audit_order(uuid) from public, anon, authenticated;
grant execute on function public.audit_order(uuid) to service_role;
