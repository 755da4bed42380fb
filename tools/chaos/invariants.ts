/**
 * The invariants a chaos run must leave standing, checked against the Stripe emulator's records and the
 * database: the checks of tests/chaos.test.ts and the ledger's invariants of tests/_flows.ts
 * (`assertLedger` calls `ledgerViolations`), as functions that return what they found wrong instead of
 * asserting, so that `npm run chaos` can report every violation and the tests can assert none.
 * @module
 */
import type { Queryable } from "../local/db.ts";
import type { StripeObject } from "../local/stripe_emulator/mod.ts";

/** What the checks read of the emulator: its objects (`StripeEmulator.state`). */
export interface EmulatorObjects {
  sessions: Map<string, StripeObject>;
  refunds: Map<string, StripeObject>;
  transfers: Map<string, StripeObject>;
  charges: Map<string, StripeObject>;
  disputes: Map<string, StripeObject>;
  reversals: Map<string, StripeObject>;
}

/** A function's definite 2xx answer, as a client got it. */
export interface SuccessAnswer {
  fn: string;
  key: string;
  body: Record<string, unknown>;
}

/** One invariant and what broke it (empty: it holds). */
export interface Checked {
  name: string;
  violations: string[];
}

/** What a run made and saw. */
export interface Scope {
  /** The events the run sold tickets for (orders and tiers outside them are not judged). */
  eventIds: string[];
  /** The organisers of those events, with their connected accounts. */
  organisers: { id: string; account: string }[];
  /** Every 2xx answer the clients got. */
  answers: SuccessAnswer[];
  /** The ids of the refunds made in the dashboard (the only refunds at Stripe without an operation of ours). */
  dashboardRefunds: ReadonlySet<string>;
}

/** The ledger's invariants over every wallet and order (tests/_flows.ts `assertLedger`). */
export async function ledgerViolations(db: Queryable): Promise<string[]> {
  const wrong = await db.query<{ id: string }>(`
    select w.id from wallet.wallets w
    where w.entries_total_cents <> (select coalesce(sum(t.amount_cents), 0) from wallet.wallet_transactions t
                                    where t.wallet_id = w.id)
       or w.pending_payout_cents <> (select coalesce(sum(p.amount_cents), 0) from wallet.payouts p
                                     where p.wallet_id = w.id and p.status = 'pending')`);
  const overDebited = await db.query<{ id: string }>(`
    select o.id from events.orders o
    where (select coalesce(sum(-t.amount_cents), 0) from wallet.wallet_transactions t
           where t.order_id = o.id and t.type in ('refund', 'adjustment', 'dispute', 'dispute_reversal')) > o.subtotal_cents`);
  // (refunded_cents <= total_cents is a CHECK of events.orders: no run could see it fail, so it is not here)
  return [
    ...wrong.map((w) => `wallet ${w.id}: entries total <> sum of entries, or pending <> payouts in flight`),
    ...overDebited.map((o) => `order ${o.id}: refund debits exceed the sale credit`),
  ];
}

/** Every check, in order; each runs even when an earlier one failed. */
export async function checkInvariants(db: Queryable, emu: EmulatorObjects, scope: Scope): Promise<Checked[]> {
  const checks: [string, () => Promise<string[]>][] = [
    ["no operation left in progress (every one completed or failed)", () => noOpenOperation(db)],
    ["one Stripe object per operation, the one recorded", () => oneObjectPerOperation(db, emu)],
    ["no Stripe object without its operation", () => noStrayObject(db, emu, scope)],
    ["every 2xx answer backed by its row, one object per key", () => answersBacked(db, scope)],
    ["refunds never beyond what was paid (database and Stripe)", () => refundsWithinPaid(db, emu, scope)],
    ["the ledger's invariants (entries total, payouts in flight, debits)", () => ledgerViolations(db)],
    ["no wallet below zero through an organiser's action", () => walletsNotBelowZero(db, scope)],
    ["the ledger equals Stripe per order", () => ledgerEqualsStripePerOrder(db, emu, scope)],
    [
      "refunded, refunds and disputes per order equal Stripe's",
      () => refundsAndDisputesEqualStripe(db, emu, scope),
    ],
    [
      "the ledger equals Stripe per organiser (transfers less reversals)",
      () => payoutsEqualStripe(db, emu, scope),
    ],
    ["sold + held never beyond capacity", () => withinCapacity(db, scope)],
    ["no Stripe event left failed or parked", () => eventsSettled(db)],
  ];
  const results: Checked[] = [];
  for (const [name, check] of checks) {
    let violations: string[];
    try {
      violations = await check();
    } catch (e) {
      violations = [`the check failed: ${(e as Error)?.message ?? e}`];
    }
    results.push({ name, violations });
  }
  return results;
}

