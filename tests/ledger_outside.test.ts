// Money moving outside our API calls, as the red team of issue 11 attacked it: each F test was a finding
// (fixed in migration 20261128001000 and the audit), each S test a sequence that held. They stay as
// regression tests: events late, reordered and repeated, refunds racing reversals, the audit's view of refunds.
import assert from "node:assert/strict";
import { testHooks } from "../supabase/functions/_shared/idempotency.ts";
import type { Stack } from "../tools/local/stack.ts";
import { call, ledgerTest, newOrganiser, type Organiser, paidOrder, wallet } from "./_flows.ts";

async function net(stack: Stack, orderId: string): Promise<number> {
  const [row] = await stack.db.query<{ net: number }>(
    "select coalesce(sum(amount_cents), 0)::int as net from wallet.wallet_transactions where order_id = $1",
    [orderId],
  );
  return row.net;
}

function stripeRefunded(stack: Stack, paymentIntent: string): number {
  const intent = stack.stripe!.state.paymentIntents.get(paymentIntent)!;
  return stack.stripe!.state.charges.get(intent.latest_charge as string)!.amount_refunded as number;
}

const share = (order: { subtotal: number; total: number }, refunded: number) =>
  Math.floor(Math.min(refunded, order.total) * order.subtotal / order.total);

async function orderRow(stack: Stack, orderId: string) {
  const [o] = await stack.db.query<{ status: string; refunded_cents: number; valid: number }>(
    `select status, refunded_cents, (select count(*)::int from events.tickets where order_id = o.id
       and status = 'valid') as valid from events.orders o where id = $1`,
    [orderId],
  );
  return o;
}

/** Makes the platform's available balance short, so that new refunds stay pending at Stripe. */
function starvePlatform(stack: Stack): () => void {
  const before = stack.stripe!.options.initialBalance;
  stack.stripe!.options.initialBalance = { usd: -1_000_000_000_000 };
  return () => {
    stack.stripe!.options.initialBalance = before;
  };
}

function transferOf(stack: Stack, organiser: Organiser) {
  return [...stack.stripe!.state.transfers.values()].filter((t) => t.destination === organiser.account);
}

async function reconcile(stack: Stack) {
  const r = await call(stack, "stripe-reconcile", {}, { token: stack.serviceRoleKey, key: null });
  assert.equal(r.status, 200, r.text);
  return r.body;
}

async function audit(stack: Stack) {
  const r = await call(stack, "stripe-audit", {}, { token: stack.serviceRoleKey, key: null });
  assert.equal(r.status, 200, r.text);
  return r.body as { repaired: { kind: string; order_id?: string }[]; discrepancies: unknown[] };
}

// F1: an older refund event delivered after a newer one moves a succeeded refund back to pending.
ledgerTest(
  "F1: refund.created (pending) delivered after refund.updated (succeeded) leaves the refunded order refunded",
  async (stack) => {
    const organiser = await newOrganiser(stack);
    const order = await paidOrder(stack, organiser, 2);
    stack.stripe!.options.autoDeliver = false;
    const restore = starvePlatform(stack);
    let restored = false;
    try {
      const r = await call(stack, "refunds", { order_id: order.orderId }, { token: organiser.token });
      assert.equal(r.status, 201, r.text);
      assert.equal(r.body.status, "pending");
      restore();
      restored = true;
      await stack.stripe!.advanceClock(0, { deliver: false }); // Stripe's balance covers it: succeeded
    } finally {
      if (!restored) restore();
    }
    const events = stack.stripe!.takeEvents();
    assert.deepEqual(
      events.map((e) => `${e.type}:${(e.data.object as { status?: string }).status ?? ""}`),
      ["charge.refunded:succeeded", "refund.created:pending", "refund.updated:succeeded"],
    );
    // Stripe retries in no order: the newest first
    const d = await stack.stripe!.deliver(events, { reverse: true });
    assert.ok(d.every((x) => x.status === 200), JSON.stringify(d));
    assert.equal(stripeRefunded(stack, order.paymentIntent), order.total);
    const [refund] = await stack.db.query<{ status: string }>(
      "select status from events.refunds where order_id = $1",
      [order.orderId],
    );
    assert.deepEqual(
      { refund: refund.status, ...(await orderRow(stack, order.orderId)) },
      { refund: "succeeded", status: "refunded", refunded_cents: order.total, valid: 0 },
      "a fully refunded order must not go back to paid with valid tickets",
    );
  },
);

