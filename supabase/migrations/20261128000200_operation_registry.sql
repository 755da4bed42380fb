-- One registry of Stripe operations, and outcomes settled by looking them up.
--
-- private.stripe_operation_types is the SQL side of supabase/functions/_shared/operations.ts: each
-- operation type with the RPCs that record its outcome together with its business row. Operators'
-- resolution dispatches from it instead of a hand-written CASE; a test holds it equal to the TypeScript
-- declarations and checks each RPC in pg_proc.
--
-- An acquired claim now says how the holder settles it (`mode`): `send` the stored request with the
-- stored key, or `lookup` the object in Stripe, when the key can no longer settle it: Stripe's 24 h key
-- window passed (private.stripe_key_window_passed), there are no stored parameters (adopted from the old
-- plan), or an earlier look-up could not decide (the row has `evidence`). Such rows are no longer parked
-- as needs_attention on sight; needs_attention is what a look-up that cannot decide leaves, with what it
-- found, and the reconciler looks again every 15 minutes.

create table if not exists private.stripe_operation_types (
  operation_type text primary key,
  -- (business id uuid, fencing token bigint, Stripe object or error jsonb) -> jsonb, one transaction
  complete_fn regprocedure not null,
  fail_fn regprocedure not null
);
alter table private.stripe_operation_types enable row level security;
revoke all on table private.stripe_operation_types from public, anon, authenticated, service_role;

insert into private.stripe_operation_types (operation_type, complete_fn, fail_fn) values
  ('checkout:create', 'public.complete_checkout_session(uuid, bigint, jsonb)', 'public.fail_checkout_session(uuid, bigint, jsonb)'),
  ('refund:create', 'public.complete_refund(uuid, bigint, jsonb)', 'public.fail_refund(uuid, bigint, jsonb)'),
  ('payout:create', 'public.complete_payout(uuid, bigint, jsonb)', 'public.fail_payout(uuid, bigint, jsonb)')
on conflict (operation_type) do update set complete_fn = excluded.complete_fn, fail_fn = excluded.fail_fn;

-- What the last look-up found when it could not decide (shown to operators).
alter table public.stripe_idempotency_keys add column if not exists evidence jsonb;

-- The row as the TypeScript core reads it, with how an acquired claim is to be settled.
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

-- Claims an operation before its Stripe call. Outcomes:
--   acquired    new, or an expired lease taken over (same Stripe key, fencing token + 1, attempts + 1);
--               `mode` says whether to send or to look up
--   replay      completed, failed or needs_attention: the stored result
--   in_progress another holder's lease runs until locked_until
--   mismatch    the operation exists with other parameters
-- The insert ... on conflict do nothing is the atomic step. A single statement cannot also read the
-- row a concurrent claimer committed after the statement's snapshot was taken, so the read and the
-- takeover are statements of their own, in this same transaction.
create or replace function public.claim_stripe_operation(
  p_operation_type text,
  p_operation_id text,
  p_stripe_idempotency_key text,
  p_params jsonb,
  p_user_id uuid default null,
  p_metadata jsonb default '{}',
  p_lease_seconds integer default 60
) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v_fingerprint text;
  v_row public.stripe_idempotency_keys;
begin
  if p_operation_type is null or p_operation_id is null or p_params is null
     or p_stripe_idempotency_key is null then
    raise exception 'Cannot claim an operation without its type, id, Stripe key and parameters'
      using errcode = '22023';
  end if;
  if p_lease_seconds not between 1 and 3600 then
    raise exception 'Lease must be between 1 and 3600 seconds, got %', p_lease_seconds using errcode = '22023';
  end if;
  v_fingerprint := encode(sha256(convert_to(p_params::text, 'UTF8')), 'hex');

  insert into public.stripe_idempotency_keys as k (
    operation_type, operation_id, stripe_idempotency_key, status, request_fingerprint, request_params,
    locked_until, fencing_token, attempts, user_id, metadata)
  values (
    p_operation_type, p_operation_id, p_stripe_idempotency_key, 'in_progress', v_fingerprint, p_params,
    now() + make_interval(secs => p_lease_seconds), 1, 1, p_user_id, coalesce(p_metadata, '{}'))
  on conflict (operation_type, operation_id) do nothing
  returning k.* into v_row;
  if found then
    return private.stripe_operation_json(v_row, 'acquired');
  end if;

  for attempt in 1..5 loop
    select * into v_row from public.stripe_idempotency_keys k
    where k.operation_type = p_operation_type and k.operation_id = p_operation_id;
    if not found then
      raise exception 'Cannot claim operation ''%/%'': it vanished while being claimed',
        p_operation_type, p_operation_id using errcode = '40001';
    end if;
    if v_row.request_fingerprint is not null and v_row.request_fingerprint <> v_fingerprint then
      return private.stripe_operation_json(v_row, 'mismatch');
    end if;
    if v_row.status <> 'in_progress' then
      return private.stripe_operation_json(v_row, 'replay');
    end if;
    if v_row.locked_until > now() then
      return private.stripe_operation_json(v_row, 'in_progress');
    end if;
    update public.stripe_idempotency_keys k
    set locked_until = now() + make_interval(secs => p_lease_seconds),
        fencing_token = k.fencing_token + 1,
        attempts = k.attempts + 1,
        updated_at = now()
    where k.id = v_row.id and k.status = 'in_progress' and k.locked_until <= now()
    returning k.* into v_row;
    if found then
      return private.stripe_operation_json(v_row, 'acquired');
    end if;
    -- another claimer took it over first: read it again
  end loop;
  raise exception 'Cannot claim operation ''%/%'': it changed hands five times during the claim',
    p_operation_type, p_operation_id using errcode = '40001';
