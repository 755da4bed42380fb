// The security matrix, read from the database's catalog rather than from a hand list: who may execute
// each function the Data API exposes, RLS on every table, search_path on every security definer
// function; forged, unsigned, expired and wrong-role JWTs refused; no secret or stack trace in any
// answer or log line.
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { testHooks } from "../supabase/functions/_shared/idempotency.ts";
import { readConfig } from "../tools/local/functions_host.ts";
import { DEFAULT_JWT_SECRET, signJwt } from "../tools/local/jwt.ts";
import { BUYER, call, newOrganiser, openOrder, uid } from "./_flows.ts";
import { sharedStack, stackTest } from "./_helpers.ts";

/** Who may execute each function in an exposed schema; any function not listed here fails the test. */
const EXPECTED_EXECUTE: Record<string, string[]> = {
  "public.create_event(text,timestamp with time zone,jsonb,text,boolean,text)": ["authenticated"],
  "public.get_order(uuid)": ["authenticated"],
  "public.get_wallet(text)": ["authenticated"],
  "public.start_checkout(text,text,text,text,uuid,text,uuid,jsonb,text,text,uuid,text,text,integer,integer)":
    ["service_role"],
  "public.finish_checkout(text,text,bigint,integer,jsonb,text,uuid,bigint,jsonb)": ["service_role"],
  "public.complete_checkout_session(uuid,bigint,jsonb)": ["service_role"],
  "public.fail_checkout_session(uuid,bigint,jsonb)": ["service_role"],
  "public.complete_order_payment(uuid,text,text,integer,jsonb)": ["service_role"],
  "public.create_refund(text,text,uuid,text,uuid,uuid,boolean,integer,text,integer)": ["service_role"],
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
  "public.claim_stale_stripe_operations(integer,integer)": ["service_role"],
  "public.reconcile_housekeeping(integer)": ["service_role"],
};

const PROJECT_SCHEMAS = ["public", "private", "events", "wallet"];