// F2: a second refund while the first refund's reversal is in flight recovers the first shortfall again.
ledgerTest(
  "F2: two refunds after a payout, the first's reversal in flight: transfers are reversed only by the shares",
  async (stack) => {
    const organiser = await newOrganiser(stack);
    const order = await paidOrder(stack, organiser, 10); // subtotal 25000
    const payout = await call(stack, "payouts", { amount_cents: order.subtotal }, { token: organiser.token });
    assert.equal(payout.status, 201, payout.text);
    const [transfer] = transferOf(stack, organiser);
    stack.stripe!.options.autoDeliver = false; // Stripe's transfer.reversed comes late
    // the first refund's reversal is made at Stripe, then its handler dies before recording it
    testHooks.afterStripe = (op) => {
      if (op.operationType === "transfer_reversal:create") throw new Error("crash after the reversal");
    };
    const first = await call(stack, "refunds", { order_id: order.orderId, amount_cents: 10_000 }, {
      token: organiser.token,
    });
    delete testHooks.afterStripe;
    assert.equal(first.status, 500, first.text);
    // a second refund of the same organiser, before the reconciler has settled the first reversal
    const second = await call(stack, "refunds", { order_id: order.orderId, amount_cents: 5_000 }, {
      token: organiser.token,
    });
    assert.equal(second.status, 201, second.text);
    // the reconciler settles the first (its lease ran out) and then sends the released refund
    await stack.db.query(
      "update public.stripe_idempotency_keys set locked_until = now() where operation_type = 'transfer_reversal:create' and status = 'in_progress'",
    );
    await reconcile(stack);
    await stack.db.query(
      "update public.stripe_idempotency_keys set locked_until = now() where operation_type = 'refund:create' and status = 'in_progress' and locked_until < 'infinity'",
    );
    await reconcile(stack);

    assert.equal(stripeRefunded(stack, order.paymentIntent), 15_000);
    const needed = share(order, 15_000);
    const w = await wallet(organiser);
    assert.deepEqual(
      { amount_reversed: transfer.amount_reversed, balance: w.balance_cents },
      { amount_reversed: needed, balance: 0 },
      `the organiser's share of both refunds is ${needed}; Stripe reversed ${transfer.amount_reversed}`,
    );
  },
);

// F2c/F2d: a sale between two refunds after a payout, the first's reversal in flight. The wallet covers the
// second refund's share with the new sale's credit first. The reversal in flight covers the first refund's
// share, whether Stripe's transfer event already credited it (F2c) or not yet (F2d): counted twice, the second
// refund reversed too little and left the organiser below zero; not counted, too much.
async function saleBetweenRefundsAfterPayout(stack: Stack, transferEventFirst: boolean) {
  const organiser = await newOrganiser(stack);
  const order = await paidOrder(stack, organiser, 10); // subtotal 25000
  const payout = await call(stack, "payouts", { amount_cents: order.subtotal }, { token: organiser.token });
  assert.equal(payout.status, 201, payout.text);
  const [transfer] = transferOf(stack, organiser);
  stack.stripe!.options.autoDeliver = false;
  testHooks.afterStripe = (op) => {
    if (op.operationType === "transfer_reversal:create") throw new Error("crash after the reversal");
  };
  const first = await call(stack, "refunds", { order_id: order.orderId, amount_cents: 10_000 }, {
    token: organiser.token,
  });
  delete testHooks.afterStripe;
  assert.equal(first.status, 500, first.text);
  if (transferEventFirst) await stack.stripe!.deliver(stack.stripe!.takeEvents());
  const sale = await paidOrder(stack, organiser, 1); // a new sale's credit, smaller than the second share
  const second = await call(stack, "refunds", { order_id: order.orderId, amount_cents: 5_000 }, {
    token: organiser.token,
  });
  assert.equal(second.status, 201, second.text);
  await stack.db.query(
    "update public.stripe_idempotency_keys set locked_until = now() where operation_type = 'transfer_reversal:create' and status = 'in_progress'",
  );
  await reconcile(stack);
  await stack.db.query(
    "update public.stripe_idempotency_keys set locked_until = now() where operation_type = 'refund:create' and status = 'in_progress' and locked_until < 'infinity'",
  );
  await reconcile(stack);
  stack.stripe!.options.autoDeliver = true;
  await stack.stripe!.deliver(stack.stripe!.takeEvents());

  assert.equal(stripeRefunded(stack, order.paymentIntent), 15_000);
  const needed = share(order, 15_000) - sale.subtotal;
  assert.ok(sale.subtotal < share(order, 5_000), "the sale covers part of the second share only");
  const w = await wallet(organiser);
  assert.deepEqual(
    { amount_reversed: transfer.amount_reversed, balance: w.balance_cents },
    { amount_reversed: needed, balance: 0 },
    `shares ${
      share(order, 15_000)
    } less the new sale's ${sale.subtotal}; Stripe reversed ${transfer.amount_reversed}`,
  );
}

