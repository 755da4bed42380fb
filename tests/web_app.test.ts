// What the web app stands on, without a browser: the read RPCs of migration 20261130000100_web_reads (who
// may read what; operators checked in SQL from the token's app_metadata), the local sign-in, and the stack
// serving the app at its root.
import assert from "node:assert/strict";
import type { Stack } from "../tools/local/stack.ts";
import { sharedStack, stackTest } from "./_helpers.ts";
import { call, clientAs, newOrganiser, ORGANISER, paidOrder, STRANGER, wallet } from "./_flows.ts";

const OPERATOR = "77777777-7777-4777-8777-777777777777";
const EVENT = "33333333-3333-4333-8333-333333333333";

async function signIn(stack: Stack, userId: string) {
  const res = await fetch(`${stack.url}/auth/v1/local/token`, {
    method: "POST",
    // as the stack's own sign-in page sends it
    headers: { "content-type": "application/json", origin: stack.url },
    body: JSON.stringify({ user_id: userId }),
  });
  return { status: res.status, body: await res.json() };
}

stackTest(
  "the local sign-in issues Auth's token for a user of auth.users, with their app_metadata",
  async () => {
    const stack = await sharedStack();
    const operator = await signIn(stack, OPERATOR);
    assert.equal(operator.status, 200);
    assert.deepEqual(operator.body.user, {
      id: OPERATOR,
      email: "operator@example.com",
      app_metadata: { role: "platform_admin" },
      user_metadata: {},
    });
    const claims = JSON.parse(
      atob(operator.body.access_token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")),
    );
    assert.deepEqual([claims.sub, claims.role, claims.aud, claims.app_metadata.role], [
      OPERATOR,
      "authenticated",
      "authenticated",
      "platform_admin",
    ]);
    // the functions accept it as a platform admin's token: fraudulent refunds are for admins only
    const refused = await call(stack, "refunds", { order_id: crypto.randomUUID(), reason: "fraudulent" }, {
      token: operator.body.access_token,
    });
    assert.equal(refused.body.type, "/problems/order-not-found", "past the admin-only check");

    assert.equal((await signIn(stack, crypto.randomUUID())).status, 404);
    assert.equal((await signIn(stack, "not-a-uuid")).status, 400);
  },
);

stackTest("operator RPCs: platform admins only, checked in SQL from the token", async () => {
  const stack = await sharedStack();
  const admin = clientAs(stack, (await signIn(stack, OPERATOR)).body.access_token);
  const overview = await admin.rpc("operator_overview");
  assert.equal(overview.error, null, JSON.stringify(overview.error));
  assert.equal(overview.data.activity.length, 24);
  assert.ok(Array.isArray(overview.data.needs_attention));

  // the check reads the signed claim, not the user id: the operator's own id in a token without it is refused
  for (const token of [await stack.userToken(ORGANISER), await stack.userToken(OPERATOR)]) {
    const other = clientAs(stack, token);
    for (
      const [fn, args] of [
        ["operator_overview", {}],
        ["operator_operations", { p_status: "needs_attention" }],
      ] as const
    ) {
      const { error, status } = await other.rpc(fn, args);
      assert.deepEqual([status, error?.hint], [403, "forbidden"], fn);
    }
  }
  const anon = await clientAs(stack, stack.publishableKey).rpc("operator_overview");
  assert.equal(anon.status, 401, "not executable by anon at all");

  // resolving goes through the operator-resolve function (tests/redteam13.test.ts): only a row that needs
  // attention, with an object checked at Stripe
  const organiser = await newOrganiser(stack);
  const order = await paidOrder(stack, organiser, 1);
  const done = await call(stack, "operator-resolve", {
    operation_type: "checkout:create",
    operation_id: order.orderId,
    stripe_object_id: order.sessionId,
  }, { token: (await signIn(stack, OPERATOR)).body.access_token });
  assert.deepEqual(
    [done.status, done.body.type],
    [409, "/problems/operation-not-needing-attention"],
    done.text,
  );
  const listed = await admin.rpc("operator_operations", { p_status: "completed", p_limit: 500 });
  assert.ok(listed.data.some((o: { operation_id: string }) => o.operation_id === order.orderId));
});

stackTest(
  "an organiser reads only their own orders, ledger and payouts; the ledger adds up to get_wallet",
  async () => {
    const stack = await sharedStack();
    const mine = await newOrganiser(stack);
    const theirs = await newOrganiser(stack);
    const order = await paidOrder(stack, mine, 2);
    await paidOrder(stack, theirs, 1);
    assert.equal(
      (await call(stack, "refunds", { order_id: order.orderId, amount_cents: 1000 }, { token: mine.token }))
        .status,
      201,
    );
    assert.equal((await call(stack, "payouts", { amount_cents: 500 }, { token: mine.token })).status, 201);

    const orders = (await mine.client.rpc("list_organiser_orders")).data;
    assert.deepEqual(orders.map((o: { order_id: string }) => o.order_id), [order.orderId]);
    const [o] = orders;
    assert.deepEqual([o.status, o.refunded_cents, o.refundable_cents, o.tickets.length], [
      "partially_refunded",
      1000,
      order.total - 1000,
      2,
    ]);
    assert.deepEqual(o.entries.map((e: { type: string }) => e.type), ["sale", "refund"]);
    assert.equal(o.buyer, "buyer@example.com");

    const history = (await mine.client.rpc("get_wallet_history", { p_currency: "usd" })).data;
    const figures = await wallet(mine);
    assert.deepEqual(history.entries.map((e: { type: string }) => e.type), ["sale", "refund", "payout"]);
    assert.equal(
      history.entries.at(-1).running_total_cents,
      figures.balance_cents - figures.pending_payout_cents,
    );
    const payouts = (await mine.client.rpc("list_payouts")).data;
    assert.deepEqual(
      payouts.map((p: { amount_cents: number; status: string }) => [p.amount_cents, p.status]),
      [[
        500,
        "paid",
      ]],
    );

    const stranger = clientAs(stack, await stack.userToken(STRANGER));
    for (const fn of ["list_organiser_orders", "list_payouts"]) {
      assert.deepEqual((await stranger.rpc(fn)).data, [], fn);
    }
    assert.deepEqual((await stranger.rpc("get_wallet_history")).data.entries, []);
    const anon = await clientAs(stack, stack.publishableKey).rpc("list_organiser_orders");
    assert.equal(anon.status, 401);
  },
);

stackTest("guests read the catalogue, and their checkout's order with its session id only", async () => {
  const stack = await sharedStack();
  const anon = clientAs(stack, stack.publishableKey);
  const event = await anon.rpc("get_event", { p_event_id: EVENT });
  assert.equal(event.error, null);
  assert.deepEqual(event.data.tiers.map((t: { name: string }) => t.name), ["GA", "VIP"]);
  assert.deepEqual(event.data.fee, { percent: 3.7, flat: 179, exponent: 2 });
  const missing = await anon.rpc("get_event", { p_event_id: crypto.randomUUID() });
  assert.deepEqual([missing.status, missing.error?.hint], [404, "event-not-found"]);

  const organiser = await newOrganiser(stack);
  const order = await paidOrder(stack, organiser, 2);
  const found = await anon.rpc("get_checkout_order", {
    p_order_id: order.orderId,
    p_session_id: order.sessionId,
  });
  assert.equal(found.error, null);
  assert.deepEqual([found.data.status, found.data.tickets.length, "buyer" in found.data], ["paid", 2, false]);
  const guessed = await anon.rpc("get_checkout_order", {
    p_order_id: order.orderId,
    p_session_id: "cs_test_x",
  });
  assert.deepEqual([guessed.status, guessed.error?.hint], [404, "order-not-found"]);
});

stackTest(
  "the stack serves the web app at its root: its files, its pages by path, its configuration; else 404",
  async () => {
    const stack = await sharedStack();
    const root = await Deno.makeTempDir();
    const dir = `${root}/dist`;
    try {
      await Deno.mkdir(`${dir}/assets`, { recursive: true });
      await Deno.writeTextFile(`${dir}/index.html`, "<!doctype html><title>app</title>");
      await Deno.writeTextFile(`${dir}/assets/app-1.js`, "export {};");
      await Deno.writeTextFile(`${root}/secret.txt`, "secret");
      const { webApp } = await import("../tools/local/web.ts");
      const serve = webApp(dir, () => ({ supabaseUrl: stack.url, publishableKey: stack.publishableKey }));
      const get = (path: string, method = "GET") => serve(new Request(`${stack.url}${path}`, { method }));

      const page = await get("/orders/0b7c5c56-0000-4000-8000-000000000000?session_id=cs_test_1");
      assert.deepEqual([page.status, page.headers.get("content-type"), await page.text()], [
        200,
        "text/html; charset=utf-8",
        "<!doctype html><title>app</title>",
      ]);
      const asset = await get("/assets/app-1.js");
      assert.match(asset.headers.get("cache-control")!, /immutable/);
      await asset.body?.cancel();
      const config = await (await get("/config.json")).json();
      assert.deepEqual(config, { supabaseUrl: stack.url, publishableKey: stack.publishableKey });
      for (
        const path of ["/../secret.txt", "/..%2fsecret.txt", "/assets/..%2f..%2fsecret.txt", "/missing.js"]
      ) {
        const res = await get(path);
        assert.notEqual(await res.text(), "secret", path);
      }
      for (const path of ["/missing.js", "/nowhere", "/orders/not-an-id"]) {
        const res = await get(path);
        assert.deepEqual(
          [res.status, res.headers.get("content-type")],
          [404, "application/problem+json"],
          path,
        );
        await res.body?.cancel();
      }
      assert.equal(page.headers.get("access-control-allow-origin"), "*");
      assert.equal((await get("/", "POST")).status, 405);
      // and through the stack: the config has the stack's own URL and key; nothing secret
      const served = await (await fetch(`${stack.url}/config.json`)).json();
      assert.deepEqual(served, {
        supabaseUrl: stack.url,
        publishableKey: stack.publishableKey,
        localSignIn: true,
      });
    } finally {
      await Deno.remove(root, { recursive: true });
    }
  },
);
