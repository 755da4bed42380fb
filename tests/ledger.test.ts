// Money that moves outside our API calls (issue 11): dashboard refunds, late and reordered events,
// failed refunds, disputes and refunds after payouts. In each scenario the organiser's net for the order is
// compared to the cent with what Stripe (the emulator) did.
import assert from "node:assert/strict";
import fc from "npm:fast-check@4.11.0";
import { testHooks } from "../supabase/functions/_shared/idempotency.ts";
import type { StripeEvent } from "../tools/local/stripe_emulator/mod.ts";
import type { Stack } from "../tools/local/stack.ts";
import { call, ledgerTest, newOrganiser, type Organiser, paidOrder, uid, wallet } from "./_flows.ts";

/** The organiser's net for an order in the ledger: its sale less every share of refunds and disputes. */
async function net(stack: Stack, orderId: string): Promise<number> {
  const [row] = await stack.db.query<{ net: number }>(
    "select coalesce(sum(amount_cents), 0)::int as net from wallet.wallet_transactions where order_id = $1",
    [orderId],
  );
  return row.net;
}

/** What Stripe holds for a payment: its charge's refunded amount. */
function stripeRefunded(stack: Stack, paymentIntent: string): number {
  const intent = stack.stripe!.state.paymentIntents.get(paymentIntent)!;
  return stack.stripe!.state.charges.get(intent.latest_charge as string)!.amount_refunded as number;
}

/** The rule: the organiser keeps the sale less floor(refunded x subtotal / total). */
const expectedNet = (order: { subtotal: number; total: number }, refunded: number) =>
  order.subtotal - Math.floor(refunded * order.subtotal / order.total);

ledgerTest(
  "a dashboard refund while the organiser's API refund is pending nets 0, and that money cannot be paid out",
  async (stack) => {
    const organiser = await newOrganiser(stack);
    const order = await paidOrder(stack, organiser, 2);
    // the organiser asks for a full refund; Stripe does not answer (before executing it)
    stack.stripe!.addFault({ kind: "error_before", path: "/v1/refunds", times: 3 });
    const key = uid();
    const pending = await call(stack, "refunds", { order_id: order.orderId }, {
      token: organiser.token,
      key,
    });
    assert.equal(pending.status, 503, pending.text);
    assert.equal(await net(stack, order.orderId), 0, "the pending refund reserves the whole share");
    // meanwhile someone refunds the payment in full in the Stripe dashboard
    const { deliveries } = await stack.stripe!.refundFromDashboard(order.paymentIntent);
    assert.ok(deliveries.every((d) => d.status === 200), JSON.stringify(deliveries));
    // the organiser's retry: Stripe refuses, the charge is refunded already
    const retry = await call(stack, "refunds", { order_id: order.orderId }, { token: organiser.token, key });
    assert.deepEqual([retry.status, retry.body.stripe_code], [422, "charge_already_refunded"], retry.text);

    assert.equal(stripeRefunded(stack, order.paymentIntent), order.total);
    assert.equal(await net(stack, order.orderId), 0, "buyer refunded in full: the organiser nets exactly 0");
    const [o] = await stack.db.query<{ status: string; refunded_cents: number; valid: number }>(
      `select status, refunded_cents, (select count(*)::int from events.tickets where order_id = o.id
         and status = 'valid') as valid from events.orders o where id = $1`,
      [order.orderId],
    );
    assert.deepEqual(o, { status: "refunded", refunded_cents: order.total, valid: 0 });
    assert.equal((await wallet(organiser)).available_cents, 0);
    const payout = await call(stack, "payouts", { amount_cents: order.subtotal }, { token: organiser.token });
    assert.deepEqual([payout.status, payout.body.type], [409, "/problems/insufficient-funds"]);
  },
);