ledgerTest(
  "F2c: a sale between two refunds after a payout, the first's reversal in flight and credited by its event",
  (stack) => saleBetweenRefundsAfterPayout(stack, true),
);

ledgerTest(
  "F2d: a sale between two refunds after a payout, the first's reversal in flight, its event not yet come",
  (stack) => saleBetweenRefundsAfterPayout(stack, false),
);

// F3: an organiser's small refund after payout also recovers an unrelated debt (a dispute) by reversal.
ledgerTest(
  "F3: an organiser's refund after a payout reverses only its own share, not an earlier dispute's debt",
  async (stack) => {
    const organiser = await newOrganiser(stack);
    const a = await paidOrder(stack, organiser, 2);
    const b = await paidOrder(stack, organiser, 2);
    const payout = await call(stack, "payouts", { amount_cents: a.subtotal + b.subtotal }, {
      token: organiser.token,
    });
    assert.equal(payout.status, 201, payout.text);
    await stack.stripe!.openDispute(a.paymentIntent); // the buyer of A charges back: wallet owes A's sale
    assert.equal((await wallet(organiser)).balance_cents, -a.subtotal);
    const r = await call(stack, "refunds", { order_id: b.orderId, amount_cents: 100 }, {
      token: organiser.token,
    });
    assert.equal(r.status, 201, r.text);
    const [transfer] = transferOf(stack, organiser);
    assert.equal(
      transfer.amount_reversed,
      share(b, 100),
      `a 100-cent refund's share is ${share(b, 100)}; the refund reversed ${transfer.amount_reversed}`,
    );
  },
);

// F4: the audit does not see a refund reserved here that failed at Stripe (its events no longer listed).
ledgerTest(
  "F4: the audit finds a refund pending here that Stripe failed, whose events never came",
  async (stack) => {
    await audit(stack);
    const organiser = await newOrganiser(stack);
    const order = await paidOrder(stack, organiser, 2);
    const restore = starvePlatform(stack);
    let id: string;
    try {
      const r = await call(stack, "refunds", { order_id: order.orderId, amount_cents: 2_000 }, {
        token: organiser.token,
      });
      assert.equal(r.status, 201, r.text);
      assert.equal(r.body.status, "pending");
      id = r.body.stripe_refund_id as string;
      const { events } = await stack.stripe!.failRefund(id, { deliver: false });
      for (const e of events) stack.stripe!.state.events.delete(e.id);
    } finally {
      restore();
    }
    assert.equal(stripeRefunded(stack, order.paymentIntent), 0);
    const report = await audit(stack);
    assert.equal(
      await net(stack, order.orderId),
      order.subtotal,
      `Stripe refunded nothing; audit report ${JSON.stringify(report)}`,
    );
  },
);

