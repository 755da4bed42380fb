/**
 * The security matrix, read from the database's catalog rather than from a hand list, for any database
 * the migrations were applied to (the shared stack's, and both bases in migrations.test.ts): who may
 * execute each function the Data API exposes, nothing executable in the other schemas, RLS on every
 * table and no table privileges for the API roles, `security definer` with an empty search_path.
 * @module
 */
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import type { Queryable } from "../tools/local/db.ts";
import { readConfig } from "../tools/local/functions_host.ts";

/** Who may execute each function in an exposed schema; any function not listed here fails. */
export const EXPECTED_EXECUTE: Record<string, string[]> = {
  "public.create_event(text,timestamp with time zone,jsonb,text,boolean,text)": ["authenticated"],
  "public.get_order(uuid)": ["authenticated"],
  "public.get_wallet(text)": ["authenticated"],
  "public.start_checkout(text,text,text,text,uuid,text,uuid,jsonb,text,text,uuid,text,text,integer,integer)":
    ["service_role"],
  "public.finish_checkout(text,text,bigint,integer,jsonb,text,uuid,bigint,jsonb)": ["service_role"],
  "public.complete_checkout_session(uuid,bigint,jsonb)": ["service_role"],
  "public.fail_checkout_session(uuid,bigint,jsonb)": ["service_role"],
  "public.complete_order_payment(uuid,text,text,integer,jsonb)": ["service_role"],
  "public.create_refund(text,text,uuid,text,uuid,uuid,boolean,integer,text,integer,uuid[],text[])": [
    "service_role",
  ],
  "public.complete_transfer_reversal(uuid,bigint,jsonb)": ["service_role"],
  "public.fail_transfer_reversal(uuid,bigint,jsonb)": ["service_role"],
  "public.complete_refund(uuid,bigint,jsonb)": ["service_role"],
  "public.fail_refund(uuid,bigint,jsonb)": ["service_role"],
  "public.create_payout(text,text,uuid,text,uuid,bigint,text,integer,bigint)": ["service_role"],
  "public.complete_payout(uuid,bigint,jsonb)": ["service_role"],
  "public.fail_payout(uuid,bigint,jsonb)": ["service_role"],
  "public.claim_stripe_operation(text,text,text,jsonb,uuid,jsonb,integer)": ["service_role"],
  "public.complete_stripe_operation(text,text,bigint,text,jsonb,integer)": ["service_role"],
  "public.fail_stripe_operation(text,text,bigint,jsonb,integer)": ["service_role"],
  "public.release_stripe_operation(text,text,bigint,text)": ["service_role"],
  "public.attention_stripe_operation(text,text,bigint,jsonb)": ["service_role"],
  "public.defer_stripe_operation(text,text,bigint,text,timestamp with time zone,boolean)": ["service_role"],
  "public.claim_idempotency_key(text,text,text,text,integer,integer)": ["service_role"],
  "public.complete_idempotency_key(text,text,bigint,integer,jsonb,text)": ["service_role"],
  "public.fail_idempotency_key(text,text,bigint,integer,jsonb,text)": ["service_role"],
  "public.release_idempotency_key(text,text,bigint,boolean)": ["service_role"],
  "public.purge_expired_idempotency(integer)": ["service_role"],
  "public.check_stripe_idempotency(text,text)": ["service_role"],
  "public.record_stripe_idempotency(text,text,text,text,uuid,jsonb,timestamp with time zone)": [
    "service_role",
  ],
  "public.cleanup_expired_idempotency_keys()": ["service_role"],
  "public.handle_stripe_event(jsonb,jsonb)": ["service_role"],
  "public.claim_parked_events(integer,integer)": ["service_role"],
  "public.settle_parked_event(text,boolean)": ["service_role"],
  "public.resolve_stripe_operation(text,text,jsonb,jsonb)": ["service_role"],
  "public.stripe_operation_to_resolve(text,text)": ["service_role"],
  "public.claim_stale_stripe_operations(integer,integer)": ["service_role"],
  "public.reconcile_housekeeping(integer)": ["service_role"],
  "public.audit_begin(integer)": ["service_role"],
  "public.apply_stripe_object(text,jsonb,jsonb)": ["service_role"],
  "public.audit_finish(jsonb,bigint,uuid,uuid)": ["service_role"],
  "public.audit_order(uuid)": ["service_role"],
  // the web app's reads (migration 20261130000100_web_reads): guests read the catalogue and their checkout's
  // order; organisers their own money; platform admins (checked in SQL) the operations. Resolving one goes
  // through the operator-resolve function, which checks the object at Stripe (migration 20261130000300)
  "public.get_event(uuid)": ["anon", "authenticated"],
  "public.get_checkout_order(uuid,text)": ["anon", "authenticated"],
  "public.get_wallet_history(text,integer)": ["authenticated"],
  "public.list_organiser_orders(integer)": ["authenticated"],
  "public.list_payouts(integer)": ["authenticated"],
  "public.operator_overview()": ["authenticated"],
  "public.operator_operations(text,integer)": ["authenticated"],
};