ledgerTest(
  "a 7-hour-old dashboard refund delivered before its payment ends refunded, the organiser netting 0",
  async (stack) => {
    const organiser = await newOrganiser(stack);
    const checkout = await call(stack, "enhanced-checkout", {
      event_id: organiser.eventId,
      items: [{ tier_id: organiser.tierId, quantity: 2 }],
    }, { token: await stack.userToken("22222222-2222-4222-8222-222222222222") });
    const { session, event: paid } = await stack.stripe!.paySession(
      checkout.body.checkout_session_id as string,
      {
        deliver: false,
      },
    );
    const intent = session.payment_intent as string;
    const { events } = await stack.stripe!.refundFromDashboard(intent, undefined, { deliver: false });
    // after an endpoint outage Stripe redelivers in no order: the refund's events, 7 hours old, come first
    const old = (e: StripeEvent) => ({ ...e, created: e.created - 7 * 3600 });
    const early = await stack.stripe!.deliver(events.map(old));
    assert.ok(early.every((d) => d.status === 200), JSON.stringify(early));
    assert.ok(early.some((d) => JSON.parse(d.body).status === "parked"));
    assert.deepEqual((await stack.stripe!.deliver([paid])).map((d) => d.status), [200]);
    const orderId = checkout.body.order_id as string;
    const [o] = await stack.db.query<{ status: string; refunded_cents: number }>(
      "select status, refunded_cents from events.orders where id = $1",
      [orderId],
    );
    assert.deepEqual(o, { status: "refunded", refunded_cents: checkout.body.amount_total });
    assert.equal(stripeRefunded(stack, intent), checkout.body.amount_total);
    assert.equal(await net(stack, orderId), 0);
  },
);

ledgerTest("a refund that fails at the bank does not shift later pro-rata debits", async (stack) => {
  const organiser = await newOrganiser(stack);
  const order = await paidOrder(stack, organiser, 2); // subtotal 5000, total 5364
  const refund = async () => {
    const r = await call(stack, "refunds", { order_id: order.orderId, amount_cents: 1 }, {
      token: organiser.token,
    });
    assert.equal(r.status, 201, r.text);
    return r.body.stripe_refund_id as string;
  };
  const r1 = await refund();
  await refund();
  await stack.stripe!.failRefund(r1);
  await refund();
  const refunded = stripeRefunded(stack, order.paymentIntent);
  assert.equal(refunded, 2);
  assert.equal(
    await net(stack, order.orderId),
    expectedNet(order, refunded),
    "5000 - floor(2 x 5000 / 5364) = 4999",
  );
});

for (const outcome of ["won", "lost"] as const) {
  ledgerTest(
    `a dispute opened, delivered twice, then ${outcome}: the organiser's share moves once`,
    async (stack) => {
      const organiser = await newOrganiser(stack);
      const order = await paidOrder(stack, organiser, 2);
      const opened = await stack.stripe!.openDispute(order.paymentIntent, { deliver: false });
      await stack.stripe!.deliver(opened.events, { times: 2, concurrently: true });
      const dispute = (opened.result as { id: string }).id;
      assert.equal(await net(stack, order.orderId), 0, "the disputed sale is debited");
      const [during] = await stack.db.query<{ status: string; valid: number; entries: number }>(
        `select o.status, (select count(*)::int from events.tickets k where k.order_id = o.id and k.status = 'valid') as valid,
         (select count(*)::int from wallet.wallet_transactions t where t.order_id = o.id and t.type = 'dispute') as entries
       from events.orders o where o.id = $1`,
        [order.orderId],
      );
      assert.deepEqual(during, { status: "disputed", valid: 0, entries: 1 });
      const payout = await call(stack, "payouts", { amount_cents: 100 }, { token: organiser.token });
      assert.equal(payout.status, 409, "the disputed money cannot be paid out");

      const closed = await stack.stripe!.closeDispute(dispute, outcome, { deliver: false });
      await stack.stripe!.deliver(closed.events, { times: 2 });
      const [after] = await stack.db.query<{ status: string; valid: number }>(
        `select o.status, (select count(*)::int from events.tickets k where k.order_id = o.id and k.status = 'valid') as valid
       from events.orders o where o.id = $1`,
        [order.orderId],
      );
      if (outcome === "won") {
        assert.equal(await net(stack, order.orderId), order.subtotal, "credited back once");
        assert.deepEqual(after, { status: "paid", valid: 2 });
      } else {
        assert.equal(await net(stack, order.orderId), 0, "a lost dispute stays debited");
        assert.deepEqual(after, { status: "disputed", valid: 0 });
      }
    },
  );
}

