-- Red team of issue 13 (the browser half), the SQL side:
-- 1. An operator no longer settles an operation with an object id the database cannot check: operator_resolve
--    (executable by authenticated, migration 20261130000100) is dropped. The `operator-resolve` function
--    checks the caller is a platform admin, reads the operation here (stripe_operation_to_resolve), retrieves
--    the object from Stripe and matches it against the operation by its declaration's rules
--    (_shared/operations.ts), and only then calls resolve_stripe_operation with the service role.
-- 2. list_organiser_orders names the buyer (a guest's email, or the account's) only for orders that were
--    paid: an expired checkout is someone who did not buy, and the organiser has no business with them.

drop function if exists public.operator_resolve(text, text, jsonb, jsonb);

-- What the operator-resolve function needs to check an operator's object against an operation that needs
-- attention: its stored parameters (the look-up's keys) and when it began; 404 when there is no such
-- operation, 409 when it does not need attention (resolve_stripe_operation refuses it too, after Stripe).
create or replace function public.stripe_operation_to_resolve(p_operation_type text, p_operation_id text)
returns jsonb
language plpgsql stable security definer set search_path = '' as $$
declare
  v_row public.stripe_idempotency_keys;
begin
  select * into v_row from public.stripe_idempotency_keys k
  where k.operation_type = p_operation_type and k.operation_id = p_operation_id;
  if not found then
    raise exception 'No operation %/%', p_operation_type, p_operation_id
      using errcode = 'PT404', hint = 'operation-not-found';
  end if;
  if v_row.status <> 'needs_attention' then
    raise exception 'Operation %/% is %: only an operation that needs attention is resolved by hand',
      p_operation_type, p_operation_id, v_row.status using errcode = 'PT409', hint = 'operation-not-needing-attention';
  end if;
  return jsonb_build_object(
    'operation_type', v_row.operation_type, 'operation_id', v_row.operation_id, 'status', v_row.status,
    'request_params', v_row.request_params, 'created_at', v_row.created_at,
    'no_object_allowed', private.stripe_key_forgotten(v_row.created_at));
end
$$;

-- As in migration 20261130000100, with `buyer` only for orders that were paid.
create or replace function public.list_organiser_orders(p_limit integer default 50) returns jsonb
language sql stable security definer set search_path = '' as $$
  select coalesce(jsonb_agg(
    private.order_detail_json(o.id) || jsonb_build_object(
      'buyer', case when o.status in ('paid', 'partially_refunded', 'refunded', 'disputed')
                    then coalesce(o.guest_email, u.email) end,
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

revoke execute on function public.stripe_operation_to_resolve(text, text) from public, anon, authenticated;
grant execute on function public.stripe_operation_to_resolve(text, text) to service_role;
revoke execute on function public.list_organiser_orders(integer) from public, anon, authenticated, service_role;
grant execute on function public.list_organiser_orders(integer) to authenticated;