/** Operations neither completed nor failed. */
export async function noOpenOperation(db: Queryable): Promise<string[]> {
  const open = await db.query<{ operation_type: string; operation_id: string; status: string }>(
    `select operation_type, operation_id, status from public.stripe_idempotency_keys
     where status not in ('completed', 'failed')`,
  );
  return open.map((o) => `${o.operation_type}/${o.operation_id} is ${o.status}`);
}

/** Stripe objects by the id of the operation their metadata names. */
function byMeta(objects: Iterable<StripeObject>, field: string): Map<string, string[]> {
  const map = new Map<string, string[]>();
  for (const o of objects) {
    const id = (o.metadata as Record<string, string> | undefined)?.[field];
    if (id) map.set(id, [...(map.get(id) ?? []), o.id as string]);
  }
  return map;
}

const OBJECT_OF: Record<string, [keyof EmulatorObjects, string]> = {
  "checkout:create": ["sessions", "order_id"],
  "refund:create": ["refunds", "refund_id"],
  "payout:create": ["transfers", "payout_id"],
  "transfer_reversal:create": ["reversals", "reversal_id"],
};

async function operations(db: Queryable) {
  return await db.query<
    { operation_type: string; operation_id: string; stripe_resource_id: string | null; status: string }
  >("select operation_type, operation_id, stripe_resource_id, status from public.stripe_idempotency_keys");
}

/** At most one Stripe object per operation, and it is the one the operation recorded. */
export async function oneObjectPerOperation(db: Queryable, emu: EmulatorObjects): Promise<string[]> {
  const out: string[] = [];
  const maps = Object.fromEntries(
    Object.entries(OBJECT_OF).map(([type, [kind, field]]) => [type, byMeta(emu[kind].values(), field)]),
  );
  for (const op of await operations(db)) {
    const objects = maps[op.operation_type]?.get(op.operation_id) ?? [];
    const recorded = op.stripe_resource_id ? [op.stripe_resource_id] : [];
    if (objects.length > 1) {
      out.push(`${op.operation_type}/${op.operation_id}: ${objects.length} Stripe objects (${objects})`);
    } else if (JSON.stringify(objects) !== JSON.stringify(recorded)) {
      out.push(
        `${op.operation_type}/${op.operation_id}: Stripe has [${objects}], the row records [${recorded}]`,
      );
    }
  }
  return out;
}

/**
 * Every Checkout Session, Transfer, Transfer Reversal and (but those made in the dashboard) Refund at Stripe
 * belongs to an operation of ours: its metadata names one, that operation recorded it and completed. The
 * refunds without an operation are exactly those made in the dashboard.
 */
