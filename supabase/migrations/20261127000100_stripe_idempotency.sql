-- The idempotency core: one state machine for every Stripe side effect (public.stripe_idempotency_keys)
-- and one for every inbound HTTP request with an Idempotency-Key header (public.idempotency_keys).
--
-- Row states: in_progress (a lease `locked_until` and a fencing token) -> completed (Stripe resource
-- id + the response fields to answer again) | failed (a terminal Stripe error, replayed as such).
-- Only the holder of the current fencing token may complete, fail or release. An expired lease may be
-- taken over: same Stripe key, token + 1, attempts + 1.
--
-- This migration also adopts the old plan's tables where they exist (same names, fewer columns):
-- nothing is dropped, old rows with a Stripe resource id become completed, the others in_progress
-- with an expired lease so that the reconciler picks them up.

------------------------------------------------------------------------------------------------------
-- Outbound: Stripe operations
------------------------------------------------------------------------------------------------------
create table if not exists public.stripe_idempotency_keys (
  id uuid primary key default gen_random_uuid(),
  operation_type text not null,                 -- 'checkout:create', 'refund:create', 'payout:create'
  operation_id text not null,                   -- a stable internal id: order, refund or payout id
  stripe_idempotency_key text not null unique,  -- operation_type:operation_id:UUID, generated once
  status text not null default 'in_progress',
  request_fingerprint text,                     -- sha256 of request_params (canonical jsonb text)
  request_params jsonb,                         -- what was sent to Stripe: the reconciler re-sends it
  stripe_resource_id text,
  response jsonb,                               -- the fields needed to answer again
  error jsonb,                                  -- the terminal Stripe error of a failed operation
  locked_until timestamptz,
  fencing_token bigint not null default 0,
  attempts integer not null default 0,
  last_error text,
  user_id uuid references auth.users (id) on delete set null,
  metadata jsonb not null default '{}',
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  completed_at timestamptz,
  expires_at timestamptz,                       -- when a finished row may be purged
  unique (operation_type, operation_id)
);

-- The old plan's table lacks the state machine's columns.
alter table public.stripe_idempotency_keys
  add column if not exists status text,
  add column if not exists request_fingerprint text,
  add column if not exists request_params jsonb,
  add column if not exists response jsonb,
  add column if not exists error jsonb,
  add column if not exists locked_until timestamptz,
  add column if not exists fencing_token bigint,
  add column if not exists attempts integer,
  add column if not exists last_error text,
  add column if not exists updated_at timestamptz,
  add column if not exists completed_at timestamptz;

update public.stripe_idempotency_keys
set status = case when stripe_resource_id is not null then 'completed' else 'in_progress' end,
    locked_until = case when stripe_resource_id is null then now() end,
    completed_at = case when stripe_resource_id is not null then coalesce(created_at, now()) end,
    expires_at = case when stripe_resource_id is not null then expires_at end,
    fencing_token = coalesce(fencing_token, 0),
    attempts = coalesce(attempts, 0)
where status is null;

update public.stripe_idempotency_keys set metadata = '{}' where metadata is null;
update public.stripe_idempotency_keys set created_at = now() where created_at is null;
update public.stripe_idempotency_keys set updated_at = created_at where updated_at is null;

alter table public.stripe_idempotency_keys
  alter column status set default 'in_progress',
  alter column status set not null,
  alter column fencing_token set default 0,
  alter column fencing_token set not null,
  alter column attempts set default 0,
  alter column attempts set not null,
  alter column metadata set default '{}',
  alter column metadata set not null,
  alter column created_at set default now(),
  alter column created_at set not null,
  alter column updated_at set default now(),
  alter column updated_at set not null,
  drop constraint if exists stripe_idempotency_keys_state_check,
  add constraint stripe_idempotency_keys_state_check check (
    (status = 'in_progress' and locked_until is not null)
    or (status = 'completed' and stripe_resource_id is not null)
    or (status = 'failed' and error is not null)
    or status = 'needs_attention'
  ),
  drop constraint if exists stripe_idempotency_keys_key_check,
  add constraint stripe_idempotency_keys_key_check check (stripe_idempotency_key ~ '^[[:graph:]]{1,255}$');

