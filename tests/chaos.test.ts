// Chaos: 100 client keys x 5 duplicates across enhanced-checkout, guest-checkout, refunds and payouts,
// sent concurrently while the emulator injects faults at random (connection reset after commit, 500
// before commit, 409 in flight, latency spikes), handlers die between Stripe's answer and the database,
// people act in the Stripe dashboard (refunds, disputes) and Stripe's events arrive late, in any order and
// more than once. Then the reconciler and the audit run, and every invariant is checked against the
// emulator's records and the database, the ledger to the cent per order and per organiser. The seed is
// printed, so a failure can be replayed.
import assert from "node:assert/strict";
import { testHooks } from "../supabase/functions/_shared/idempotency.ts";
import type { StripeEvent } from "../tools/local/stripe_emulator/mod.ts";
import {
  type Answer,
  assertLedger,
  BUYER,
  call,
  newOrganiser,
  type Organiser,
  paidOrder,
  uid,
} from "./_flows.ts";
import { sharedStack, stackTest } from "./_helpers.ts";

const SEED = Number(Deno.env.get("CHAOS_SEED") ?? Date.now() % 1_000_000);

/** mulberry32: a small seeded PRNG, so that a run can be repeated. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

interface Send {
  key: string;
  fn: string;
  body: unknown;
  token: string;
  headers?: Record<string, string>;
}

/** Runs `tasks` with at most `limit` in flight. */
async function pool<T>(tasks: (() => Promise<T>)[], limit: number): Promise<T[]> {
  const results: T[] = new Array(tasks.length);
  let next = 0;
  await Promise.all(Array.from({ length: limit }, async () => {
    while (next < tasks.length) {
      const i = next++;
      results[i] = await tasks[i]();
    }
  }));
  return results;
}

