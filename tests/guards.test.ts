// Guards that no other test reached (issue 15): each test removes the doubt that a guard could be deleted
// with the suite still green. Every one asserts the outcome: no tickets, no credit, the order's status.
import assert from "node:assert/strict";
import type { Stack } from "../tools/local/stack.ts";
import { BUYER, call, ledgerTest, newOrganiser, openOrder, paidOrder, uid, wallet } from "./_flows.ts";

async function orderState(stack: Stack, orderId: string) {
  const [row] = await stack.db.query<{ status: string; tickets: number; credited: number; held: number }>(
    `select o.status, (select count(*)::int from events.tickets k where k.order_id = o.id) as tickets,
       (select coalesce(sum(t.amount_cents), 0)::int from wallet.wallet_transactions t
        where t.order_id = o.id and t.type = 'sale') as credited,
       (select coalesce(sum(h.quantity), 0)::int from events.holds h where h.order_id = o.id and h.status = 'active') as held
     from events.orders o where o.id = $1`,
    [orderId],
  );
  return row;
}

ledgerTest(
  "a session completed unpaid (a delayed payment method) issues nothing until it is paid",
  async (stack) => {
    const organiser = await newOrganiser(stack);
    const order = await openOrder(stack, organiser, 2);
    const { deliveries } = await stack.stripe!.paySession(order.sessionId, { async: true });
    assert.deepEqual(deliveries.map((d) => [d.type, d.status]), [["checkout.session.completed", 200]]);
    assert.deepEqual(await orderState(stack, order.orderId), {
      status: "pending",
      tickets: 0,
      credited: 0,
      held: 2,
    });
    await stack.stripe!.finishAsyncPayment(order.sessionId, "succeeded");
    assert.deepEqual(await orderState(stack, order.orderId), {
      status: "paid",
      tickets: 2,
      credited: order.subtotal,
      held: 0,
    });
  },
);

ledgerTest("a delayed payment that fails expires the order and gives its seats back", async (stack) => {
  const organiser = await newOrganiser(stack);
  const order = await openOrder(stack, organiser, 3);
  await stack.stripe!.paySession(order.sessionId, { async: true });
  const { deliveries } = await stack.stripe!.finishAsyncPayment(order.sessionId, "failed");
  assert.deepEqual(deliveries.map((d) => [d.type, d.status]), [[
    "checkout.session.async_payment_failed",
    200,
  ]]);
  assert.deepEqual(await orderState(stack, order.orderId), {
    status: "expired",
    tickets: 0,
    credited: 0,
    held: 0,
  });
});

for (
  const [what, change] of [
    ["an amount that is not the order's total", (o: Record<string, unknown>) => ({ ...o, amount_total: 1 })],
    [
      "another Checkout Session than the order's",
      (o: Record<string, unknown>) => ({ ...o, id: `cs_test_${uid()}` }),
    ],
  ] as const
) {
  ledgerTest(
    `a paid event with ${what} is refused: no tickets, no credit, delivered again`,
    async (stack) => {
      const organiser = await newOrganiser(stack);
      const order = await openOrder(stack, organiser, 1);
      const { event } = await stack.stripe!.paySession(order.sessionId, { deliver: false });
      const forged = {
        ...event,
        id: `evt_${uid().replaceAll("-", "")}`,
        data: { object: change(event.data.object) },
      };
      const [delivery] = await stack.stripe!.deliver([forged as typeof event]);
      assert.equal(delivery.status, 500, "failed, so that Stripe delivers it again");
      assert.deepEqual(await orderState(stack, order.orderId), {
        status: "pending",
        tickets: 0,
        credited: 0,
        held: 1,
      });
      const [row] = await stack.db.query<{ status: string; error_message: string }>(
        "select status, error_message from public.stripe_webhook_events where stripe_event_id = $1",
        [forged.id],
      );
      assert.equal(row.status, "failed");
      assert.match(row.error_message, /^PT409/);
    },
  );
}