-- The claim is served by the unique (operation_type, operation_id) index; these two serve the
-- reconciler's scan for expired leases and the purge. The old plan's other indexes duplicated the
-- unique constraints or served no query.
drop index if exists public.idx_stripe_idempotency_keys_operation;
drop index if exists public.idx_stripe_idempotency_keys_stripe_key;
drop index if exists public.idx_stripe_idempotency_keys_user;
drop index if exists public.idx_stripe_idempotency_keys_expires;
create index if not exists stripe_idempotency_keys_lease_idx
  on public.stripe_idempotency_keys (locked_until) where status = 'in_progress';
create index if not exists stripe_idempotency_keys_purge_idx
  on public.stripe_idempotency_keys (expires_at) where status in ('completed', 'failed');

------------------------------------------------------------------------------------------------------
-- Inbound: HTTP requests carrying an Idempotency-Key header
------------------------------------------------------------------------------------------------------
create table if not exists public.idempotency_keys (
  scope text not null,                          -- the caller: 'user:<uuid>' or 'guest:<sha256 of email>'
  key text not null,                            -- the client's Idempotency-Key
  endpoint text,
  request_fingerprint text,                     -- sha256 of endpoint + canonical JSON payload
  status text not null default 'in_progress',
  locked_until timestamptz,
  fencing_token bigint not null default 0,
  response_status integer,
  response_headers jsonb,
  response_body text,                           -- byte for byte, for the replay
  created_at timestamptz not null default now(),
  completed_at timestamptz,
  expires_at timestamptz not null default now() + interval '24 hours',
  primary key (scope, key)
);

alter table public.idempotency_keys
  add column if not exists scope text,
  add column if not exists endpoint text,
  add column if not exists request_fingerprint text,
  add column if not exists status text,
  add column if not exists locked_until timestamptz,
  add column if not exists fencing_token bigint,
  add column if not exists response_status integer,
  add column if not exists response_headers jsonb,
  add column if not exists response_body text,
  add column if not exists completed_at timestamptz,
  add column if not exists expires_at timestamptz;

-- The old plan's table: (key text primary key, user_id uuid, response jsonb, created_at). Its rows
-- keep their stored response; they have no fingerprint, so any payload replays them.
do $$
begin
  if exists (select from information_schema.columns
             where table_schema = 'public' and table_name = 'idempotency_keys' and column_name = 'response') then
    execute $sql$
      update public.idempotency_keys
      set scope = coalesce('user:' || user_id::text, 'legacy'),
          status = case when response is not null then 'completed' else 'in_progress' end,
          locked_until = case when response is null then now() end,
          response_status = case when response is not null then 200 end,
          response_headers = case when response is not null then '{"content-type": "application/json"}'::jsonb end,
          response_body = response::text,
          completed_at = case when response is not null then coalesce(created_at, now()) end,
          expires_at = coalesce(created_at, now()) + interval '24 hours',
          fencing_token = 0
      where status is null
    $sql$;
  end if;
  -- The old primary key was (key) alone; a key is now unique per caller.
  if exists (
    select from pg_catalog.pg_constraint c
    where c.conrelid = 'public.idempotency_keys'::regclass and c.contype = 'p' and cardinality(c.conkey) = 1
  ) then
    alter table public.idempotency_keys drop constraint idempotency_keys_pkey;
    alter table public.idempotency_keys alter column scope set not null;
    alter table public.idempotency_keys add primary key (scope, key);
  end if;
end
$$;

update public.idempotency_keys set created_at = now() where created_at is null;

