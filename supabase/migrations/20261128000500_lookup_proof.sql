-- What the protocol model (model/protocol.pml) showed, applied:
-- - "Stripe holds no object" proves nothing while a request with the operation's key could still execute.
--   It proves absence once the key has a saved 5xx (the driver knows that), or once Stripe has forgotten the
--   key and no holder from within its window can be alive: 24 hours and 5 minutes after the operation
--   began. A look-up that finds nothing before then defers the operation (its lease runs to that moment)
--   and looks again: defer_stripe_operation, and `absent_is_proof` in the claim.
-- - An operator settles only what needs attention (not an in_progress row whose holder may still be
--   sending), and may declare "no object" only once the key can no longer execute.

create or replace function private.stripe_key_forgotten(p_created_at timestamptz)
returns boolean
language sql stable security definer set search_path = '' as $$
  select p_created_at < now() - interval '24 hours 5 minutes'
$$;

create or replace function private.stripe_operation_json(k public.stripe_idempotency_keys, outcome text)
returns jsonb
language sql stable security definer set search_path = '' as $$
  select jsonb_build_object(
    'outcome', outcome,
    'operation_type', k.operation_type,
    'operation_id', k.operation_id,
    'status', k.status,
    'mode', case when private.stripe_key_window_passed(k.created_at, k.request_params) or k.evidence is not null
                 then 'lookup' else 'send' end,
    'absent_is_proof', private.stripe_key_forgotten(k.created_at),
    'stripe_idempotency_key', k.stripe_idempotency_key,
    'fencing_token', k.fencing_token,
    'attempts', k.attempts,
    'created_at', k.created_at,
    'locked_until', k.locked_until,
    'request_params', k.request_params,
    'stripe_resource_id', k.stripe_resource_id,
    'response', k.response,
    'error', k.error
  )
$$;

-- A look-up found nothing while the key could still execute: the holder keeps the row in progress, leased
-- until Stripe will have forgotten the key, and gives up its hold (the next claim after that looks again).
create or replace function public.defer_stripe_operation(
  p_operation_type text,
  p_operation_id text,
  p_fencing_token bigint,
  p_reason text default null
) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v_row public.stripe_idempotency_keys;
  v_refusal text[];
begin
  update public.stripe_idempotency_keys k
  set locked_until = greatest(now(), k.created_at + interval '24 hours 5 minutes'), updated_at = now(),
      last_error = left(coalesce(p_reason, 'deferred until Stripe forgets the key'), 2000)
  where k.operation_type = p_operation_type and k.operation_id = p_operation_id
    and k.status = 'in_progress' and k.fencing_token = p_fencing_token
  returning k.* into v_row;
  if found then
    return private.stripe_operation_json(v_row, 'deferred');
  end if;
  select * into v_row from public.stripe_idempotency_keys k
  where k.operation_type = p_operation_type and k.operation_id = p_operation_id;
  v_refusal := private.stripe_holder_refusal(v_row, p_operation_type, p_operation_id, p_fencing_token, 'defer');
  raise exception using errcode = v_refusal[1], message = v_refusal[2];
end
$$;

-- For an operator: settles an operation that needs attention with what the Stripe dashboard shows - the
-- object (p_result, e.g. {"id": "re_...", "status": "succeeded"}) or why there is none (p_error, accepted
-- only once Stripe has forgotten the key, so that no request with it can still create the object) -
-- through the operation type's own RPCs (private.stripe_operation_types), with its order, refund or payout.
create or replace function public.resolve_stripe_operation(
  p_operation_type text,
  p_operation_id text,
  p_result jsonb default null,
  p_error jsonb default null
) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v_row public.stripe_idempotency_keys;
  v_type private.stripe_operation_types;
  v_schema text;
  v_name text;
  v_result jsonb;
begin
  if (p_result is null) = (p_error is null) then
    raise exception 'Give either the Stripe object (p_result) or why there is none (p_error)' using errcode = '22023';
  end if;
  select * into v_type from private.stripe_operation_types t where t.operation_type = p_operation_type;
  if not found then
    raise exception 'No business row for operation type %: use record_stripe_idempotency', p_operation_type
      using errcode = '22023';
  end if;
  select * into v_row from public.stripe_idempotency_keys k
  where k.operation_type = p_operation_type and k.operation_id = p_operation_id
  for update;
  if not found or v_row.status <> 'needs_attention' then
    raise exception 'Operation %/% is %: only an operation that needs attention is resolved by hand',
      p_operation_type, p_operation_id, coalesce(v_row.status, 'unknown') using errcode = 'PT409';
  end if;
  if p_error is not null and not private.stripe_key_forgotten(v_row.created_at) then
    raise exception 'Operation %/% may still be carried out by Stripe with its key until %: settle it with the object, or wait',
      p_operation_type, p_operation_id, v_row.created_at + interval '24 hours 5 minutes' using errcode = 'PT409';
  end if;
  select n.nspname, p.proname into v_schema, v_name
  from pg_catalog.pg_proc p join pg_catalog.pg_namespace n on n.oid = p.pronamespace
  where p.oid = case when p_result is not null then v_type.complete_fn else v_type.fail_fn end;
  execute format('select %I.%I($1, $2, $3)', v_schema, v_name)
    into v_result
    using p_operation_id::uuid, v_row.fencing_token, coalesce(p_result, p_error);
  return v_result;
end
$$;

revoke execute on function private.stripe_key_forgotten(timestamptz) from public, anon, authenticated, service_role;
revoke execute on function public.defer_stripe_operation(text, text, bigint, text) from public, anon, authenticated;
grant execute on function public.defer_stripe_operation(text, text, bigint, text) to service_role;

-- A business row settled without a Stripe object answers with its operation's stored failure while the
-- operation's record is kept (a refusal, or a look-up's proof that nothing was made), and with
-- `operation-closed` once it was purged. Otherwise as before (migration 20261127000300).
create or replace function private.claim_row_operation(
  p_operation_type text, p_operation_id uuid, p_stripe_idempotency_key text, p_params jsonb, p_user_id uuid,
  p_lease_seconds integer, p_stripe_resource_id text, p_settled boolean, p_new boolean
) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v_row public.stripe_idempotency_keys;
begin
  if p_stripe_resource_id is not null then
    return jsonb_build_object('outcome', 'replay', 'status', 'completed', 'stripe_resource_id', p_stripe_resource_id,
      'response', jsonb_build_object('id', p_stripe_resource_id));
  end if;
  if p_settled then
    select * into v_row from public.stripe_idempotency_keys k
    where k.operation_type = p_operation_type and k.operation_id = p_operation_id::text;
    if v_row.status = 'failed' then
      return private.stripe_operation_json(v_row, 'replay');
    end if;
    raise exception '% % was settled without a Stripe object', p_operation_type, p_operation_id
      using errcode = 'PT409', hint = 'operation-closed';
  end if;
  if not p_new then
    perform 1 from public.stripe_idempotency_keys k
    where k.operation_type = p_operation_type and k.operation_id = p_operation_id::text
    for update;
    if not found then
      raise exception '% % has no record of its Stripe call; an operator must settle it', p_operation_type,
        p_operation_id using errcode = 'PT409', hint = 'operation-needs-attention';
    end if;
  end if;
  return public.claim_stripe_operation(p_operation_type, p_operation_id::text, p_stripe_idempotency_key, p_params,
    p_user_id, '{}', p_lease_seconds);
end
$$;
