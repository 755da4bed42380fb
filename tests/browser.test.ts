// The web app in a real Chromium against the real stack (PostgreSQL, the functions, the Stripe emulator):
// a guest's double click, a lost answer and a reload, sold out, the organiser's refund and payout, the
// operator's resolve; every page checked with axe and photographed for the README.
import assert from "node:assert/strict";
import { testHooks } from "../supabase/functions/_shared/idempotency.ts";
import { stripeClient } from "../supabase/functions/_shared/stripe.ts";
import type { Stack } from "../tools/local/stack.ts";
import { assertAccessible, browserTest, checkPage } from "./_browser.ts";
import { call, newOrganiser, openOrder, paidOrder, uid, wallet } from "./_flows.ts";

/** Checkout Sessions the emulator made for `email`. */
function sessionsFor(stack: Stack, email: string) {
  return [...stack.stripe!.state.sessions.values()].filter((s) => s.customer_email === email);
}

async function ordersFor(stack: Stack, email: string): Promise<number> {
  const [row] = await stack.db.query<{ n: number }>(
    "select count(*)::int as n from events.orders where guest_email = $1",
    [email],
  );
  return row.n;
}

browserTest(
  "a guest double-clicks Buy for 2 tickets: one Checkout Session; paid on the hosted page, the order page shows paid and 2 tickets",
  async ({ stack, page }) => {
    const email = `guest-${uid().slice(0, 8)}@example.com`;
    await page.goto("/");
    await page.getByLabel("GA tickets (at most 10)").fill("2");
    await page.getByLabel("Email").fill(email);
    await checkPage(page, "buyer");

    await page.getByRole("button", { name: "Buy" }).dblclick();
    await page.waitForURL(/\/_emulator\/checkout\/cs_/);
    assert.equal(sessionsFor(stack, email).length, 1, "one Checkout Session");
    assert.equal(await ordersFor(stack, email), 1, "one order");

    await page.getByRole("button", { name: "Pay" }).click();
    await page.waitForURL(/\/orders\/[0-9a-f-]{36}\?session_id=cs_/);
    await page.getByRole("status").filter({ hasText: "Paid: 2 tickets" }).waitFor();
    assert.equal(await page.locator('[data-ticket="valid"]').count(), 2);
    assert.equal(await page.locator("[data-order-status]").getAttribute("data-order-status"), "paid");
    await checkPage(page, "order");
  },
);

browserTest(
  "the first answer is lost and the page reloaded: the same Idempotency-Key is sent again, still one session",
  async ({ stack, page }) => {
    const email = `lost-${uid().slice(0, 8)}@example.com`;
    const keys: string[] = [];
    let lose = true;
    let lost!: () => void;
    const firstLost = new Promise<void>((resolve) => (lost = resolve));
    await page.route("**/functions/v1/guest-checkout", async (route) => {
      keys.push(route.request().headers()["idempotency-key"]);
      if (!lose) return route.continue();
      try {
        await route.fetch(); // the server handles the request...
        await route.abort("connectionreset"); // ...and its answer never arrives
      } catch { /* the page was reloaded meanwhile */ }
      lost();
    });
    const buy = async () => {
      await page.getByLabel("GA tickets (at most 10)").fill("1");
      await page.getByLabel("Email").fill(email);
      await page.getByRole("button", { name: "Buy" }).click();
    };

    await page.goto("/");
    await buy();
    await firstLost;
    assert.equal(await ordersFor(stack, email), 1, "the lost request made the order");
    await page.reload();
    lose = false;
    const answered = page.waitForResponse((r) => r.url().endsWith("/functions/v1/guest-checkout"));
    await buy();
    const answer = await answered;
    await page.waitForURL(/\/_emulator\/checkout\/cs_/);

    assert.ok(keys.length >= 2, `${keys.length} requests`);
    assert.equal(new Set(keys).size, 1, "one Idempotency-Key for the intent, across the reload");
    assert.deepEqual([answer.status(), answer.headers()["idempotent-replayed"]], [201, "true"]);
    assert.equal(sessionsFor(stack, email).length, 1, "still one Checkout Session");
    assert.equal(await ordersFor(stack, email), 1, "still one order");
  },
  { allowErrors: /ERR_CONNECTION_RESET|ERR_FAILED/ },
);