alter table public.idempotency_keys
  alter column status set default 'in_progress',
  alter column status set not null,
  alter column fencing_token set default 0,
  alter column fencing_token set not null,
  alter column created_at set default now(),
  alter column created_at set not null,
  alter column expires_at set default now() + interval '24 hours',
  alter column expires_at set not null,
  drop constraint if exists idempotency_keys_state_check,
  add constraint idempotency_keys_state_check check (
    (status = 'in_progress' and locked_until is not null)
    or (status in ('completed', 'failed') and response_status is not null and response_body is not null)
  ),
  drop constraint if exists idempotency_keys_key_check,
  add constraint idempotency_keys_key_check check (key ~ '^[[:graph:]]{1,255}$');

create index if not exists idempotency_keys_purge_idx on public.idempotency_keys (expires_at);

------------------------------------------------------------------------------------------------------
-- Access: no role reads or writes these tables directly; the functions below are the only way in.
------------------------------------------------------------------------------------------------------
alter table public.stripe_idempotency_keys enable row level security;
alter table public.idempotency_keys enable row level security;
drop policy if exists "stripe_idempotency_keys_service_role_all" on public.stripe_idempotency_keys;
drop policy if exists "stripe_idempotency_keys_users_select_own" on public.stripe_idempotency_keys;
revoke all on table public.stripe_idempotency_keys, public.idempotency_keys
  from public, anon, authenticated, service_role;

------------------------------------------------------------------------------------------------------
-- Stripe operations: claim, complete, fail, release
------------------------------------------------------------------------------------------------------

-- Helpers that the RPCs share live in `private`, a schema the Data API does not expose.
create schema if not exists private;
revoke all on schema private from public, anon, authenticated;

-- The row as the TypeScript core reads it.
create or replace function private.stripe_operation_json(k public.stripe_idempotency_keys, outcome text)
returns jsonb
language sql immutable security definer set search_path = '' as $$
  select jsonb_build_object(
    'outcome', outcome,
    'status', k.status,
    'stripe_idempotency_key', k.stripe_idempotency_key,
    'fencing_token', k.fencing_token,
    'attempts', k.attempts,
    'locked_until', k.locked_until,
    'request_params', k.request_params,
    'stripe_resource_id', k.stripe_resource_id,
    'response', k.response,
    'error', k.error
  )
$$;

-- Whether an operation may no longer be re-sent to Stripe: Stripe keeps idempotency keys for 24 hours, so
-- after 23 a re-sent call might create a second object; and an operation adopted from the old plan has no
-- stored parameters to re-send. Such operations become needs_attention, for a person to settle.
create or replace function private.stripe_key_window_passed(p_created_at timestamptz, p_params jsonb)
returns boolean
language sql stable security definer set search_path = '' as $$
  select p_created_at < now() - interval '23 hours' or p_params is null
$$;

-- Claims an operation before its Stripe call. Outcomes:
--   acquired    new, or an expired lease taken over (same Stripe key, fencing token + 1, attempts + 1)
--   replay      completed or failed: the stored result
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
    if private.stripe_key_window_passed(v_row.created_at, v_row.request_params) then
      update public.stripe_idempotency_keys k
      set status = 'needs_attention', locked_until = null, updated_at = now(),
          last_error = 'not re-sent: older than Stripe''s idempotency window or without stored parameters'
      where k.id = v_row.id and k.status = 'in_progress' and k.locked_until <= now()
      returning k.* into v_row;
      if found then
        return private.stripe_operation_json(v_row, 'replay');
      end if;
      continue;
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

-- Why a holder's finishing call was refused: {sqlstate, message}.
create or replace function private.stripe_holder_refusal(
  p_row public.stripe_idempotency_keys, p_operation_type text, p_operation_id text, p_fencing_token bigint,
  p_action text
) returns text[]
language sql stable security definer set search_path = '' as $$
  select case
    when p_row.id is null then array['PT404', format('Cannot %s operation ''%s/%s'': it does not exist',
      p_action, p_operation_type, p_operation_id)]
    when p_row.fencing_token <> p_fencing_token then array['PT409', format(
      'Cannot %s operation ''%s/%s'': fencing token %s is stale (the current one is %s)',
      p_action, p_operation_type, p_operation_id, p_fencing_token, p_row.fencing_token)]
    else array['PT409', format('Cannot %s operation ''%s/%s'': it is already %s',
      p_action, p_operation_type, p_operation_id, p_row.status)]
  end
