// stripe-webhook and stripe-reconcile: Stripe's at-least-once, concurrent, out-of-order deliveries and
// functions dying mid-flight still end in exactly-once effects. Events come from the emulator, signed.
import assert from "node:assert/strict";
import { testHooks } from "../supabase/functions/_shared/idempotency.ts";
import { stripeClient } from "../supabase/functions/_shared/stripe.ts";
import type { StripeEvent } from "../tools/local/stripe_emulator/mod.ts";
import type { Stack } from "../tools/local/stack.ts";
import { BUYER, call, ledgerTest, newOrganiser, openOrder, paidOrder, uid, wallet } from "./_flows.ts";

async function one<T>(stack: Stack, sql: string, params: unknown[] = []): Promise<T> {
  const [row] = await stack.db.query<T>(sql, params);
  return row;
}

const orderState = (stack: Stack, orderId: string) =>
  one<{ status: string; oversold: boolean; tickets: number; sales: number }>(
    stack,
    `select o.status, o.oversold,
       (select count(*)::int from events.tickets k where k.order_id = o.id and k.status = 'valid') as tickets,
       (select count(*)::int from wallet.wallet_transactions t where t.order_id = o.id and t.type = 'sale') as sales
     from events.orders o where o.id = $1`,
    [orderId],
  );

/** Posts a raw body with a given signature header to the webhook. */
async function post(stack: Stack, payload: string, signature: string | null) {
  const headers: Record<string, string> = { "content-type": "application/json" };
  if (signature !== null) headers["stripe-signature"] = signature;
  const res = await fetch(`${stack.url}/functions/v1/stripe-webhook`, {
    method: "POST",
    headers,
    body: payload,
  });
  return { status: res.status, body: await res.json() };
}

/** Runs the reconciler as the service role. */
async function reconcile(stack: Stack) {
  const answer = await call(stack, "stripe-reconcile", {}, { token: stack.serviceRoleKey, key: null });
  assert.equal(answer.status, 200, answer.text);
  return answer.body as {
    settled: { completed: number; failed: number; unknown: number; attention: number; errors: number };
    needs_attention: { operation_id: string }[];
    holds_expired: number;
  };
}

/** Lets a crashed holder's lease run out (time passing, here at once). */
async function expireLease(stack: Stack, operationId: string) {
  await stack.db.query(
    "update public.stripe_idempotency_keys set locked_until = now() - interval '1 second' where operation_id = $1",
    [operationId],
  );
}

ledgerTest(
  "the same completion 8 times (5 at once): paid once, credited once, every delivery 2xx",
  async (stack) => {
    const organiser = await newOrganiser(stack);
    const order = await openOrder(stack, organiser, 3);
    const { event } = await stack.stripe!.paySession(order.sessionId, { hold: true });
    assert.deepEqual(stack.stripe!.takeEvents().map((e) => e.id), [event.id]);
    const concurrent = await stack.stripe!.deliver([event], { times: 5, concurrently: true });
    const sequential = await stack.stripe!.deliver([event], { times: 3 });
    const all = [...concurrent, ...sequential];
    assert.ok(all.every((d) => d.status === 200), JSON.stringify(all));
    assert.equal(all.filter((d) => JSON.parse(d.body).status === "processed").length, 1);
    assert.deepEqual(await orderState(stack, order.orderId), {
      status: "paid",
      oversold: false,
      tickets: 3,
      sales: 1,
    });
    assert.equal((await wallet(organiser)).balance_cents, 7500);
    const row = await one<{ status: string; attempts: number }>(
      stack,
      "select status, attempts from public.stripe_webhook_events where stripe_event_id = $1",
      [event.id],
    );
    assert.deepEqual(row, { status: "processed", attempts: 1 });
  },
);

