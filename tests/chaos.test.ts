// Chaos: client keys across enhanced-checkout, guest-checkout, refunds and payouts, each sent 5 times by
// its client (the keys all at once), while the emulator injects faults (connection reset after commit, 500
// before commit, 409 in flight, latency spikes), handlers die between Stripe's answer and the database,
// people act in the Stripe dashboard (refunds, disputes) and Stripe's events arrive late, in any order and
// more than once. Then the reconciler and the audit run, every key is sent once more, and every invariant
// is checked against the emulator's records and the database: each Stripe object belongs to exactly one
// operation, each key ends with its recorded object, the ledger equals Stripe to the cent per order and per
// organiser, and every answer a client saw is accounted for by a fault, a death or a scripted action.
//
// Reproducible: every fault is drawn from (seed, the key it belongs to, the n-th attempt with it), every
// death from (seed, key, the n-th time its handler got Stripe's answer), every event shuffle from (seed,
// key), and a client's duplicates go one after another, so how the keys interleave changes nothing that a
// key sees. `CHAOS_SEED=n npm test -- tests/chaos.test.ts` repeats a run: same faults, same answers.
import assert from "node:assert/strict";
import { testHooks } from "../supabase/functions/_shared/idempotency.ts";
import {
  type Chaos,
  hashSeed,
  mulberry32,
  type StripeEvent,
  type StripeObject,
} from "../tools/local/stripe_emulator/mod.ts";
import type { Stack } from "../tools/local/stack.ts";
import { type Answer, BUYER, call, newOrganiser, type Organiser, paidOrder, uid } from "./_flows.ts";
import { sharedStack, stackTest } from "./_helpers.ts";
import { checkInvariants, type SuccessAnswer } from "../tools/chaos/invariants.ts";

const SEED = Number(Deno.env.get("CHAOS_SEED") ?? Date.now() % 1_000_000);
const KINDS: Chaos["kinds"] = ["reset_after", "error_before", "in_flight", "latency"];
const DEATH_PROBABILITY = 0.08;
/** Clients sending at once, each its key's sends one after another. */
const CLIENTS = 40;
/** Attempts the functions' Stripe client makes per call (`maxNetworkRetries: 2`). */
const SDK_ATTEMPTS = 3;
/**
 * Whether a Stripe request left the client without Stripe's answer: the connection reset, a 500 before
 * commit, a 409 in flight (which the emulator gives only while the key is not stored yet; a stored key
 * is replayed).
 */
const failed = (r: { fault: string | null; status: number }) =>
  r.fault === "reset_after" || r.status === 409 || r.status >= 500;
/** Whether an injected fault did something (`in_flight` does nothing to a stored key). */
const effective = (r: { fault: string | null; status: number }) =>
  r.fault !== null && (r.fault !== "in_flight" || r.status === 409);

/** Refunds made in the dashboard by every run of this file: the only Stripe objects without an operation. */
const dashboardRefunds = new Set<string>();
let runs = 0;

interface Key {
  /** What the key stands for, the same from run to run (`refund-3`): faults and deaths are drawn for it. */
  name: string;
  key: string;
  fn: string;
  body: unknown;
  token: string;
  headers?: Record<string, string>;
  /** What the dashboard does to the order this key refunds, before the key's first (dispute) or second send. */
  dashboard?: "refund" | "dispute";
  paymentIntent?: string;
}

interface Sizes {
  checkouts: number;
  guests: number;
  refunds: number;
  payouts: number;
  dashboardRefunds: number;
  disputes: number;
  sends: number;
}

interface ChaosRun {
  seed: number;
  keys: Key[];
  organisers: Organiser[];
  /** Every answer per key name, in the order its client got them. */
  answers: Map<string, Answer[]>;
  /** The answer to one more send of each key, after the reconciler ran. */
  final: Map<string, Answer>;
  /** `name#attempt:kind` of each Stripe request of this run a fault was drawn for, sorted. */
  faults: string[];
  /** `name#n` of each death, sorted. */
  deaths: string[];
  /** Stripe requests per key name, in order (POSTs of its own operation, with their faults). */
  stripe: Map<string, { attempt: number; fault: string | null; status: number }[]>;
  /** Faults that did something, per kind. */
  kinds: Record<string, number>;
  redriven: number;
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

/** `items` shuffled, and some twice, by a PRNG seeded from `parts`. */
function shuffled<T>(items: T[], ...parts: (string | number)[]): T[] {
  const random = mulberry32(hashSeed(...parts));
  const out = [...items];
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [out[i], out[j]] = [out[j], out[i]];
  }
  return [...out, ...out.filter(() => random() < 0.3)];
}

