-- The parts of a Supabase database that migrations and the REST gateway rely on, created only where
-- missing: on a real Supabase project all of this already exists and nothing here changes it.
do $$
begin
  if not exists (select from pg_roles where rolname = 'anon') then
    create role anon nologin noinherit;
  end if;
  if not exists (select from pg_roles where rolname = 'authenticated') then
    create role authenticated nologin noinherit;
  end if;
  if not exists (select from pg_roles where rolname = 'service_role') then
    create role service_role nologin noinherit bypassrls;
  end if;
  if not exists (select from pg_roles where rolname = 'authenticator') then
    create role authenticator noinherit nologin;
  end if;
end
$$;

grant anon, authenticated, service_role to authenticator;

create schema if not exists auth;
grant usage on schema public, auth to anon, authenticated, service_role;

create table if not exists auth.users (
  id uuid primary key,
  email text,
  raw_app_meta_data jsonb not null default '{}',
  raw_user_meta_data jsonb not null default '{}',
  created_at timestamptz not null default now()
);

do $$
begin
  if to_regprocedure('auth.jwt()') is null then
    create function auth.jwt() returns jsonb language sql stable as $f$
      select coalesce(nullif(current_setting('request.jwt.claims', true), ''), '{}')::jsonb
    $f$;
  end if;
  if to_regprocedure('auth.uid()') is null then
    create function auth.uid() returns uuid language sql stable as $f$
      select nullif(auth.jwt() ->> 'sub', '')::uuid
    $f$;
  end if;
  if to_regprocedure('auth.role()') is null then
    create function auth.role() returns text language sql stable as $f$
      select nullif(auth.jwt() ->> 'role', '')
    $f$;
  end if;
end
$$;

grant execute on function auth.jwt(), auth.uid(), auth.role() to anon, authenticated, service_role;

-- Supabase's statement timeouts per API role (supabase.com/docs/guides/database/postgres/timeouts):
-- anon 3 s, authenticated 8 s, and authenticator's 8 s for service_role, which has none of its own. The
-- gateway applies them per request as PostgREST does. Set for this database only, and only where the
-- role has none: a project's own values are never changed.
do $$
declare
  v_role text;
  v_timeout text;
begin
  for v_role, v_timeout in values ('anon', '3s'), ('authenticated', '8s'), ('authenticator', '8s') loop
    if not exists (
      select from pg_catalog.pg_db_role_setting s join pg_catalog.pg_roles r on r.oid = s.setrole
      where r.rolname = v_role
        and s.setdatabase in (0, (select oid from pg_catalog.pg_database where datname = current_database()))
        and exists (select from unnest(s.setconfig) c where c like 'statement_timeout=%')
    ) then
      execute format('alter role %I in database %I set statement_timeout = %L', v_role, current_database(), v_timeout);
    end if;
  end loop;
end
$$;