ledgerTest("Stripe refusing a checkout for good expires the order and frees its seats", async (stack) => {
  const organiser = await newOrganiser(stack, { capacity: 5 });
  stack.stripe!.addFault({
    kind: "error",
    path: "/v1/checkout/sessions",
    status: 400,
    error: { type: "invalid_request_error", code: "parameter_invalid", message: "refused for the test" },
  });
  const answer = await call(stack, "enhanced-checkout", {
    event_id: organiser.eventId,
    items: [{ tier_id: organiser.tierId, quantity: 5 }],
  }, { token: await stack.userToken(BUYER) });
  assert.deepEqual([answer.status, answer.body.type], [422, "/problems/stripe-rejected"], answer.text);
  const [order] = await stack.db.query<{ id: string }>("select id from events.orders where event_id = $1", [
    organiser.eventId,
  ]);
  assert.deepEqual(await orderState(stack, order.id), {
    status: "expired",
    tickets: 0,
    credited: 0,
    held: 0,
  });
  const again = await call(stack, "enhanced-checkout", {
    event_id: organiser.eventId,
    items: [{ tier_id: organiser.tierId, quantity: 5 }],
  }, { token: await stack.userToken(BUYER) });
  assert.equal(again.status, 201, "the five seats are on sale again");
});

ledgerTest(
  "an order that is not paid cannot be refunded: 409 order-not-refundable, nothing sent",
  async (stack) => {
    const organiser = await newOrganiser(stack);
    const order = await openOrder(stack, organiser, 1);
    const calls = stack.stripe!.requests.length;
    const answer = await call(stack, "refunds", { order_id: order.orderId }, { token: organiser.token });
    assert.deepEqual([answer.status, answer.body.type], [409, "/problems/order-not-refundable"]);
    assert.equal(stack.stripe!.requests.length, calls);
  },
);

ledgerTest(
  "a key reused for another checkout is 422; one whose order is closed is 409 checkout-closed",
  async (stack) => {
    const organiser = await newOrganiser(stack);
    const token = await stack.userToken(BUYER);
    const key = uid();
    const body = { event_id: organiser.eventId, items: [{ tier_id: organiser.tierId, quantity: 1 }] };
    const first = await call(stack, "enhanced-checkout", body, { token, key });
    assert.equal(first.status, 201);
    // 24 hours later the request's key is forgotten; the order's own key still recognises the request
    await stack.db.query("delete from public.idempotency_keys where key = $1", [key]);
    const changed = await call(stack, "enhanced-checkout", {
      ...body,
      items: [{ tier_id: organiser.tierId, quantity: 2 }],
    }, { token, key });
    assert.deepEqual([changed.status, changed.body.type], [422, "/problems/idempotency-key-reused"]);
    await stack.stripe!.paySession(first.body.checkout_session_id as string);
    await stack.db.query("delete from public.idempotency_keys where key = $1", [key]);
    const closed = await call(stack, "enhanced-checkout", body, { token, key });
    assert.deepEqual([closed.status, closed.body.type], [409, "/problems/checkout-closed"]);
  },
);

ledgerTest(
  "an Idempotency-Key past its 24 hours starts over: claimed anew even with another payload",
  async (stack) => {
    const claim = async (fingerprint: string) =>
      (await stack.db.query<{ c: { outcome: string; fencing_token: number } }>(
        "select public.claim_idempotency_key('user:guards', 'k-expiry', 'refunds', $1) as c",
        [fingerprint],
      ))[0].c;
    const first = await claim("fp-1");
    assert.equal(first.outcome, "acquired");
    await stack.db.query(
      "select public.complete_idempotency_key('user:guards', 'k-expiry', $1, 201, '{}', '{}')",
      [first.fencing_token],
    );
    assert.equal((await claim("fp-2")).outcome, "mismatch", "within 24 hours another payload is refused");
    await stack.db.query(
      "update public.idempotency_keys set expires_at = now() - interval '1 second' where key = 'k-expiry'",
    );
    const again = await claim("fp-2");
    assert.deepEqual([again.outcome, again.fencing_token], ["acquired", first.fencing_token + 1]);
    // (the functions' own rows - an order, a refund, a payout - still recognise an old key: tested elsewhere)
  },
);