async function chaosRun(stack: Stack, seed: number, sizes: Sizes): Promise<ChaosRun> {
  const run = ++runs;
  const stripe = stack.stripe!;
  // Calm setup: two organisers, paid orders to refund, money to pay out.
  const organisers: Organiser[] = [
    await newOrganiser(stack, { capacity: 200 }),
    await newOrganiser(stack, { capacity: 200 }),
  ];
  const paid = [];
  for (let i = 0; i < sizes.refunds; i++) {
    paid.push({ organiser: organisers[i % 2], ...await paidOrder(stack, organisers[i % 2], 2) });
  }
  const buyer = await stack.userToken(BUYER);
  const keys: Key[] = [];
  for (let i = 0; i < sizes.checkouts; i++) {
    const o = organisers[i % 2];
    keys.push({
      name: `checkout-${i}`,
      key: uid(),
      fn: "enhanced-checkout",
      token: buyer,
      body: { event_id: o.eventId, items: [{ tier_id: o.tierId, quantity: 1 + (i % 3) }] },
    });
  }
  for (let i = 0; i < sizes.guests; i++) {
    const o = organisers[i % 2];
    keys.push({
      name: `guest-${i}`,
      key: uid(),
      fn: "guest-checkout",
      token: stack.anonKey,
      headers: { "cf-connecting-ip": `198.51.${run}.${i}` },
      body: {
        event_id: o.eventId,
        items: [{ tier_id: o.tierId, quantity: 1 }],
        email: `chaos-${run}-${i}@example.com`,
      },
    });
  }
  for (let i = 0; i < sizes.refunds; i++) {
    const fromEnd = sizes.refunds - i;
    keys.push({
      name: `refund-${i}`,
      key: uid(),
      fn: "refunds",
      token: paid[i].organiser.token,
      body: { order_id: paid[i].orderId, amount_cents: 1000 + i },
      dashboard: fromEnd <= sizes.disputes
        ? "dispute"
        : fromEnd <= sizes.disputes + sizes.dashboardRefunds
        ? "refund"
        : undefined,
      paymentIntent: paid[i].paymentIntent,
    });
  }
  for (let i = 0; i < sizes.payouts; i++) {
    keys.push({
      name: `payout-${i}`,
      key: uid(),
      fn: "payouts",
      token: organisers[i % 2].token,
      body: { amount_cents: 500 + i },
    });
  }
  const nameOf = new Map(keys.map((k) => [k.key, k.name]));

  // Which key an operation belongs to: its business row keeps the client's Idempotency-Key.
  const labels = new Map<string, Promise<string>>();
  const labelOf = (type: string, id: string): Promise<string> => {
    const cached = labels.get(`${type}/${id}`);
    if (cached) return cached;
    const sql = {
      "checkout:create": "select idempotency_key as key, '' as suffix from events.orders where id = $1",
      "refund:create": "select idempotency_key as key, '' as suffix from events.refunds where id = $1",
      "payout:create": "select idempotency_key as key, '' as suffix from wallet.payouts where id = $1",
      "transfer_reversal:create":
        `select r.idempotency_key as key, '/reversal-of-' || p.idempotency_key as suffix
        from wallet.transfer_reversals v join events.refunds r on r.id = v.refund_id
        join wallet.payouts p on p.id = v.payout_id where v.id = $1`,
    }[type];
    const label = (async () => {
      if (!sql) return `unlabelled:${type}/${id}`;
      const [row] = await stack.db.query<{ key: string; suffix: string }>(sql, [id]);
      const suffix = row?.suffix.replace(/reversal-of-(.*)$/, (_, k) => `reversal-of-${nameOf.get(k) ?? k}`);
      return row && nameOf.has(row.key) ? `${nameOf.get(row.key)}${suffix}` : `unlabelled:${type}/${id}`;
    })();
    labels.set(`${type}/${id}`, label);
    return label;
  };
  // Stripe keys are `operation_type:operation_id:uuid`.
  const labelOfStripeKey = (key: string) => {
    const parts = key.split(":");
    return labelOf(parts.slice(0, -2).join(":"), parts.at(-2)!);
  };

  const firstRequest = stripe.requests.length;
  stripe.setChaos({ seed, probability: 0.5, kinds: KINDS, maxLatencyMs: 400, label: labelOfStripeKey });
  const deaths: string[] = [];
  const reachedStripe = new Map<string, number>();
  testHooks.afterStripe = async (op) => {
    const name = await labelOf(op.operationType, op.operationId);
    const n = (reachedStripe.get(name) ?? 0) + 1;
    reachedStripe.set(name, n);
    if (mulberry32(hashSeed(seed, "death", name, n))() < DEATH_PROBABILITY) {
      deaths.push(`${name}#${n}`);
      throw new Error("chaos: the handler died after Stripe answered");
    }
  };
  // Stripe's events are held back: a key's own events arrive after its client's third send, shuffled and
  // some twice; the rest (the dashboard's, and what came later) at the end.
  stripe.options.autoDeliver = false;
  const held: StripeEvent[] = [];
  const eventLabel = (e: StripeEvent): Promise<string | null> => {
    const o = e.data.object as StripeObject & { metadata?: Record<string, string> };
    const md = o.metadata ?? {};
    if (o.object === "refund" && md.refund_id) return labelOf("refund:create", md.refund_id);
    if (md.payout_id) return labelOf("payout:create", md.payout_id);
    const refund = keys.find((k) => (k.body as { order_id?: string }).order_id === md.order_id);
    if (refund) return Promise.resolve(refund.name);
    if (md.order_id) return labelOf("checkout:create", md.order_id);
    return Promise.resolve(null);
  };
  const deliverFor = async (name: string) => {
    held.push(...stripe.takeEvents());
    const mine: StripeEvent[] = [];
    for (const e of [...held]) {
      if ((await eventLabel(e)) === name) mine.push(held.splice(held.indexOf(e), 1)[0]);
    }
    await stripe.deliver(shuffled(mine, seed, "events", name));
  };
  const late: StripeEvent[] = [];
  const answers = new Map<string, Answer[]>(keys.map((k) => [k.name, []]));
  const send = (k: Key) => call(stack, k.fn, k.body, { key: k.key, token: k.token, headers: k.headers });
  try {
    await pool(
      keys.map((k) => async () => {
        for (let i = 0; i < sizes.sends; i++) {
          if (i === 0 && k.dashboard === "dispute") {
            late.push(...(await stripe.openDispute(k.paymentIntent!, { deliver: false })).events);
          }
          if (i === 1 && k.dashboard === "refund") {
            const amount = 500 + Math.floor(mulberry32(hashSeed(seed, "dashboard", k.name))() * 2000);
            const { result, events } = await stripe.refundFromDashboard(k.paymentIntent!, amount, {
              deliver: false,
            });
            dashboardRefunds.add((result as StripeObject).id);
            late.push(...events);
          }
          answers.get(k.name)!.push(await send(k));
          if (i === 2) await deliverFor(k.name);
        }
      }),
      CLIENTS,
    );
  } finally {
    stripe.clearFaults();
    delete testHooks.afterStripe;
  }
  held.push(...stripe.takeEvents());
  await stripe.deliver(shuffled([...held, ...late], seed, "late"));
  stripe.options.autoDeliver = true;

  // Time passes: every lease runs out, and the reconciler finishes what was left.
  await stack.db.query(
    "update public.stripe_idempotency_keys set locked_until = now() where status = 'in_progress'",
  );
  let redriven = 0;
  for (let i = 0; i < 3; i++) {
    const report = await call(stack, "stripe-reconcile", {}, { token: stack.serviceRoleKey, key: null });
    assert.equal(report.status, 200, report.text);
    redriven += (report.body.settled as { completed: number }).completed;
  }
  // and the audit finds nothing it cannot repair
  const audited = await call(stack, "stripe-audit", {}, { token: stack.serviceRoleKey, key: null });
  assert.equal(audited.status, 200, audited.text);
  assert.deepEqual(audited.body.discrepancies, [], audited.text);
  // Each client sends its key once more.
  const final = new Map<string, Answer>();
  await pool(keys.map((k) => async () => void final.set(k.name, await send(k))), 24);

  const requests = stripe.requests.slice(firstRequest).filter((r) => r.label !== null);
  const faulted = requests.filter((r) => r.fault !== null);
  const kinds: Record<string, number> = Object.fromEntries(KINDS.map((k) => [k, 0]));
  for (const r of faulted.filter(effective)) kinds[r.fault!]++;
  const stripeByKey = new Map<string, { attempt: number; fault: string | null; status: number }[]>();
  for (const r of requests) {
    stripeByKey.set(r.label!, [...stripeByKey.get(r.label!) ?? [], r]);
  }
  return {
    seed,
    keys,
    organisers,
    answers,
    final,
    faults: faulted.map((r) => `${r.label}#${r.attempt}:${r.fault}`).sort(),
    deaths: deaths.sort(),
    stripe: stripeByKey,
    kinds,
    redriven,
  };
}