ledgerTest(
  "a partly refunded charge disputed in full: the organiser loses the sale once, never more; won, the refund's share stays",
  async (stack) => {
    const organiser = await newOrganiser(stack);
    const order = await paidOrder(stack, organiser, 2);
    const refund = await call(stack, "refunds", { order_id: order.orderId, amount_cents: 2000 }, {
      token: organiser.token,
    });
    assert.equal(refund.status, 201, refund.text);
    assert.equal(await net(stack, order.orderId), expectedNet(order, 2000));
    // the cardholder disputes the whole charge all the same; Stripe withdraws all of it
    const opened = await stack.stripe!.openDispute(order.paymentIntent);
    assert.equal(opened.result.amount, order.total);
    assert.equal(
      await net(stack, order.orderId),
      0,
      "refunded 2000 and disputed in full: the share is the whole sale, not more",
    );
    assert.equal((await wallet(organiser)).available_cents, 0);

    await stack.stripe!.closeDispute((opened.result as { id: string }).id, "won");
    assert.equal(await net(stack, order.orderId), expectedNet(order, 2000), "the refund's share alone");
  },
);

/** An order's status, valid tickets and its dispute as recorded. */
async function disputed(stack: Stack, orderId: string) {
  const [row] = await stack.db.query<Record<string, unknown>>(
    `select o.status, (select count(*)::int from events.tickets k where k.order_id = o.id and k.status = 'valid') as valid,
       d.status as dispute, d.withdrawn_cents as withdrawn, d.reinstated_cents as reinstated
     from events.orders o join events.disputes d on d.order_id = o.id where o.id = $1`,
    [orderId],
  );
  return { ...row };
}

for (const outcome of ["won", "lost"] as const) {
  ledgerTest(
    `a dispute ${outcome}, its opening events delivered after its closing ones: it stays ${outcome}`,
    async (stack) => {
      const organiser = await newOrganiser(stack);
      const order = await paidOrder(stack, organiser, 2);
      const opened = await stack.stripe!.openDispute(order.paymentIntent, { deliver: false });
      const closed = await stack.stripe!.closeDispute((opened.result as { id: string }).id, outcome, {
        deliver: false,
      });
      // Stripe does not promise the order of events: the closing ones come first, the opening ones late
      for (const events of [closed.events, opened.events]) {
        const deliveries = await stack.stripe!.deliver(events);
        assert.ok(deliveries.every((d) => d.status === 200), JSON.stringify(deliveries));
      }
      const won = outcome === "won";
      assert.deepEqual(await disputed(stack, order.orderId), {
        status: won ? "paid" : "disputed",
        valid: won ? 2 : 0,
        dispute: outcome,
        withdrawn: order.total,
        reinstated: won ? order.total : 0,
      });
      assert.equal(await net(stack, order.orderId), won ? order.subtotal : 0);
    },
  );
}

for (const closingFirst of [false, true]) {
  ledgerTest(
    `dispute events without balance transactions say what moved by their type: withdrawn, then won back${
      closingFirst ? " (the closing events delivered first)" : ""
    }`,
    async (stack) => {
      const organiser = await newOrganiser(stack);
      const order = await paidOrder(stack, organiser, 2);
      const opened = await stack.stripe!.openDispute(order.paymentIntent, { deliver: false });
      const closed = await stack.stripe!.closeDispute((opened.result as { id: string }).id, "won", {
        deliver: false,
      });
      const bare = (e: StripeEvent): StripeEvent => ({
        ...e,
        data: { ...e.data, object: { ...e.data.object, balance_transactions: [] } },
      });
      const deliver = async (events: StripeEvent[]) => {
        const deliveries = await stack.stripe!.deliver(events.map(bare));
        assert.ok(deliveries.every((d) => d.status === 200), JSON.stringify(deliveries));
      };
      const [reinstated, closing] = closed.events;
      assert.deepEqual(closed.events.map((e) => e.type), [
        "charge.dispute.funds_reinstated",
        "charge.dispute.closed",
      ]);
      if (closingFirst) {
        await deliver(closed.events);
        await deliver(opened.events);
      } else {
        await deliver(opened.events);
        assert.equal(await net(stack, order.orderId), 0, "funds_withdrawn: the disputed amount");
        await deliver([reinstated]);
        assert.equal(await net(stack, order.orderId), order.subtotal, "funds_reinstated: all of it back");
        await deliver([closing]);
      }
      assert.deepEqual(await disputed(stack, order.orderId), {
        status: "paid",
        valid: 2,
        dispute: "won",
        withdrawn: order.total,
        reinstated: order.total,
      });
      assert.equal(await net(stack, order.orderId), order.subtotal, "won: credited back once");
    },
  );
}

