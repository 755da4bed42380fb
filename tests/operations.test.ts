// The registry of Stripe operations: the TypeScript declarations and private.stripe_operation_types say
// the same, their RPCs exist with the shape the core calls, and every parameter builder produces what
// Stripe accepts (the strict schemas of stripe_contract.ts, from the SDK's types).
import assert from "node:assert/strict";
import { OPERATIONS } from "../supabase/functions/_shared/operations.ts";
import { call, ledgerTest, newOrganiser, openOrder, paidOrder, uid } from "./_flows.ts";
import { sharedStack, stackTest } from "./_helpers.ts";

stackTest("the SQL registry lists exactly the declared operations, with the RPCs they declare", async () => {
  const stack = await sharedStack();
  const rows = await stack.db.query<{ operation_type: string; complete_fn: string; fail_fn: string }>(
    `select operation_type, complete_fn::text, fail_fn::text from private.stripe_operation_types
     order by operation_type`,
  );
  const declared = Object.values(OPERATIONS).map((d) => ({
    operation_type: d.type,
    complete_fn: `${d.complete}(uuid,bigint,jsonb)`,
    fail_fn: `${d.fail}(uuid,bigint,jsonb)`,
  })).sort((a, b) => a.operation_type.localeCompare(b.operation_type));
  assert.deepEqual(rows.map((r) => ({ ...r })), declared);
  for (const [key, d] of Object.entries(OPERATIONS)) assert.equal(key, d.type);
});

stackTest(
  "each declared RPC takes (id uuid, fencing token, jsonb), is the service role's, and names its operation",
  async () => {
    const stack = await sharedStack();
    for (const d of Object.values(OPERATIONS)) {
      for (const fn of [d.complete, d.fail]) {
        const [proc] = await stack.db.query<
          { args: string; source: string; service: boolean; authenticated: boolean }
        >(
          `select pg_catalog.pg_get_function_arguments(p.oid) as args, p.prosrc as source,
           has_function_privilege('service_role', p.oid, 'execute') as service,
           has_function_privilege('authenticated', p.oid, 'execute') as authenticated
         from pg_catalog.pg_proc p join pg_catalog.pg_namespace n on n.oid = p.pronamespace
         where n.nspname = 'public' and p.proname = $1`,
          [fn],
        );
        assert.ok(proc, `public.${fn} exists`);
        assert.equal(
          proc.args,
          `${d.idArg} uuid, p_fencing_token bigint, ${
            fn.startsWith("complete") ? "p_result" : "p_error"
          } jsonb`,
        );
        assert.deepEqual([proc.service, proc.authenticated], [true, false], fn);
        assert.ok(proc.source.includes(`'${d.type}'`), `${fn} records operation '${d.type}'`);
      }
    }
  },
);

ledgerTest("every parameter builder's output is accepted by its operation's strict schema", async (stack) => {
  const organiser = await newOrganiser(stack);
  const hosted = await openOrder(stack, organiser, 2);
  const embedded = await call(stack, "guest-checkout", {
    event_id: organiser.eventId,
    items: [{ tier_id: organiser.tierId, quantity: 1 }],
    email: `guest-${uid()}@example.com`,
    ui_mode: "embedded",
  });
  assert.equal(embedded.status, 201, embedded.text);
  const paid = await paidOrder(stack, organiser, 3);
  const refund = await call(stack, "refunds", {
    order_id: paid.orderId,
    amount_cents: 1234,
    reason: "duplicate",
  }, {
    token: organiser.token,
  });
  assert.equal(refund.status, 201, refund.text);
  const payout = await call(stack, "payouts", { amount_cents: 2000 }, { token: organiser.token });
  assert.equal(payout.status, 201, payout.text);

  const ids = [hosted.orderId, embedded.body.order_id, refund.body.refund_id, payout.body.payout_id];
  const sent = await stack.db.query<{ operation_type: string; request_params: unknown; created: number }>(
    `select operation_type, request_params, extract(epoch from created_at)::bigint as created
     from public.stripe_idempotency_keys where operation_id = any($1::text[])`,
    [ids],
  );
  assert.deepEqual(sent.map((s) => s.operation_type).sort(), [
    "checkout:create",
    "checkout:create",
    "payout:create",
    "refund:create",
  ]);
  for (const s of sent) {
    const schema = OPERATIONS[s.operation_type as keyof typeof OPERATIONS].schema(Number(s.created));
    const parsed = schema.safeParse(s.request_params);
    assert.ok(parsed.success, `${s.operation_type}: ${JSON.stringify(parsed.error?.issues)}`);
  }
  // and the same parameters are refused once Stripe's window for them has passed
  const checkout = sent.find((s) => s.operation_type === "checkout:create")!;
  const late = OPERATIONS["checkout:create"].schema(Number(checkout.created) + 3600).safeParse(
    checkout.request_params,
  );
  assert.equal(late.success, false, "an expires_at less than 30 minutes away is refused");
});

stackTest("the strict schemas refuse what Stripe refuses", () => {
  const now = 1_800_000_000;
  const session = {
    mode: "payment",
    ui_mode: "hosted_page",
    line_items: [{
      quantity: 1,
      price_data: { currency: "usd", unit_amount: 2500, product_data: { name: "GA" } },
    }],
    metadata: { order_id: "o" },
    client_reference_id: "o",
    expires_at: now + 1800,
    payment_intent_data: { metadata: { order_id: "o" }, transfer_group: "order_o" },
    success_url: "https://example.com/orders/o",
  };
  const schema = OPERATIONS["checkout:create"].schema(now);
  assert.ok(schema.safeParse(session).success);
  const refused: [string, unknown][] = [
    ["ui_mode hosted", { ...session, ui_mode: "hosted" }],
    ["an unknown parameter", { ...session, price: 1 }],
    ["expires_at under 30 minutes", { ...session, expires_at: now + 1799 }],
    ["expires_at over 24 hours", { ...session, expires_at: now + 86_401 }],
    ["a total under the minimum charge", {
      ...session,
      line_items: [{
        quantity: 1,
        price_data: { currency: "usd", unit_amount: 49, product_data: { name: "x" } },
      }],
    }],
    ["a total over 8 digits", {
      ...session,
      line_items: [{
        quantity: 2,
        price_data: { currency: "usd", unit_amount: 60_000_000, product_data: { name: "x" } },
      }],
    }],
    ["101 line items", { ...session, line_items: Array(101).fill(session.line_items[0]) }],
    ["a currency the platform does not settle", {
      ...session,
      line_items: [{
        quantity: 1,
        price_data: { currency: "xyz", unit_amount: 2500, product_data: { name: "x" } },
      }],
    }],
    ["return_url with hosted_page", { ...session, return_url: "https://example.com" }],
    ["embedded_page without return_url", { ...session, ui_mode: "embedded_page" }],
  ];
  for (const [what, params] of refused) assert.equal(schema.safeParse(params).success, false, what);
  const refund = { payment_intent: "pi_1", amount: 100, metadata: { refund_id: "r" } };
  assert.ok(OPERATIONS["refund:create"].schema(now).safeParse(refund).success);
  assert.equal(
    OPERATIONS["refund:create"].schema(now).safeParse({ ...refund, reason: "expired_uncaptured_charge" })
      .success,
    false,
    "a reason the API does not take on create",
  );
  assert.equal(
    OPERATIONS["refund:create"].schema(now).safeParse({ ...refund, amount: 100_000_000 }).success,
    false,
  );
  return Promise.resolve();
});