stackTest(
  `chaos: 100 keys x 5 duplicates under random faults and handler deaths (seed ${SEED})`,
  async () => {
    const stack = await sharedStack();
    const random = prng(SEED);
    console.log(`chaos seed ${SEED} (CHAOS_SEED=${SEED} repeats this run)`);

    // Calm setup: two organisers, paid orders to refund, money to pay out.
    const organisers: Organiser[] = [
      await newOrganiser(stack, { capacity: 200 }),
      await newOrganiser(stack, { capacity: 200 }),
    ];
    const paid = [];
    for (let i = 0; i < 20; i++) {
      paid.push({
        organiser: organisers[i % 2],
        ...await paidOrder(stack, organisers[i % 2], 2),
      });
    }

    const buyer = await stack.userToken(BUYER);
    const keys: Send[] = [];
    for (let i = 0; i < 30; i++) {
      const o = organisers[i % 2];
      keys.push({
        key: uid(),
        fn: "enhanced-checkout",
        token: buyer,
        body: { event_id: o.eventId, items: [{ tier_id: o.tierId, quantity: 1 + (i % 3) }] },
      });
    }
    for (let i = 0; i < 30; i++) {
      const o = organisers[i % 2];
      keys.push({
        key: uid(),
        fn: "guest-checkout",
        token: stack.anonKey,
        headers: { "cf-connecting-ip": `198.51.100.${i}` },
        body: {
          event_id: o.eventId,
          items: [{ tier_id: o.tierId, quantity: 1 }],
          email: `chaos-${i}@example.com`,
        },
      });
    }
    for (let i = 0; i < 20; i++) {
      keys.push({
        key: uid(),
        fn: "refunds",
        token: paid[i].organiser.token,
        body: { order_id: paid[i].orderId, amount_cents: 1000 + i },
      });
    }
    for (let i = 0; i < 20; i++) {
      keys.push({
        key: uid(),
        fn: "payouts",
        token: organisers[i % 2].token,
        body: { amount_cents: 500 + i },
      });
    }
    const sends = keys.flatMap((k) => Array.from({ length: 5 }, () => k));
    for (let i = sends.length - 1; i > 0; i--) { // shuffle: duplicates arrive interleaved
      const j = Math.floor(random() * (i + 1));
      [sends[i], sends[j]] = [sends[j], sends[i]];
    }

    stack.stripe!.setChaos({
      probability: 0.5,
      kinds: ["reset_after", "error_before", "in_flight", "latency"],
      maxLatencyMs: 400,
      seed: SEED,
    });
    testHooks.afterStripe = () => {
      if (random() < 0.08) throw new Error("chaos: the handler died after Stripe answered");
    };
    // Stripe's events are held back and delivered late, shuffled and some twice, while people act in the
    // dashboard: refunds of some paid orders, disputes of others.
    stack.stripe!.options.autoDeliver = false;
    const held: StripeEvent[] = [];
    const deliverSome = async (all: boolean) => {
      held.push(...stack.stripe!.takeEvents());
      const batch = held.splice(0, all ? held.length : Math.ceil(held.length * random()));
      for (let i = batch.length - 1; i > 0; i--) {
        const j = Math.floor(random() * (i + 1));
        [batch[i], batch[j]] = [batch[j], batch[i]];
      }
      await stack.stripe!.deliver([...batch, ...batch.filter(() => random() < 0.3)]);
    };
    const dashboard: (() => Promise<unknown>)[] = [
      ...paid.slice(14, 18).map((p) => async () =>
        held.push(
          ...(await stack.stripe!.refundFromDashboard(p.paymentIntent, 500 + Math.floor(random() * 2000), {
            deliver: false,
          })).events,
        )
      ),
      ...paid.slice(18, 20).map((p) => async () =>
        held.push(...(await stack.stripe!.openDispute(p.paymentIntent, { deliver: false })).events)
      ),
      ...Array.from({ length: 6 }, () => () => deliverSome(false)),
    ];
    const tasks: (() => Promise<{ send: Send; answer: Answer } | null>)[] = sends.map((send) => async () => ({
      send,
      answer: await call(stack, send.fn, send.body, {
        key: send.key,
        token: send.token,
        headers: send.headers,
      }),
    }));
    for (const act of dashboard) {
      tasks.splice(Math.floor(random() * tasks.length), 0, async () => (await act(), null));
    }
    let answers: { send: Send; answer: Answer }[];
    try {
      answers = (await pool(tasks, 24)).filter((a) => a !== null);
    } finally {
      stack.stripe!.clearFaults();
      delete testHooks.afterStripe;
    }
    await deliverSome(true);
    stack.stripe!.options.autoDeliver = true;
    const statuses: Record<number, number> = {};
    for (const { answer } of answers) statuses[answer.status] = (statuses[answer.status] ?? 0) + 1;
    console.log("answers by status", statuses);
    assert.ok((statuses[201] ?? 0) > 0, "some requests got through");
    assert.ok(
      answers.every(({ answer }) => [201, 409, 422, 500, 503].includes(answer.status)),
      JSON.stringify(statuses),
    );

    // Time passes: every lease runs out, and the reconciler finishes what was left.
    await stack.db.query(
      "update public.stripe_idempotency_keys set locked_until = now() where status = 'in_progress'",
    );
    let redriven = 0;
    for (let run = 0; run < 3; run++) {
      const report = await call(stack, "stripe-reconcile", {}, { token: stack.serviceRoleKey, key: null });
      assert.equal(report.status, 200, report.text);
      redriven += (report.body.settled as { completed: number }).completed;
    }
    // and the audit finds nothing it cannot repair
    const audited = await call(stack, "stripe-audit", {}, { token: stack.serviceRoleKey, key: null });
    assert.equal(audited.status, 200, audited.text);
    assert.deepEqual(audited.body.discrepancies, [], audited.text);
    const faults = stack.stripe!.requests.filter((r) => r.fault !== null).length;
    console.log(`faults injected ${faults}, operations finished by the reconciler ${redriven}`);
    assert.ok(faults >= 20, `the chaos happened (${faults} faults)`); // about half of 100-200 Stripe requests
    assert.ok(redriven > 0 || (statuses[500] ?? 0) === 0, "what died was finished by the reconciler");

    const emu = stack.stripe!.state;
    const eventIds = organisers.map((o) => o.eventId);

    // 1. No operation is left without its object or its recorded failure.
    const open = await stack.db.query(
      `select operation_type, operation_id, status from public.stripe_idempotency_keys
    where status not in ('completed', 'failed')`,
    );
    assert.deepEqual([...open], [], "every operation completed or failed");

    // 2. One Stripe object per operation, and it is the one recorded.
    const ops = await stack.db.query<
      { operation_type: string; operation_id: string; stripe_resource_id: string | null }
    >(
      "select operation_type, operation_id, stripe_resource_id from public.stripe_idempotency_keys",
    );
    const byMeta = (objects: Iterable<Record<string, unknown>>, field: string) => {
      const map = new Map<string, string[]>();
      for (const o of objects) {
        const id = (o.metadata as Record<string, string>)?.[field];
        if (id) map.set(id, [...(map.get(id) ?? []), o.id as string]);
      }
      return map;
    };
    const sessions = byMeta(emu.sessions.values(), "order_id");
    const refunds = byMeta(emu.refunds.values(), "refund_id");
    const transfers = byMeta(emu.transfers.values(), "payout_id");
    for (const op of ops) {
      const objects = {
        "checkout:create": sessions,
        "refund:create": refunds,
        "payout:create": transfers,
      }[op.operation_type]
        ?.get(op.operation_id) ?? [];
      assert.ok(
        objects.length <= 1,
        `${op.operation_type}/${op.operation_id}: ${objects.length} Stripe objects`,
      );
      assert.deepEqual(
        objects,
        op.stripe_resource_id ? [op.stripe_resource_id] : [],
        `${op.operation_type}/${op.operation_id}`,
      );
    }

    // 3. Every 2xx answer is backed by its rows.
    for (const { send, answer } of answers.filter((a) => a.answer.status === 201)) {
      const b = answer.body;
      if (send.fn.endsWith("checkout")) {
        const [row] = await stack.db.query<{ stripe_session_id: string }>(
          "select stripe_session_id from events.orders where id = $1",
          [b.order_id],
        );
        assert.equal(row?.stripe_session_id, b.checkout_session_id, `order ${b.order_id}`);
      } else if (send.fn === "refunds") {
        const [row] = await stack.db.query<{ stripe_refund_id: string }>(
          "select stripe_refund_id from events.refunds where id = $1",
          [b.refund_id],
        );
        assert.equal(row?.stripe_refund_id, b.stripe_refund_id, `refund ${b.refund_id}`);
      } else {
        const [row] = await stack.db.query<{ stripe_transfer_id: string }>(
          "select stripe_transfer_id from wallet.payouts where id = $1",
          [b.payout_id],
        );
        assert.equal(row?.stripe_transfer_id, b.stripe_transfer_id, `payout ${b.payout_id}`);
      }
    }
    // and every answer for one key carries the same object
    for (const k of keys) {
      const ids = answers.filter((a) => a.send.key === k.key && a.answer.status === 201)
        .map((a) =>
          a.answer.body.checkout_session_id ?? a.answer.body.stripe_refund_id ??
            a.answer.body.stripe_transfer_id
        );
      assert.ok(new Set(ids).size <= 1, `key ${k.key}: ${ids}`);
    }

    // 4. Refunds never exceed what was paid, in the database and at Stripe.
    const over = await stack.db.query(
      `select o.id from events.orders o where o.event_id = any($1) and
    (select coalesce(sum(r.amount_cents), 0) from events.refunds r where r.order_id = o.id and r.status <> 'failed') > o.total_cents`,
      [eventIds],
    );
    assert.deepEqual([...over], []);
    for (const charge of emu.charges.values()) {
      assert.ok(
        (charge.amount_refunded as number) <= (charge.amount as number),
      );
    }

    // 5. The ledger: balance = sum of entries; never below zero through the organiser's own actions (what
    // the dashboard and disputes took may leave it owing).
    await assertLedger(stack);
    for (const o of organisers) {
      const [w] = await stack.db.query<{ total: number; outside: number }>(
        `select w.entries_total_cents::int as total,
           (select coalesce(sum(t.amount_cents), 0)::int from wallet.wallet_transactions t
            left join events.refunds r on r.id = t.refund_id
            where t.wallet_id = w.id and (t.type in ('dispute', 'dispute_reversal', 'dispute_fee')
              or (t.type in ('refund', 'adjustment') and r.requested_by is null))) as outside
         from wallet.wallets w where w.organiser_id = $1`,
        [o.id],
      );
      assert.ok(
        w.total - w.outside >= 0,
        `organiser ${o.id} paid out more than earned: ${JSON.stringify(w)}`,
      );
    }

    // 6. The ledger equals Stripe, to the cent: per order, the organiser nets the sale less
    // floor(min(refunded + disputed, total) x subtotal / total) of what Stripe refunded and withdrew; per
    // organiser, what Stripe transferred (less reversals) is what the payouts say.
    const orders = await stack.db.query<
      { id: string; pi: string; subtotal: number; total: number; net: number }
    >(
      `select o.id, o.stripe_payment_intent_id as pi, o.subtotal_cents as subtotal, o.total_cents as total,
         (select coalesce(sum(t.amount_cents), 0)::int from wallet.wallet_transactions t where t.order_id = o.id) as net
       from events.orders o where o.event_id = any($1) and o.stripe_payment_intent_id is not null`,
      [eventIds],
    );
    for (const o of orders) {
      const charge = [...emu.charges.values()].find((c) => c.payment_intent === o.pi)!;
      const disputed = [...emu.disputes.values()].filter((d) => d.charge === charge.id)
        .reduce(
          (n, d) => n - (d.balance_transactions as { amount: number }[]).reduce((m, t) => m + t.amount, 0),
          0,
        );
      const gone = Math.min((charge.amount_refunded as number) + disputed, o.total);
      assert.equal(
        o.net,
        o.subtotal - Math.floor(gone * o.subtotal / o.total),
        `order ${o.id} against ${charge.id}`,
      );
    }
    for (const o of organisers) {
      const [p] = await stack.db.query<{ out: number }>(
        `select coalesce(sum(p.amount_cents - p.reversed_cents), 0)::int as out from wallet.payouts p
         where p.organiser_id = $1 and p.status in ('paid', 'reversed')`,
        [o.id],
      );
      const atStripe = [...emu.transfers.values()].filter((t) => t.destination === o.account)
        .reduce((n, t) => n + (t.amount as number) - (t.amount_reversed as number), 0);
      assert.equal(atStripe, p.out, `organiser ${o.id}: transfers less reversals`);
    }

    // 7. No ticket beyond capacity.
    const tiers = await stack.db.query<{ sold: number; held: number; capacity: number }>(
      "select sold, held, capacity from events.ticket_tiers where event_id = any($1)",
      [eventIds],
    );
    for (const t of tiers) assert.ok(t.sold + t.held <= t.capacity && t.held >= 0, JSON.stringify(t));
  },
);
