// The migrations apply with the pinned Supabase CLI on a fresh database, and preparing a database
// twice (a restarted `npm run dev` on the same DATABASE_URL) changes nothing and fails nothing; they
// apply on the two bases projects have (the default privileges of older projects, and a project since
// the Data API change: a non-superuser owner and no default privileges) with the same security matrix;
// and they adopt the old plan's tables.
import assert from "node:assert/strict";
import { connectPostgres, prepareDatabase, PROJECT_DIR } from "../tools/local/db.ts";
import { createDatabase } from "./_helpers.ts";
import { assertSecurityMatrix } from "./_security.ts";

const OLD_PLAN = new URL("./fixtures/old_plan.sql", import.meta.url);

const migrationFiles = [...Deno.readDirSync(`${PROJECT_DIR}/supabase/migrations`)]
  .filter((e) => e.name.endsWith(".sql"));

async function appliedCount(db: ReturnType<typeof connectPostgres>): Promise<number> {
  const [{ exists }] = await db.query<{ exists: boolean }>(
    "select to_regclass('supabase_migrations.schema_migrations') is not null as exists",
  );
  if (!exists) return 0; // the CLI creates its table with the first migration
  const [{ n }] = await db.query<{ n: number }>(
    "select count(*)::int as n from supabase_migrations.schema_migrations",
  );
  return n;
}

Deno.test("migrations apply with the Supabase CLI on a fresh database, and again as a no-op", async () => {
  const url = await createDatabase("migrations");
  const db = connectPostgres(url, 2);
  try {
    await prepareDatabase(db, { databaseUrl: url });
    assert.equal(await appliedCount(db), migrationFiles.length);
    await prepareDatabase(db, { databaseUrl: url });
    assert.equal(await appliedCount(db), migrationFiles.length);
    const users = await db.query<{ n: number }>("select count(*)::int as n from auth.users");
    assert.equal(users[0].n, 4); // the seed's organiser, buyer, stranger and operator, once
  } finally {
    await db.close();
  }
});

/** The API roles' default privileges in public, as `role:type` (r tables, f functions, S sequences). */
async function defaultGrants(db: ReturnType<typeof connectPostgres>): Promise<string[]> {
  const rows = await db.query<{ grant: string }>(
    `select distinct a.grantee::regrole::text || ':' || d.defaclobjtype::text as grant
     from pg_catalog.pg_default_acl d join pg_catalog.pg_namespace n on n.oid = d.defaclnamespace,
       aclexplode(d.defaclacl) a
     where n.nspname = 'public' and a.grantee::regrole::text in ('anon', 'authenticated', 'service_role')
     order by 1`,
  );
  return rows.map((r) => r.grant);
}

Deno.test("the migrations apply on an older project's base and on a new project's; the security matrix holds on both", async () => {
  const oldUrl = await createDatabase("olddefaults");
  const oldDb = connectPostgres(oldUrl, 2);
  try {
    await prepareDatabase(oldDb, { databaseUrl: oldUrl, oldDefaults: true });
    assert.equal(
      (await defaultGrants(oldDb)).length,
      9,
      "the older base grants the API roles everything new",
    );
    await assertSecurityMatrix(oldDb, "an older project's base");
  } finally {
    await oldDb.close();
  }

  // A new project: the database belongs to a role that is not a superuser (as Supabase's postgres), and
  // nothing new in public is granted to the API roles.
  const newUrl = await createDatabase("newproject");
  const db = connectPostgres(newUrl, 2);
  try {
    await db.exec(`
      do $$ begin
        create role tickets_owner login nosuperuser nocreaterole;
      exception when duplicate_object then null; end $$;
      alter database "${new URL(newUrl).pathname.slice(1)}" owner to tickets_owner;`);
    await db.exec(await Deno.readTextFile(`${PROJECT_DIR}/tools/local/supabase_base.sql`));
    await db.exec(`
      grant usage on schema auth to tickets_owner;
      grant select, references on auth.users to tickets_owner;
      grant execute on all functions in schema auth to tickets_owner;`);
    const ownerUrl = new URL(newUrl);
    ownerUrl.username = "tickets_owner";
    await prepareDatabase(db, { databaseUrl: newUrl, migrateAs: ownerUrl.toString() });
    assert.deepEqual(await defaultGrants(db), [], "no default privileges for the API roles");
    const owners = await db.query<{ owner: string; superuser: boolean }>(
      `select distinct r.rolname as owner, r.rolsuper as superuser from pg_catalog.pg_class c
       join pg_catalog.pg_namespace n on n.oid = c.relnamespace join pg_catalog.pg_roles r on r.oid = c.relowner
       where n.nspname in ('events', 'wallet', 'private') and c.relkind = 'r'`,
    );
    assert.deepEqual([...owners], [{ owner: "tickets_owner", superuser: false }]);
    assert.equal(
      (await db.query<{ n: number }>("select count(*)::int as n from supabase_migrations.schema_migrations"))[
        0
      ].n,
      migrationFiles.length,
    );
    await assertSecurityMatrix(db, "a new project's base");
  } finally {
    await db.close();
  }
});