ledgerTest("a forged, missing or stale signature is 400 and nothing is stored", async (stack) => {
  const organiser = await newOrganiser(stack);
  const order = await openOrder(stack, organiser);
  const { event } = await stack.stripe!.paySession(order.sessionId, { hold: true });
  stack.stripe!.takeEvents();
  const payload = JSON.stringify(event);
  const good = await stack.stripe!.signature(payload);
  const forged = good.replace(/v1=[0-9a-f]{4}/, "v1=0000");
  const tampered = JSON.stringify({ ...event, data: { object: { ...event.data.object, amount_total: 1 } } });
  const stale = await stack.stripe!.signature(payload, Math.floor(Date.now() / 1000) - 600);
  for (
    const [what, body, signature] of [
      ["forged", payload, forged],
      ["missing", payload, null],
      ["tampered payload", tampered, good],
      ["older than 300 s", payload, stale],
    ] as const
  ) {
    const answer = await post(stack, body, signature);
    assert.deepEqual([answer.status, answer.body.type], [400, "/problems/invalid-signature"], what);
  }
  const stored = await one<{ n: number }>(
    stack,
    "select count(*)::int as n from public.stripe_webhook_events where stripe_event_id = $1",
    [event.id],
  );
  assert.equal(stored.n, 0);
  assert.equal((await orderState(stack, order.orderId)).status, "pending");
  assert.equal((await post(stack, payload, good)).status, 200, "the genuine delivery still works");
});

ledgerTest(
  "a thin event or an event of another API version gets its own 400, and nothing is stored",
  async (stack) => {
    const thin = JSON.stringify({
      id: `evt_${uid().replaceAll("-", "")}`,
      object: "v2.core.event",
      type: "v1.checkout.session.completed",
      created: new Date().toISOString(),
      related_object: { id: "cs_test_1", type: "checkout.session", url: "/v1/checkout/sessions/cs_test_1" },
    });
    const thinAnswer = await post(stack, thin, await stack.stripe!.signature(thin));
    assert.deepEqual([thinAnswer.status, thinAnswer.body.type], [400, "/problems/thin-event"]);
    assert.match(thinAnswer.body.detail as string, /snapshot payloads/);

    const old = JSON.stringify({
      id: `evt_${uid().replaceAll("-", "")}`,
      object: "event",
      api_version: "2024-06-20",
      type: "checkout.session.completed",
      created: Math.floor(Date.now() / 1000),
      data: { object: { id: "cs_test_1", object: "checkout.session" } },
    });
    const oldAnswer = await post(stack, old, await stack.stripe!.signature(old));
    assert.deepEqual([oldAnswer.status, oldAnswer.body.type], [400, "/problems/unsupported-api-version"]);
    assert.match(oldAnswer.body.detail as string, /2026-10-28\.endive/);
    const stored = await one<{ n: number }>(
      stack,
      "select count(*)::int as n from public.stripe_webhook_events where stripe_event_id = any($1)",
      [[JSON.parse(thin).id, JSON.parse(old).id]],
    );
    assert.equal(stored.n, 0);
  },
);

ledgerTest("two different events for one session credit the organiser once", async (stack) => {
  const organiser = await newOrganiser(stack);
  const order = await openOrder(stack, organiser);
  const { event } = await stack.stripe!.paySession(order.sessionId, { hold: true });
  stack.stripe!.takeEvents();
  const twin: StripeEvent = {
    ...event,
    id: `evt_${uid().replaceAll("-", "")}`,
    type: "checkout.session.async_payment_succeeded",
  };
  const deliveries = await stack.stripe!.deliver([event, twin], { concurrently: true });
  assert.deepEqual(deliveries.map((d) => d.status), [200, 200]);
  assert.deepEqual(await orderState(stack, order.orderId), {
    status: "paid",
    oversold: false,
    tickets: 2,
    sales: 1,
  });
  assert.equal((await wallet(organiser)).balance_cents, 5000);
});

ledgerTest(
  "a completion after the order expired is honoured and flagged when it oversells",
  async (stack) => {
    const organiser = await newOrganiser(stack, { capacity: 2 });
    const late = await openOrder(stack, organiser, 2);
    // the hold runs out; the reconciler expires the order and the seats go back on sale
    await stack.db.query(
      "update events.orders set hold_expires_at = now() - interval '1 second' where id = $1",
      [late.orderId],
    );
    assert.ok((await reconcile(stack)).holds_expired >= 1);
    assert.equal((await orderState(stack, late.orderId)).status, "expired");
    await openOrder(stack, organiser, 2); // another buyer holds both seats now
    const { deliveries } = await stack.stripe!.paySession(late.sessionId);
    assert.deepEqual(deliveries.map((d) => d.status), [200]);
    assert.deepEqual(await orderState(stack, late.orderId), {
      status: "paid",
      oversold: true,
      tickets: 2,
      sales: 1,
    });
    const tier = await one<{ sold: number; held: number }>(
      stack,
      "select sold, held from events.ticket_tiers where id = $1",
      [
        organiser.tierId,
      ],
    );
    assert.deepEqual(tier, { sold: 2, held: 2 });
  },
);

