// Money rules of the real API, checked before Stripe: settlement currencies with their minimum charge and
// minor units (zero-decimal currencies count whole units), the 8-digit maximum, fees per currency, and
// refund reasons only a platform admin may give.
import assert from "node:assert/strict";
import { CURRENCIES, MAX_AMOUNT } from "../supabase/functions/_shared/stripe_contract.ts";
import { BUYER, call, ledgerTest, newOrganiser, paidOrder, uid } from "./_flows.ts";
import { sharedStack, stackTest } from "./_helpers.ts";

stackTest(
  "the settlement currencies in SQL are the ones stripe_contract.ts declares, with the same units",
  async () => {
    const stack = await sharedStack();
    const rows = await stack.db.query<{ code: string; exponent: number; minimum_charge: number }>(
      "select code, exponent, minimum_charge from private.currencies order by code",
    );
    assert.deepEqual(
      rows.map((r) => [r.code, { exponent: r.exponent, minimumCharge: r.minimum_charge }]),
      Object.entries(CURRENCIES).sort(([a], [b]) => a.localeCompare(b)),
    );
    const [{ max }] = await stack.db.query<{ max: number }>("select private.max_amount()::int as max");
    assert.equal(max, MAX_AMOUNT);
  },
);

/** An organiser's event in `currency` with one tier at `price` (minor units). */
async function eventIn(organiser: Awaited<ReturnType<typeof newOrganiser>>, currency: string, price: number) {
  return await organiser.client.rpc("create_event", {
    p_title: `Event in ${currency}`,
    p_starts_at: new Date(Date.now() + 7 * 86_400_000).toISOString(),
    p_tiers: [{ name: "Seat", price_cents: price, capacity: 100, max_per_order: 10 }],
    p_currency: currency,
  });
}

ledgerTest(
  "an event sells only in a settled currency, and no ticket costs more than Stripe takes",
  async (stack) => {
    const organiser = await newOrganiser(stack);
    const unsupported = await eventIn(organiser, "xyz", 1000);
    assert.equal(unsupported.error?.code, "PT400");
    assert.match(unsupported.error!.message, /does not settle xyz/);
    const tooDear = await eventIn(organiser, "usd", MAX_AMOUNT + 1);
    assert.equal(tooDear.error?.code, "PT400");
    assert.match(tooDear.error!.message, /at most 99999999/);
  },
);

ledgerTest(
  "an order over 8 digits is refused with the limits, before Stripe and without writing",
  async (stack) => {
    const organiser = await newOrganiser(stack);
    const { data: event, error } = await eventIn(organiser, "usd", 60_000_000);
    assert.equal(error, null);
    const calls = stack.stripe!.requests.length;
    const answer = await call(stack, "enhanced-checkout", {
      event_id: event.id,
      items: [{ tier_id: event.tiers[0].id, quantity: 2 }],
    }, { token: await stack.userToken(BUYER) });
    assert.equal(answer.status, 422, answer.text);
    assert.equal(answer.body.type, "/problems/amount-out-of-range");
    assert.equal(answer.body.maximum, MAX_AMOUNT);
    assert.equal(answer.body.currency, "usd");
    assert.equal(stack.stripe!.requests.length, calls, "Stripe was not called");
    const [{ n }] = await stack.db.query<{ n: number }>(
      "select count(*)::int as n from events.orders where event_id = $1",
      [
        event.id,
      ],
    );
    assert.equal(n, 0);
  },
);

ledgerTest("an order under the currency's minimum charge is refused with the minimum", async (stack) => {
  const organiser = await newOrganiser(stack);
  const { data: event } = await eventIn(organiser, "gbp", 10);
  await stack.db.query("update private.currencies set service_fee_flat = 0 where code = 'gbp'");
  try {
    const answer = await call(stack, "enhanced-checkout", {
      event_id: event.id,
      items: [{ tier_id: event.tiers[0].id, quantity: 1 }],
    }, { token: await stack.userToken(BUYER) });
    assert.deepEqual([answer.status, answer.body.type, answer.body.minimum], [
      422,
      "/problems/amount-out-of-range",
      CURRENCIES.gbp.minimumCharge,
    ], answer.text);
  } finally {
    await stack.db.query("update private.currencies set service_fee_flat = 149 where code = 'gbp'");
  }
});

ledgerTest("a zero-decimal currency counts whole units: fees and totals in yen, not cents", async (stack) => {
  const organiser = await newOrganiser(stack);
  const { data: event } = await eventIn(organiser, "jpy", 3000);
  const answer = await call(stack, "enhanced-checkout", {
    event_id: event.id,
    items: [{ tier_id: event.tiers[0].id, quantity: 2 }],
  }, { token: await stack.userToken(BUYER) });
  assert.equal(answer.status, 201, answer.text);
  // 6000 yen + round(6000 x 3.7%) = 222 + the yen flat fee (250), not 179 "cents"
  assert.deepEqual([answer.body.amount_total, answer.body.currency], [6000 + 222 + 250, "jpy"]);
  const session = stack.stripe!.state.sessions.get(answer.body.checkout_session_id as string)!;
  assert.equal(session.amount_total, 6472);
});

ledgerTest(
  "only a platform admin may refund as fraudulent (it blocks the card and email at Stripe)",
  async (stack) => {
    const organiser = await newOrganiser(stack);
    const order = await paidOrder(stack, organiser);
    const calls = stack.stripe!.requests.length;
    const byOrganiser = await call(stack, "refunds", { order_id: order.orderId, reason: "fraudulent" }, {
      token: organiser.token,
    });
    assert.deepEqual(
      [byOrganiser.status, byOrganiser.body.type],
      [403, "/problems/forbidden"],
      byOrganiser.text,
    );
    assert.equal(stack.stripe!.requests.length, calls);
    const adminId = uid();
    await stack.db.query("insert into auth.users (id, email) values ($1, $2)", [
      adminId,
      `admin-${adminId}@example.com`,
    ]);
    const admin = await stack.userToken(adminId, { app_metadata: { role: "platform_admin" } });
    const byAdmin = await call(stack, "refunds", {
      order_id: order.orderId,
      amount_cents: 500,
      reason: "fraudulent",
    }, {
      token: admin,
    });
    assert.equal(byAdmin.status, 201, byAdmin.text);
    const refund = stack.stripe!.state.refunds.get(byAdmin.body.stripe_refund_id as string)!;
    assert.equal(refund.reason, "fraudulent");
  },
);