$$;

-- Records the Stripe object an acquired operation created. Repeating the same call is harmless.
create or replace function public.complete_stripe_operation(
  p_operation_type text,
  p_operation_id text,
  p_fencing_token bigint,
  p_stripe_resource_id text,
  p_response jsonb default '{}',
  p_retention_days integer default 30
) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v_row public.stripe_idempotency_keys;
  v_refusal text[];
begin
  if p_stripe_resource_id is null then
    raise exception 'Cannot complete operation ''%/%'' without a Stripe resource id', p_operation_type, p_operation_id
      using errcode = '22023';
  end if;
  update public.stripe_idempotency_keys k
  set status = 'completed', stripe_resource_id = p_stripe_resource_id, response = coalesce(p_response, '{}'),
      locked_until = null, last_error = null, completed_at = now(), updated_at = now(),
      expires_at = now() + make_interval(days => p_retention_days)
  where k.operation_type = p_operation_type and k.operation_id = p_operation_id
    -- needs_attention too: a late holder's answer (or an operator's) still settles it
    and k.status in ('in_progress', 'needs_attention') and k.fencing_token = p_fencing_token
  returning k.* into v_row;
  if found then
    return private.stripe_operation_json(v_row, 'completed');
  end if;
  select * into v_row from public.stripe_idempotency_keys k
  where k.operation_type = p_operation_type and k.operation_id = p_operation_id;
  if v_row.status = 'completed' and v_row.fencing_token = p_fencing_token
     and v_row.stripe_resource_id = p_stripe_resource_id then
    return private.stripe_operation_json(v_row, 'completed');
  end if;
  v_refusal := private.stripe_holder_refusal(v_row, p_operation_type, p_operation_id, p_fencing_token, 'complete');
  raise exception using errcode = v_refusal[1], message = v_refusal[2];
end
$$;

-- Records a terminal Stripe error (a 4xx: the request executed and was refused); replayed as such.
create or replace function public.fail_stripe_operation(
  p_operation_type text,
  p_operation_id text,
  p_fencing_token bigint,
  p_error jsonb,
  p_retention_days integer default 30
) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v_row public.stripe_idempotency_keys;
  v_refusal text[];
begin
  if p_error is null then
    raise exception 'Cannot fail operation ''%/%'' without an error', p_operation_type, p_operation_id
      using errcode = '22023';
  end if;
  update public.stripe_idempotency_keys k
  set status = 'failed', error = p_error, locked_until = null, last_error = p_error ->> 'message',
      completed_at = now(), updated_at = now(), expires_at = now() + make_interval(days => p_retention_days)
  where k.operation_type = p_operation_type and k.operation_id = p_operation_id
    and k.status in ('in_progress', 'needs_attention') and k.fencing_token = p_fencing_token
  returning k.* into v_row;
  if found then
    return private.stripe_operation_json(v_row, 'failed');
  end if;
  select * into v_row from public.stripe_idempotency_keys k
  where k.operation_type = p_operation_type and k.operation_id = p_operation_id;
  if v_row.status = 'failed' and v_row.fencing_token = p_fencing_token then
    return private.stripe_operation_json(v_row, 'failed');
  end if;
  v_refusal := private.stripe_holder_refusal(v_row, p_operation_type, p_operation_id, p_fencing_token, 'fail');
  raise exception using errcode = v_refusal[1], message = v_refusal[2];
end
$$;

-- Gives up the lease after an unknown outcome (timeout, reset, 5xx, 409 from Stripe): the row stays
-- in_progress with the same Stripe key and may be claimed again at once.
create or replace function public.release_stripe_operation(
  p_operation_type text,
  p_operation_id text,
  p_fencing_token bigint,
  p_error text default null
) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v_row public.stripe_idempotency_keys;
  v_refusal text[];
