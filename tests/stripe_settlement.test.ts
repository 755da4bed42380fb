// Stripe as it settles money and outcomes: card funds pending before they are available (payouts wait
// for them), and a 5xx that Stripe saved for a key (settled by looking the object up, not by retrying).
// This file moves the emulator's clock, so it has a stack of its own.
import assert from "node:assert/strict";
import { stripeClient } from "../supabase/functions/_shared/stripe.ts";
import type { Stack } from "../tools/local/stack.ts";
import { BUYER, call, ledgerTest, newOrganiser, paidOrder, uid, wallet } from "./_flows.ts";

const DAYS_2 = 2 * 86_400;

/** An organiser selling in `currency`, in which the test platform starts with nothing. */
async function euroOrganiser(stack: Stack, currency = "eur") {
  const organiser = await newOrganiser(stack);
  const { data: event, error } = await organiser.client.rpc("create_event", {
    p_title: "Concert in euros",
    p_starts_at: new Date(Date.now() + 30 * 86_400_000).toISOString(),
    p_tiers: [{ name: "Seat", price_cents: 4000, capacity: 100 }],
    p_currency: currency,
  });
  assert.equal(error, null);
  return { ...organiser, eventId: event.id as string, tierId: event.tiers[0].id as string };
}

/** A paid order of `quantity` seats (4000 each) of `organiser`'s event; answers its id. */
async function sale(stack: Stack, organiser: Awaited<ReturnType<typeof euroOrganiser>>, quantity: number) {
  const checkout = await call(stack, "enhanced-checkout", {
    event_id: organiser.eventId,
    items: [{ tier_id: organiser.tierId, quantity }],
  }, { token: await stack.userToken(BUYER) });
  assert.equal(checkout.status, 201, checkout.text);
  const { deliveries } = await stack.stripe!.paySession(checkout.body.checkout_session_id as string);
  assert.deepEqual(deliveries.map((d) => d.status), [200]);
  return checkout.body.order_id as string;
}

ledgerTest(
  "a payout right after a sale waits for Stripe's funds: 409 funds-pending with when, never balance_insufficient",
  async (stack) => {
    const emulator = stack.stripe!;
    emulator.options.fundsDelaySeconds = DAYS_2;
    try {
      const organiser = await euroOrganiser(stack);
      const checkout = await call(stack, "enhanced-checkout", {
        event_id: organiser.eventId,
        items: [{ tier_id: organiser.tierId, quantity: 1 }],
      }, { token: await stack.userToken(BUYER) });
      assert.equal(checkout.status, 201, checkout.text);
      await emulator.paySession(checkout.body.checkout_session_id as string);
      const [order] = await stack.db.query<
        { id: string; funds_available_at: Date; stripe_charge_id: string }
      >(
        "select id, funds_available_at, stripe_charge_id from events.orders where id = $1",
        [checkout.body.order_id],
      );
      const charge = await stripeClient().charges.retrieve(order.stripe_charge_id, {
        expand: ["balance_transaction"],
      });
      const availableOn = (charge.balance_transaction as { available_on: number }).available_on;
      assert.equal(order.funds_available_at.getTime(), availableOn * 1000, "the order knows Stripe's date");

      const walletNow = await wallet({ client: organiser.client }, "eur");
      assert.deepEqual([walletNow.available_cents, walletNow.pending_funds_cents], [0, 4000]);
      const early = await call(stack, "payouts", { amount_cents: 3000, currency: "eur" }, {
        token: organiser.token,
      });
      assert.deepEqual([early.status, early.body.type], [409, "/problems/funds-pending"], early.text);
      assert.equal(Date.parse(early.body.available_at as string), availableOn * 1000);
      assert.ok(Number(early.headers.get("retry-after")) > DAYS_2 - 60);
      // what the rule spares us: Stripe itself would refuse this transfer now
      await assert.rejects(
        stripeClient().transfers.create({ amount: 3000, currency: "eur", destination: organiser.account }),
        (e: { code?: string }) => e.code === "balance_insufficient",
      );

      // two days pass, for Stripe and for the database alike
      await emulator.advanceClock(DAYS_2 + 1);
      await stack.db.query(
        "update events.orders set funds_available_at = funds_available_at - make_interval(secs => $2) where id = $1",
        [order.id, DAYS_2 + 1],
      );
      const later = await call(stack, "payouts", { amount_cents: 3000, currency: "eur" }, {
        token: organiser.token,
      });
      assert.equal(later.status, 201, later.text);
      const refused = emulator.requests.filter((r) =>
        r.path === "/v1/transfers" && r.idempotencyKey?.startsWith("payout:create:") && r.status >= 400
      );
      assert.deepEqual(refused, [], "Stripe never refused one of the product's transfers");
      const transfer = emulator.state.transfers.get(later.body.stripe_transfer_id as string)!;
      assert.deepEqual([transfer.amount, transfer.currency], [3000, "eur"]);
    } finally {
      emulator.options.fundsDelaySeconds = 0;
    }
  },
);