// F2b: the same without any crash: two refunds of one organiser sent together, the first's reversal slow.
ledgerTest(
  "F2b: two concurrent refunds after a payout: transfers are reversed only by the organiser's shares",
  async (stack) => {
    const organiser = await newOrganiser(stack);
    const order = await paidOrder(stack, organiser, 10); // subtotal 25000
    const payout = await call(stack, "payouts", { amount_cents: order.subtotal }, { token: organiser.token });
    assert.equal(payout.status, 201, payout.text);
    const [transfer] = transferOf(stack, organiser);
    stack.stripe!.addFault({
      kind: "latency",
      path: `/v1/transfers/${transfer.id}/reversals`,
      ms: 1500,
      times: 1,
    });
    const first = call(stack, "refunds", { order_id: order.orderId, amount_cents: 10_000 }, {
      token: organiser.token,
    });
    await new Promise((r) => setTimeout(r, 500));
    const second = await call(stack, "refunds", { order_id: order.orderId, amount_cents: 5_000 }, {
      token: organiser.token,
    });
    const one = await first;
    assert.deepEqual([one.status, second.status], [201, 201], one.text + second.text);
    assert.equal(stripeRefunded(stack, order.paymentIntent), 15_000);
    const needed = share(order, 15_000);
    const w = await wallet(organiser);
    assert.deepEqual(
      { amount_reversed: transfer.amount_reversed, balance: w.balance_cents },
      { amount_reversed: needed, balance: 0 },
      `the organiser's share of both refunds is ${needed}; Stripe reversed ${transfer.amount_reversed}`,
    );
  },
);

// F5: a refund Stripe holds as pending (its balance short) is reported as a discrepancy by every audit run.
ledgerTest("F5: a refund pending at Stripe and here is not an audit discrepancy", async (stack) => {
  await audit(stack);
  const organiser = await newOrganiser(stack);
  const order = await paidOrder(stack, organiser, 2);
  const restore = starvePlatform(stack);
  try {
    const r = await call(stack, "refunds", { order_id: order.orderId, amount_cents: 2_000 }, {
      token: organiser.token,
    });
    assert.equal(r.status, 201, r.text);
    assert.equal(r.body.status, "pending");
    const report = await audit(stack);
    assert.deepEqual(report.discrepancies, [], JSON.stringify(report.discrepancies));
  } finally {
    restore();
    await stack.stripe!.advanceClock(0);
  }
});

// F7: when one of a refund's reversals fails, the refund fails, but its other reversals still pending are
// sent later by the reconciler: money reversed for a refund that was refused.
ledgerTest(
  "F7: a refund refused because one reversal failed leaves no other reversal to be sent later",
  async (stack) => {
    const organiser = await newOrganiser(stack);
    const b = await paidOrder(stack, organiser, 4); // subtotal 10000
    await paidOrder(stack, organiser, 2); // subtotal 5000
    for (const amount of [7_000, 8_000]) {
      const p = await call(stack, "payouts", { amount_cents: amount }, { token: organiser.token });
      assert.equal(p.status, 201, p.text);
    }
    const [t1, t2] = transferOf(stack, organiser);
    assert.deepEqual([t1.amount, t2.amount], [7_000, 8_000]);
    // the connected account pays 12000 of its 15000 out to its bank
    stack.stripe!.state.accountEntries.push({
      account: organiser.account,
      currency: "usd",
      amount: -12_000,
      available_on: stack.stripe!.state.now(),
    });
    const refused = await call(stack, "refunds", { order_id: b.orderId }, { token: organiser.token });
    assert.equal(refused.status, 409, refused.text);
    assert.equal(stripeRefunded(stack, b.paymentIntent), 0, "no refund was sent");
    // later, the reconciler runs (the leases of what the refused request claimed ran out)
    await stack.db.query(
      "update public.stripe_idempotency_keys set locked_until = now() where status = 'in_progress' and locked_until < 'infinity'",
    );
    await reconcile(stack);
    const rows = await stack.db.query(
      "select amount_cents::int, status from wallet.transfer_reversals where refund_id in (select id from events.refunds where order_id = $1) order by amount_cents",
      [b.orderId],
    );
    assert.deepEqual(
      {
        t1_reversed: t1.amount_reversed,
        t2_reversed: t2.amount_reversed,
        balance: (await wallet(organiser)).balance_cents,
      },
      { t1_reversed: 0, t2_reversed: 0, balance: 0 },
      `nothing is reversed for a refund that was refused; reversals ${
        JSON.stringify(rows)
      }; answer ${refused.text}`,
    );
  },
);

