-- Reads for the web app (web/, issue 13), and the operator's resolve action. Nothing here changes a rule:
-- each function reads what the money functions wrote, or (operator_resolve) calls resolve_stripe_operation.
--
-- Who may call what (tests/_security.ts):
-- - the catalogue and a checkout's own order: anon and authenticated (guests buy without an account):
--   get_event, get_checkout_order (the order id with its Checkout Session id, which only the browser that
--   made the checkout gets back from Stripe's success_url);
-- - the signed-in organiser, scoped to auth.uid(): get_wallet_history, list_organiser_orders, list_payouts;
-- - platform admins, checked here from the token's `app_metadata.role = 'platform_admin'` (set by Auth from
--   auth.users.raw_app_meta_data, never by the user): operator_overview, operator_operations,
--   operator_resolve. Anyone else gets 403 `forbidden`.

------------------------------------------------------------------------------------------------------
-- Helpers
------------------------------------------------------------------------------------------------------
create or replace function private.is_platform_admin() returns boolean
language sql stable security definer set search_path = '' as $$
  select coalesce(auth.jwt() -> 'app_metadata' ->> 'role' = 'platform_admin', false)
$$;

create or replace function private.require_platform_admin() returns void
language plpgsql stable security definer set search_path = '' as $$
begin
  if not private.is_platform_admin() then
    raise exception 'Only platform admins may read or resolve Stripe operations'
      using errcode = 'PT403', hint = 'forbidden';
  end if;
end
$$;

-- An order's tickets, refunds and ledger entries, as the order page and the organiser's list show them.
create or replace function private.order_detail_json(p_order_id uuid) returns jsonb
language sql stable security definer set search_path = '' as $$
  select jsonb_build_object(
    'order_id', o.id, 'event_id', o.event_id, 'event_title', e.title, 'status', o.status, 'currency', o.currency,
    'subtotal_cents', o.subtotal_cents, 'fee_cents', o.fee_cents, 'total_cents', o.total_cents,
    'refunded_cents', o.refunded_cents, 'disputed_cents', o.disputed_cents,
    -- what create_refund would accept now: paid less refunds succeeded or in flight
    'refundable_cents', case when o.status in ('paid', 'partially_refunded') then
      greatest(o.total_cents - coalesce((select sum(r.amount_cents) from events.refunds r
                                         where r.order_id = o.id and r.status in ('pending', 'succeeded')), 0), 0)
      else 0 end,
    'created_at', o.created_at, 'paid_at', o.paid_at,
    'tickets', coalesce((select jsonb_agg(jsonb_build_object('ticket_id', k.id, 'tier', t.name, 'status', k.status)
                                          order by t.price_cents, k.created_at, k.id)
                         from events.tickets k join events.ticket_tiers t on t.id = k.tier_id
                         where k.order_id = o.id), '[]'),
    'refunds', coalesce((select jsonb_agg(jsonb_build_object('refund_id', r.id, 'amount_cents', r.amount_cents,
                                            'status', r.status, 'reason', r.reason, 'created_at', r.created_at)
                                          order by r.created_at, r.id)
                         from events.refunds r where r.order_id = o.id), '[]'))
  from events.orders o join events.events e on e.id = o.event_id
  where o.id = p_order_id
$$;

------------------------------------------------------------------------------------------------------
-- Buyers (guests too)
------------------------------------------------------------------------------------------------------

-- An event on sale with its tiers, the seats left in each and the fee rule (the checkout decides the
-- amounts; the page only shows them ahead).
create or replace function public.get_event(p_event_id uuid) returns jsonb
language plpgsql stable security definer set search_path = '' as $$
declare
  v_result jsonb;
begin
  select jsonb_build_object(
    'event_id', e.id, 'title', e.title, 'currency', e.currency, 'starts_at', e.starts_at, 'on_sale', e.on_sale,
    'fee', (select jsonb_build_object('percent', s.service_fee_percent, 'flat', c.service_fee_flat,
                                      'exponent', c.exponent)
            from private.settings s, private.currencies c where c.code = e.currency),
    'tiers', coalesce((select jsonb_agg(jsonb_build_object('tier_id', t.id, 'name', t.name,
                                          'price_cents', t.price_cents, 'max_per_order', t.max_per_order,
                                          'remaining', greatest(t.capacity - t.held - t.sold, 0))
                                        order by t.price_cents, t.name)
                       from events.ticket_tiers t where t.event_id = e.id), '[]'))
  into v_result
  from events.events e
  where e.id = p_event_id and e.on_sale;
  if v_result is null then
    raise exception 'Event % not found', p_event_id using errcode = 'PT404', hint = 'event-not-found';
  end if;
  return v_result;