ledgerTest(
  "a payout is held to the platform's own balance at Stripe too: another organiser's refund cannot make it fail",
  async (stack) => {
    const emulator = stack.stripe!;
    emulator.options.fundsDelaySeconds = DAYS_2;
    try {
      // A's sale settles; B's sale is still pending when B refunds it in full, which Stripe takes from the
      // available balance that backs A's funds (found by the red team of issue 10)
      const a = await euroOrganiser(stack, "cad");
      const aOrder = await sale(stack, a, 2);
      await emulator.advanceClock(DAYS_2 + 1);
      await stack.db.query(
        "update events.orders set funds_available_at = funds_available_at - make_interval(secs => $2) where id = $1",
        [aOrder, DAYS_2 + 1],
      );
      const b = await euroOrganiser(stack, "cad");
      const bOrder = await sale(stack, b, 1);
      const refund = await call(stack, "refunds", { order_id: bOrder }, { token: b.token });
      assert.equal(refund.status, 201, refund.text);
      assert.equal((await wallet({ client: a.client }, "cad")).available_cents, 8000);

      const held = await call(stack, "payouts", { amount_cents: 8000, currency: "cad" }, { token: a.token });
      assert.deepEqual([held.status, held.body.type, held.body.reason], [
        409,
        "/problems/funds-pending",
        "platform-balance",
      ]);
      const refused = emulator.requests.filter((r) =>
        r.path === "/v1/transfers" && r.idempotencyKey?.startsWith("payout:create:") && r.status >= 400
      );
      assert.deepEqual(refused, [], "Stripe was never asked for a transfer it would refuse");
      const platform = (await stripeClient().balance.retrieve()).available.find((x) =>
        x.currency === "cad"
      )!.amount;
      const part = await call(stack, "payouts", { amount_cents: platform, currency: "cad" }, {
        token: a.token,
      });
      assert.equal(part.status, 201, `what the platform holds can go: ${part.text}`);
    } finally {
      emulator.options.fundsDelaySeconds = 0;
    }
  },
);

for (const created of [true, false]) {
  ledgerTest(
    `a refund whose first answer is a saved 500 (object ${
      created ? "made" : "not made"
    }) is settled by look-up`,
    async (stack) => {
      const organiser = await newOrganiser(stack);
      const order = await paidOrder(stack, organiser, 2);
      const before = await wallet(organiser);
      const start = stack.stripe!.requests.length;
      stack.stripe!.addFault({ kind: "error_after", path: "/v1/refunds", created });
      const key = uid();
      const body = { order_id: order.orderId, amount_cents: 1500 };
      const first = await call(stack, "refunds", body, { token: organiser.token, key });
      assert.equal(first.status, 503, first.text);
      // the client retries with its key: Stripe replays the saved 500, so the refund is looked up
      const second = await call(stack, "refunds", body, { token: organiser.token, key });
      const atStripe = [...stack.stripe!.state.refunds.values()].filter((r) =>
        r.payment_intent === order.paymentIntent
      );
      if (created) {
        assert.equal(second.status, 201, second.text);
        assert.equal(atStripe.length, 1);
        assert.equal(second.body.stripe_refund_id, atStripe[0].id);
        assert.equal(
          (await wallet(organiser)).available_cents,
          before.available_cents - Math.floor(1500 * 5000 / order.total),
        );
      } else {
        // nothing found right after a 5xx proves nothing yet: the operation waits 15 minutes, then is decided
        assert.deepEqual(
          [second.status, second.body.type],
          [409, "/problems/operation-in-progress"],
          second.text,
        );
        await stack.db.query(
          `update public.stripe_idempotency_keys set key_burned_at = key_burned_at - interval '16 minutes',
             locked_until = now() where operation_type = 'refund:create' and user_id = $1 and status = 'in_progress'`,
          [organiser.id],
        );
        const third = await call(stack, "refunds", body, { token: organiser.token, key });
        assert.deepEqual(
          [third.status, third.body.type],
          [409, "/problems/operation-not-created"],
          third.text,
        );
        assert.equal(atStripe.length, 0);
        assert.deepEqual(await wallet(organiser), before, "the debit is given back");
        const replay = await call(stack, "refunds", body, { token: organiser.token, key });
        assert.deepEqual([replay.status, replay.headers.get("idempotent-replayed")], [409, "true"]);
        const again = await call(stack, "refunds", body, { token: organiser.token });
        assert.equal(again.status, 201, "asked again under a new key, the refund is made");
      }
      const posts = stack.stripe!.requests.slice(start).filter((r) =>
        r.path === "/v1/refunds" && r.method === "POST"
      );
      assert.ok(posts.length <= (created ? 2 : 3), `no retry loop: ${JSON.stringify(posts)}`);
    },
  );
}