begin
  update public.stripe_idempotency_keys k
  set locked_until = now(), last_error = left(p_error, 2000), updated_at = now()
  where k.operation_type = p_operation_type and k.operation_id = p_operation_id
    and k.status = 'in_progress' and k.fencing_token = p_fencing_token
  returning k.* into v_row;
  if found then
    return private.stripe_operation_json(v_row, 'released');
  end if;
  select * into v_row from public.stripe_idempotency_keys k
  where k.operation_type = p_operation_type and k.operation_id = p_operation_id;
  v_refusal := private.stripe_holder_refusal(v_row, p_operation_type, p_operation_id, p_fencing_token, 'release');
  raise exception using errcode = v_refusal[1], message = v_refusal[2];
end
$$;

------------------------------------------------------------------------------------------------------
-- Inbound requests: claim, complete, fail, release
------------------------------------------------------------------------------------------------------
create or replace function private.request_key_json(k public.idempotency_keys, outcome text)
returns jsonb
language sql immutable security definer set search_path = '' as $$
  select jsonb_build_object(
    'outcome', outcome,
    'status', k.status,
    'fencing_token', k.fencing_token,
    'locked_until', k.locked_until,
    'response_status', k.response_status,
    'response_headers', k.response_headers,
    'response_body', k.response_body
  )
$$;

-- Claims (scope, key) for one request. Outcomes as for Stripe operations; a key past its expiry is
-- treated as new, an expired lease is taken over.
create or replace function public.claim_idempotency_key(
  p_scope text,
  p_key text,
  p_endpoint text,
  p_fingerprint text,
  p_lease_seconds integer default 90,
  p_ttl_seconds integer default 86400
) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v_row public.idempotency_keys;
begin
  if p_scope is null or p_key is null or p_fingerprint is null then
    raise exception 'Cannot claim an idempotency key without its scope, key and fingerprint' using errcode = '22023';
  end if;
  if p_key !~ '^[[:graph:]]{1,255}$' then
    raise exception 'Idempotency key must be 1 to 255 visible ASCII characters' using errcode = '22023';
  end if;
  if p_lease_seconds not between 1 and 3600 or p_ttl_seconds not between 60 and 2592000 then
    raise exception 'Lease (1..3600 s) or time to live (60..2592000 s) out of range' using errcode = '22023';
  end if;

  insert into public.idempotency_keys as k (
    scope, key, endpoint, request_fingerprint, status, locked_until, fencing_token, expires_at)
  values (p_scope, p_key, p_endpoint, p_fingerprint, 'in_progress',
    now() + make_interval(secs => p_lease_seconds), 1, now() + make_interval(secs => p_ttl_seconds))
  on conflict (scope, key) do nothing
  returning k.* into v_row;
  if found then
    return private.request_key_json(v_row, 'acquired');
  end if;

  for attempt in 1..5 loop
    select * into v_row from public.idempotency_keys k where k.scope = p_scope and k.key = p_key;
    if not found then
      raise exception 'Cannot claim idempotency key ''%'': it vanished while being claimed', p_key
        using errcode = '40001';
    end if;
    if v_row.expires_at <= now() then
      -- expired: the key starts over, as if never seen
      update public.idempotency_keys k
      set endpoint = p_endpoint, request_fingerprint = p_fingerprint, status = 'in_progress',
          locked_until = now() + make_interval(secs => p_lease_seconds), fencing_token = k.fencing_token + 1,
          response_status = null, response_headers = null, response_body = null, completed_at = null,
          created_at = now(), expires_at = now() + make_interval(secs => p_ttl_seconds)
      where k.scope = p_scope and k.key = p_key and k.expires_at <= now()
      returning k.* into v_row;
    elsif v_row.request_fingerprint is not null and v_row.request_fingerprint <> p_fingerprint then
      return private.request_key_json(v_row, 'mismatch');
    elsif v_row.status <> 'in_progress' then
      return private.request_key_json(v_row, 'replay');
    elsif v_row.locked_until > now() then
      return private.request_key_json(v_row, 'in_progress');
    else
      update public.idempotency_keys k
      set locked_until = now() + make_interval(secs => p_lease_seconds), fencing_token = k.fencing_token + 1,
          request_fingerprint = coalesce(k.request_fingerprint, p_fingerprint)
      where k.scope = p_scope and k.key = p_key and k.status = 'in_progress' and k.locked_until <= now()
      returning k.* into v_row;
    end if;
    if found then
      return private.request_key_json(v_row, 'acquired');
    end if;
  end loop;
  raise exception 'Cannot claim idempotency key ''%'': it changed hands five times during the claim', p_key
    using errcode = '40001';