/**
 * Every answer a client saw, accounted for: 201; 500 exactly when its handler died (one per death); 409
 * only after its handler died (the operation is held until its lease runs out); 503 exactly as often as
 * the Stripe client's attempts all failed by injected faults; a 4xx only where the dashboard made one (a
 * refund of a disputed charge). Nothing else.
 */
function assertAccounted(run: ChaosRun): void {
  for (const k of run.keys) {
    const statuses = run.answers.get(k.name)!.map((a) => a.status);
    const deaths = run.deaths.filter((d) => d.startsWith(`${k.name}#`)).length;
    const where = `${k.name}: answers ${statuses}, Stripe ${JSON.stringify(run.stripe.get(k.name) ?? [])}`;
    assert.equal(statuses.filter((s) => s === 500).length, deaths, `500s are its deaths: ${where}`);
    const firstDeath = statuses.indexOf(500);
    statuses.forEach((s, i) => {
      if (s === 409) assert.ok(firstDeath >= 0 && i > firstDeath, `a 409 only after a death: ${where}`);
      if (s >= 400 && s < 500 && s !== 409) {
        assert.equal(k.dashboard, "dispute", `a ${s} only for a disputed order: ${where}`);
      }
      assert.ok([201, 409, 500, 503].includes(s) || (s >= 400 && s < 500), `unaccounted ${s}: ${where}`);
    });
    // The Stripe client's calls for this key: attempts until one is not failed by a fault, at most 3.
    let failedCalls = 0;
    let inCall = 0;
    for (const r of run.stripe.get(k.name) ?? []) {
      inCall++;
      if (!failed(r)) inCall = 0;
      else if (inCall === SDK_ATTEMPTS) {
        failedCalls++;
        inCall = 0;
      }
    }
    assert.equal(inCall, 0, `no call cut short: ${where}`);
    assert.equal(statuses.filter((s) => s === 503).length, failedCalls, `503s are failed calls: ${where}`);
  }
  const all = [...run.answers.values()].flat().map((a) => a.status);
  assert.equal(all.filter((s) => s === 500).length, run.deaths.length, "500s == deaths");
}