/** An organiser who sold 10 tickets to their own event and was paid all of it out. */
async function paidOut(
  stack: Stack,
): Promise<{ organiser: Organiser; order: Awaited<ReturnType<typeof paidOrder>> }> {
  const organiser = await newOrganiser(stack);
  const order = await paidOrder(stack, organiser, 10);
  const payout = await call(stack, "payouts", { amount_cents: order.subtotal }, { token: organiser.token });
  assert.equal(payout.status, 201, payout.text);
  assert.equal((await wallet(organiser)).available_cents, 0);
  return { organiser, order };
}

ledgerTest(
  "a refund after a payout reverses the organiser's transfer first, exactly once under a crash",
  async (stack) => {
    const { organiser, order } = await paidOut(stack);
    const [transfer] = [...stack.stripe!.state.transfers.values()].filter((t) =>
      t.destination === organiser.account
    );
    testHooks.afterStripe = (op) => {
      if (op.operationType === "transfer_reversal:create") throw new Error("crash after the reversal");
    };
    const key = uid();
    const crashed = await call(stack, "refunds", { order_id: order.orderId }, {
      token: organiser.token,
      key,
    });
    delete testHooks.afterStripe;
    assert.equal(crashed.status, 500);
    assert.equal(
      [...stack.stripe!.state.refunds.values()].filter((r) => r.payment_intent === order.paymentIntent)
        .length,
      0,
      "the refund waits for its recovery",
    );
    await stack.db.query(
      "update public.stripe_idempotency_keys set locked_until = now() where operation_type = 'transfer_reversal:create'",
    );
    const retried = await call(stack, "refunds", { order_id: order.orderId }, {
      token: organiser.token,
      key,
    });
    assert.equal(retried.status, 201, retried.text);

    assert.equal((transfer.reversals as { data: unknown[] }).data.length, 1, "one reversal at Stripe");
    assert.equal(transfer.amount_reversed, order.subtotal);
    assert.equal(stripeRefunded(stack, order.paymentIntent), order.total);
    assert.equal(await net(stack, order.orderId), 0);
    const w = await wallet(organiser);
    assert.deepEqual([w.balance_cents, w.available_cents], [0, 0], "the platform is not out of pocket");
  },
);

ledgerTest(
  "a refund after a payout whose transfer cannot be reversed is refused 409; only an admin may refund",
  async (stack) => {
    const { organiser, order } = await paidOut(stack);
    await stack.stripe!.payOut(organiser.account); // the connected account's balance went to its bank
    const refused = await call(stack, "refunds", { order_id: order.orderId }, { token: organiser.token });
    assert.deepEqual(
      [refused.status, refused.body.type],
      [409, "/problems/insufficient-organiser-balance"],
      refused.text,
    );
    assert.equal(stripeRefunded(stack, order.paymentIntent), 0, "no refund was sent");
    assert.equal(await net(stack, order.orderId), order.subtotal, "the organiser's share is not taken");
    assert.equal(
      (await wallet(organiser)).balance_cents,
      0,
      "never below zero through the organiser's own action",
    );

    const adminId = uid();
    await stack.db.query("insert into auth.users (id, email) values ($1, $2)", [
      adminId,
      `admin-${adminId}@x.test`,
    ]);
    const admin = await stack.userToken(adminId, { app_metadata: { role: "platform_admin" } });
    const byAdmin = await call(stack, "refunds", { order_id: order.orderId }, { token: admin });
    assert.equal(byAdmin.status, 201, byAdmin.text);
    assert.equal(stripeRefunded(stack, order.paymentIntent), order.total);
    assert.equal(
      (await wallet(organiser)).balance_cents,
      -order.subtotal,
      "the organiser owes it; sales pay it back",
    );
    const payout = await call(stack, "payouts", { amount_cents: 100 }, { token: organiser.token });
    assert.equal(payout.status, 409);
  },
);