end
$$;

-- Stores a finished response under the current fencing token: 'completed' (2xx/3xx) or 'failed' (4xx).
create or replace function private.finish_idempotency_key(
  p_scope text, p_key text, p_fencing_token bigint, p_status text,
  p_response_status integer, p_response_headers jsonb, p_response_body text
) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v_row public.idempotency_keys;
begin
  if p_response_status is null or p_response_body is null then
    raise exception 'Cannot store a response without its status and body' using errcode = '22023';
  end if;
  update public.idempotency_keys k
  set status = p_status, response_status = p_response_status, response_headers = coalesce(p_response_headers, '{}'),
      response_body = p_response_body, locked_until = null, completed_at = now()
  where k.scope = p_scope and k.key = p_key and k.status = 'in_progress' and k.fencing_token = p_fencing_token
  returning k.* into v_row;
  if found then
    return private.request_key_json(v_row, p_status);
  end if;
  select * into v_row from public.idempotency_keys k where k.scope = p_scope and k.key = p_key;
  if v_row.status = p_status and v_row.fencing_token = p_fencing_token then
    return private.request_key_json(v_row, p_status);
  end if;
  raise exception 'Cannot store the response for idempotency key ''%'': %', p_key,
    case when v_row.key is null then 'it does not exist'
         when v_row.fencing_token <> p_fencing_token then
           format('fencing token %s is stale (the current one is %s)', p_fencing_token, v_row.fencing_token)
         else format('it is already %s', v_row.status) end
    using errcode = case when v_row.key is null then 'PT404' else 'PT409' end;
end
$$;

create or replace function public.complete_idempotency_key(
  p_scope text, p_key text, p_fencing_token bigint,
  p_response_status integer, p_response_headers jsonb, p_response_body text
) returns jsonb
language sql security definer set search_path = '' as $$
  select private.finish_idempotency_key(p_scope, p_key, p_fencing_token, 'completed',
    p_response_status, p_response_headers, p_response_body)
$$;

create or replace function public.fail_idempotency_key(
  p_scope text, p_key text, p_fencing_token bigint,
  p_response_status integer, p_response_headers jsonb, p_response_body text
) returns jsonb
language sql security definer set search_path = '' as $$
  select private.finish_idempotency_key(p_scope, p_key, p_fencing_token, 'failed',
    p_response_status, p_response_headers, p_response_body)
$$;

-- Gives the key back. After a 5xx of ours it stays bound to its payload and may be claimed at once;
-- with p_forget (the request was refused before anything was done) the row is deleted.
create or replace function public.release_idempotency_key(
  p_scope text, p_key text, p_fencing_token bigint, p_forget boolean default false
) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v_row public.idempotency_keys;
begin
  if p_forget then
    delete from public.idempotency_keys k
    where k.scope = p_scope and k.key = p_key and k.status = 'in_progress' and k.fencing_token = p_fencing_token
    returning k.* into v_row;
  else
    update public.idempotency_keys k
    set locked_until = now()
    where k.scope = p_scope and k.key = p_key and k.status = 'in_progress' and k.fencing_token = p_fencing_token
    returning k.* into v_row;
  end if;
  if not found then
    raise exception 'Cannot release idempotency key ''%'': fencing token % is not the current holder''s',
      p_key, p_fencing_token using errcode = 'PT409';
  end if;
  return private.request_key_json(v_row, case when p_forget then 'forgotten' else 'released' end);