export async function noStrayObject(db: Queryable, emu: EmulatorObjects, scope: Scope): Promise<string[]> {
  const out: string[] = [];
  const recorded = new Map<string, { object: string | null; status: string }>();
  for (const op of await operations(db)) {
    recorded.set(`${op.operation_type}/${op.operation_id}`, {
      object: op.stripe_resource_id,
      status: op.status,
    });
  }
  for (const [type, [kind, field]] of Object.entries(OBJECT_OF)) {
    for (const o of emu[kind].values()) {
      const id = (o.metadata as Record<string, string> | undefined)?.[field];
      const fromDashboard = kind === "refunds" && scope.dashboardRefunds.has(o.id as string);
      if (fromDashboard) {
        if (id) out.push(`${o.id}: made in the dashboard, yet its metadata names ${type}/${id}`);
        continue;
      }
      const op = `${type}/${id}`;
      const owner = recorded.get(op);
      if (!id) out.push(`${o.id}: no ${field} in its metadata (and not made in the dashboard)`);
      else if (!owner) out.push(`${o.id}: its operation ${op} does not exist`);
      else if (owner.object !== o.id) out.push(`${o.id}: ${op} records ${owner.object}`);
      else if (owner.status !== "completed") out.push(`${o.id}: its operation ${op} is ${owner.status}`);
    }
  }
  for (const id of scope.dashboardRefunds) {
    if (!emu.refunds.has(id)) out.push(`${id}: made in the dashboard, not at Stripe`);
  }
  return out;
}

/** Every 2xx answer is backed by its row, and every answer for one key carries the same object. */
export async function answersBacked(db: Queryable, scope: Scope): Promise<string[]> {
  const out: string[] = [];
  const table: Record<string, [string, string, string, string]> = {
    "enhanced-checkout": ["events.orders", "stripe_session_id", "order_id", "checkout_session_id"],
    "guest-checkout": ["events.orders", "stripe_session_id", "order_id", "checkout_session_id"],
    refunds: ["events.refunds", "stripe_refund_id", "refund_id", "stripe_refund_id"],
    payouts: ["wallet.payouts", "stripe_transfer_id", "payout_id", "stripe_transfer_id"],
  };
  const objectsByKey = new Map<string, Set<unknown>>();
  for (const { fn, key, body } of scope.answers) {
    const [name, column, idField, objectField] = table[fn];
    const rows = await db.query<{ object: string | null }>(
      `select ${column} as object from ${name} where id = $1`,
      [body[idField]],
    );
    if (rows.length === 0) out.push(`${fn} answered 2xx for ${idField} ${body[idField]}: no row`);
    else if (rows[0].object !== body[objectField]) {
      out.push(`${fn} ${body[idField]}: answered ${body[objectField]}, the row holds ${rows[0].object}`);
    }
    objectsByKey.set(key, (objectsByKey.get(key) ?? new Set()).add(body[objectField]));
  }
  for (const [key, objects] of objectsByKey) {
    if (objects.size > 1) out.push(`key ${key}: answered with ${[...objects]}`);
  }
  return out;
}

/** Refunds never exceed what was paid, in the database and at Stripe. */
export async function refundsWithinPaid(
  db: Queryable,
  emu: EmulatorObjects,
  scope: Scope,
): Promise<string[]> {
  const over = await db.query<{ id: string }>(
    `select o.id from events.orders o where o.event_id = any($1) and
       (select coalesce(sum(r.amount_cents), 0) from events.refunds r
        where r.order_id = o.id and r.status <> 'failed') > o.total_cents`,
    [scope.eventIds],
  );
  const out = over.map((o) => `order ${o.id}: refunds beyond its total`);
  for (const charge of emu.charges.values()) {
    if ((charge.amount_refunded as number) > (charge.amount as number)) {
      out.push(`charge ${charge.id}: refunded ${charge.amount_refunded} of ${charge.amount}`);
    }
  }
  return out;
}

/**
 * Balance never below zero through the organiser's own actions (what the dashboard and disputes took
 * may leave it owing).
 */
export async function walletsNotBelowZero(db: Queryable, scope: Scope): Promise<string[]> {
  const out: string[] = [];
  for (const o of scope.organisers) {
    const [w] = await db.query<{ total: number; outside: number }>(
      `select w.entries_total_cents::int as total,
         (select coalesce(sum(t.amount_cents), 0)::int from wallet.wallet_transactions t
          left join events.refunds r on r.id = t.refund_id
          where t.wallet_id = w.id and (t.type in ('dispute', 'dispute_reversal', 'dispute_fee')
            or (t.type in ('refund', 'adjustment') and r.requested_by is null))) as outside
       from wallet.wallets w where w.organiser_id = $1`,
      [o.id],
    );
    if (w && w.total - w.outside < 0) {
      out.push(`organiser ${o.id} paid out more than earned: ${JSON.stringify(w)}`);
    }
  }
  return out;
}

