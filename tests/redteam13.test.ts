// Red team of issue 13 (the browser half): each finding's regression test, where no other file fits better.
// The client's (3, 4, 5, 9) are in tests/client.test.ts.
import assert from "node:assert/strict";
import { testHooks } from "../supabase/functions/_shared/idempotency.ts";
import { OPERATIONS } from "../supabase/functions/_shared/operations.ts";
import { stripeClient } from "../supabase/functions/_shared/stripe.ts";
import { localSignInEnabled, type Stack, StackError } from "../tools/local/stack.ts";
import { FRAME_HEADERS, webApp } from "../tools/local/web.ts";
import { sharedStack, stackTest } from "./_helpers.ts";
import { call, clientAs, newOrganiser, openOrder, type Organiser, paidOrder } from "./_flows.ts";

const OPERATOR = "77777777-7777-4777-8777-777777777777";

function signIn(url: string, init: { origin?: string | null; type?: string; method?: string } = {}) {
  const headers: Record<string, string> = { "content-type": init.type ?? "application/json" };
  if (init.origin !== null) headers.origin = init.origin ?? url;
  return fetch(`${url}/auth/v1/local/token`, {
    method: init.method ?? "POST",
    headers,
    body: init.method === "GET" ? undefined : JSON.stringify({ user_id: OPERATOR }),
  });
}

// Finding 2: the local sign-in mints admin tokens; only the stack's own pages may ask, and only locally.
stackTest("the local sign-in answers the stack's own origin only, JSON only, without CORS", async () => {
  const stack = await sharedStack();
  const ok = await signIn(stack.url);
  assert.equal(ok.status, 200);
  assert.equal(ok.headers.get("access-control-allow-origin"), null, "no other site may read a token");
  assert.ok((await ok.json()).access_token);
  const localhost = await signIn(stack.url, { origin: stack.url.replace("127.0.0.1", "localhost") });
  assert.equal(localhost.status, 200);
  await localhost.body?.cancel();
  for (
    const [init, status, type] of [
      [{ origin: "https://evil.example" }, 403, "origin-refused"],
      [{ origin: "null" }, 403, "origin-refused"],
      [{ origin: null }, 403, "origin-refused"],
      [{ origin: stack.url.replace(/:\d+$/, ":1") }, 403, "origin-refused"],
      [{ type: "text/plain" }, 415, "unsupported-media-type"],
      [{ type: "application/x-www-form-urlencoded" }, 415, "unsupported-media-type"],
      [{ method: "GET" }, 405, "method-not-allowed"],
    ] as const
  ) {
    const res = await signIn(stack.url, init);
    const body = await res.json();
    assert.deepEqual(
      [res.status, res.headers.get("content-type"), body.type],
      [status, "application/problem+json", `/problems/${type}`],
      JSON.stringify(init),
    );
    assert.equal(body.access_token, undefined);
    assert.equal(res.headers.get("access-control-allow-origin"), null);
  }
  const preflight = await fetch(`${stack.url}/auth/v1/local/token`, {
    method: "OPTIONS",
    headers: { origin: "https://evil.example", "access-control-request-method": "POST" },
  });
  assert.equal(preflight.headers.get("access-control-allow-origin"), null);
  await preflight.body?.cancel();
});

Deno.test("the local sign-in is on with the emulator only, unless LOCAL_SIGN_IN says", () => {
  assert.equal(localSignInEnabled(undefined, true), true);
  assert.equal(localSignInEnabled(undefined, false), false, "off against real Stripe (a test key)");
  assert.equal(localSignInEnabled("on", false), true);
  assert.equal(localSignInEnabled("off", true), false);
  assert.throws(() => localSignInEnabled("yes", true), StackError);
});

stackTest("with the emulator the web app's config offers the local sign-in", async () => {
  const stack = await sharedStack();
  const config = await (await fetch(`${stack.url}/config.json`)).json();
  assert.equal(config.localSignIn, true);
});