Deno.test("the migrations adopt the old plan's tables and rows without losing any", async () => {
  const url = await createDatabase("upgrade");
  const db = connectPostgres(url, 2);
  try {
    // the old plan ran on an older project, with its default privileges
    await db.exec(await Deno.readTextFile(`${PROJECT_DIR}/tools/local/supabase_base.sql`));
    await db.exec(await Deno.readTextFile(`${PROJECT_DIR}/tools/local/supabase_old_defaults.sql`));
    await db.exec(await Deno.readTextFile(OLD_PLAN));
    await prepareDatabase(db, { databaseUrl: url, oldDefaults: true });
    await prepareDatabase(db, { databaseUrl: url, oldDefaults: true }); // and again: a no-op

    const ops = await db.query<Record<string, unknown>>(
      `select operation_id, status, stripe_resource_id, stripe_idempotency_key, locked_until <= now() as lease_expired,
         fencing_token, metadata from public.stripe_idempotency_keys where operation_id like 'old-%' order by operation_id`,
    );
    assert.deepEqual(ops.map((r) => [r.operation_id, r.status, r.stripe_resource_id]), [
      ["old-order-1", "completed", "cs_test_old1"],
      ["old-payout-1", "in_progress", null],
      ["old-refund-1", "completed", "re_old1"],
    ]);
    assert.equal(ops[1].lease_expired, true, "an old row without a resource is left to the reconciler");
    assert.deepEqual(ops[0].metadata, { source: "old" });
    assert.deepEqual(ops[2].metadata, {});

    // the old in-progress row keeps its key, but without its parameters it is not re-sent: it is looked up
    const [{ claim }] = await db.query<{ claim: Record<string, unknown> }>(
      `select public.claim_stripe_operation('payout:create', 'old-payout-1', 'payout:create:old-payout-1:new',
         '{"amount": 100}') as claim`,
    );
    assert.deepEqual([claim.outcome, claim.mode], ["acquired", "lookup"]);
    assert.equal(
      claim.stripe_idempotency_key,
      "payout:create:old-payout-1:11111111-aaaa-4aaa-8aaa-000000000003",
    );

    // the old functions answer on the new state machine
    const [{ check }] = await db.query<{ check: Record<string, unknown> }>(
      "select public.check_stripe_idempotency('checkout:create', 'old-order-1') as check",
    );
    assert.deepEqual([check.is_completed, check.stripe_resource_id], [true, "cs_test_old1"]);
    await assert.rejects(
      db.query("select public.record_stripe_idempotency('checkout:create', 'old-order-1', 'k2', 'cs_other')"),
      (e: { code: string }) => e.code === "PT409",
    );

    // the old inbound rows: a stored response replays, the other is claimable
    const inbound = await db.query<{ claim: Record<string, unknown> }>(
      `select public.claim_idempotency_key('user:aaaaaaaa-0000-4000-8000-000000000001', 'old-client-key-1', 'x', 'fp')
         as claim
       union all
       select public.claim_idempotency_key('legacy', 'old-client-key-2', 'x', 'fp')`,
    );
    assert.deepEqual(
      [
        inbound[0].claim.outcome,
        inbound[0].claim.response_status,
        JSON.parse(inbound[0].claim.response_body as string),
      ],
      ["replay", 200, { order_id: "old-order-1", status: "ok" }],
    );
    assert.equal(inbound[1].claim.outcome, "acquired");
    const [{ n }] = await db.query<{ n: number }>("select count(*)::int as n from public.idempotency_keys");
    assert.equal(n, 2);

    // the old policies, redundant indexes and the API roles' table access are gone
    const [{ policies, indexes, grants }] = await db.query<
      { policies: number; indexes: number; grants: number }
    >(`
      select (select count(*)::int from pg_catalog.pg_policies where tablename = 'stripe_idempotency_keys') as policies,
        (select count(*)::int from pg_catalog.pg_indexes where indexname like 'idx_stripe_idempotency_keys_%') as indexes,
        (select count(*)::int from information_schema.role_table_grants where table_name = 'stripe_idempotency_keys'
           and grantee in ('anon', 'authenticated')) as grants`);
    assert.deepEqual({ policies, indexes, grants }, { policies: 0, indexes: 0, grants: 0 });
    const [{ webhooks }] = await db.query<{ webhooks: number }>(
      "select count(*)::int as webhooks from public.stripe_webhook_events",
    );
    assert.equal(webhooks, 2);
  } finally {
    await db.close();
  }
});