const PROJECT_SCHEMAS = ["public", "private", "events", "wallet"];

/** Every check of the matrix on `db`; `label` names the database in failures. */
export async function assertSecurityMatrix(db: Queryable, label: string): Promise<void> {
  const config = await readConfig(fileURLToPath(new URL("../supabase", import.meta.url)));
  const exposed = config.api?.schemas ?? ["public"];
  const rows = await db.query<{ fn: string; roles: string[] }>(
    `select n.nspname || '.' || p.proname || '(' || pg_catalog.pg_get_function_identity_arguments(p.oid) || ')' as fn,
       array(select r from unnest(array['anon', 'authenticated', 'service_role']) as r
             where has_function_privilege(r, p.oid, 'execute')) as roles
     from pg_catalog.pg_proc p join pg_catalog.pg_namespace n on n.oid = p.pronamespace
     where n.nspname = any($1)`,
    [exposed],
  );
  const actual = Object.fromEntries(
    rows.map((r) => [r.fn.replace(/, /g, ",").replace(/p_\w+ /g, ""), r.roles]),
  );
  assert.deepEqual(actual, EXPECTED_EXECUTE, `${label}: who may execute the exposed functions`);

  const callable = await db.query(
    `select p.oid::regprocedure::text as fn, r as role
     from pg_catalog.pg_proc p join pg_catalog.pg_namespace n on n.oid = p.pronamespace,
       unnest(array['anon', 'authenticated', 'service_role']) as r
     where n.nspname = any($1) and n.nspname <> 'public' and has_function_privilege(r, p.oid, 'execute')
       and has_schema_privilege(r, n.oid, 'usage')`,
    [PROJECT_SCHEMAS],
  );
  assert.deepEqual([...callable], [], `${label}: nothing executable outside the exposed schemas`);

  const tables = await db.query<{ t: string; rls: boolean }>(
    `select c.oid::regclass::text as t, c.relrowsecurity as rls
     from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
     where c.relkind in ('r', 'p') and n.nspname = any($1)`,
    [PROJECT_SCHEMAS],
  );
  assert.ok(tables.length >= 15, `${label}: found ${tables.length} tables`);
  assert.deepEqual(tables.filter((t) => !t.rls).map((t) => t.t), [], `${label}: RLS on every table`);
  const grants = await db.query(
    `select table_schema || '.' || table_name as t, grantee, privilege_type from information_schema.role_table_grants
     where table_schema = any($1) and grantee in ('anon', 'authenticated', 'service_role')`,
    [PROJECT_SCHEMAS],
  );
  assert.deepEqual([...grants], [], `${label}: no table privileges for the API roles`);

  const functions = await db.query<{ fn: string; definer: boolean; config: string[] | null }>(
    `select p.oid::regprocedure::text as fn, p.prosecdef as definer, p.proconfig as config
     from pg_catalog.pg_proc p join pg_catalog.pg_namespace n on n.oid = p.pronamespace
     where n.nspname = any($1)`,
    [PROJECT_SCHEMAS],
  );
  assert.ok(functions.length >= 40, `${label}: found ${functions.length} functions`);
  const wrong = functions.filter((r) => !r.definer || !r.config?.includes('search_path=""')).map((r) => r.fn);
  assert.deepEqual(wrong, [], `${label}: security definer with search_path ''`);
}