end
$$;

-- A look-up could not decide (several objects, one that does not match, no look-up declared): the row
-- needs a person, with what was found. Only the current holder may park it.
create or replace function public.attention_stripe_operation(
  p_operation_type text,
  p_operation_id text,
  p_fencing_token bigint,
  p_evidence jsonb
) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v_row public.stripe_idempotency_keys;
  v_refusal text[];
begin
  update public.stripe_idempotency_keys k
  set status = 'needs_attention', locked_until = null, updated_at = now(),
      evidence = coalesce(p_evidence, '{}'), last_error = left('look-up undecided: ' || coalesce(p_evidence::text, ''), 2000)
  where k.operation_type = p_operation_type and k.operation_id = p_operation_id
    and k.status = 'in_progress' and k.fencing_token = p_fencing_token
  returning k.* into v_row;
  if found then
    return private.stripe_operation_json(v_row, 'needs_attention');
  end if;
  select * into v_row from public.stripe_idempotency_keys k
  where k.operation_type = p_operation_type and k.operation_id = p_operation_id;
  v_refusal := private.stripe_holder_refusal(v_row, p_operation_type, p_operation_id, p_fencing_token, 'park');
  raise exception using errcode = v_refusal[1], message = v_refusal[2];
end
$$;

-- The reconciler's bulk claim, `for update skip locked` so that concurrent reconcilers share the work:
-- operations whose lease ran out, and registered ones that need attention and were last looked at 15
-- minutes ago or more (looked up again). Each comes back as an acquired claim with its mode.
create or replace function public.claim_stale_stripe_operations(
  p_limit integer default 25,
  p_lease_seconds integer default 300
) returns jsonb
language sql security definer set search_path = '' as $$
  with stale as (
    select k.id from public.stripe_idempotency_keys k
    where (k.status = 'in_progress' and k.locked_until <= now())
       or (k.status = 'needs_attention' and k.updated_at <= now() - interval '15 minutes'
           and exists (select from private.stripe_operation_types t where t.operation_type = k.operation_type))
    order by coalesce(k.locked_until, k.updated_at)
    limit least(greatest(p_limit, 1), 500)
    for update skip locked
  ),
  claimed as (
    update public.stripe_idempotency_keys k
    set status = 'in_progress', locked_until = now() + make_interval(secs => p_lease_seconds),
        fencing_token = k.fencing_token + 1, attempts = k.attempts + 1, updated_at = now()
    from stale where k.id = stale.id
    returning k.*
  )
  select jsonb_build_object(
    'claimed', coalesce((select jsonb_agg(private.stripe_operation_json(c, 'acquired')) from claimed c), '[]'))
$$;

-- For an operator: settles an operation that needs attention (or whose holder vanished) with what the
-- Stripe dashboard shows - the object (p_result, e.g. {"id": "re_...", "status": "succeeded"}) or why there
-- is none (p_error) - through the operation type's own RPCs (private.stripe_operation_types), so the
-- order, refund or payout is settled in the same transaction.
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
  if not found or v_row.status not in ('needs_attention', 'in_progress')
     or (v_row.status = 'in_progress' and v_row.locked_until > now()) then
    raise exception 'Operation %/% is %: nothing to resolve', p_operation_type, p_operation_id,
      coalesce(v_row.status, 'unknown') using errcode = 'PT409';
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

revoke execute on function public.attention_stripe_operation(text, text, bigint, jsonb)
from public, anon, authenticated;
grant execute on function public.attention_stripe_operation(text, text, bigint, jsonb) to service_role;