ledgerTest("an expiry delivered after the completion leaves the order paid", async (stack) => {
  const organiser = await newOrganiser(stack);
  const order = await paidOrder(stack, organiser);
  const [session] = [...stack.stripe!.state.sessions.values()].filter((s) => s.id === order.sessionId);
  const expired: StripeEvent = {
    id: `evt_${uid().replaceAll("-", "")}`,
    object: "event",
    type: "checkout.session.expired",
    created: Math.floor(Date.now() / 1000) - 60,
    data: { object: { ...session, status: "expired", payment_status: "unpaid" } },
  };
  assert.deepEqual((await stack.stripe!.deliver([expired])).map((d) => d.status), [200]);
  assert.deepEqual(await orderState(stack, order.orderId), {
    status: "paid",
    oversold: false,
    tickets: 2,
    sales: 1,
  });
});

ledgerTest("a session expiry releases the holds of an unpaid order", async (stack) => {
  const organiser = await newOrganiser(stack, { capacity: 10 });
  const order = await openOrder(stack, organiser, 4);
  await stripeClient().checkout.sessions.expire(order.sessionId);
  await waitFor(async () => (await orderState(stack, order.orderId)).status === "expired");
  const tier = await one<{ held: number }>(stack, "select held from events.ticket_tiers where id = $1", [
    organiser.tierId,
  ]);
  assert.equal(tier.held, 0);
});

ledgerTest(
  "a refund event before the refund's own completion: one refund, one debit, consistent order",
  async (stack) => {
    const organiser = await newOrganiser(stack);
    const order = await paidOrder(stack, organiser);
    stack.stripe!.options.autoDeliver = false;
    testHooks.afterStripe = (op) => {
      if (op.operationType === "refund:create") throw new Error("crash after Stripe refunded");
    };
    const key = uid();
    const crashed = await call(stack, "refunds", { order_id: order.orderId, amount_cents: 2000 }, {
      token: organiser.token,
      key,
    });
    delete testHooks.afterStripe;
    assert.equal(crashed.status, 500);
    const events = stack.stripe!.takeEvents();
    assert.deepEqual(events.map((e) => e.type), ["charge.refunded", "refund.created"]);
    // Stripe's events arrive first, in reverse order, twice
    const deliveries = await stack.stripe!.deliver(events, { reverse: true, times: 2 });
    assert.ok(deliveries.every((d) => d.status === 200));
    const early = await one<{ status: string; refunded_cents: number }>(
      stack,
      "select r.status, o.refunded_cents from events.refunds r join events.orders o on o.id = r.order_id where r.order_id = $1",
      [order.orderId],
    );
    assert.deepEqual(early, { status: "succeeded", refunded_cents: 2000 });
    const refundId =
      (await one<{ id: string }>(stack, "select id from events.refunds where order_id = $1", [order.orderId]))
        .id;
    await expireLease(stack, refundId);
    const retried = await call(stack, "refunds", { order_id: order.orderId, amount_cents: 2000 }, {
      token: organiser.token,
      key,
    });
    assert.equal(retried.status, 201, retried.text);
    assert.deepEqual([retried.body.status, retried.body.order_status], ["succeeded", "partially_refunded"]);
    const final = await one<{ refunded_cents: number; debits: number; refunds: number }>(
      stack,
      `select o.refunded_cents,
       (select count(*)::int from wallet.wallet_transactions t where t.order_id = o.id and t.type = 'refund') as debits,
       (select count(*)::int from events.refunds r where r.order_id = o.id) as refunds
     from events.orders o where o.id = $1`,
      [order.orderId],
    );
    assert.deepEqual(final, { refunded_cents: 2000, debits: 1, refunds: 1 });
  },
);