end
$$;

------------------------------------------------------------------------------------------------------
-- Purge: expired rows in bounded batches; skip locked, so a purge never waits on (or blocks) a claim.
------------------------------------------------------------------------------------------------------
create or replace function public.purge_expired_idempotency(p_batch_size integer default 1000)
returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v_operations integer;
  v_requests integer;
begin
  if p_batch_size not between 1 and 10000 then
    raise exception 'Batch size must be between 1 and 10000, got %', p_batch_size using errcode = '22023';
  end if;
  with doomed as (
    select k.id from public.stripe_idempotency_keys k
    where k.status in ('completed', 'failed') and k.expires_at <= now()
    order by k.expires_at limit p_batch_size
    for update skip locked
  )
  delete from public.stripe_idempotency_keys k using doomed where k.id = doomed.id;
  get diagnostics v_operations = row_count;

  with doomed as (
    select k.scope, k.key from public.idempotency_keys k
    where k.expires_at <= now() and (k.status <> 'in_progress' or k.locked_until <= now())
    order by k.expires_at limit p_batch_size
    for update skip locked
  )
  delete from public.idempotency_keys k using doomed where k.scope = doomed.scope and k.key = doomed.key;
  get diagnostics v_requests = row_count;

  return jsonb_build_object('stripe_operations', v_operations, 'request_keys', v_requests);
end
$$;

------------------------------------------------------------------------------------------------------
-- The old plan's functions, same names and arguments, on the same state machine. They never swallow
-- an error: what fails raises.
------------------------------------------------------------------------------------------------------
drop function if exists public.check_stripe_idempotency(text, text);
create function public.check_stripe_idempotency(p_operation_type text, p_operation_id text)
returns jsonb
language plpgsql stable security definer set search_path = '' as $$
declare
  v_row public.stripe_idempotency_keys;
begin
  if p_operation_type is null or p_operation_id is null then
    raise exception 'check_stripe_idempotency needs an operation type and id' using errcode = '22023';
  end if;
  select * into v_row from public.stripe_idempotency_keys k
  where k.operation_type = p_operation_type and k.operation_id = p_operation_id;
  return jsonb_build_object(
    'is_completed', coalesce(v_row.status = 'completed', false),
    'status', v_row.status,
    'stripe_resource_id', v_row.stripe_resource_id,
    'stripe_idempotency_key', v_row.stripe_idempotency_key,
    'locked_until', v_row.locked_until,
    'created_at', v_row.created_at
  );
end
$$;

drop function if exists public.record_stripe_idempotency(text, text, text, text, uuid, jsonb, timestamptz);
drop function if exists public.record_stripe_idempotency(text, text, text, text, uuid, jsonb);
create function public.record_stripe_idempotency(
  p_operation_type text,
  p_operation_id text,
  p_stripe_idempotency_key text,
  p_stripe_resource_id text default null,
  p_user_id uuid default null,
  p_metadata jsonb default null,
  p_expires_at timestamptz default null
) returns uuid
language plpgsql security definer set search_path = '' as $$
declare
  v_row public.stripe_idempotency_keys;
  v_done boolean := p_stripe_resource_id is not null;
