// Red team of the refund recovery (migrations 20261130000600 reversals_in_flight and 20261130000700 recovery
// abandons by look-up): each R test was a finding, fixed in migration 20261130000800.
import assert from "node:assert/strict";
import { testHooks } from "../supabase/functions/_shared/idempotency.ts";
import type { Stack } from "../tools/local/stack.ts";
import { call, ledgerTest, newOrganiser, type Organiser, paidOrder, wallet } from "./_flows.ts";

function transfersOf(stack: Stack, organiser: Organiser) {
  return [...stack.stripe!.state.transfers.values()].filter((t) => t.destination === organiser.account);
}

async function reconcile(stack: Stack) {
  const r = await call(stack, "stripe-reconcile", {}, { token: stack.serviceRoleKey, key: null });
  assert.equal(r.status, 200, r.text);
  return r.body;
}

function stripeRefunded(stack: Stack, paymentIntent: string): number {
  const intent = stack.stripe!.state.paymentIntents.get(paymentIntent)!;
  return stack.stripe!.state.charges.get(intent.latest_charge as string)!.amount_refunded as number;
}

const share = (order: { subtotal: number; total: number }, refunded: number) =>
  Math.floor(Math.min(refunded, order.total) * order.subtotal / order.total);

/** Two payouts of half the order's subtotal each: two transfers to the organiser's account, the wallet 0. */
async function twoPayouts(stack: Stack) {
  const organiser = await newOrganiser(stack);
  const order = await paidOrder(stack, organiser, 10); // subtotal 25000
  for (let i = 0; i < 2; i++) {
    const p = await call(stack, "payouts", { amount_cents: order.subtotal / 2 }, { token: organiser.token });
    assert.equal(p.status, 201, p.text);
  }
  assert.equal((await wallet(organiser)).balance_cents, 0);
  const transfers = transfersOf(stack, organiser);
  assert.equal(transfers.length, 2);
  return { organiser, order, transfers };
}

/** A full refund whose first reversal (of the newest transfer) Stripe refuses: the second is abandoned. */
async function failedRecovery(
  stack: Stack,
  organiser: Organiser,
  order: { orderId: string },
  newest: string,
) {
  stack.stripe!.addFault({
    path: `/v1/transfers/${newest}/reversals`,
    method: "POST",
    kind: "error",
    status: 400,
    error: { type: "invalid_request_error", code: "balance_insufficient", message: "insufficient" },
  });
  const r = await call(stack, "refunds", { order_id: order.orderId }, { token: organiser.token });
  assert.equal(r.status, 409, r.text);
  const rows = await stack.db.query<{ status: string; burned: boolean }>(
    `select v.status, k.key_burned_at is not null as burned from wallet.transfer_reversals v
     join wallet.payouts p on p.id = v.payout_id
     join public.stripe_idempotency_keys k on k.operation_type = 'transfer_reversal:create' and k.operation_id = v.id::text
     where p.organiser_id = $1 order by v.status`,
    [organiser.id],
  );
  assert.deepEqual([...rows].map((r) => ({ ...r })), [{ status: "failed", burned: false }, {
    status: "pending",
    burned: true,
  }]);
}

async function proveAbsent(stack: Stack) {
  await stack.db.query(
    `update public.stripe_idempotency_keys set key_burned_at = key_burned_at - interval '16 minutes',
       locked_until = now() where operation_type = 'transfer_reversal:create' and status = 'in_progress'
       and key_burned_at is not null`,
  );
  await reconcile(stack);
}

// R1: an abandoned reversal (never sent, settled by look-up) stays 'pending' for 15 minutes, and
// reversals_in_flight counts it as money coming back to the wallet. A second refund by the organiser
// meanwhile recovers nothing from their transfers; the look-up then proves the reversal absent, and the
// organiser's wallet is below zero by their own refund (the platform paid their share).
ledgerTest(
  "R1: a refund after a failed recovery, its abandoned reversal still pending, recovers its own share",
  async (stack) => {
    const { organiser, order, transfers } = await twoPayouts(stack);
    await failedRecovery(stack, organiser, order, transfers[1].id as string);
    assert.equal((await wallet(organiser)).balance_cents, 0, "the failed refund's reservation is given back");
    const second = await call(stack, "refunds", { order_id: order.orderId, amount_cents: 5_000 }, {
      token: organiser.token,
    });
    assert.equal(second.status, 201, second.text);
    await proveAbsent(stack);
    assert.equal(stripeRefunded(stack, order.paymentIntent), 5_000);
    const reversed = transfers.reduce((s, t) => s + (t.amount_reversed as number), 0);
    const w = await wallet(organiser);
    assert.deepEqual(
      { reversed, balance: w.balance_cents },
      { reversed: share(order, 5_000), balance: 0 },
      "the organiser's share of the second refund is recovered from their transfers, never from the platform",
    );
  },
);