ledgerTest(
  "a refund made in the Stripe dashboard is recorded with its debit; a later failure gives it back",
  async (stack) => {
    const organiser = await newOrganiser(stack);
    const order = await paidOrder(stack, organiser);
    const refund = await stripeClient().refunds.create({ payment_intent: order.paymentIntent, amount: 1200 });
    await waitFor(async () =>
      (await one<{ n: number }>(
        stack,
        "select count(*)::int as n from events.refunds where stripe_refund_id = $1",
        [refund.id],
      )).n === 1
    );
    const recorded = await one<{ amount_cents: number; status: string; debited: number; refunded: number }>(
      stack,
      `select r.amount_cents, r.status, o.refunded_cents as refunded,
         (select -sum(t.amount_cents)::int from wallet.wallet_transactions t where t.refund_id = r.id) as debited
       from events.refunds r join events.orders o on o.id = r.order_id where r.stripe_refund_id = $1`,
      [refund.id],
    );
    const share = Math.floor(1200 * order.subtotal / order.total);
    assert.deepEqual(recorded, { amount_cents: 1200, status: "succeeded", debited: share, refunded: 1200 });
    assert.equal((await wallet(organiser)).balance_cents, order.subtotal - share);

    await stack.stripe!.failRefund(refund.id);
    const after = await one<{ status: string; refunded: number; order_status: string }>(
      stack,
      `select r.status, o.refunded_cents as refunded, o.status as order_status
     from events.refunds r join events.orders o on o.id = r.order_id where r.stripe_refund_id = $1`,
      [refund.id],
    );
    assert.deepEqual(after, { status: "failed", refunded: 0, order_status: "paid" });
    assert.equal((await wallet(organiser)).balance_cents, order.subtotal);
  },
);

ledgerTest(
  "a dashboard refund delivered hours before its payment's event is parked, then applied with the payment",
  async (stack) => {
    const organiser = await newOrganiser(stack);
    const order = await openOrder(stack, organiser);
    const { session, event: paid } = await stack.stripe!.paySession(order.sessionId, { hold: true });
    stack.stripe!.takeEvents();
    stack.stripe!.options.autoDeliver = false;
    await stripeClient().refunds.create({ payment_intent: session.payment_intent as string, amount: 800 });
    // after an outage Stripe redelivers in no order: the refund, seven hours old, comes first
    const refundEvents = stack.stripe!.takeEvents().filter((e) => e.type === "refund.created").map((e) => ({
      ...e,
      created: e.created - 7 * 3600,
      data: { object: { ...e.data.object, created: (e.data.object.created as number) - 7 * 3600 } },
    }));
    const [early] = await stack.stripe!.deliver(refundEvents);
    assert.equal(early.status, 200, "acknowledged: kept, not dropped");
    assert.equal(JSON.parse(early.body).status, "parked");
    assert.deepEqual((await stack.stripe!.deliver([paid])).map((d) => d.status), [200]);
    const row = await one<{ amount_cents: number; status: string; refunded: number }>(
      stack,
      `select r.amount_cents, r.status, o.refunded_cents as refunded
     from events.refunds r join events.orders o on o.id = r.order_id where r.order_id = $1`,
      [order.orderId],
    );
    assert.deepEqual(row, { amount_cents: 800, status: "succeeded", refunded: 800 });
    const [again] = await stack.stripe!.deliver(refundEvents);
    assert.equal(JSON.parse(again.body).status, "duplicate");
    assert.equal(
      (await wallet(organiser)).balance_cents,
      order.subtotal - Math.floor(800 * order.subtotal / order.total),
    );
  },
);

