-- Checkout in two database round trips (one for a replay): the steps the idempotency core runs for
-- any operation, merged for the busiest endpoint.
--   start_checkout  = claim the request's Idempotency-Key + begin_checkout + the Checkout Session's
--                     parameters + claim the Stripe operation             (replay: the stored answer)
--   finish_checkout = record the session (complete_checkout_session) + store the answer for the key
-- A refusal raised by begin_checkout (sold out, unknown event, ...) rolls the claim back with it, so a
-- refused request leaves nothing behind.

-- The Checkout Session for an order: every amount from the order's rows, nothing from the request.
-- One line per tier and one for the service fee; the session expires with the order's holds.
create or replace function private.checkout_session_params(p_order_id uuid, p_ui_mode text, p_site_url text)
returns jsonb
language sql stable security definer set search_path = '' as $$
  select jsonb_strip_nulls(jsonb_build_object(
    'mode', 'payment',
    'ui_mode', p_ui_mode,
    'line_items', (
      select jsonb_agg(line order by ord)
      from (
        select jsonb_build_object('quantity', i.quantity, 'price_data', jsonb_build_object(
                 'currency', o.currency, 'unit_amount', i.unit_price_cents,
                 'product_data', jsonb_build_object('name', e.title || ' - ' || t.name))) as line,
               row_number() over (order by t.price_cents, t.name) as ord
        from events.order_items i join events.ticket_tiers t on t.id = i.tier_id
        where i.order_id = o.id
        union all
        select jsonb_build_object('quantity', 1, 'price_data', jsonb_build_object(
                 'currency', o.currency, 'unit_amount', o.fee_cents,
                 'product_data', jsonb_build_object('name', 'Service fee'))), 1000000
        where o.fee_cents > 0
      ) as lines),
    'metadata', jsonb_build_object('order_id', o.id),
    'client_reference_id', o.id,
    'expires_at', extract(epoch from o.hold_expires_at)::bigint,
    'payment_intent_data', jsonb_build_object('metadata', jsonb_build_object('order_id', o.id),
      'transfer_group', 'order_' || o.id),
    'customer_email', o.guest_email,
    case when p_ui_mode = 'embedded' then 'return_url' else 'success_url' end,
      rtrim(p_site_url, '/') || '/orders/' || o.id || '?session_id={CHECKOUT_SESSION_ID}'))
  from events.orders o join events.events e on e.id = o.event_id
  where o.id = p_order_id
$$;

create or replace function public.start_checkout(
  p_scope text,
  p_idempotency_key text,
  p_endpoint text,
  p_fingerprint text,
  p_order_id uuid,
  p_stripe_idempotency_key text,
  p_event_id uuid,
  p_items jsonb,
  p_ui_mode text,
  p_site_url text,
  p_buyer_id uuid default null,
  p_guest_email text default null,
  p_client_ip text default null,
  p_request_lease_seconds integer default 90,
  p_stripe_lease_seconds integer default 60
) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v_request jsonb;
  v_order jsonb;
  v_order_id uuid;
begin
  if p_ui_mode not in ('hosted', 'embedded') then
    raise exception 'ui_mode must be hosted or embedded, got %', p_ui_mode using errcode = '22023';
  end if;
  v_request := public.claim_idempotency_key(p_scope, p_idempotency_key, p_endpoint, p_fingerprint, p_request_lease_seconds);
  if v_request ->> 'outcome' <> 'acquired' then
    return jsonb_build_object('request', v_request);
  end if;
  v_order := private.begin_checkout(p_scope, p_idempotency_key, p_order_id, p_event_id, p_items, p_buyer_id,
    p_guest_email, p_client_ip);
  v_order_id := (v_order ->> 'order_id')::uuid;
  return jsonb_build_object(
    'request', v_request,
    'order', v_order,
    'stripe', public.claim_stripe_operation('checkout:create', v_order_id::text, p_stripe_idempotency_key,
      private.checkout_session_params(v_order_id, p_ui_mode, p_site_url), p_buyer_id, '{}', p_stripe_lease_seconds));
end
$$;

create or replace function public.finish_checkout(
  p_scope text,
  p_idempotency_key text,
  p_request_token bigint,
  p_response_status integer,
  p_response_headers jsonb,
  p_response_body text,
  p_order_id uuid default null,
  p_stripe_token bigint default null,
  p_session jsonb default null
) returns jsonb
language plpgsql security definer set search_path = '' as $$
begin
  if p_stripe_token is not null then
    perform public.complete_checkout_session(p_order_id, p_stripe_token, p_session);
  end if;
  return private.finish_idempotency_key(p_scope, p_idempotency_key, p_request_token,
    case when p_response_status < 400 then 'completed' else 'failed' end,
    p_response_status, p_response_headers, p_response_body);
end
$$;

revoke execute on function private.checkout_session_params(uuid, text, text)
from public, anon, authenticated, service_role;

revoke execute on function
  public.start_checkout(text, text, text, text, uuid, text, uuid, jsonb, text, text, uuid, text, text, integer, integer),
  public.finish_checkout(text, text, bigint, integer, jsonb, text, uuid, bigint, jsonb)
from public, anon, authenticated;

grant execute on function
  public.start_checkout(text, text, text, text, uuid, text, uuid, jsonb, text, text, uuid, text, text, integer, integer),
  public.finish_checkout(text, text, bigint, integer, jsonb, text, uuid, bigint, jsonb)
to service_role;
