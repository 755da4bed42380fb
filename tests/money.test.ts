// Organiser money through the local stack and the emulator: the wallet ledger, refunds and payouts
// under concurrency, crashes between Stripe and the database, terminal Stripe failures, and who may
// do what. After every test the ledger invariants hold.
import assert from "node:assert/strict";
import { testHooks } from "../supabase/functions/_shared/idempotency.ts";
import { stripeClient } from "../supabase/functions/_shared/stripe.ts";
import type { Stack } from "../tools/local/stack.ts";
import {
  type Answer,
  BUYER,
  call,
  clientAs,
  footprint,
  ledgerTest,
  newOrganiser,
  paidOrder,
  STRANGER,
  stripeWrites,
  uid,
  wallet,
} from "./_flows.ts";

ledgerTest(
  "a paid order credits its organiser once, however often the payment is recorded",
  async (stack) => {
    const organiser = await newOrganiser(stack);
    const order = await paidOrder(stack, organiser, 3);
    const [session] = [...stack.stripe!.state.sessions.values()].filter((s) =>
      (s.metadata as Record<string, string>).order_id === order.orderId
    );
    const again = await clientAs(stack, stack.serviceRoleKey).rpc("complete_order_payment", {
      p_order_id: order.orderId,
      p_stripe_session_id: session.id,
      p_payment_intent_id: order.paymentIntent,
      p_amount_total: order.total,
    });
    assert.equal(again.data.changed, false);
    const [counts] = await stack.db.query<{ sales: number; tickets: number; sold: number; held: number }>(
      `select (select count(*)::int from wallet.wallet_transactions where order_id = $1 and type = 'sale') as sales,
       (select count(*)::int from events.tickets where order_id = $1) as tickets,
       t.sold, t.held from events.ticket_tiers t where t.id = $2`,
      [order.orderId, organiser.tierId],
    );
    assert.deepEqual(counts, { sales: 1, tickets: 3, sold: 3, held: 0 });
    assert.deepEqual(
      await wallet(organiser),
      {
        currency: "usd",
        balance_cents: 7500,
        available_cents: 7500,
        pending_funds_cents: 0,
        pending_payout_cents: 0,
      } as never,
    );
  },
);

ledgerTest(
  "6 concurrent refunds of 40% each: exactly 2 accepted, 2 Stripe refunds, never more than paid",
  async (stack) => {
    const organiser = await newOrganiser(stack);
    const order = await paidOrder(stack, organiser, 4);
    const amount = Math.floor(order.total * 0.4);
    const answers = await Promise.all(
      Array.from(
        { length: 6 },
        () =>
          call(stack, "refunds", { order_id: order.orderId, amount_cents: amount }, {
            token: organiser.token,
          }),
      ),
    );
    const accepted = answers.filter((a) => a.status === 201);
    const refused = answers.filter((a) => a.status === 409);
    assert.equal(accepted.length, 2, JSON.stringify(answers.map((a) => a.status)));
    assert.equal(refused.length, 4);
    assert.equal(refused[0].body.type, "/problems/refund-exceeds-refundable");
    assert.equal(refused[0].body.refundable_cents, order.total - 2 * amount);
    const atStripe = [...stack.stripe!.state.refunds.values()].filter((r) =>
      r.payment_intent === order.paymentIntent
    );
    assert.equal(atStripe.length, 2);
    const [o] = await stack.db.query<{ refunded_cents: number; status: string }>(
      "select refunded_cents, status from events.orders where id = $1",
      [order.orderId],
    );
    assert.deepEqual(o, { refunded_cents: 2 * amount, status: "partially_refunded" });
    assert.ok(
      accepted.every((a) => a.body.order_status === "partially_refunded" || a.body.order_status === "paid"),
    );
  },
);