stackTest("every function in an exposed schema is executable by exactly the roles expected", async () => {
  const stack = await sharedStack();
  const config = await readConfig(fileURLToPath(new URL("../supabase", import.meta.url)));
  const exposed = config.api?.schemas ?? ["public"];
  const rows = await stack.db.query<{ fn: string; roles: string[] }>(
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
  assert.deepEqual(actual, EXPECTED_EXECUTE);
});

stackTest("the API roles can execute nothing in the schemas the Data API does not expose", async () => {
  const stack = await sharedStack();
  const callable = await stack.db.query(
    `
    select p.oid::regprocedure::text as fn, r as role
    from pg_catalog.pg_proc p join pg_catalog.pg_namespace n on n.oid = p.pronamespace,
      unnest(array['anon', 'authenticated', 'service_role']) as r
    where n.nspname = any($1) and n.nspname <> 'public' and has_function_privilege(r, p.oid, 'execute')
      and has_schema_privilege(r, n.oid, 'usage')`,
    [PROJECT_SCHEMAS],
  );
  assert.deepEqual([...callable], []);
});

stackTest("RLS is on for every table, and the API roles hold no table privileges", async () => {
  const stack = await sharedStack();
  const tables = await stack.db.query<{ t: string; rls: boolean }>(
    `select c.oid::regclass::text as t, c.relrowsecurity as rls
     from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
     where c.relkind in ('r', 'p') and n.nspname = any($1)`,
    [PROJECT_SCHEMAS],
  );
  assert.ok(tables.length >= 15, `found ${tables.length} tables`);
  assert.deepEqual(tables.filter((t) => !t.rls).map((t) => t.t), []);
  const grants = await stack.db.query(
    `select table_schema || '.' || table_name as t, grantee, privilege_type from information_schema.role_table_grants
     where table_schema = any($1) and grantee in ('anon', 'authenticated', 'service_role')`,
    [PROJECT_SCHEMAS],
  );
  assert.deepEqual([...grants], []);
});

stackTest("every function is security definer with an empty search_path", async () => {
  const stack = await sharedStack();
  const rows = await stack.db.query<{ fn: string; definer: boolean; config: string[] | null }>(
    `select p.oid::regprocedure::text as fn, p.prosecdef as definer, p.proconfig as config
     from pg_catalog.pg_proc p join pg_catalog.pg_namespace n on n.oid = p.pronamespace
     where n.nspname = any($1)`,
    [PROJECT_SCHEMAS],
  );
  assert.ok(rows.length >= 40, `found ${rows.length} functions`);
  const wrong = rows.filter((r) => !r.definer || !r.config?.includes('search_path=""')).map((r) => r.fn);
  assert.deepEqual(wrong, []);
});

stackTest(
  "JWTs with alg none, a wrong signature, an expiry in the past or a wrong role are refused",
  async () => {
    const stack = await sharedStack();
    const b64 = (o: unknown) =>
      btoa(JSON.stringify(o)).replace(/=+$/, "").replace(/\+/g, "-").replace(/\//g, "_");
    const now = Math.floor(Date.now() / 1000);
    const claims = { sub: BUYER, role: "authenticated", aud: "authenticated", exp: now + 3600 };
    const tokens: Record<string, string> = {
      "alg none": `${b64({ alg: "none", typ: "JWT" })}.${b64(claims)}.`,
      "wrong signature": await signJwt("a-different-secret-of-at-least-32-characters", claims),
      "expired": await signJwt(DEFAULT_JWT_SECRET, { ...claims, exp: now - 60 }),
      "role postgres": await signJwt(DEFAULT_JWT_SECRET, { ...claims, role: "postgres" }),
      "role supabase_admin": await signJwt(DEFAULT_JWT_SECRET, { ...claims, role: "supabase_admin" }),
    };
    for (const [what, token] of Object.entries(tokens)) {
      const rest = await fetch(`${stack.url}/rest/v1/rpc/get_order`, {
        method: "POST",
        headers: {
          apikey: stack.anonKey,
          authorization: `Bearer ${token}`,
          "content-type": "application/json",
        },
        body: JSON.stringify({ p_order_id: uid() }),
      });
      assert.equal(rest.status, 401, `rest, ${what}`);
      await rest.body?.cancel();
      for (const fn of ["enhanced-checkout", "refunds", "payouts", "stripe-reconcile"]) {
        const answer = await call(stack, fn, {}, { token });
        // a well-signed token of a role that is not a user's: refused as unauthenticated or as forbidden
        const expected = what.startsWith("role") && fn === "stripe-reconcile" ? [401, 403] : [401];
        assert.ok(expected.includes(answer.status), `${fn}, ${what}: ${answer.text}`);
      }
    }
    // a valid user token is still not the service role's
    const user = await call(stack, "stripe-reconcile", {}, {
      token: await stack.userToken(BUYER),
      key: null,
    });
    assert.equal(user.status, 403);
  },
);

stackTest("no answer and no log line carries a secret or a stack trace", async () => {
  const stack = await sharedStack();
  const secrets = [
    stack.serviceRoleKey,
    stack.jwtSecret,
    Deno.env.get("STRIPE_SECRET_KEY")!,
    Deno.env.get("STRIPE_WEBHOOK_SECRET")!,
  ];
  const lines: string[] = [];
  const [log, error] = [console.log, console.error];
  console.log = (...args: unknown[]) => lines.push(args.map(String).join(" "));
  console.error = (...args: unknown[]) => lines.push(args.map(String).join(" "));
  const answers: string[] = [];
  const previousLevel = Deno.env.get("LOG_LEVEL");
  Deno.env.set("LOG_LEVEL", "debug");
  try {
    const organiser = await newOrganiser(stack);
    const order = await openOrder(stack, organiser);
    answers.push(JSON.stringify(order));
    // failures on purpose: a handler dying with a secret in its error, a forged webhook, an unavailable Stripe
    testHooks.afterStripe = () => {
      throw new Error(
        `upstream said: key ${Deno.env.get("STRIPE_SECRET_KEY")} and token ${stack.serviceRoleKey}`,
      );
    };
    answers.push(
      (await call(stack, "enhanced-checkout", {
        event_id: organiser.eventId,
        items: [{ tier_id: organiser.tierId, quantity: 1 }],
      }, { token: await stack.userToken(BUYER) })).text,
    );
    delete testHooks.afterStripe;
    answers.push(
      (await call(stack, "stripe-webhook", { id: "evt_x", type: "x" }, {
        headers: { "stripe-signature": "t=1,v1=00" },
        key: null,
      })).text,
    );
    stack.stripe!.addFault({ kind: "error_before", path: "/v1/checkout/sessions", times: 10 });
    answers.push(
      (await call(stack, "guest-checkout", {
        event_id: organiser.eventId,
        items: [{ tier_id: organiser.tierId, quantity: 1 }],
        email: "secret-test@example.com",
      })).text,
    );
    stack.stripe!.clearFaults();
    answers.push(
      (await call(stack, "refunds", { order_id: order.orderId }, { token: organiser.token })).text,
    );
  } finally {
    delete testHooks.afterStripe;
    stack.stripe!.clearFaults();
    console.log = log;
    console.error = error;
    previousLevel === undefined ? Deno.env.delete("LOG_LEVEL") : Deno.env.set("LOG_LEVEL", previousLevel);
  }
  assert.ok(lines.some((l) => l.includes('"level":"error"')), "the failures were logged");
  assert.ok(lines.some((l) => l.includes("[redacted]")), "the secret in the error was redacted");
  for (const text of [...answers, ...lines]) {
    for (const secret of secrets) assert.ok(!text.includes(secret), `a secret leaked: ${text.slice(0, 200)}`);
    assert.doesNotMatch(text, /\bat .+\.(ts|js):\d+/, `a stack trace leaked: ${text.slice(0, 200)}`);
  }
});