ledgerTest(
  "a transfer reversal gives the payout back once, even before the payout's completion",
  async (stack) => {
    const organiser = await newOrganiser(stack);
    await paidOrder(stack, organiser, 4);
    // a payout whose function dies after Stripe made the transfer
    stack.stripe!.options.autoDeliver = false;
    testHooks.afterStripe = (op) => {
      if (op.operationType === "payout:create") throw new Error("crash after the transfer");
    };
    const key = uid();
    const crashed = await call(stack, "payouts", { amount_cents: 6000 }, { token: organiser.token, key });
    delete testHooks.afterStripe;
    assert.equal(crashed.status, 500);
    const [transfer] = [...stack.stripe!.state.transfers.values()].filter((t) =>
      t.destination === organiser.account
    );
    await stripeClient().transfers.createReversal(transfer.id, { amount: 2500 });
    const reversed = stack.stripe!.takeEvents().filter((e) => e.type === "transfer.reversed");
    assert.equal(reversed.length, 1);
    const deliveries = await stack.stripe!.deliver(reversed, { times: 3, concurrently: true });
    assert.ok(deliveries.every((d) => d.status === 200));
    const payout = await one<{ id: string; status: string; reversed_cents: number; reversals: number }>(
      stack,
      `select p.id, p.status, p.reversed_cents::int as reversed_cents, (select count(*)::int from wallet.wallet_transactions t
       where t.payout_id = p.id and t.type = 'payout_reversal') as reversals
     from wallet.payouts p where p.organiser_id = $1`,
      [organiser.id],
    );
    assert.deepEqual([payout.status, payout.reversed_cents, payout.reversals], ["paid", 2500, 1]);
    assert.deepEqual(await wallet(organiser), {
      currency: "usd",
      balance_cents: 10_000 - 6000 + 2500,
      available_cents: 10_000 - 6000 + 2500,
      pending_funds_cents: 0,
      pending_payout_cents: 0,
    });
    await expireLease(stack, payout.id);
    const retried = await call(stack, "payouts", { amount_cents: 6000 }, { token: organiser.token, key });
    assert.equal(retried.status, 201, retried.text);
    assert.equal(retried.body.stripe_transfer_id, transfer.id);
    assert.equal((await wallet(organiser)).available_cents, 10_000 - 6000 + 2500);
  },
);

ledgerTest("a processing failure answers 500, is stored, and succeeds on redelivery", async (stack) => {
  const organiser = await newOrganiser(stack);
  const order = await openOrder(stack, organiser);
  const { event } = await stack.stripe!.paySession(order.sessionId, { hold: true });
  stack.stripe!.takeEvents();
  const trigger = `fail_${uid().replaceAll("-", "").slice(0, 8)}`;
  await stack.db.exec(`
    create function public.${trigger}() returns trigger language plpgsql security definer set search_path = '' as $$
    begin raise exception 'injected database failure'; end $$;
    create trigger ${trigger} before update on events.orders for each row execute function public.${trigger}();`);
  let first;
  try {
    [first] = await stack.stripe!.deliver([event]);
  } finally {
    await stack.db.exec(`drop trigger ${trigger} on events.orders; drop function public.${trigger}();`);
  }
  assert.equal(first.status, 500);
  assert.doesNotMatch(first.body, /injected|at .*\.ts/, "no internals in the answer");
  const failed = await one<{ status: string; error_message: string }>(
    stack,
    "select status, error_message from public.stripe_webhook_events where stripe_event_id = $1",
    [event.id],
  );
  assert.equal(failed.status, "failed");
  assert.match(failed.error_message, /injected database failure/);
  assert.equal(
    (await orderState(stack, order.orderId)).status,
    "pending",
    "the failed attempt left no effect",
  );
  const [again] = await stack.stripe!.deliver([event]);
  assert.equal(again.status, 200);
  assert.deepEqual(await orderState(stack, order.orderId), {
    status: "paid",
    oversold: false,
    tickets: 2,
    sales: 1,
  });
});

ledgerTest("unknown event types are acknowledged, stored and ignored", async (stack) => {
  const event: StripeEvent = {
    id: `evt_${uid().replaceAll("-", "")}`,
    object: "event",
    type: "customer.created",
    created: Math.floor(Date.now() / 1000),
    data: { object: { id: "cus_123", object: "customer" } },
  };
  const [delivery] = await stack.stripe!.deliver([event]);
  assert.equal(delivery.status, 200);
  const row = await one<{ status: string; object_id: string }>(
    stack,
    "select status, object_id from public.stripe_webhook_events where stripe_event_id = $1",
    [event.id],
  );
  assert.deepEqual(row, { status: "processed", object_id: "cus_123" });
});