end
$$;

-- The order a checkout made, for whoever holds its order id and its Checkout Session id (Stripe's
-- success_url hands both back to the buyer's browser): status, tickets and refunds, never the buyer's email.
create or replace function public.get_checkout_order(p_order_id uuid, p_session_id text) returns jsonb
language plpgsql stable security definer set search_path = '' as $$
declare
  v_result jsonb;
begin
  select private.order_detail_json(o.id) into v_result
  from events.orders o
  where o.id = p_order_id and p_session_id is not null and o.stripe_session_id = p_session_id;
  if v_result is null then
    raise exception 'Order % not found', p_order_id using errcode = 'PT404', hint = 'order-not-found';
  end if;
  return v_result - 'refundable_cents';
end
$$;

------------------------------------------------------------------------------------------------------
-- The signed-in organiser
------------------------------------------------------------------------------------------------------

-- The organiser's ledger in one currency, oldest first, each entry with the running total of the entries
-- (the wallet's balance less payouts in flight, which are debited when requested).
create or replace function public.get_wallet_history(p_currency text default 'usd', p_limit integer default 500)
returns jsonb
language sql stable security definer set search_path = '' as $$
  select jsonb_build_object(
    'currency', lower(p_currency),
    'entries', coalesce(jsonb_agg(jsonb_build_object(
        'entry_id', x.id, 'type', x.type, 'amount_cents', x.amount_cents, 'running_total_cents', x.running,
        'order_id', x.order_id, 'refund_id', x.refund_id, 'payout_id', x.payout_id, 'source', x.source,
        'created_at', x.created_at) order by x.created_at, x.id), '[]'))
  from (
    select * from (
      select t.*, sum(t.amount_cents) over (order by t.created_at, t.id) as running
      from wallet.wallet_transactions t join wallet.wallets w on w.id = t.wallet_id
      where w.organiser_id = auth.uid() and w.currency = lower(p_currency)
    ) as all_entries
    order by created_at desc, id desc
    limit least(greatest(p_limit, 1), 5000)
  ) as x
$$;

-- Orders of the organiser's events, newest first, each with its tickets, refunds and the ledger entries it made.
create or replace function public.list_organiser_orders(p_limit integer default 50) returns jsonb
language sql stable security definer set search_path = '' as $$
  select coalesce(jsonb_agg(
    private.order_detail_json(o.id) || jsonb_build_object(
      'buyer', coalesce(o.guest_email, u.email),
      'entries', coalesce((select jsonb_agg(jsonb_build_object('entry_id', t.id, 'type', t.type,
                                              'amount_cents', t.amount_cents, 'created_at', t.created_at)
                                            order by t.created_at, t.id)
                           from wallet.wallet_transactions t where t.order_id = o.id), '[]'))
    order by o.created_at desc, o.id), '[]')
  from (
    select o.* from events.orders o join events.events e on e.id = o.event_id
    where e.organiser_id = auth.uid() and o.status <> 'pending'
    order by o.created_at desc, o.id
    limit least(greatest(p_limit, 1), 500)
  ) as o
  left join auth.users u on u.id = o.buyer_id
$$;

-- The organiser's payouts, newest first.
create or replace function public.list_payouts(p_limit integer default 50) returns jsonb
language sql stable security definer set search_path = '' as $$
  select coalesce(jsonb_agg(jsonb_build_object(
      'payout_id', p.id, 'amount_cents', p.amount_cents, 'currency', p.currency, 'status', p.status,
      'stripe_transfer_id', p.stripe_transfer_id, 'reversed_cents', p.reversed_cents, 'created_at', p.created_at,
      'updated_at', p.updated_at) order by p.created_at desc, p.id), '[]')
  from (
    select * from wallet.payouts p where p.organiser_id = auth.uid()
    order by p.created_at desc, p.id limit least(greatest(p_limit, 1), 500)
  ) as p
$$;

------------------------------------------------------------------------------------------------------
-- Platform admins
------------------------------------------------------------------------------------------------------

-- An operation as the operator pages show it (no parameters: they may hold a buyer's email).
create or replace function private.operation_json(k public.stripe_idempotency_keys) returns jsonb
language sql stable security definer set search_path = '' as $$
  select jsonb_build_object(
    'operation_type', k.operation_type, 'operation_id', k.operation_id, 'status', k.status,
    'stripe_resource_id', k.stripe_resource_id, 'attempts', k.attempts, 'fencing_token', k.fencing_token,
    'locked_until', k.locked_until, 'last_error', k.last_error, 'evidence', k.evidence, 'error', k.error,
    'created_at', k.created_at, 'updated_at', k.updated_at,
    -- "no object" may be declared only once Stripe has forgotten the key (resolve_stripe_operation)
    'no_object_allowed_at', k.created_at + interval '24 hours 5 minutes',
    'no_object_allowed', private.stripe_key_forgotten(k.created_at))
$$;

-- What the operator's page shows: operations by state, stale leases, what needs attention with its evidence,
-- webhook events failed or parked, what the reconciler has to do next, and per hour over the last 24 hours
-- the duplicates absorbed and the faults survived, as far as the tables record them (see README).
create or replace function public.operator_overview() returns jsonb
language plpgsql stable security definer set search_path = '' as $$
declare
  v_result jsonb;
begin
  perform private.require_platform_admin();
  select jsonb_build_object(
    'generated_at', now(),
    'operations_by_state', coalesce((
      select jsonb_agg(jsonb_build_object('operation_type', s.operation_type, 'status', s.status, 'count', s.n)
                       order by s.operation_type, s.status)
      from (select k.operation_type, k.status, count(*) as n from public.stripe_idempotency_keys k
            group by 1, 2) as s), '[]'),
    'stale_leases', coalesce((
      select jsonb_agg(private.operation_json(k) order by k.locked_until)
      from (select * from public.stripe_idempotency_keys k
            where k.status = 'in_progress' and k.locked_until <= now()
            order by k.locked_until limit 50) as k), '[]'),
    'needs_attention', coalesce((
      select jsonb_agg(private.operation_json(k) order by k.updated_at)
      from (select * from public.stripe_idempotency_keys k where k.status = 'needs_attention'
            order by k.updated_at limit 100) as k), '[]'),
    'webhook_events', coalesce((
      select jsonb_agg(jsonb_build_object('event_id', w.stripe_event_id, 'type', w.event_type,
                         'object_id', w.object_id, 'status', w.status, 'attempts', w.attempts,
                         'error', w.error_message, 'parked_on', w.parked_on, 'received_at', w.received_at,
                         'updated_at', w.updated_at) order by w.updated_at desc)
      from (select * from public.stripe_webhook_events w where w.status in ('failed', 'parked')
            order by w.updated_at desc limit 100) as w), '[]'),
    'reconcile', jsonb_build_object(
      'stale_operations', (select count(*) from public.stripe_idempotency_keys k
                           where k.status = 'in_progress' and k.locked_until <= now()),
      'deferred_operations', (select count(*) from public.stripe_idempotency_keys k
                              where k.status = 'in_progress' and k.locked_until > now() + interval '1 hour'),
      'attention_due_for_look_up', (select count(*) from public.stripe_idempotency_keys k
                                    where k.status = 'needs_attention'
                                      and k.updated_at <= now() - interval '15 minutes'),
      'holds_expired', (select count(*) from events.holds h where h.status = 'active' and h.expires_at <= now()),
      'events_failed', (select count(*) from public.stripe_webhook_events w where w.status = 'failed'),
      'events_parked', (select count(*) from public.stripe_webhook_events w where w.status = 'parked')),
    'activity', (
      with hours as (
        select generate_series(date_trunc('hour', now()) - interval '23 hours', date_trunc('hour', now()),
                               interval '1 hour') as hour
      ),
      duplicates as (
        -- a client's request sent again after a transient answer (the key claimed again)
        select date_trunc('hour', i.created_at) as hour, sum(i.fencing_token - 1) as n
        from public.idempotency_keys i
        where i.fencing_token > 1 and i.created_at > now() - interval '24 hours' group by 1
        union all
        -- a Stripe operation sent again with its stored key (Stripe answered with the same object)
        select date_trunc('hour', k.created_at), sum(k.attempts - 1) from public.stripe_idempotency_keys k
        where k.attempts > 1 and k.created_at > now() - interval '24 hours' group by 1
        union all
        -- a webhook event delivered again before it was processed
        select date_trunc('hour', w.received_at), sum(w.attempts - 1) from public.stripe_webhook_events w
        where w.attempts > 1 and w.received_at > now() - interval '24 hours' group by 1
      ),
      faults as (
        -- an operation settled after an unknown outcome, a crash or an undecided look-up
        select date_trunc('hour', k.created_at) as hour, count(*) as n from public.stripe_idempotency_keys k
        where k.status in ('completed', 'failed') and (k.last_error is not null or k.attempts > 1)
          and k.created_at > now() - interval '24 hours' group by 1
        union all
        -- an event processed after a failed delivery
        select date_trunc('hour', w.received_at), count(*) from public.stripe_webhook_events w
        where w.status = 'processed' and w.attempts > 1 and w.received_at > now() - interval '24 hours' group by 1
      )
      select jsonb_agg(jsonb_build_object(
        'hour', h.hour,
        'duplicates', coalesce((select sum(d.n) from duplicates d where d.hour = h.hour), 0),
        'faults', coalesce((select sum(f.n) from faults f where f.hour = h.hour), 0)) order by h.hour)
      from hours h))
  into v_result;
  return v_result;
end
$$;

-- Stripe operations in one state (any when null), the most recently changed first.
create or replace function public.operator_operations(p_status text default null, p_limit integer default 50)
returns jsonb
language plpgsql stable security definer set search_path = '' as $$
declare
  v_result jsonb;
begin
  perform private.require_platform_admin();
  select coalesce(jsonb_agg(private.operation_json(k) order by k.updated_at desc), '[]') into v_result
  from (select * from public.stripe_idempotency_keys k
        where p_status is null or k.status = p_status
        order by k.updated_at desc limit least(greatest(p_limit, 1), 500)) as k;
  return v_result;
end
$$;

-- A platform admin settles an operation that needs attention with what the Stripe dashboard shows: the
-- object (p_result, e.g. {"id": "tr_..."}) or, once Stripe has forgotten the key, that there is none
-- (p_error). resolve_stripe_operation holds the rules and settles the order, refund or payout with it.
create or replace function public.operator_resolve(
  p_operation_type text,
  p_operation_id text,
  p_result jsonb default null,
  p_error jsonb default null
) returns jsonb
language plpgsql security definer set search_path = '' as $$
begin
  perform private.require_platform_admin();
  return public.resolve_stripe_operation(p_operation_type, p_operation_id, p_result, p_error);
end
$$;

------------------------------------------------------------------------------------------------------
-- Grants
------------------------------------------------------------------------------------------------------
revoke execute on function
  private.is_platform_admin(),
  private.require_platform_admin(),
  private.order_detail_json(uuid),
  private.operation_json(public.stripe_idempotency_keys)
from public, anon, authenticated, service_role;

revoke execute on function
  public.get_event(uuid),
  public.get_checkout_order(uuid, text),
  public.get_wallet_history(text, integer),
  public.list_organiser_orders(integer),
  public.list_payouts(integer),
  public.operator_overview(),
  public.operator_operations(text, integer),
  public.operator_resolve(text, text, jsonb, jsonb)
from public, anon, authenticated, service_role;

grant execute on function public.get_event(uuid), public.get_checkout_order(uuid, text) to anon, authenticated;
grant execute on function
  public.get_wallet_history(text, integer),
  public.list_organiser_orders(integer),
  public.list_payouts(integer),
  public.operator_overview(),
  public.operator_operations(text, integer),
  public.operator_resolve(text, text, jsonb, jsonb)
to authenticated;