begin
  if p_operation_type is null or p_operation_id is null or p_stripe_idempotency_key is null then
    raise exception 'record_stripe_idempotency needs an operation type, id and Stripe key' using errcode = '22023';
  end if;
  insert into public.stripe_idempotency_keys as k (
    operation_type, operation_id, stripe_idempotency_key, status, stripe_resource_id, response, locked_until,
    completed_at, user_id, metadata, expires_at, fencing_token, attempts)
  values (
    p_operation_type, p_operation_id, p_stripe_idempotency_key,
    case when v_done then 'completed' else 'in_progress' end, p_stripe_resource_id,
    case when v_done then jsonb_build_object('id', p_stripe_resource_id) end,
    case when not v_done then now() end, case when v_done then now() end,
    p_user_id, coalesce(p_metadata, '{}'),
    case when v_done then coalesce(p_expires_at, now() + interval '30 days') end, 0, 1)
  on conflict (operation_type, operation_id) do nothing
  returning k.* into v_row;
  if found then
    return v_row.id;
  end if;

  select * into v_row from public.stripe_idempotency_keys k
  where k.operation_type = p_operation_type and k.operation_id = p_operation_id
  for update;
  if v_row.status = 'completed' then
    if not v_done or v_row.stripe_resource_id = p_stripe_resource_id then
      return v_row.id;
    end if;
    raise exception 'Cannot record operation ''%/%'' as %: it is completed with %',
      p_operation_type, p_operation_id, p_stripe_resource_id, v_row.stripe_resource_id using errcode = 'PT409';
  end if;
  if v_done then
    update public.stripe_idempotency_keys k
    set status = 'completed', stripe_resource_id = p_stripe_resource_id,
        response = coalesce(k.response, jsonb_build_object('id', p_stripe_resource_id)), error = null,
        locked_until = null, completed_at = now(), updated_at = now(),
        expires_at = coalesce(p_expires_at, now() + interval '30 days'),
        metadata = k.metadata || coalesce(p_metadata, '{}')
    where k.id = v_row.id;
  end if;
  return v_row.id;
end
$$;

drop function if exists public.cleanup_expired_idempotency_keys();
create function public.cleanup_expired_idempotency_keys()
returns integer
language sql security definer set search_path = '' as $$
  -- one bounded batch per call, as purge_expired_idempotency
  select (r ->> 'stripe_operations')::integer + (r ->> 'request_keys')::integer
  from public.purge_expired_idempotency(1000) as r
$$;

------------------------------------------------------------------------------------------------------
-- Grants: the service role (the functions' own calls) may execute the RPCs; nobody calls the helpers.
------------------------------------------------------------------------------------------------------
revoke execute on function
  private.stripe_key_window_passed(timestamptz, jsonb),
  private.stripe_operation_json(public.stripe_idempotency_keys, text),
  private.stripe_holder_refusal(public.stripe_idempotency_keys, text, text, bigint, text),
  private.request_key_json(public.idempotency_keys, text),
  private.finish_idempotency_key(text, text, bigint, text, integer, jsonb, text)
from public, anon, authenticated, service_role;

revoke execute on function
  public.claim_stripe_operation(text, text, text, jsonb, uuid, jsonb, integer),
  public.complete_stripe_operation(text, text, bigint, text, jsonb, integer),
  public.fail_stripe_operation(text, text, bigint, jsonb, integer),
  public.release_stripe_operation(text, text, bigint, text),
  public.claim_idempotency_key(text, text, text, text, integer, integer),
  public.complete_idempotency_key(text, text, bigint, integer, jsonb, text),
  public.fail_idempotency_key(text, text, bigint, integer, jsonb, text),
  public.release_idempotency_key(text, text, bigint, boolean),
  public.purge_expired_idempotency(integer),
  public.check_stripe_idempotency(text, text),
  public.record_stripe_idempotency(text, text, text, text, uuid, jsonb, timestamptz),
  public.cleanup_expired_idempotency_keys()
from public, anon, authenticated;

grant execute on function
  public.claim_stripe_operation(text, text, text, jsonb, uuid, jsonb, integer),
  public.complete_stripe_operation(text, text, bigint, text, jsonb, integer),
  public.fail_stripe_operation(text, text, bigint, jsonb, integer),
  public.release_stripe_operation(text, text, bigint, text),
  public.claim_idempotency_key(text, text, text, text, integer, integer),
  public.complete_idempotency_key(text, text, bigint, integer, jsonb, text),
  public.fail_idempotency_key(text, text, bigint, integer, jsonb, text),
  public.release_idempotency_key(text, text, bigint, boolean),
  public.purge_expired_idempotency(integer),
  public.check_stripe_idempotency(text, text),
  public.record_stripe_idempotency(text, text, text, text, uuid, jsonb, timestamptz),
  public.cleanup_expired_idempotency_keys()
to service_role;