/**
 * Per order, the organiser nets the sale less floor(min(refunded + disputed, total) x subtotal / total) of
 * what Stripe refunded and withdrew.
 */
export async function ledgerEqualsStripePerOrder(
  db: Queryable,
  emu: EmulatorObjects,
  scope: Scope,
): Promise<string[]> {
  const out: string[] = [];
  const orders = await db.query<{ id: string; pi: string; subtotal: number; total: number; net: number }>(
    `select o.id, o.stripe_payment_intent_id as pi, o.subtotal_cents as subtotal, o.total_cents as total,
       (select coalesce(sum(t.amount_cents), 0)::int from wallet.wallet_transactions t where t.order_id = o.id) as net
     from events.orders o where o.event_id = any($1) and o.stripe_payment_intent_id is not null`,
    [scope.eventIds],
  );
  const chargeOf = new Map<string, StripeObject>();
  for (const c of emu.charges.values()) chargeOf.set(c.payment_intent as string, c);
  const disputedOf = new Map<string, number>();
  for (const d of emu.disputes.values()) {
    const withdrawn = -(d.balance_transactions as { amount: number }[]).reduce((m, t) => m + t.amount, 0);
    disputedOf.set(d.charge as string, (disputedOf.get(d.charge as string) ?? 0) + withdrawn);
  }
  for (const o of orders) {
    const charge = chargeOf.get(o.pi);
    if (!charge) {
      out.push(`order ${o.id}: no charge at Stripe for ${o.pi}`);
      continue;
    }
    const gone = Math.min((charge.amount_refunded as number) + (disputedOf.get(charge.id) ?? 0), o.total);
    const expected = o.subtotal - Math.floor(gone * o.subtotal / o.total);
    if (o.net !== expected) {
      // what each side holds, so that the report says where they part
      const entries = await db.query<{ type: string; amount_cents: number }>(
        "select type, amount_cents from wallet.wallet_transactions where order_id = $1 order by created_at",
        [o.id],
      );
      const refunds = [...emu.refunds.values()].filter((r) => r.charge === charge.id)
        .map((r) =>
          `${r.id} ${r.amount} ${r.status}${
            (r.metadata as Record<string, string>)?.refund_id ? "" : " (dashboard)"
          }`
        );
      const disputes = [...emu.disputes.values()].filter((d) => d.charge === charge.id)
        .map((d) => `${d.id} ${d.amount} ${d.status}`);
      out.push(
        `order ${o.id} against ${charge.id}: ledger ${o.net}, Stripe says ${expected} (subtotal ${o.subtotal}, ` +
          `total ${o.total}, refunded ${charge.amount_refunded}, disputed ${
            disputedOf.get(charge.id) ?? 0
          }; ` +
          `entries [${
            entries.map((e) => `${e.type} ${e.amount_cents}`)
          }]; refunds [${refunds}]; disputes [${disputes}])`,
      );
    }
  }
  return out;
}

/**
 * Per order, the database holds what Stripe holds: the amount refunded is the charge's, the succeeded
 * refunds are Stripe's succeeded refunds of the charge (id and amount), and the disputes are Stripe's (id,
 * amount and status).
 */