ledgerTest("an operator cannot resolve an operation whose holder is still at work", async (stack) => {
  const organiser = await newOrganiser(stack);
  await paidOrder(stack, organiser, 1);
  const id = uid();
  await stack.db.query(
    `insert into public.stripe_idempotency_keys (operation_type, operation_id, stripe_idempotency_key, status,
       request_params, locked_until)
     values ('payout:create', $1, 'payout:create:' || $1 || ':k', 'in_progress', '{}', now() + interval '1 minute')`,
    [id],
  );
  const service = (await import("./_flows.ts")).clientAs(stack, stack.serviceRoleKey);
  const { error } = await service.rpc("resolve_stripe_operation", {
    p_operation_type: "payout:create",
    p_operation_id: id,
    p_result: { id: "tr_x" },
  });
  assert.equal(error?.code, "PT409");
  assert.match(error!.message, /only an operation that needs attention/);
});

ledgerTest(
  "an operator settles a checkout that needs attention with its session: the order is recorded",
  async (stack) => {
    const organiser = await newOrganiser(stack);
    const order = await openOrder(stack, organiser, 1);
    await stack.db.query(
      `update public.stripe_idempotency_keys set status = 'needs_attention', locked_until = null,
       evidence = '{"reason": "test"}' where operation_type = 'checkout:create' and operation_id = $1`,
      [order.orderId],
    );
    await stack.db.query("update events.orders set stripe_session_id = null where id = $1", [order.orderId]);
    const service = (await import("./_flows.ts")).clientAs(stack, stack.serviceRoleKey);
    const { data, error } = await service.rpc("resolve_stripe_operation", {
      p_operation_type: "checkout:create",
      p_operation_id: order.orderId,
      p_result: { id: order.sessionId },
    });
    assert.equal(error, null, JSON.stringify(error));
    assert.equal(data.stripe_session_id, order.sessionId);
  },
);

ledgerTest(
  'an operator\'s "no object" waits until Stripe has forgotten the key: till then the payout stays pending',
  async (stack) => {
    const organiser = await newOrganiser(stack);
    await paidOrder(stack, organiser, 2);
    const before = await wallet(organiser);
    const payoutId = uid();
    const [{ r }] = await stack.db.query<{ r: { stripe: { outcome: string; fencing_token: number } } }>(
      `select public.create_payout('user:' || $1, $2, $3::uuid, 'payout:create:' || $3 || ':' || $2, $1::uuid, 2000,
         'usd', 60, 1000000000) as r`,
      [organiser.id, uid(), payoutId],
    );
    assert.equal(r.stripe.outcome, "acquired");
    // its look-up could not decide (say, a transfer Stripe did not list yet): the operation needs a person
    await stack.db.query("select public.attention_stripe_operation('payout:create', $1, $2, $3::jsonb)", [
      payoutId,
      r.stripe.fencing_token,
      JSON.stringify({ reason: "the transfer list timed out" }),
    ]);
    const state = async () =>
      (await stack.db.query<{ payout: string; operation: string }>(
        `select p.status as payout, k.status as operation from wallet.payouts p
         join public.stripe_idempotency_keys k on k.operation_type = 'payout:create' and k.operation_id = p.id::text
         where p.id = $1`,
        [payoutId],
      ))[0];
    const service = (await import("./_flows.ts")).clientAs(stack, stack.serviceRoleKey);
    const noObject = () =>
      service.rpc("resolve_stripe_operation", {
        p_operation_type: "payout:create",
        p_operation_id: payoutId,
        p_error: { status: 404, type: "operator", message: "no transfer in the dashboard" },
      });

    const early = await noObject();
    assert.equal(early.error?.code, "PT409", JSON.stringify(early));
    assert.match(early.error!.message, /may still be carried out by Stripe with its key/);
    assert.deepEqual(await state(), { payout: "pending", operation: "needs_attention" });
    assert.equal((await wallet(organiser)).pending_payout_cents, before.pending_payout_cents + 2000);

    // a day and 5 minutes after the operation began, no request with its key can make the transfer any more
    await stack.db.query(
      `update public.stripe_idempotency_keys set created_at = now() - interval '24 hours 6 minutes'
       where operation_type = 'payout:create' and operation_id = $1`,
      [payoutId],
    );
    const late = await noObject();
    assert.equal(late.error, null, JSON.stringify(late.error));
    assert.equal(late.data.status, "failed");
    assert.deepEqual(await state(), { payout: "failed", operation: "failed" });
    assert.deepEqual(await wallet(organiser), before, "the debit is given back");
  },
);