for (const kind of ["checkout", "refund", "payout"] as const) {
  ledgerTest(
    `the reconciler finishes a ${kind} whose function died after Stripe acted, once, even run twice at once`,
    async (stack) => {
      await reconcile(stack); // finish what earlier tests left, so that this run counts only its own
      const organiser = await newOrganiser(stack);
      const paid = kind === "checkout" ? null : await paidOrder(stack, organiser, 2);
      const type = `${kind === "checkout" ? "checkout" : kind}:create`;
      testHooks.afterStripe = (op) => {
        if (op.operationType === type) throw new Error(`crash after Stripe: ${type}`);
      };
      const answer = kind === "checkout"
        ? await call(stack, "enhanced-checkout", {
          event_id: organiser.eventId,
          items: [{ tier_id: organiser.tierId, quantity: 1 }],
        }, {
          token: await stack.userToken(BUYER),
        })
        : kind === "refund"
        ? await call(stack, "refunds", { order_id: paid!.orderId, amount_cents: 1000 }, {
          token: organiser.token,
        })
        : await call(stack, "payouts", { amount_cents: 1000 }, { token: organiser.token });
      delete testHooks.afterStripe;
      assert.equal(answer.status, 500);
      const op = await one<{ operation_id: string; stripe_idempotency_key: string }>(
        stack,
        `select operation_id, stripe_idempotency_key from public.stripe_idempotency_keys
       where operation_type = $1 and status = 'in_progress' and user_id = any($2) order by created_at desc limit 1`,
        [type, [BUYER, organiser.id]],
      );
      await expireLease(stack, op.operation_id);
      const reports = await Promise.all([reconcile(stack), reconcile(stack)]);
      assert.equal(reports.reduce((n, r) => n + r.settled.completed, 0), 1, JSON.stringify(reports));
      const done = await one<{ status: string; stripe_resource_id: string }>(
        stack,
        "select status, stripe_resource_id from public.stripe_idempotency_keys where operation_id = $1",
        [op.operation_id],
      );
      assert.equal(done.status, "completed");
      const calls = stack.stripe!.requests.filter((r) => r.idempotencyKey === op.stripe_idempotency_key);
      assert.deepEqual(
        calls.map((r) => r.replayed),
        [false, true],
        "one Stripe object: the reconciler got Stripe's replay",
      );
      if (kind === "checkout") {
        const order = await one<{ stripe_session_id: string }>(
          stack,
          "select stripe_session_id from events.orders where id = $1",
          [
            op.operation_id,
          ],
        );
        assert.equal(order.stripe_session_id, done.stripe_resource_id);
      } else if (kind === "refund") {
        const refund = await one<{ status: string; stripe_refund_id: string }>(
          stack,
          "select status, stripe_refund_id from events.refunds where id = $1",
          [op.operation_id],
        );
        assert.deepEqual(refund, { status: "succeeded", stripe_refund_id: done.stripe_resource_id });
      } else {
        const payout = await one<{ status: string; stripe_transfer_id: string }>(
          stack,
          "select status, stripe_transfer_id from wallet.payouts where id = $1",
          [op.operation_id],
        );
        assert.deepEqual(payout, { status: "paid", stripe_transfer_id: done.stripe_resource_id });
      }
    },
  );
}