browserTest("sold out: the page shows the problem's message, not a stack trace", async ({ stack, page }) => {
  const organiser = await newOrganiser(stack, { capacity: 2 });
  await page.goto(`/events/${organiser.eventId}`);
  await page.getByText("2 seats left").waitFor();
  await openOrder(stack, organiser, 2); // someone else takes the last seats meanwhile

  await page.getByLabel("GA tickets (at most 10)").fill("1");
  await page.getByLabel("Email").fill(`late-${uid().slice(0, 8)}@example.com`);
  await page.getByRole("button", { name: "Buy" }).click();
  const alert = page.getByRole("alert");
  await alert.waitFor();
  const text = await alert.innerText();
  assert.match(text, /Only 0 tickets of GA are left/);
  assert.doesNotMatch(text, /\bat \S+:\d+|Error:|undefined/, "no stack trace, no internals");
  assert.equal(
    await page.getByRole("button", { name: "Buy" }).isEnabled(),
    true,
    "the buyer can choose again",
  );
}, { allowErrors: /status of 409 \(Conflict\)/ }); // the browser logs the answer's status

browserTest(
  "the organiser refunds one ticket and pays out; the wallet figures on the page equal get_wallet",
  async ({ stack, page }) => {
    const organiser = await newOrganiser(stack);
    const order = await paidOrder(stack, organiser, 2);
    await page.goto("/signin");
    await page.getByLabel("Another user of auth.users, by id").fill(organiser.id);
    await page.getByRole("button", { name: "Sign in", exact: true }).click();
    await page.waitForURL(/\/organiser$/);

    const card = page.locator(`[data-order="${order.orderId}"]`);
    await card.getByLabel("Refund amount in USD").fill("25.00");
    await card.getByRole("button", { name: "Refund" }).click();
    await page.getByRole("status").filter({ hasText: "Refund of $25.00: succeeded" }).waitFor();

    await page.getByLabel("Payout amount in USD").fill("10.00");
    await page.getByRole("button", { name: "Pay out" }).click();
    await page.getByRole("status").filter({ hasText: "Payout of $10.00: paid" }).waitFor();

    const expected = await wallet(organiser);
    const shown: Record<string, number> = {};
    for (const field of ["balance_cents", "available_cents", "pending_funds_cents", "pending_payout_cents"]) {
      shown[field] = Number(await page.locator(`[data-field="${field}"]`).getAttribute("data-cents"));
    }
    const { currency: _, ...figures } = expected;
    assert.deepEqual(shown, figures);
    // 5000 credited, a share of the 2500 refund debited (floor(2500 × 5000 / 5364) = 2330), 1000 paid out
    assert.equal(expected.balance_cents, 5000 - 2330 - 1000);

    const refunds = [...stack.stripe!.state.refunds.values()].filter((r) =>
      r.payment_intent === order.paymentIntent
    );
    const transfers = [...stack.stripe!.state.transfers.values()].filter((t) =>
      t.destination === organiser.account
    );
    assert.deepEqual([refunds.map((r) => r.amount), transfers.map((t) => t.amount)], [[2500], [1000]]);
    await page.locator(`[data-order="${order.orderId}"] summary`).click();
    await checkPage(page, "organiser");
  },
);

