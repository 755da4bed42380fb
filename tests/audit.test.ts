// stripe-audit: the ledger compared with Stripe. The emulator acts without telling the webhook (dashboard
// refunds and disputes, transfer reversals, a payment whose completion never came, an event Stripe no
// longer lists); one audit run finds and repairs every case, to the cent, and a second run finds nothing.
import assert from "node:assert/strict";
import type { Stack } from "../tools/local/stack.ts";
import { BUYER, call, ledgerTest, newOrganiser, paidOrder, wallet } from "./_flows.ts";

interface Report {
  repaired: { kind: string; order_id?: string; payout_id?: string; event_id?: string }[];
  discrepancies: unknown[];
  orders_checked: number;
}

async function audit(stack: Stack): Promise<Report> {
  const answer = await call(stack, "stripe-audit", {}, { token: stack.serviceRoleKey, key: null });
  assert.equal(answer.status, 200, answer.text);
  return answer.body as unknown as Report;
}

async function orderMoney(stack: Stack, orderId: string) {
  const [row] = await stack.db.query<
    { status: string; refunded_cents: number; disputed_cents: number; net: number }
  >(
    `select o.status, o.refunded_cents, o.disputed_cents,
       (select coalesce(sum(t.amount_cents), 0)::int from wallet.wallet_transactions t where t.order_id = o.id) as net
     from events.orders o where o.id = $1`,
    [orderId],
  );
  return row;
}

ledgerTest(
  "one audit run repairs what Stripe did without telling the webhook; a second run finds nothing",
  async (stack) => {
    const emulator = stack.stripe!;
    await audit(stack); // what earlier tests left
    const organiser = await newOrganiser(stack);
    const refunded = await paidOrder(stack, organiser, 2);
    const disputed = await paidOrder(stack, organiser, 2);
    const unlisted = await paidOrder(stack, organiser, 2);
    const payout = await call(stack, "payouts", { amount_cents: 4000 }, { token: organiser.token });
    assert.equal(payout.status, 201, payout.text);
    const checkout = await call(stack, "enhanced-checkout", {
      event_id: organiser.eventId,
      items: [{ tier_id: organiser.tierId, quantity: 1 }],
    }, { token: await stack.userToken(BUYER) });

    // Stripe acts; no event reaches the webhook
    await emulator.refundFromDashboard(refunded.paymentIntent, 1500, { deliver: false });
    await emulator.openDispute(disputed.paymentIntent, { deliver: false });
    await emulator.reverseTransfer(payout.body.stripe_transfer_id as string, 1000, { deliver: false });
    await emulator.paySession(checkout.body.checkout_session_id as string, { deliver: false });
    // and one refund whose events Stripe no longer lists (older than its 30 days of events)
    const { events } = await emulator.refundFromDashboard(unlisted.paymentIntent, 700, { deliver: false });
    for (const e of events) emulator.state.events.delete(e.id);

    const first = await audit(stack);
    assert.deepEqual(first.discrepancies, [], JSON.stringify(first.discrepancies));
    const kinds = first.repaired.map((r) => r.kind);
    assert.ok(kinds.includes("event-not-delivered"), JSON.stringify(kinds));
    assert.ok(
      first.repaired.some((r) => r.kind === "order-money" && r.order_id === unlisted.orderId),
      "the refund Stripe no longer lists an event for is found by comparing the charge",
    );

    const share = (order: { subtotal: number; total: number }, cents: number) =>
      order.subtotal - Math.floor(cents * order.subtotal / order.total);
    assert.deepEqual(await orderMoney(stack, refunded.orderId), {
      status: "partially_refunded",
      refunded_cents: 1500,
      disputed_cents: 0,
      net: share(refunded, 1500),
    });
    assert.deepEqual(await orderMoney(stack, unlisted.orderId), {
      status: "partially_refunded",
      refunded_cents: 700,
      disputed_cents: 0,
      net: share(unlisted, 700),
    });
    assert.deepEqual(await orderMoney(stack, disputed.orderId), {
      status: "disputed",
      refunded_cents: 0,
      disputed_cents: disputed.total,
      net: 0,
    });
    const [paid] = await stack.db.query<{ status: string }>(
      "select status from events.orders where id = $1",
      [
        checkout.body.order_id,
      ],
    );
    assert.equal(paid.status, "paid", "the payment whose completion never came is recorded");
    const [reversed] = await stack.db.query<{ reversed_cents: number }>(
      "select reversed_cents::int from wallet.payouts where id = $1",
      [payout.body.payout_id],
    );
    assert.equal(reversed.reversed_cents, 1000);
    // the organiser's wallet equals what Stripe did: three sales and a fourth, less shares, payout, reversal
    const sales = refunded.subtotal + disputed.subtotal + unlisted.subtotal + 2500;
    const expected = sales - (refunded.subtotal - share(refunded, 1500)) - disputed.subtotal -
      (unlisted.subtotal - share(unlisted, 700)) - 4000 + 1000;
    assert.equal((await wallet(organiser)).balance_cents, expected);

    const second = await audit(stack);
    assert.deepEqual([second.repaired, second.discrepancies], [[], []], JSON.stringify(second));
  },
);

ledgerTest("the audit reports what it cannot repair, with the ids", async (stack) => {
  await audit(stack);
  const organiser = await newOrganiser(stack);
  const order = await paidOrder(stack, organiser, 1);
  // a charge that does not match its order (say someone edited the row): not Stripe's to repair
  await stack.db.query("update events.orders set refunded_cents = 1 where id = $1", [order.orderId]);
  const report = await audit(stack);
  const found = report.discrepancies as { kind: string; order_id: string }[];
  assert.ok(
    found.some((d) => d.kind === "order-money" && d.order_id === order.orderId),
    JSON.stringify(found),
  );
  await stack.db.query("update events.orders set refunded_cents = 0 where id = $1", [order.orderId]);
});

ledgerTest("the audit is for secret keys only", async (stack) => {
  const user = await call(stack, "stripe-audit", {}, { token: await stack.userToken(BUYER), key: null });
  assert.ok([401, 403].includes(user.status), user.text);
  const none = await call(stack, "stripe-audit", {}, { token: null, key: null });
  assert.equal(none.status, 401);
});