export async function refundsAndDisputesEqualStripe(
  db: Queryable,
  emu: EmulatorObjects,
  scope: Scope,
): Promise<string[]> {
  const out: string[] = [];
  const orders = await db.query<{ id: string; pi: string; refunded: number }>(
    `select o.id, o.stripe_payment_intent_id as pi, o.refunded_cents as refunded
     from events.orders o where o.event_id = any($1) and o.stripe_payment_intent_id is not null`,
    [scope.eventIds],
  );
  const chargeOf = new Map<string, StripeObject>();
  for (const c of emu.charges.values()) chargeOf.set(c.payment_intent as string, c);
  const sorted = (rows: unknown[][]) => `[${rows.map((r) => r.join(" ")).sort().join(", ")}]`;
  for (const o of orders) {
    const charge = chargeOf.get(o.pi);
    if (!charge) continue; // the ledger's check per order reports it
    const where = `order ${o.id} against ${charge.id}`;
    if (o.refunded !== charge.amount_refunded) {
      out.push(`${where}: refunded ${o.refunded}, Stripe refunded ${charge.amount_refunded}`);
    }
    const refunds = (await db.query<{ id: string; amount: number }>(
      `select stripe_refund_id as id, amount_cents as amount from events.refunds
       where order_id = $1 and stripe_refund_id is not null and status = 'succeeded'`,
      [o.id],
    )).map((r) => [r.id, r.amount]);
    const refundsAtStripe = [...emu.refunds.values()]
      .filter((r) => r.charge === charge.id && r.status === "succeeded").map((r) => [r.id, r.amount]);
    if (sorted(refunds) !== sorted(refundsAtStripe)) {
      out.push(`${where}: succeeded refunds ${sorted(refunds)}, at Stripe ${sorted(refundsAtStripe)}`);
    }
    const disputes = (await db.query<{ id: string; amount: number; status: string }>(
      "select id, amount_cents as amount, status from events.disputes where order_id = $1",
      [o.id],
    )).map((d) => [d.id, d.amount, d.status]);
    const disputesAtStripe = [...emu.disputes.values()].filter((d) => d.charge === charge.id)
      .map((d) => [d.id, d.amount, d.status]);
    if (sorted(disputes) !== sorted(disputesAtStripe)) {
      out.push(`${where}: disputes ${sorted(disputes)}, at Stripe ${sorted(disputesAtStripe)}`);
    }
  }
  return out;
}

/** Per organiser, what Stripe transferred (less reversals) is what the payouts say. */
export async function payoutsEqualStripe(
  db: Queryable,
  emu: EmulatorObjects,
  scope: Scope,
): Promise<string[]> {
  const out: string[] = [];
  for (const o of scope.organisers) {
    const [p] = await db.query<{ out: number }>(
      `select coalesce(sum(p.amount_cents - p.reversed_cents), 0)::int as out from wallet.payouts p
       where p.organiser_id = $1 and p.status in ('paid', 'reversed')`,
      [o.id],
    );
    const atStripe = [...emu.transfers.values()].filter((t) => t.destination === o.account)
      .reduce((n, t) => n + (t.amount as number) - (t.amount_reversed as number), 0);
    if (atStripe !== p.out) {
      out.push(`organiser ${o.id}: Stripe transferred ${atStripe}, the payouts say ${p.out}`);
    }
  }
  return out;
}

/** No ticket beyond capacity, no negative hold. */
export async function withinCapacity(db: Queryable, scope: Scope): Promise<string[]> {
  const tiers = await db.query<{ id: string; sold: number; held: number; capacity: number }>(
    "select id, sold, held, capacity from events.ticket_tiers where event_id = any($1)",
    [scope.eventIds],
  );
  return tiers.filter((t) => !(t.sold + t.held <= t.capacity && t.held >= 0))
    .map((t) => `tier ${t.id}: sold ${t.sold} + held ${t.held} of ${t.capacity}`);
}

/** Every Stripe event the webhook took was processed (or ignored as not ours): none failed or parked. */
export async function eventsSettled(db: Queryable): Promise<string[]> {
  const left = await db.query<
    { stripe_event_id: string; event_type: string; status: string; error_message: string | null }
  >(
    `select stripe_event_id, event_type, status, error_message from public.stripe_webhook_events
     where status not in ('processed', 'ignored')`,
  );
  return left.map((e) => `${e.stripe_event_id} (${e.event_type}) is ${e.status}: ${e.error_message ?? ""}`);
}