ledgerTest(
  "a checkout whose session was never made is not sent late: the look-up proves it absent and the order expires",
  async (stack) => {
    const organiser = await newOrganiser(stack, { capacity: 5 });
    // Stripe never executed the first request (a 500 before execution): nothing was made
    stack.stripe!.addFault({ kind: "error_before", path: "/v1/checkout/sessions", times: 3 });
    const key = uid();
    const body = { event_id: organiser.eventId, items: [{ tier_id: organiser.tierId, quantity: 2 }] };
    const token = await stack.userToken(BUYER);
    const first = await call(stack, "enhanced-checkout", body, { token, key });
    assert.equal(first.status, 503, first.text);
    const op = await one<{ operation_id: string }>(
      stack,
      `select operation_id from public.stripe_idempotency_keys
       where operation_type = 'checkout:create' and user_id = $1 order by created_at desc limit 1`,
      [BUYER],
    );
    // the retry comes 16 minutes late: the session's expires_at (32 minutes after the order) is now under
    // Stripe's 30-minute minimum, and any request of the first attempt has long finished
    await stack.db.query(
      `update public.stripe_idempotency_keys set created_at = now() - interval '16 minutes',
         request_params = jsonb_set(request_params, '{expires_at}',
           to_jsonb(extract(epoch from now() + interval '16 minutes')::bigint)),
         request_fingerprint = encode(sha256(convert_to(jsonb_set(request_params, '{expires_at}',
           to_jsonb(extract(epoch from now() + interval '16 minutes')::bigint))::text, 'UTF8')), 'hex')
       where operation_id = $1`,
      [op.operation_id],
    );
    const posts = stack.stripe!.requests.filter((r) => r.method === "POST").length;
    const report = await reconcile(stack);
    assert.equal(report.settled.failed, 1, JSON.stringify(report));
    assert.equal(
      stack.stripe!.requests.filter((r) => r.method === "POST").length,
      posts,
      "nothing sent late",
    );
    const order = await one<{ status: string; held: number }>(
      stack,
      `select o.status, t.held from events.orders o join events.ticket_tiers t on t.id = $2 where o.id = $1`,
      [op.operation_id, organiser.tierId],
    );
    assert.deepEqual(order, { status: "expired", held: 0 }, "its holds are back on sale");
    const retry = await call(stack, "enhanced-checkout", body, { token, key });
    assert.deepEqual([retry.status, retry.body.type], [409, "/problems/checkout-closed"], retry.text);
  },
);

ledgerTest(
  "an operation adopted from the old plan without parameters goes to a person, not round in circles",
  async (stack) => {
    const id = `old-payout-${uid().slice(0, 8)}`;
    await stack.db.query(
      `insert into public.stripe_idempotency_keys (operation_type, operation_id, stripe_idempotency_key, status,
       locked_until, request_params, created_at, updated_at)
     values ('payout:create', $1, 'payout:create:' || $1 || ':' || gen_random_uuid(), 'in_progress',
       now() - interval '1 minute', null, now() - interval '30 days', now() - interval '30 days')`,
      [id],
    );
    const report = await reconcile(stack);
    assert.ok(report.needs_attention.some((r) => r.operation_id === id), JSON.stringify(report));
    const row = await one<{ status: string; evidence: { reason: string } }>(
      stack,
      "select status, evidence from public.stripe_idempotency_keys where operation_id = $1",
      [id],
    );
    assert.equal(row.status, "needs_attention");
    assert.match(row.evidence.reason, /no stored parameters/);
  },
);

ledgerTest(
  "an event about another integration's payment is parked, then ignored once Stripe shows it is not ours",
  async (stack) => {
    // a session made by something else on the same Stripe account: no order of ours in its metadata
    const foreign = await stripeClient().checkout.sessions.create({
      mode: "payment",
      ui_mode: "hosted_page",
      line_items: [{
        quantity: 1,
        price_data: { currency: "usd", unit_amount: 900, product_data: { name: "Other" } },
      }],
      success_url: "https://other.example.com/done",
    });
    const { session } = await stack.stripe!.paySession(foreign.id);
    const { deliveries } = await stack.stripe!.refundFromDashboard(session.payment_intent as string);
    assert.ok(deliveries.some((d) => JSON.parse(d.body).status === "parked"), JSON.stringify(deliveries));
    await stack.db.query(
      "update public.stripe_webhook_events set received_at = now() - interval '11 minutes' where status = 'parked'",
    );
    const report = await reconcile(stack) as unknown as { parked_events: { ignored: number } };
    assert.ok(report.parked_events.ignored >= 1, JSON.stringify(report));
    const [left] = await stack.db.query<{ n: number }>(
      "select count(*)::int as n from public.stripe_webhook_events where status = 'parked' and parked_on = $1",
      [session.payment_intent],
    );
    assert.equal(left.n, 0);
  },
);

ledgerTest("the reconciler is for the service role only", async (stack) => {
  const anon = await call(stack, "stripe-reconcile", {}, { key: null });
  assert.equal(anon.status, 403);
  const user = await call(stack, "stripe-reconcile", {}, { token: await stack.userToken(BUYER), key: null });
  assert.equal(user.status, 403);
  const none = await call(stack, "stripe-reconcile", {}, { token: null, key: null });
  assert.equal(none.status, 401);
});

async function waitFor(condition: () => Promise<boolean>, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await new Promise((r) => setTimeout(r, 25));
  }
}