// R2 (held): the abandoned reversal was made at Stripe after all (its holder sent it as the other failed):
// Stripe's transfer event credits it first, the look-up then finds it. The refund stays failed and unsent,
// the organiser's wallet holds what Stripe took back from their account, no operation is left in progress.
ledgerTest(
  "R2: an abandoned reversal Stripe made is found by look-up: credited once, the refund failed and never sent",
  async (stack) => {
    const { organiser, order, transfers } = await twoPayouts(stack);
    await failedRecovery(stack, organiser, order, transfers[1].id as string);
    const [b] = await stack.db.query<{ id: string; amount: number; refund_id: string; key: string }>(
      `select v.id, v.amount_cents::int as amount, v.refund_id, k.stripe_idempotency_key as key
       from wallet.transfer_reversals v join wallet.payouts p on p.id = v.payout_id
       join public.stripe_idempotency_keys k on k.operation_type = 'transfer_reversal:create' and k.operation_id = v.id::text
       where p.organiser_id = $1 and v.status = 'pending'`,
      [organiser.id],
    );
    stack.stripe!.options.autoDeliver = false;
    const res = await fetch(`${stack.stripe!.url}/v1/transfers/${transfers[0].id}/reversals`, {
      method: "POST",
      headers: {
        authorization: "Bearer sk_test_redteam",
        "content-type": "application/x-www-form-urlencoded",
        "idempotency-key": b.key,
      },
      body: new URLSearchParams({
        amount: String(b.amount),
        "metadata[reversal_id]": b.id,
        "metadata[refund_id]": b.refund_id,
      }),
    });
    assert.equal(res.status, 200, await res.text());
    const d = await stack.stripe!.deliver(stack.stripe!.takeEvents());
    assert.ok(d.every((x) => x.status === 200), JSON.stringify(d));
    stack.stripe!.options.autoDeliver = true;
    await proveAbsent(stack); // the look-up finds it

    const [row] = await stack.db.query<{ status: string; op: string; refund: string; refund_op: string }>(
      `select v.status, k.status as op, r.status as refund, rk.status as refund_op
       from wallet.transfer_reversals v join public.stripe_idempotency_keys k
         on k.operation_type = 'transfer_reversal:create' and k.operation_id = v.id::text
       join events.refunds r on r.id = v.refund_id
       join public.stripe_idempotency_keys rk on rk.operation_type = 'refund:create' and rk.operation_id = r.id::text
       where v.id = $1`,
      [b.id],
    );
    assert.deepEqual({ ...row }, {
      status: "succeeded",
      op: "completed",
      refund: "failed",
      refund_op: "failed",
    });
    assert.equal(stripeRefunded(stack, order.paymentIntent), 0, "the refund was never sent");
    const [{ n }] = await stack.db.query<{ n: number }>(
      `select count(*)::int as n from public.stripe_idempotency_keys where status = 'in_progress'
       and (operation_id = $1 or operation_id = $2)`,
      [b.id, b.refund_id],
    );
    assert.equal(n, 0, "no operation left in progress");
    const [p] = await stack.db.query<{ reversed: number }>(
      "select coalesce(sum(reversed_cents), 0)::int as reversed from wallet.payouts where organiser_id = $1",
      [organiser.id],
    );
    const atStripe = transfers.reduce((s, t) => s + (t.amount_reversed as number), 0);
    assert.deepEqual({ reversed: p.reversed, wallet: (await wallet(organiser)).balance_cents }, {
      reversed: atStripe,
      wallet: atStripe,
    });
    assert.equal(atStripe, b.amount);
  },
);

// R3: a dashboard reversal (in reversed_cents without a row) then a reversal in flight on the same transfer:
// reversals_in_flight subtracts the dashboard's amount from the row's, so the transfer looks reversible by
// more than Stripe has left. A second refund's reversal is put on that transfer, Stripe refuses it
// (amount_too_large) and the refund fails, though the organiser's older transfer could cover it.
ledgerTest(
  "R3: a dashboard reversal and a reversal in flight on one transfer: the next refund is covered by the other",
  async (stack) => {
    const { organiser, order, transfers } = await twoPayouts(stack);
    await stack.stripe!.reverseTransfer(transfers[1].id as string, 5_000); // the newest, in the dashboard
    assert.equal((await wallet(organiser)).balance_cents, 5_000);
    stack.stripe!.options.autoDeliver = false;
    testHooks.afterStripe = (op) => {
      if (op.operationType === "transfer_reversal:create") throw new Error("crash after the reversal");
    };
    const first = await call(stack, "refunds", { order_id: order.orderId, amount_cents: 10_000 }, {
      token: organiser.token,
    });
    delete testHooks.afterStripe;
    assert.equal(first.status, 500, first.text);
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
    assert.equal((await wallet(organiser)).balance_cents, 0);
  },
);