ledgerTest("a refund Stripe holds pending, then cancels: reserved, then given back", async (stack) => {
  const organiser = await newOrganiser(stack);
  const order = await paidOrder(stack, organiser, 2);
  const refund = await call(stack, "refunds", { order_id: order.orderId, amount_cents: 1000 }, {
    token: organiser.token,
  });
  assert.equal(refund.status, 201);
  const share = Math.floor(1000 * order.subtotal / order.total);
  // Stripe reports it pending (say the balance ran short), then canceled
  for (const status of ["pending", "canceled"]) {
    await stack.db.query("select private.apply_refund_status($1, $2, $3)", [
      refund.body.refund_id,
      status,
      refund.body.stripe_refund_id,
    ]);
    const expected = status === "pending" ? order.subtotal - share : order.subtotal;
    assert.equal((await wallet(organiser)).balance_cents, expected, status);
  }
  const [row] = await stack.db.query<{ status: string; refunded_cents: number }>(
    "select r.status, o.refunded_cents from events.refunds r join events.orders o on o.id = r.order_id where r.id = $1",
    [refund.body.refund_id],
  );
  assert.deepEqual(row, { status: "canceled", refunded_cents: 0 });
});

ledgerTest(
  "a transfer reversed in full marks the payout reversed and gives all of it back",
  async (stack) => {
    const organiser = await newOrganiser(stack);
    await paidOrder(stack, organiser, 2);
    const payout = await call(stack, "payouts", { amount_cents: 3000 }, { token: organiser.token });
    assert.equal(payout.status, 201);
    await stack.stripe!.reverseTransfer(payout.body.stripe_transfer_id as string);
    const [row] = await stack.db.query<{ status: string; reversed_cents: number }>(
      "select status, reversed_cents::int from wallet.payouts where id = $1",
      [payout.body.payout_id],
    );
    assert.deepEqual(row, { status: "reversed", reversed_cents: 3000 });
    assert.equal((await wallet(organiser)).balance_cents, 5000);
  },
);

ledgerTest(
  "housekeeping purges what is past keeping, in bounded batches, and nothing else",
  async (stack) => {
    await stack.db.query(
      `insert into public.stripe_webhook_events (stripe_event_id, event_type, status, processed_at)
     values ('evt_old_processed', 'x', 'processed', now() - interval '31 days'),
            ('evt_young_processed', 'x', 'processed', now() - interval '29 days'),
            ('evt_old_failed', 'x', 'failed', null)
     on conflict do nothing`,
    );
    await stack.db.query(
      `insert into private.rate_limits (bucket, window_start, hits) values ('ip:old', now() - interval '2 hours', 1),
       ('ip:young', date_trunc('minute', now()), 1) on conflict do nothing`,
    );
    const service = (await import("./_flows.ts")).clientAs(stack, stack.serviceRoleKey);
    const { data, error } = await service.rpc("reconcile_housekeeping", { p_batch_size: 1000 });
    assert.equal(error, null);
    assert.ok(data.webhook_events_purged >= 1 && data.rate_limit_windows_purged >= 1, JSON.stringify(data));
    const left = await stack.db.query<{ id: string }>(
      `select stripe_event_id as id from public.stripe_webhook_events where stripe_event_id in ('evt_old_processed', 'evt_young_processed', 'evt_old_failed')
     union all select bucket from private.rate_limits where bucket in ('ip:old', 'ip:young') order by 1`,
    );
    assert.deepEqual(
      left.map((r) => r.id).sort(),
      ["evt_old_failed", "evt_young_processed", "ip:young"].sort(),
    );
  },
);