ledgerTest("a saved 500 left by a dead holder is settled by the reconciler's look-up", async (stack) => {
  const organiser = await newOrganiser(stack);
  await paidOrder(stack, organiser, 2);
  stack.stripe!.addFault({ kind: "error_after", path: "/v1/transfers", created: true });
  const first = await call(stack, "payouts", { amount_cents: 2000 }, { token: organiser.token });
  assert.equal(first.status, 503);
  // the client never comes back; the reconciler finds the operation released and re-sends it
  const report = await call(stack, "stripe-reconcile", {}, { token: stack.serviceRoleKey, key: null });
  assert.equal(report.status, 200, report.text);
  const [payout] = await stack.db.query<{ status: string; stripe_transfer_id: string }>(
    "select status, stripe_transfer_id from wallet.payouts where organiser_id = $1",
    [organiser.id],
  );
  const transfers = [...stack.stripe!.state.transfers.values()].filter((t) =>
    t.destination === organiser.account
  );
  assert.equal(transfers.length, 1);
  assert.deepEqual(payout, { status: "paid", stripe_transfer_id: transfers[0].id });
});

ledgerTest(
  "a refund's look-up after a saved 500 takes only its own refund, never an earlier refund of the payment",
  async (stack) => {
    const organiser = await newOrganiser(stack);
    const order = await paidOrder(stack, organiser, 2);
    const earlier = await call(stack, "refunds", { order_id: order.orderId, amount_cents: 1000 }, {
      token: organiser.token,
    });
    assert.equal(earlier.status, 201, earlier.text);
    stack.stripe!.addFault({ kind: "error_after", path: "/v1/refunds", created: false });
    const key = uid();
    const body = { order_id: order.orderId, amount_cents: 1500 };
    assert.equal((await call(stack, "refunds", body, { token: organiser.token, key })).status, 503);
    const retry = await call(stack, "refunds", body, { token: organiser.token, key });
    assert.deepEqual(
      [retry.status, retry.body.type],
      [409, "/problems/operation-in-progress"],
      `the earlier refund ${earlier.body.stripe_refund_id} is not this one: ${retry.text}`,
    );
    const refunds = await stack.db.query<
      { amount_cents: number; status: string; stripe_refund_id: string | null }
    >(
      "select amount_cents, status, stripe_refund_id from events.refunds where order_id = $1 order by created_at",
      [order.orderId],
    );
    assert.deepEqual(refunds.map((r) => ({ ...r })), [
      { amount_cents: 1000, status: "succeeded", stripe_refund_id: earlier.body.stripe_refund_id },
      { amount_cents: 1500, status: "pending", stripe_refund_id: null },
    ]);
  },
);

ledgerTest(
  "a payout's look-up after a saved 500 takes only its own transfer, not another one of its transfer group",
  async (stack) => {
    const organiser = await newOrganiser(stack);
    await paidOrder(stack, organiser, 2);
    stack.stripe!.addFault({ kind: "error_after", path: "/v1/transfers", created: false });
    const key = uid();
    assert.equal(
      (await call(stack, "payouts", { amount_cents: 2000 }, { token: organiser.token, key })).status,
      503,
    );
    const [payout] = await stack.db.query<{ id: string }>(
      "select id from wallet.payouts where organiser_id = $1",
      [
        organiser.id,
      ],
    );
    // someone moved money to the organiser by hand, filed under the payout's transfer group, without its metadata
    const byHand = await stripeClient().transfers.create({
      amount: 500,
      currency: "usd",
      destination: organiser.account,
      transfer_group: `payout_${payout.id}`,
    });
    const retry = await call(stack, "payouts", { amount_cents: 2000 }, { token: organiser.token, key });
    assert.deepEqual(
      [retry.status, retry.body.type],
      [409, "/problems/operation-in-progress"],
      `${byHand.id} is not the payout's transfer: ${retry.text}`,
    );
    const [row] = await stack.db.query<{ status: string; stripe_transfer_id: string | null }>(
      "select status, stripe_transfer_id from wallet.payouts where id = $1",
      [payout.id],
    );
    assert.deepEqual({ ...row }, { status: "pending", stripe_transfer_id: null });
  },
);