browserTest(
  "the operator sees a needs_attention operation and resolves it with its Stripe object",
  async ({ stack, page }) => {
    // A payout whose function died after Stripe made the transfer, past Stripe's key window, with a second
    // transfer made by hand with the same metadata: the reconciler's look-up finds two and cannot decide.
    stack.stripe!.options.autoDeliver = false;
    const organiser = await newOrganiser(stack);
    await paidOrder(stack, organiser, 2);
    testHooks.afterStripe = (op) => {
      if (op.operationType === "payout:create") throw new Error("crash after Stripe");
    };
    const crashed = await call(stack, "payouts", { amount_cents: 1500 }, { token: organiser.token });
    delete testHooks.afterStripe;
    assert.equal(crashed.status, 500);
    const [payout] = await stack.db.query<{ id: string }>(
      "select id from wallet.payouts where organiser_id = $1",
      [
        organiser.id,
      ],
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

    await page.goto("/signin");
    await checkPage(page, "signin");
    await page.getByRole("button", { name: "Sign in as the demo operator (platform admin)" }).click();
    await page.waitForURL(/\/operator$/);
    const card = page.locator(`[data-operation="${payout.id}"]`);
    const evidence = await card.locator("pre").innerText();
    assert.ok(evidence.includes(duplicate.id), "the evidence names the transfers found");
    await checkPage(page, "operator");

    // red team 13, finding 1: an object that is not the operation's is refused, checked at Stripe
    const stranger = await stripeClient().transfers.create({
      amount: 1500,
      currency: "usd",
      destination: organiser.account,
      transfer_group: `payout_${payout.id}`,
      metadata: { payout_id: crypto.randomUUID() },
    });
    await card.getByLabel("Stripe object id").fill(stranger.id);
    await card.getByRole("button", { name: "Settle with this object" }).click();
    await card.getByRole("alert").filter({ hasText: "Not this operation's object" }).waitFor();

    await card.getByLabel("Stripe object id").fill(duplicate.id);
    await card.getByRole("button", { name: "Settle with this object" }).click();
    await page.getByRole("status").filter({
      hasText: `Resolved payout:create ${payout.id.slice(0, 8)}: paid`,
    })
      .waitFor();
    assert.equal(await page.locator(`[data-operation="${payout.id}"]`).count(), 0);
    const [settled] = await stack.db.query<{ status: string; transfer: string; op: string }>(
      `select p.status, p.stripe_transfer_id as transfer, k.status as op from wallet.payouts p
     join public.stripe_idempotency_keys k on k.operation_type = 'payout:create' and k.operation_id = p.id::text
     where p.id = $1`,
      [payout.id],
    );
    assert.deepEqual(settled, { status: "paid", transfer: duplicate.id, op: "completed" });
  },
  // the refused object: operator-resolve's 422, shown on the page
  { allowErrors: /status of 422\b/ },
);

browserTest(
  "the other page states pass axe too (signed out, not an admin, signed in), and the keyboard alone buys a ticket",
  async ({ page }) => {
    // the pages' main states are checked by the tests above (buyer, order, organiser, operator, sign-in)
    const states: [string, string, string?][] = [
      ["organiser, signed out", "/organiser"],
      ["operator, not an admin", "/operator", "Sign in as the demo organiser"],
      ["sign-in, signed in", "/signin", "Sign in as the demo buyer"],
      ["buyer, signed in", "/"],
    ];
    for (const [label, path, signIn] of states) {
      if (signIn) {
        await page.goto("/signin");
        await page.getByRole("button", { name: signIn }).click();
        await page.waitForURL((url) => url.pathname !== "/signin");
      }
      await page.goto(path);
      await page.locator("main h1").first().waitFor();
      await assertAccessible(page, label);
    }
    assert.match(await page.locator("main").innerText(), /Buying as buyer@example\.com/);

    // signed out, keyboard only: the skip link, then the form from its first field to Enter
    await page.evaluate("localStorage.clear()");
    await page.goto("/");
    await page.locator("main h1").waitFor();
    const focused = () => page.evaluate("document.activeElement.id || document.activeElement.textContent");
    await page.keyboard.press("Tab");
    assert.equal(await focused(), "Skip to content");
    await page.keyboard.press("Enter");
    await page.keyboard.press("Tab");
    assert.equal(await focused(), "qty-44444444-4444-4444-8444-444444444444");
    await page.keyboard.type("1");
    await page.keyboard.press("Tab"); // VIP
    await page.keyboard.press("Tab"); // email
    assert.equal(await focused(), "email");
    await page.keyboard.type(`keys-${uid().slice(0, 8)}@example.com`);
    await page.keyboard.press("Enter");
    await page.waitForURL(/\/_emulator\/checkout\/cs_/);
  },
  { allowErrors: /status of 403 \(Forbidden\)/ }, // the organiser on the operator page: the RPC's answer
);