ledgerTest("the same refund request repeated (one key, concurrently) is one refund", async (stack) => {
  const organiser = await newOrganiser(stack);
  const order = await paidOrder(stack, organiser);
  const key = uid();
  const body = { order_id: order.orderId, amount_cents: 1000, reason: "requested_by_customer" };
  const settle = async (): Promise<Answer> => {
    for (let tries = 0; tries < 200; tries++) {
      const a = await call(stack, "refunds", body, { token: organiser.token, key });
      if (a.status !== 409) return a;
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error("the refund was still in progress after 200 tries");
  };
  const answers = await Promise.all(Array.from({ length: 5 }, settle));
  assert.ok(answers.every((a) => a.status === 201));
  assert.equal(new Set(answers.map((a) => a.body.refund_id)).size, 1);
  const atStripe = [...stack.stripe!.state.refunds.values()].filter((r) =>
    r.payment_intent === order.paymentIntent
  );
  assert.equal(atStripe.length, 1);
  assert.equal(atStripe[0].reason, "requested_by_customer");
});

ledgerTest(
  "a full refund voids the tickets; the organiser's debits equal the sale credit exactly",
  async (stack) => {
    const organiser = await newOrganiser(stack);
    const order = await paidOrder(stack, organiser, 3);
    const first = await call(
      stack,
      "refunds",
      { order_id: order.orderId, amount_cents: 3333 },
      { token: organiser.token },
    );
    assert.deepEqual([first.status, first.body.order_status, first.body.status], [
      201,
      "partially_refunded",
      "succeeded",
    ]);
    const rest = await call(stack, "refunds", { order_id: order.orderId }, { token: organiser.token });
    assert.equal(rest.status, 201, rest.text);
    assert.equal(rest.body.amount_cents, order.total - 3333);
    assert.equal(rest.body.order_status, "refunded");
    const [t] = await stack.db.query<{ valid: number; void: number; debits: number }>(
      `select (select count(*)::int from events.tickets where order_id = $1 and status = 'valid') as valid,
       (select count(*)::int from events.tickets where order_id = $1 and status = 'void') as void,
       (select -sum(amount_cents)::int from wallet.wallet_transactions where order_id = $1 and type = 'refund') as debits`,
      [order.orderId],
    );
    assert.deepEqual(t, { valid: 0, void: 3, debits: order.subtotal });
    assert.equal((await wallet(organiser)).balance_cents, 0);
    const more = await call(stack, "refunds", { order_id: order.orderId, amount_cents: 1 }, {
      token: organiser.token,
    });
    assert.equal(more.status, 409);
  },
);

ledgerTest(
  "6 concurrent payouts of 40% of available: exactly 2 transfers, available never negative",
  async (stack) => {
    const organiser = await newOrganiser(stack);
    await paidOrder(stack, organiser, 4);
    await paidOrder(stack, organiser, 2);
    const before = await wallet(organiser);
    assert.equal(before.available_cents, 15_000);
    const amount = Math.floor(before.available_cents * 0.4);
    const answers = await Promise.all(
      Array.from(
        { length: 6 },
        () => call(stack, "payouts", { amount_cents: amount }, { token: organiser.token }),
      ),
    );
    assert.equal(
      answers.filter((a) => a.status === 201).length,
      2,
      JSON.stringify(answers.map((a) => a.text)),
    );
    const refused = answers.filter((a) => a.status === 409);
    assert.equal(refused.length, 4);
    assert.equal(refused[0].body.type, "/problems/insufficient-funds");
    assert.equal(refused[0].body.available_cents, before.available_cents - 2 * amount);
    const transfers = [...stack.stripe!.state.transfers.values()].filter((t) =>
      t.destination === organiser.account
    );
    assert.equal(transfers.length, 2);
    const after = await wallet(organiser);
    assert.deepEqual(after, {
      currency: "usd",
      balance_cents: before.available_cents - 2 * amount,
      available_cents: before.available_cents - 2 * amount,
      pending_funds_cents: 0,
      pending_payout_cents: 0,
    });
    assert.ok(after.available_cents >= 0);
  },
);

ledgerTest(
  "a refund that crashed after Stripe acted is finished by the retry: one refund, one entry",
  async (stack) => {
    // no webhook meanwhile: the retry has only the operation's lease to go by
    stack.stripe!.options.autoDeliver = false;
    const organiser = await newOrganiser(stack);
    const order = await paidOrder(stack, organiser);
    const key = uid();
    testHooks.afterStripe = (op) => {
      if (op.operationType === "refund:create") throw new Error("crash between Stripe and the database");
    };
    const crashed = await call(
      stack,
      "refunds",
      { order_id: order.orderId, amount_cents: 2000 },
      { token: organiser.token, key },
    );
    delete testHooks.afterStripe;
    assert.equal(crashed.status, 500);
    assert.equal(
      [...stack.stripe!.state.refunds.values()].filter((r) => r.payment_intent === order.paymentIntent)
        .length,
      1,
    );
    const stalled = await call(
      stack,
      "refunds",
      { order_id: order.orderId, amount_cents: 2000 },
      { token: organiser.token, key },
    );
    assert.deepEqual([stalled.status, stalled.body.type], [409, "/problems/operation-in-progress"]);
    // the crashed holder's lease runs out (here: at once)
    await stack.db.query(
      `update public.stripe_idempotency_keys set locked_until = now() where operation_type = 'refund:create'
       and operation_id in (select id::text from events.refunds where order_id = $1)`,
      [order.orderId],
    );
    const retried = await call(
      stack,
      "refunds",
      { order_id: order.orderId, amount_cents: 2000 },
      { token: organiser.token, key },
    );
    assert.equal(retried.status, 201, retried.text);
    const atStripe = [...stack.stripe!.state.refunds.values()].filter((r) =>
      r.payment_intent === order.paymentIntent
    );
    assert.deepEqual(atStripe.map((r) => r.id), [retried.body.stripe_refund_id]);
    const [n] = await stack.db.query<{ entries: number; refunds: number }>(
      `select (select count(*)::int from wallet.wallet_transactions where order_id = $1 and type = 'refund') as entries,
       (select count(*)::int from events.refunds where order_id = $1) as refunds`,
      [order.orderId],
    );
    assert.deepEqual(n, { entries: 1, refunds: 1 });
  },
);

ledgerTest(
  "a payout that crashed after Stripe acted is finished by the retry: one transfer, one entry",
  async (stack) => {
    const organiser = await newOrganiser(stack);
    await paidOrder(stack, organiser);
    const key = uid();
    testHooks.afterStripe = (op) => {
      if (op.operationType === "payout:create") throw new Error("crash between Stripe and the database");
    };
    const crashed = await call(stack, "payouts", { amount_cents: 3000 }, { token: organiser.token, key });
    delete testHooks.afterStripe;
    assert.equal(crashed.status, 500);
    await stack.db.query(
      `update public.stripe_idempotency_keys set locked_until = now() where operation_type = 'payout:create'
       and operation_id in (select id::text from wallet.payouts where organiser_id = $1)`,
      [organiser.id],
    );
    const retried = await call(stack, "payouts", { amount_cents: 3000 }, { token: organiser.token, key });
    assert.equal(retried.status, 201, retried.text);
    assert.equal(retried.body.status, "paid");
    const transfers = [...stack.stripe!.state.transfers.values()].filter((t) =>
      t.destination === organiser.account
    );
    assert.deepEqual(transfers.map((t) => t.id), [retried.body.stripe_transfer_id]);
    const [n] = await stack.db.query<{ entries: number }>(
      "select count(*)::int as entries from wallet.wallet_transactions t join wallet.payouts p on p.id = t.payout_id where p.organiser_id = $1",
      [organiser.id],
    );
    assert.equal(n.entries, 1);
    assert.equal((await wallet(organiser)).available_cents, 5000 - 3000);
  },
);

ledgerTest(
  "a terminal Stripe failure fails the payout and gives the debit back to the cent",
  async (stack) => {
    const organiser = await newOrganiser(stack);
    await paidOrder(stack, organiser);
    const before = await wallet(organiser);
    stack.stripe!.addFault({
      kind: "error",
      path: "/v1/transfers",
      status: 400,
      error: { type: "invalid_request_error", code: "balance_insufficient", message: "Insufficient funds" },
    });
    const key = uid();
    const answer = await call(stack, "payouts", { amount_cents: 4000 }, { token: organiser.token, key });
    assert.equal(answer.status, 422, answer.text);
    assert.deepEqual([answer.body.type, answer.body.stripe_code], [
      "/problems/stripe-rejected",
      "balance_insufficient",
    ]);
    assert.deepEqual(await wallet(organiser), before);
    const [p] = await stack.db.query<{ status: string; entries: string[] }>(
      `select p.status, array(select t.type from wallet.wallet_transactions t where t.payout_id = p.id order by t.id) as entries
     from wallet.payouts p where p.organiser_id = $1`,
      [organiser.id],
    );
    assert.deepEqual(p, { status: "failed", entries: ["payout", "payout_reversal"] });
    const replay = await call(stack, "payouts", { amount_cents: 4000 }, { token: organiser.token, key });
    assert.equal(replay.text, answer.text, "the failure is replayed");
  },
);

ledgerTest(
  "a terminal Stripe failure fails the refund and gives the organiser's debit back",
  async (stack) => {
    const organiser = await newOrganiser(stack);
    const order = await paidOrder(stack, organiser);
    const before = await wallet(organiser);
    stack.stripe!.addFault({
      kind: "error",
      path: "/v1/refunds",
      status: 400,
      error: { type: "invalid_request_error", code: "charge_disputed", message: "The charge is disputed" },
    });
    const answer = await call(
      stack,
      "refunds",
      { order_id: order.orderId, amount_cents: 1500 },
      { token: organiser.token },
    );
    assert.equal(answer.status, 422, answer.text);
    assert.deepEqual(await wallet(organiser), before);
    const [r] = await stack.db.query<{ status: string; order_status: string; refundable: number }>(
      `select r.status, o.status as order_status, o.refunded_cents as refundable from events.refunds r
     join events.orders o on o.id = r.order_id where r.order_id = $1`,
      [order.orderId],
    );
    assert.deepEqual(r, { status: "failed", order_status: "paid", refundable: 0 });
    const again = await call(stack, "refunds", { order_id: order.orderId }, { token: organiser.token });
    assert.equal(again.status, 201, "a failed refund does not use up the refundable amount");
    assert.equal(again.body.amount_cents, order.total);
  },
);

ledgerTest(
  "who may refund and pay out: buyer, stranger, another event's organiser and anon are refused",
  async (stack) => {
    const organiser = await newOrganiser(stack);
    const order = await paidOrder(stack, organiser);
    const other = await newOrganiser(stack, { payouts: null });
    const disabled = await newOrganiser(stack, { payouts: false });
    const refund = { order_id: order.orderId, amount_cents: 100 };
    const before = await footprint(stack);
    for (
      const [who, token] of [
        ["buyer", await stack.userToken(BUYER)],
        ["stranger", await stack.userToken(STRANGER)],
        ["another organiser", other.token],
      ] as const
    ) {
      const r = await call(stack, "refunds", refund, { token: token });
      assert.deepEqual([r.status, r.body.type], [404, "/problems/order-not-found"], `${who} refund`);
      const p = await call(stack, "payouts", { amount_cents: 100 }, { token: token });
      assert.deepEqual([p.status, p.body.type], [403, "/problems/no-payout-account"], `${who} payout`);
    }
    const unknown = await call(stack, "refunds", { order_id: uid(), amount_cents: 100 }, {
      token: organiser.token,
    });
    assert.deepEqual(
      [unknown.status, unknown.body.type],
      [404, "/problems/order-not-found"],
      "same answer as a real order",
    );
    for (const fn of ["refunds", "payouts"]) {
      const a = await call(stack, fn, fn === "refunds" ? refund : { amount_cents: 100 }, {
        token: stack.anonKey,
      });
      assert.equal(a.status, 401, `anon ${fn}`);
    }
    const off = await call(stack, "payouts", { amount_cents: 100 }, { token: disabled.token });
    assert.deepEqual([off.status, off.body.type], [409, "/problems/payouts-disabled"]);
    const small = await call(stack, "payouts", { amount_cents: 99 }, { token: organiser.token });
    assert.deepEqual([small.status, small.body.type], [400, "/problems/validation"]);
    assert.deepEqual(await footprint(stack), before, "refused requests wrote nothing and called no Stripe");
  },
);

ledgerTest("a platform admin may refund any order", async (stack) => {
  const organiser = await newOrganiser(stack);
  const order = await paidOrder(stack, organiser);
  const admin = await stack.userToken(STRANGER, { app_metadata: { role: "platform_admin" } });
  const r = await call(stack, "refunds", { order_id: order.orderId, amount_cents: 500 }, { token: admin });
  assert.equal(r.status, 201, r.text);
});

ledgerTest("an old key resent after its records expired never reaches Stripe again", async (stack) => {
  const organiser = await newOrganiser(stack);
  const order = await paidOrder(stack, organiser, 4);
  const [refundKey, payoutKey] = [uid(), uid()];
  const refund = await call(stack, "refunds", { order_id: order.orderId, amount_cents: 700 }, {
    token: organiser.token,
    key: refundKey,
  });
  const payout = await call(stack, "payouts", { amount_cents: 900 }, {
    token: organiser.token,
    key: payoutKey,
  });
  assert.deepEqual([refund.status, payout.status], [201, 201]);
  // 24 hours later the request keys are gone; 30 days after completion, the operations' rows too
  await stack.db.query("delete from public.idempotency_keys where key = any($1)", [[refundKey, payoutKey]]);
  await stack.db.query("delete from public.stripe_idempotency_keys where operation_id = any($1)", [[
    refund.body.refund_id,
    payout.body.payout_id,
  ]]);
  const calls = stripeWrites(stack);
  const refundAgain = await call(stack, "refunds", { order_id: order.orderId, amount_cents: 700 }, {
    token: organiser.token,
    key: refundKey,
  });
  const payoutAgain = await call(stack, "payouts", { amount_cents: 900 }, {
    token: organiser.token,
    key: payoutKey,
  });
  assert.deepEqual(
    [refundAgain.status, refundAgain.body.stripe_refund_id, refundAgain.body.refund_id],
    [201, refund.body.stripe_refund_id, refund.body.refund_id],
  );
  assert.deepEqual([payoutAgain.status, payoutAgain.body.stripe_transfer_id], [
    201,
    payout.body.stripe_transfer_id,
  ]);
  assert.equal(stripeWrites(stack), calls, "no Stripe call");
  const other = await call(stack, "payouts", { amount_cents: 901 }, {
    token: organiser.token,
    key: payoutKey,
  });
  assert.deepEqual([other.status, other.body.type], [422, "/problems/idempotency-key-reused"]);
  for (const body of [{ order_id: order.orderId, amount_cents: 1 }, { order_id: order.orderId }]) {
    const otherRefund = await call(stack, "refunds", body, { token: organiser.token, key: refundKey });
    assert.equal(otherRefund.status, 422, `${JSON.stringify(body)}: ${otherRefund.text}`);
  }
});

/** Makes `fn` die after Stripe acted, then lets a day and more pass: Stripe has forgotten the key. */
async function stallPastKeyWindow(
  stack: Stack,
  organiser: { id: string; token: string },
  fn: string,
  body: unknown,
  type: string,
): Promise<string> {
  const key = uid();
  testHooks.afterStripe = (op) => {
    if (op.operationType === type) throw new Error("crash after Stripe");
  };
  const answer = await call(stack, fn, body, { token: organiser.token, key });
  delete testHooks.afterStripe;
  assert.equal(answer.status, 500);
  await stack.db.query(
    `update public.stripe_idempotency_keys set created_at = now() - interval '25 hours', locked_until = now()
     where operation_type = $1 and status = 'in_progress' and user_id = $2`,
    [type, organiser.id],
  );
  return key;
}

ledgerTest(
  "past Stripe's key window the reconciler settles a crashed payout and refund by looking them up, not re-sending",
  async (stack) => {
    stack.stripe!.options.autoDeliver = false; // no webhook tells the system what Stripe did
    const organiser = await newOrganiser(stack);
    const order = await paidOrder(stack, organiser, 4);
    const payoutKey = await stallPastKeyWindow(
      stack,
      organiser,
      "payouts",
      { amount_cents: 1500 },
      "payout:create",
    );
    const refundBody = { order_id: order.orderId, amount_cents: 800 };
    const refundKey = await stallPastKeyWindow(stack, organiser, "refunds", refundBody, "refund:create");
    const posts = stack.stripe!.requests.filter((r) => r.method === "POST").length;

    const report = await call(stack, "stripe-reconcile", {}, { token: stack.serviceRoleKey, key: null });
    assert.equal(report.status, 200, report.text);
    assert.equal((report.body.settled as { completed: number }).completed, 2, report.text);
    assert.equal(stack.stripe!.requests.filter((r) => r.method === "POST").length, posts, "nothing re-sent");

    const [transfer] = [...stack.stripe!.state.transfers.values()].filter((t) =>
      t.destination === organiser.account
    );
    const payout = await call(stack, "payouts", { amount_cents: 1500 }, {
      token: organiser.token,
      key: payoutKey,
    });
    assert.deepEqual([payout.status, payout.body.stripe_transfer_id, payout.body.status], [
      201,
      transfer.id,
      "paid",
    ]);
    const [stripeRefund] = [...stack.stripe!.state.refunds.values()].filter((r) =>
      r.payment_intent === order.paymentIntent
    );
    const refund = await call(stack, "refunds", refundBody, { token: organiser.token, key: refundKey });
    assert.deepEqual([refund.status, refund.body.stripe_refund_id], [201, stripeRefund.id]);
    const share = Math.floor(800 * order.subtotal / order.total);
    assert.equal((await wallet(organiser)).available_cents, order.subtotal - 1500 - share);
  },
);

ledgerTest(
  "a look-up that finds nothing while the key could still execute waits for Stripe to forget it, then fails cleanly",
  async (stack) => {
    const organiser = await newOrganiser(stack);
    await paidOrder(stack, organiser, 2);
    const before = await wallet(organiser);
    // the payout's request never reached Stripe's execution, and its holder vanished
    stack.stripe!.addFault({ kind: "error_before", path: "/v1/transfers", times: 3 });
    const key = uid();
    const first = await call(stack, "payouts", { amount_cents: 1500 }, { token: organiser.token, key });
    assert.equal(first.status, 503, first.text);
    const age = (interval: string) =>
      stack.db.query(
        `update public.stripe_idempotency_keys set created_at = now() - $2::interval, locked_until = now()
         where operation_type = 'payout:create' and user_id = $1`,
        [organiser.id, interval],
      );
    // 23.5 hours on: past the window for re-sending, but a request with the key could still execute
    await age("23 hours 30 minutes");
    const early = await call(stack, "stripe-reconcile", {}, { token: stack.serviceRoleKey, key: null });
    assert.equal((early.body.settled as { deferred: number }).deferred, 1, early.text);
    const [deferred] = await stack.db.query<{ status: string; deferred: boolean }>(
      `select status, locked_until >= created_at + interval '24 hours 5 minutes' as deferred
       from public.stripe_idempotency_keys where operation_type = 'payout:create' and user_id = $1`,
      [organiser.id],
    );
    assert.deepEqual(deferred, { status: "in_progress", deferred: true });
    const waiting = await call(stack, "payouts", { amount_cents: 1500 }, { token: organiser.token, key });
    assert.deepEqual([waiting.status, waiting.body.type], [409, "/problems/operation-in-progress"]);
    // 25 hours on: Stripe has forgotten the key; nothing found is now proof
    await age("25 hours");
    await call(stack, "stripe-reconcile", {}, { token: stack.serviceRoleKey, key: null });
    const answer = await call(stack, "payouts", { amount_cents: 1500 }, { token: organiser.token, key });
    assert.deepEqual(
      [answer.status, answer.body.type],
      [409, "/problems/operation-not-created"],
      answer.text,
    );
    assert.deepEqual(await wallet(organiser), before, "the payout's debit is given back");
    const transfers = [...stack.stripe!.state.transfers.values()].filter((t) =>
      t.destination === organiser.account
    );
    assert.equal(transfers.length, 0);
  },
);

ledgerTest("a stale needs_attention payout is resolved by the reconciler's next look-up", async (stack) => {
  stack.stripe!.options.autoDeliver = false;
  const organiser = await newOrganiser(stack);
  await paidOrder(stack, organiser, 2);
  const key = await stallPastKeyWindow(stack, organiser, "payouts", { amount_cents: 1200 }, "payout:create");
  // parked earlier (say the look-up met an outage of Stripe's list), 20 minutes ago
  await stack.db.query(
    `update public.stripe_idempotency_keys set status = 'needs_attention', locked_until = null,
       evidence = '{"reason": "list unavailable"}', updated_at = now() - interval '20 minutes'
     where operation_type = 'payout:create' and user_id = $1`,
    [organiser.id],
  );
  const stuck = await call(stack, "payouts", { amount_cents: 1200 }, { token: organiser.token, key });
  assert.equal(stuck.status, 409);
  const posts = stack.stripe!.requests.filter((r) => r.method === "POST").length;
  const report = await call(stack, "stripe-reconcile", {}, { token: stack.serviceRoleKey, key: null });
  assert.equal((report.body.settled as { completed: number }).completed, 1, report.text);
  assert.equal(
    stack.stripe!.requests.filter((r) => r.method === "POST").length,
    posts,
    "looked up, not re-sent",
  );
  const [transfer] = [...stack.stripe!.state.transfers.values()].filter((t) =>
    t.destination === organiser.account
  );
  const done = await call(stack, "payouts", { amount_cents: 1200 }, { token: organiser.token, key });
  assert.deepEqual([done.status, done.body.status, done.body.stripe_transfer_id], [201, "paid", transfer.id]);
});

ledgerTest(
  "a look-up that cannot decide leaves the operation to an operator, who settles it with its payout or refund",
  async (stack) => {
    stack.stripe!.options.autoDeliver = false;
    const organiser = await newOrganiser(stack);
    const order = await paidOrder(stack, organiser, 4);
    const payoutKey = await stallPastKeyWindow(
      stack,
      organiser,
      "payouts",
      { amount_cents: 1500 },
      "payout:create",
    );
    const refundKey = await stallPastKeyWindow(
      stack,
      organiser,
      "refunds",
      { order_id: order.orderId, amount_cents: 800 },
      "refund:create",
    );
    // someone made each object a second time by hand, with the same metadata: two candidates, no answer
    const [payout] = await stack.db.query<{ id: string }>(
      "select id from wallet.payouts where organiser_id = $1",
      [
        organiser.id,
      ],
    );
    const [refund] = await stack.db.query<{ id: string }>(
      "select id from events.refunds where order_id = $1",
      [
        order.orderId,
      ],
    );
    await stripeClient().transfers.create({
      amount: 1500,
      currency: "usd",
      destination: organiser.account,
      transfer_group: `payout_${payout.id}`,
      metadata: { payout_id: payout.id },
    });
    await stripeClient().refunds.create({
      payment_intent: order.paymentIntent,
      amount: 800,
      metadata: { refund_id: refund.id },
    });

    const report = await call(stack, "stripe-reconcile", {}, { token: stack.serviceRoleKey, key: null });
    assert.deepEqual(
      (report.body.needs_attention as { operation_id: string }[]).map((r) => r.operation_id).sort(),
      [payout.id, refund.id].sort(),
      report.text,
    );
    const [evidence] = await stack.db.query<{ evidence: { ids: string[] } }>(
      "select evidence from public.stripe_idempotency_keys where operation_id = $1",
      [payout.id],
    );
    assert.equal(evidence.evidence.ids.length, 2, "the evidence names both transfers");
    const stuck = await call(stack, "payouts", { amount_cents: 1500 }, {
      token: organiser.token,
      key: payoutKey,
    });
    assert.deepEqual(
      [stuck.status, stuck.body.type],
      [409, "/problems/operation-needs-attention"],
      stuck.text,
    );

    const service = clientAs(stack, stack.serviceRoleKey);
    const settled = await service.rpc("resolve_stripe_operation", {
      p_operation_type: "payout:create",
      p_operation_id: payout.id,
      p_result: { id: evidence.evidence.ids[0] },
    });
    assert.equal(settled.error, null, JSON.stringify(settled.error));
    assert.deepEqual([settled.data.status, settled.data.stripe_transfer_id], [
      "paid",
      evidence.evidence.ids[0],
    ]);
    // say the operator decides the refund is to be given back and redone: failed by hand, its debit restored
    const failed = await service.rpc("resolve_stripe_operation", {
      p_operation_type: "refund:create",
      p_operation_id: refund.id,
      p_error: { status: 404, type: "operator", message: "duplicate refunds reversed in the dashboard" },
    });
    assert.equal(failed.data.status, "failed");
    assert.deepEqual(await wallet(organiser), {
      currency: "usd",
      balance_cents: 10_000 - 1500,
      available_cents: 10_000 - 1500,
      pending_funds_cents: 0,
      pending_payout_cents: 0,
    });

    // long after, the records are purged; the old keys answer from the rows and never reach Stripe
    await stack.db.query("delete from public.idempotency_keys where key = any($1)", [[payoutKey, refundKey]]);
    await stack.db.query("delete from public.stripe_idempotency_keys where operation_id = any($1)", [[
      payout.id,
      refund.id,
    ]]);
    const calls = stripeWrites(stack);
    const again = await call(stack, "payouts", { amount_cents: 1500 }, {
      token: organiser.token,
      key: payoutKey,
    });
    assert.deepEqual([again.status, again.body.stripe_transfer_id], [201, evidence.evidence.ids[0]]);
    const closed = await call(stack, "refunds", { order_id: order.orderId, amount_cents: 800 }, {
      token: organiser.token,
      key: refundKey,
    });
    assert.deepEqual([closed.status, closed.body.type], [409, "/problems/operation-closed"]);
    assert.equal(stripeWrites(stack), calls);
  },
);

ledgerTest(
  "a pending row whose operation record vanished is never sent again with a new key",
  async (stack) => {
    const organiser = await newOrganiser(stack);
    await paidOrder(stack, organiser);
    const key = uid();
    testHooks.afterStripe = () => {
      throw new Error("crash after Stripe");
    };
    assert.equal(
      (await call(stack, "payouts", { amount_cents: 1000 }, { token: organiser.token, key })).status,
      500,
    );
    delete testHooks.afterStripe;
    // e.g. settled outside the system with record_stripe_idempotency, then purged: the payout row stays pending
    await stack.db.query(
      `delete from public.stripe_idempotency_keys where operation_type = 'payout:create'
       and operation_id in (select id::text from wallet.payouts where organiser_id = $1)`,
      [organiser.id],
    );
    const calls = stripeWrites(stack);
    const again = await call(stack, "payouts", { amount_cents: 1000 }, { token: organiser.token, key });
    assert.deepEqual([again.status, again.body.type], [409, "/problems/operation-needs-attention"]);
    assert.equal(stripeWrites(stack), calls);
  },
);