ledgerTest(
  "a refund whose shortfall the organiser's transfers cannot cover yet is refused 409 with the figures",
  async (stack) => {
    const organiser = await newOrganiser(stack);
    const order = await paidOrder(stack, organiser, 4); // subtotal 10000
    // a payout whose function died after Stripe acted: in flight, its transfer not recorded yet
    testHooks.afterStripe = (op) => {
      if (op.operationType === "payout:create") throw new Error("crash after the transfer");
    };
    const payout = await call(stack, "payouts", { amount_cents: 10_000 }, { token: organiser.token });
    delete testHooks.afterStripe;
    assert.equal(payout.status, 500);
    const before = await stack.db.query("select count(*)::int as n from events.refunds");
    const refused = await call(stack, "refunds", { order_id: order.orderId }, { token: organiser.token });
    assert.deepEqual(
      [refused.status, refused.body.type],
      [409, "/problems/insufficient-organiser-balance"],
      refused.text,
    );
    assert.deepEqual([refused.body.shortfall_cents, refused.body.recoverable_cents], [10_000, 0]);
    assert.deepEqual(
      await stack.db.query("select count(*)::int as n from events.refunds"),
      before,
      "nothing written",
    );
    assert.equal(stripeRefunded(stack, order.paymentIntent), 0);
  },
);

ledgerTest(
  "property: whatever API refunds, dashboard refunds, failures and event orders, the organiser nets sale - floor(refunded x subtotal / total)",
  async (stack) => {
    const step = fc.oneof(
      fc.record({ kind: fc.constant("api" as const), amount: fc.integer({ min: 1, max: 3000 }) }),
      fc.record({ kind: fc.constant("dashboard" as const), amount: fc.integer({ min: 1, max: 3000 }) }),
      fc.record({ kind: fc.constant("fail" as const), pick: fc.nat() }),
    );
    await fc.assert(
      fc.asyncProperty(
        fc.array(step, { minLength: 1, maxLength: 6 }),
        fc.boolean(),
        fc.integer(),
        async (steps, shuffle, seed) => {
          const organiser = await newOrganiser(stack);
          const order = await paidOrder(stack, organiser, 2);
          stack.stripe!.options.autoDeliver = false;
          const held: StripeEvent[] = []; // what Stripe emitted and has not delivered yet
          try {
            for (const s of steps) {
              const left = order.total - stripeRefunded(stack, order.paymentIntent);
              if (s.kind === "api" && left > 0) {
                await call(stack, "refunds", {
                  order_id: order.orderId,
                  amount_cents: Math.min(s.amount, left),
                }, {
                  token: organiser.token,
                });
              } else if (s.kind === "dashboard" && left > 0) {
                const amount = Math.min(s.amount, left);
                held.push(
                  ...(await stack.stripe!.refundFromDashboard(order.paymentIntent, amount, {
                    deliver: false,
                  }))
                    .events,
                );
              } else if (s.kind === "fail") {
                const refunds = [...stack.stripe!.state.refunds.values()].filter((r) =>
                  r.payment_intent === order.paymentIntent && r.status === "succeeded"
                );
                if (refunds.length) {
                  held.push(
                    ...(await stack.stripe!.failRefund(refunds[s.pick % refunds.length].id, {
                      deliver: false,
                    }))
                      .events,
                  );
                }
              }
            }
            // Stripe delivers what happened in any order, some of it twice
            const events = [...held, ...stack.stripe!.takeEvents()];
            const ordered = shuffle
              ? [...events].sort((a, b) => ((a.id < b.id) === (seed % 2 === 0) ? -1 : 1))
              : events;
            await stack.stripe!.deliver([...ordered, ...ordered.filter((_, i) => i % 2 === 0)]);
          } finally {
            stack.stripe!.options.autoDeliver = true;
          }
          const refunded = stripeRefunded(stack, order.paymentIntent);
          assert.equal(
            await net(stack, order.orderId),
            expectedNet(order, refunded),
            JSON.stringify({ steps, refunded }),
          );
          if (refunded === order.total) assert.equal(await net(stack, order.orderId), 0);
        },
      ),
      { numRuns: 20 },
    );
  },
);