/** What a run's answers look like without the ids a run makes: per key, each status (and error type). */
function shape(answers: Map<string, Answer[] | Answer>): Record<string, string[]> {
  return Object.fromEntries(
    [...answers].map(([name, list]) => [
      name,
      [list].flat().map((a) =>
        `${a.status}${a.status === 201 ? "" : ` ${a.body.type ?? a.body.code ?? ""}`}`
      ),
    ]),
  );
}

function report(run: ChaosRun): void {
  const statuses: Record<number, number> = {};
  for (const a of [...run.answers.values()].flat()) statuses[a.status] = (statuses[a.status] ?? 0) + 1;
  console.log(
    `seed ${run.seed}: ${run.keys.length} keys; answers by status ${JSON.stringify(statuses)}; faults ${
      JSON.stringify(run.kinds)
    }; deaths ${run.deaths.length}; finished by the reconciler ${run.redriven}`,
  );
}

stackTest(
  `chaos: 100 keys x 5 sends under faults drawn per request and handler deaths (seed ${SEED})`,
  async () => {
    const stack = await sharedStack();
    console.log(`chaos seed ${SEED} (CHAOS_SEED=${SEED} repeats this run)`);
    const run = await chaosRun(stack, SEED, {
      checkouts: 30,
      guests: 30,
      refunds: 20,
      payouts: 20,
      dashboardRefunds: 4,
      disputes: 2,
      sends: 5,
    });
    report(run);

    // 0. The chaos happened, every kind of it, and every answer is accounted for.
    for (const kind of KINDS) assert.ok(run.kinds[kind] > 0, `${kind} fired: ${JSON.stringify(run.kinds)}`);
    assert.ok(run.deaths.length > 0, "handlers died");
    assert.ok(run.redriven >= run.deaths.length, "what died was finished by the reconciler");
    assert.ok(!run.faults.some((f) => f.startsWith("unlabelled")), "every faulted request has its key");
    assertAccounted(run);

    const ops = await stack.db.query<
      { operation_type: string; operation_id: string; stripe_resource_id: string | null; status: string }
    >(
      "select operation_type, operation_id, stripe_resource_id, status from public.stripe_idempotency_keys",
    );
    // 1. After the reconciler, every key answers 201 with the object its operation recorded (or, for a
    // refund of a disputed charge, the refusal Stripe gave it), and every 201 a client saw carried it.
    for (const k of run.keys) {
      const final = run.final.get(k.name)!;
      const table = { "enhanced-checkout": "events.orders", "guest-checkout": "events.orders" }[k.fn] ??
        (k.fn === "refunds" ? "events.refunds" : "wallet.payouts");
      const [row] = await stack.db.query<{ id: string }>(
        `select id from ${table} where idempotency_key = $1`,
        [k.key],
      );
      assert.ok(row, `${k.name}: its ${table} row`);
      const op = ops.find((o) => o.operation_id === row.id)!;
      assert.ok(op, `${k.name}: its operation`);
      if (k.dashboard === "dispute" && op.status === "failed") {
        assert.equal(final.status, 422, `${k.name}: ${final.text}`);
        continue;
      }
      assert.equal(op.status, "completed", `${k.name}: ${JSON.stringify(op)}`);
      const idOf = (a: Answer) =>
        a.body.checkout_session_id ?? a.body.stripe_refund_id ?? a.body.stripe_transfer_id;
      assert.equal(final.status, 201, `${k.name}: ${final.text}`);
      assert.equal(idOf(final), op.stripe_resource_id, `${k.name}: the recorded object`);
      assert.equal(final.body.order_id ?? final.body.refund_id ?? final.body.payout_id, row.id, k.name);
      for (const a of run.answers.get(k.name)!.filter((a) => a.status === 201)) {
        assert.equal(idOf(a), op.stripe_resource_id, `${k.name}: every 201 carries the recorded object`);
      }
    }

    // 2. Every invariant of tools/chaos/invariants.ts (those `npm run chaos` checks): each Stripe object
    // belongs to exactly one completed operation (the dashboard's refunds to none), no operation is left in
    // progress, every 2xx answer is backed by its row, refunds stay within what was paid, the ledger's
    // invariants, no wallet below zero through an organiser's action, the ledger equals Stripe to the cent
    // per order (net, refunded, refunds, disputes) and per organiser, sold + held within capacity, and
    // every Stripe event settled.
    const [paidOrders] = await stack.db.query<{ n: number }>(
      `select count(*)::int as n from events.orders
       where event_id = any($1) and stripe_payment_intent_id is not null`,
      [run.organisers.map((o) => o.eventId)],
    );
    assert.equal(paidOrders.n, 20, "the paid orders (judged per order below)");
    const answers: SuccessAnswer[] = run.keys.flatMap((k) =>
      [...run.answers.get(k.name)!, run.final.get(k.name)!]
        .filter((a) => a.status >= 200 && a.status < 300)
        .map((a) => ({ fn: k.fn, key: k.key, body: a.body }))
    );
    const checks = await checkInvariants(stack.db, stack.stripe!.state, {
      eventIds: run.organisers.map((o) => o.eventId),
      organisers: run.organisers,
      answers,
      dashboardRefunds,
    });
    for (const { name, violations } of checks) {
      assert.deepEqual(violations, [], `invariant violated: ${name}`);
    }
  },
);

stackTest(`chaos: one seed repeats a run exactly, another seed does not (seed ${SEED})`, async () => {
  const stack = await sharedStack();
  const sizes: Sizes = {
    checkouts: 6,
    guests: 4,
    refunds: 5,
    payouts: 5,
    dashboardRefunds: 1,
    disputes: 1,
    sends: 3,
  };
  const first = await chaosRun(stack, SEED, sizes);
  const again = await chaosRun(stack, SEED, sizes);
  const other = await chaosRun(stack, SEED + 1, sizes);
  for (const run of [first, again, other]) {
    report(run);
    assertAccounted(run);
  }
  assert.ok(first.faults.length > 0, "faults were drawn");
  assert.deepEqual(again.faults, first.faults, "the same faults per key and attempt");
  assert.deepEqual(again.deaths, first.deaths, "the same deaths");
  assert.deepEqual(again.kinds, first.kinds);
  assert.deepEqual(shape(again.answers), shape(first.answers), "the same answers per key");
  assert.deepEqual(shape(again.final), shape(first.final), "the same final answers per key");
  assert.notDeepEqual(other.faults, first.faults, "another seed, other faults");
});