// Findings 6 and 7: the web handler's answers to odd paths, and frame protection on every answer.
Deno.test("the web handler: 400 for bad percent-encoding, 404 for directories, never framed", async () => {
  const root = await Deno.makeTempDir();
  const dir = `${root}/dist`;
  try {
    await Deno.mkdir(`${dir}/assets/sub`, { recursive: true });
    await Deno.writeTextFile(`${dir}/index.html`, "<!doctype html><title>app</title>");
    const serve = webApp(dir, () => ({}));
    const get = (path: string) => serve(new Request(`http://127.0.0.1:1${path}`));
    for (
      const [path, status] of [["/%E0%A4%A", 400], ["/%", 400], ["/assets", 404], [
        "/assets/sub/",
        404,
      ]] as const
    ) {
      const res = await get(path);
      const body = await res.json();
      assert.deepEqual([res.status, res.headers.get("content-type"), body.status], [
        status,
        "application/problem+json",
        status,
      ], path);
      assert.match(body.detail, status === 400 ? /percent-encoding/ : /No route/, path);
    }
    for (const path of ["/", "/config.json", "/missing.js", "/%"]) {
      const res = await get(path);
      await res.body?.cancel();
      for (const [name, value] of Object.entries(FRAME_HEADERS)) {
        assert.equal(res.headers.get(name), value, path);
      }
    }
    assert.deepEqual(FRAME_HEADERS, {
      "content-security-policy": "frame-ancestors 'none'",
      "x-frame-options": "DENY",
    });
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

// Finding 1: an operator's object is checked at Stripe against the operation before it settles anything.

/** A payout whose function died after Stripe made the transfer, past the key window, with a second transfer
 * made by hand with the same metadata: the reconciler's look-up finds two and it needs attention. */
async function payoutNeedingAttention(stack: Stack, organiser: Organiser) {
  stack.stripe!.options.autoDeliver = false;
  try {
    testHooks.afterStripe = (op) => {
      if (op.operationType === "payout:create") throw new Error("crash after Stripe");
    };
    const crashed = await call(stack, "payouts", { amount_cents: 1500 }, { token: organiser.token });
    delete testHooks.afterStripe;
    assert.equal(crashed.status, 500);
    const [payout] = await stack.db.query<{ id: string }>(
      "select id from wallet.payouts where organiser_id = $1",
      [organiser.id],
    );
    await stack.db.query(
      `update public.stripe_idempotency_keys set created_at = now() - interval '25 hours', locked_until = now()
       where operation_type = 'payout:create' and operation_id = $1`,
      [payout.id],
    );
    const duplicate = await stripeClient().transfers.create({
      amount: 1500,
      currency: "usd",
      destination: organiser.account,
      transfer_group: `payout_${payout.id}`,
      metadata: { payout_id: payout.id },
    });
    const report = await call(stack, "stripe-reconcile", {}, { token: stack.serviceRoleKey, key: null });
    assert.ok(JSON.stringify(report.body.needs_attention).includes(payout.id), report.text);
    return { payoutId: payout.id, duplicate: duplicate.id };
  } finally {
    delete testHooks.afterStripe;
    stack.stripe!.options.autoDeliver = true;
  }
}

stackTest("operator-resolve settles only with an object Stripe has and that is the operation's", async () => {
  const stack = await sharedStack();
  const organiser = await newOrganiser(stack);
  await paidOrder(stack, organiser, 2);
  const { payoutId, duplicate } = await payoutNeedingAttention(stack, organiser);
  const admin = await stack.userToken(OPERATOR, { app_metadata: { role: "platform_admin" } });
  const resolve = (body: Record<string, unknown>, token = admin) =>
    call(stack, "operator-resolve", { operation_type: "payout:create", operation_id: payoutId, ...body }, {
      token,
    });
  const state = async () =>
    (await stack.db.query<{ status: string; op: string }>(
      `select p.status, k.status as op from wallet.payouts p join public.stripe_idempotency_keys k
       on k.operation_type = 'payout:create' and k.operation_id = p.id::text where p.id = $1`,
      [payoutId],
    ))[0];

  // the SQL side takes no object id from a browser any more
  const rpc = await clientAs(stack, admin).rpc("operator_resolve", {
    p_operation_type: "payout:create",
    p_operation_id: payoutId,
    p_result: { id: "tr_made_up" },
  });
  assert.notEqual(rpc.status, 200);
  assert.equal(rpc.data, null);

  const notAdmin = await resolve({ stripe_object_id: duplicate }, organiser.token);
  assert.deepEqual([notAdmin.status, notAdmin.body.type], [403, "/problems/forbidden"]);

  // another transfer of the same group, for another payout; a made-up id; another kind of object
  const stranger = await stripeClient().transfers.create({
    amount: 1500,
    currency: "usd",
    destination: organiser.account,
    transfer_group: `payout_${payoutId}`,
    metadata: { payout_id: crypto.randomUUID() },
  });
  const elsewhere = await stripeClient().transfers.create({
    amount: 1500,
    currency: "usd",
    destination: organiser.account,
    transfer_group: "payout_elsewhere",
    metadata: { payout_id: payoutId },
  });
  // the operation's metadata and group, but not what it sent (only the secret key's holder can make one)
  const otherAmount = await stripeClient().transfers.create({
    amount: 1499,
    currency: "usd",
    destination: organiser.account,
    transfer_group: `payout_${payoutId}`,
    metadata: { payout_id: payoutId },
  });
  for (
    const [id, status, type] of [
      [otherAmount.id, 422, "stripe-object-mismatch"],
      [stranger.id, 422, "stripe-object-mismatch"],
      [elsewhere.id, 422, "stripe-object-mismatch"],
      ["tr_made_up", 422, "stripe-object-not-found"],
      ["cs_test_made_up", 422, "stripe-object-not-found"],
      ["tr/../x", 400, "validation"],
    ] as const
  ) {
    const refused = await resolve({ stripe_object_id: id });
    assert.deepEqual([refused.status, refused.headers.get("content-type"), refused.body.type], [
      status,
      "application/problem+json",
      `/problems/${type}`,
    ], `${id}: ${refused.text}`);
    assert.deepEqual(await state(), { status: "pending", op: "needs_attention" }, id);
  }
  // "no object" while the look-up finds one is refused
  const none = await resolve({ no_object: true });
  assert.deepEqual([none.status, none.body.type], [409, "/problems/stripe-object-exists"], none.text);

  // several operators at once, each with a key of their own: one settles it, the others get a clean 409
  const racing = await Promise.all(Array.from({ length: 6 }, () => resolve({ stripe_object_id: duplicate })));
  const done = racing.find((r) => r.status === 200)!;
  assert.equal(racing.filter((r) => r.status === 200).length, 1, racing.map((r) => r.text).join("\n"));
  for (const r of racing.filter((r) => r !== done)) {
    assert.deepEqual([r.status, r.body.type], [409, "/problems/operation-not-needing-attention"], r.text);
  }
  const result = done.body.p_result as { id: string; destination: string };
  assert.equal(result.id, duplicate);
  assert.equal(result.destination, organiser.account, "the fields as Stripe has them");
  assert.deepEqual(await state(), { status: "paid", op: "completed" });
  const again = await resolve({ stripe_object_id: duplicate });
  assert.deepEqual([again.status, again.body.type], [409, "/problems/operation-not-needing-attention"]);
  const missing = await call(stack, "operator-resolve", {
    operation_type: "refund:create",
    operation_id: crypto.randomUUID(),
    stripe_object_id: "re_x",
  }, { token: admin });
  assert.deepEqual([missing.status, missing.body.type], [404, "/problems/operation-not-found"]);
});

Deno.test("each operation's matching rule refuses an object with another id or another home", () => {
  const id = "9f3c2a10-0000-4000-8000-000000000001";
  const other = "9f3c2a10-0000-4000-8000-000000000002";
  const at = (params: unknown) => ({ operationId: id, params, createdAt: 1_000_000 });
  const cases = [
    [
      OPERATIONS["checkout:create"],
      at({ client_reference_id: "c1" }),
      { metadata: { order_id: id }, client_reference_id: "c1", created: 1_000_000 },
      [{ metadata: { order_id: other } }, { client_reference_id: "c2" }, { created: 1 }],
    ],
    [
      OPERATIONS["refund:create"],
      at({ payment_intent: "pi_1" }),
      { metadata: { refund_id: id }, payment_intent: "pi_1" },
      [{ metadata: { refund_id: other } }, { payment_intent: "pi_2" }],
    ],
    [
      OPERATIONS["payout:create"],
      at({ transfer_group: "g1" }),
      { metadata: { payout_id: id }, transfer_group: "g1" },
      [{ metadata: { payout_id: other } }, { transfer_group: "g2" }, { metadata: {} }],
    ],
    [
      OPERATIONS["transfer_reversal:create"],
      at({ transfer: "tr_1" }),
      { metadata: { reversal_id: id }, transfer: "tr_1" },
      [{ metadata: { reversal_id: other } }, { transfer: "tr_2" }],
    ],
  ] as const;
  for (const [declaration, context, ours, changes] of cases) {
    // deno-lint-ignore no-explicit-any
    const matches = declaration.matches as (o: any, c: any) => boolean;
    assert.equal(matches(ours, context), true, declaration.type);
    for (const change of changes) {
      assert.equal(
        matches({ ...ours, ...change }, context),
        false,
        `${declaration.type} ${JSON.stringify(change)}`,
      );
    }
  }
});

// Finding 8: an organiser sees who bought, not who only began a checkout.
stackTest("list_organiser_orders names the buyer of paid orders only", async () => {
  const stack = await sharedStack();
  const organiser = await newOrganiser(stack);
  const paid = await paidOrder(stack, organiser, 1);
  const guest = await call(stack, "guest-checkout", {
    event_id: organiser.eventId,
    items: [{ tier_id: organiser.tierId, quantity: 1 }],
    email: "someone.who.left@example.com",
  }, { token: stack.publishableKey, headers: { apikey: stack.publishableKey } });
  assert.equal(guest.status, 201, guest.text);
  const unpaid = await openOrder(stack, organiser, 1);
  // both checkouts run out (what the reconciler does to holds that expired)
  await stack.db.query("update events.orders set status = 'expired' where id = any($1::uuid[])", [
    [guest.body.order_id, unpaid.orderId],
  ]);
  const { data, error } = await organiser.client.rpc("list_organiser_orders");
  assert.equal(error, null);
  const buyers = Object.fromEntries(
    data.map((
      o: { order_id: string; status: string; buyer: string | null },
    ) => [o.order_id, [o.status, o.buyer]]),
  );
  assert.deepEqual(buyers, {
    [paid.orderId]: ["paid", "buyer@example.com"],
    [String(guest.body.order_id)]: ["expired", null],
    [unpaid.orderId]: ["expired", null],
  });
});