// Sanity (expected to pass): dispute fee borne by the organiser, events reversed and repeated, then won.
ledgerTest(
  "S1: organiser-borne dispute fee, events reversed and repeated, won: fee once, sale back once",
  async (stack) => {
    await stack.db.query("update private.settings set dispute_fee_bearer = 'organiser'");
    try {
      const organiser = await newOrganiser(stack);
      const order = await paidOrder(stack, organiser, 2);
      const opened = await stack.stripe!.openDispute(order.paymentIntent, { deliver: false, amount: 3000 });
      await stack.stripe!.deliver(opened.events, { reverse: true, times: 2 });
      const id = (opened.result as { id: string }).id;
      const closed = await stack.stripe!.closeDispute(id, "won", { deliver: false });
      await stack.stripe!.deliver([...closed.events, ...opened.events], {
        reverse: true,
        concurrently: true,
      });
      const [o] = await stack.db.query<{ status: string; disputed_cents: number }>(
        "select status, disputed_cents from events.orders where id = $1",
        [order.orderId],
      );
      assert.deepEqual(o, { status: "paid", disputed_cents: 0 });
      const fees = await stack.db.query<{ amount_cents: number }>(
        "select amount_cents::int from wallet.wallet_transactions where order_id = $1 and type = 'dispute_fee'",
        [order.orderId],
      );
      assert.deepEqual(fees.map((f) => f.amount_cents), [-1500]);
      assert.equal(await net(stack, order.orderId), order.subtotal - 1500);
      const audited = await audit(stack);
      assert.deepEqual(audited.discrepancies, []);
    } finally {
      await stack.db.query("update private.settings set dispute_fee_bearer = 'platform'");
    }
  },
);

// Sanity (expected to pass): async payment, a dashboard refund whose events come before the async success.
ledgerTest(
  "S2: async payment; the dashboard refund's events before async_payment_succeeded",
  async (stack) => {
    const organiser = await newOrganiser(stack);
    const checkout = await call(stack, "enhanced-checkout", {
      event_id: organiser.eventId,
      items: [{ tier_id: organiser.tierId, quantity: 2 }],
    }, { token: await stack.userToken("22222222-2222-4222-8222-222222222222") });
    const sessionId = checkout.body.checkout_session_id as string;
    const orderId = checkout.body.order_id as string;
    const { session } = await stack.stripe!.paySession(sessionId, { async: true });
    const done = await stack.stripe!.finishAsyncPayment(sessionId, "succeeded", { deliver: false });
    const { events } = await stack.stripe!.refundFromDashboard(session.payment_intent as string, 1000, {
      deliver: false,
    });
    await stack.stripe!.deliver([...events, done.event, done.event]);
    const [o] = await stack.db.query<{ status: string; refunded_cents: number }>(
      "select status, refunded_cents from events.orders where id = $1",
      [orderId],
    );
    assert.deepEqual(o, { status: "partially_refunded", refunded_cents: 1000 });
    assert.equal(
      await net(stack, orderId),
      5000 - Math.floor(1000 * 5000 / (session.amount_total as number)),
    );
  },
);

// F1 (dashboard form), then whether one audit run repairs it.
ledgerTest("F1b: a dashboard refund's events in reverse order; then the audit", async (stack) => {
  const organiser = await newOrganiser(stack);
  const order = await paidOrder(stack, organiser, 2);
  const restore = starvePlatform(stack);
  let events;
  try {
    events =
      (await stack.stripe!.refundFromDashboard(order.paymentIntent, undefined, { deliver: false })).events;
  } finally {
    restore();
  }
  await stack.stripe!.advanceClock(0, { deliver: false });
  events.push(...stack.stripe!.takeEvents());
  await stack.stripe!.deliver(events, { reverse: true });
  const regressed = await orderRow(stack, order.orderId);
  const report = await audit(stack);
  assert.deepEqual(
    { regressed, afterAudit: await orderRow(stack, order.orderId) },
    {
      regressed: { status: "refunded", refunded_cents: order.total, valid: 0 },
      afterAudit: { status: "refunded", refunded_cents: order.total, valid: 0 },
    },
    JSON.stringify(report.repaired),
  );
});
