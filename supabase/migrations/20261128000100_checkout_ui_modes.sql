-- Checkout Session `ui_mode` as the API accepts it since 2026-03-25.dahlia: `hosted_page` and
-- `embedded_page` (docs.stripe.com/changelog/dahlia/2026-03-25/updates-available-checkout-session-ui-modes;
-- stripe@23.1.0 `Checkout/Sessions.d.ts`). The endpoints keep `hosted` / `embedded` as their own body
-- values (supabase/functions/_shared/stripe_contract.ts, UI_MODE_OF); the parameters name Stripe's.
create or replace function private.checkout_session_params(p_order_id uuid, p_ui_mode text, p_site_url text)
returns jsonb
language sql stable security definer set search_path = '' as $$
  select jsonb_strip_nulls(jsonb_build_object(
    'mode', 'payment',
    'ui_mode', case p_ui_mode when 'embedded' then 'embedded_page' else 'hosted_page' end,
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

revoke execute on function private.checkout_session_params(uuid, text, text)
from public, anon, authenticated, service_role;
