// POST /functions/v1/stripe-audit: the ledger audited against Stripe, for holders of a secret key
// (verify_jwt = false; scheduled like stripe-reconcile, e.g. every 15 minutes). Each run:
// 1. applies Stripe's events since its cursor that the webhook never got (GET /v1/events, 30 days);
// 2. compares a batch of orders with Stripe (a pending order's session; a paid order's charge:
//    amount_captured, amount_refunded, disputes) and a batch of payouts with their transfers (amount,
//    amount_reversed); repairs what differs from Stripe's own objects, and reports what still differs;
// 3. stores its report and cursors (migration 20261128000900_audit.sql).
// Safe to run concurrently with itself and with the webhook: every effect is idempotent per Stripe object.
import { requireSecretKey } from "../_shared/auth.ts";
import { handler, json } from "../_shared/http.ts";
import type { Json } from "../_shared/idempotency_store.ts";
import { log } from "../_shared/log.ts";
import { Stripe, STRIPE_API_VERSION, stripeClient } from "../_shared/stripe.ts";
import { chargeOf } from "../_shared/stripe_events.ts";
import { rpc } from "../_shared/supabase.ts";

/** Orders and payouts compared per run. */
const BATCH = 100;
/** Events applied per run at most (the rest, newer, on the next run). */
const MAX_EVENTS = 1000;
/** Events read per run at most; more are reported. */
const MAX_EVENTS_READ = 20_000;
/** How long Stripe lists events (GET /v1/events: 30 days). */
const EVENTS_KEPT_SECONDS = 30 * 86_400;
/** Seconds of overlap with the previous run's events (clock skew, events created while it ran). */
const OVERLAP_SECONDS = 300;

interface AuditedOrder {
  order_id: string;
  status: string;
  total_cents: number;
  refunded_cents: number;
  disputed_cents: number;
  stripe_session_id: string;
  stripe_payment_intent_id: string | null;
  stripe_charge_id: string | null;
  /** Our refunds of the order that Stripe made: id -> status. */
  refunds: Record<string, string>;
}

interface AuditedPayout {
  payout_id: string;
  amount_cents: number;
  reversed_cents: number;
  stripe_transfer_id: string;
}

Deno.serve(handler("stripe-audit", async (req, { requestId }) => {
  await requireSecretKey(req);
  const stripe = stripeClient();
  const state = await rpc<{ events_since: number; orders: AuditedOrder[]; payouts: AuditedPayout[] }>(
    "audit_begin",
    { p_batch_size: BATCH },
  );
  const repaired: Json[] = [];
  const discrepancies: Json[] = [];
  const apply = async (type: string, object: unknown, charge: Stripe.Charge | null = null) =>
    await rpc<Json>("apply_stripe_object", { p_type: type, p_object: object, p_charge: charge });

  // 1. Stripe's events the webhook never got, oldest first (Stripe lists newest first: all of them since the
  //    cursor are read, then at most MAX_EVENTS applied; the cursor moves to the last one applied)
  const now = Math.floor(Date.now() / 1000);
  const since = Math.max(state.events_since - OVERLAP_SECONDS, now - EVENTS_KEPT_SECONDS);
  const events: Stripe.Event[] = [];
  for await (const event of stripe.events.list({ created: { gte: since }, limit: 100 })) {
    events.push(event);
    if (events.length >= MAX_EVENTS_READ) {
      discrepancies.push({
        kind: "events-truncated",
        detail: `more than ${MAX_EVENTS_READ} events since ${since}`,
      });
      break;
    }
  }
  events.sort((a, b) => a.created - b.created);
  let newest = state.events_since;
  for (const event of events.slice(0, MAX_EVENTS)) {
    newest = Math.max(newest, event.created);
    if (event.api_version && event.api_version !== STRIPE_API_VERSION) {
      discrepancies.push({ kind: "event-api-version", event_id: event.id, api_version: event.api_version });
      continue;
    }
    const result = await rpc<{ status: string; error?: string }>("handle_stripe_event", {
      p_event: event,
      p_charge: await chargeOf(stripe, event),
    });
    if (result.status === "processed" || result.status === "parked") {
      repaired.push({
        kind: "event-not-delivered",
        event_id: event.id,
        type: event.type,
        status: result.status,
      });
    } else if (result.status === "failed") {
      discrepancies.push({
        kind: "event-failed",
        event_id: event.id,
        type: event.type,
        error: result.error ?? null,
      });
    }
  }

  // 2. orders against their sessions and charges
  for (const order of state.orders) {
    if (order.status === "pending" || order.status === "expired") {
      const session = await stripe.checkout.sessions.retrieve(order.stripe_session_id);
      if (session.payment_status === "paid") {
        const event = {
          type: "checkout.session.completed",
          data: { object: session },
        } as unknown as Stripe.Event;
        await apply("checkout.session.completed", session, await chargeOf(stripe, event));
        repaired.push({ kind: "payment-not-recorded", order_id: order.order_id, session: session.id });
      }
      continue;
    }
    const charge = await chargeOfOrder(stripe, order);
    if (!charge) {
      discrepancies.push({ kind: "charge-missing", order_id: order.order_id });
      continue;
    }
    if (charge.amount_captured !== order.total_cents) {
      discrepancies.push({
        kind: "amount-captured",
        order_id: order.order_id,
        charge: charge.id,
        stripe_cents: charge.amount_captured,
        ledger_cents: order.total_cents,
      });
    }
    // each refund's status against Stripe's (a refund we hold pending that Stripe failed, or the reverse),
    // and what disputes withdrew
    const refunds =
      charge.amount_refunded > 0 || order.refunded_cents > 0 || Object.keys(order.refunds).length > 0
        ? await collect(stripe.refunds.list({ charge: charge.id, limit: 100 }))
        : [];
    const disputes = charge.disputed || order.disputed_cents > 0
      ? await collect(stripe.disputes.list({ charge: charge.id, limit: 100 }))
      : [];
    const disputed = disputes.reduce((n, d) => n + withdrawn(d), 0);
    // (charge.amount_refunded counts pending refunds, our refunded_cents only succeeded ones)
    const succeeded = Math.min(
      refunds.filter((r) => r.status === "succeeded").reduce((n, r) => n + r.amount, 0),
      order.total_cents,
    );
    const differs = (held: Record<string, string>) => refunds.filter((r) => held[r.id] !== r.status);
    const agreesWith = (held: AuditedOrder) =>
      differs(held.refunds).length === 0 && held.refunded_cents === succeeded &&
      held.disputed_cents === disputed;
    if (agreesWith(order)) continue;
    for (const refund of differs(order.refunds)) await apply("refund.updated", refund);
    for (const dispute of disputes) await apply("charge.dispute.updated", dispute);
    const now = await rpc<AuditedOrder>("audit_order", { p_order_id: order.order_id });
    const figures = {
      order_id: order.order_id,
      charge: charge.id,
      stripe: {
        refunded_cents: succeeded,
        refunds: Object.fromEntries(refunds.map((r) => [r.id, r.status])),
        disputed_cents: disputed,
      },
      before: {
        refunded_cents: order.refunded_cents,
        refunds: order.refunds,
        disputed_cents: order.disputed_cents,
      },
      after: { refunded_cents: now.refunded_cents, refunds: now.refunds, disputed_cents: now.disputed_cents },
    };
    (agreesWith(now) ? repaired : discrepancies).push({ kind: "order-money", ...figures });
  }

  // 3. payouts against their transfers
  for (const payout of state.payouts) {
    const transfer = await stripe.transfers.retrieve(payout.stripe_transfer_id);
    if (transfer.amount !== payout.amount_cents) {
      discrepancies.push({
        kind: "transfer-amount",
        payout_id: payout.payout_id,
        transfer: transfer.id,
        stripe_cents: transfer.amount,
        ledger_cents: payout.amount_cents,
      });
    }
    if (transfer.amount_reversed !== payout.reversed_cents) {
      const effect = await apply("transfer.reversed", transfer) as { reversed_cents?: number };
      const figures = {
        payout_id: payout.payout_id,
        transfer: transfer.id,
        stripe_reversed_cents: transfer.amount_reversed,
        ledger_reversed_cents: payout.reversed_cents,
      };
      (effect.reversed_cents === transfer.amount_reversed ? repaired : discrepancies)
        .push({ kind: "transfer-reversed", ...figures });
    }
  }

  const report = {
    events_seen: events.length,
    orders_checked: state.orders.length,
    payouts_checked: state.payouts.length,
    repaired,
    discrepancies,
  };
  await rpc("audit_finish", {
    p_report: report,
    p_events_since: newest,
    // round robin: the next batch starts after this one, or over again once a batch comes back short
    p_orders_after: state.orders.length === BATCH ? state.orders.at(-1)!.order_id : null,
    p_payouts_after: state.payouts.length === BATCH ? state.payouts.at(-1)!.payout_id : null,
  });
  log(discrepancies.length ? "warn" : "info", "audit report", { request_id: requestId, ...report });
  return json(200, report);
}));

/** The charge of a paid order: by its id, else its payment's latest charge. */
async function chargeOfOrder(stripe: Stripe, order: AuditedOrder): Promise<Stripe.Charge | null> {
  if (order.stripe_charge_id) return await stripe.charges.retrieve(order.stripe_charge_id);
  if (!order.stripe_payment_intent_id) return null;
  const intent = await stripe.paymentIntents.retrieve(order.stripe_payment_intent_id, {
    expand: ["latest_charge"],
  });
  return typeof intent.latest_charge === "object" ? intent.latest_charge : null;
}

/** What Stripe withdrew for a dispute and did not reinstate, from its balance transactions. */
function withdrawn(dispute: Stripe.Dispute): number {
  return -dispute.balance_transactions.reduce((n, t) => n + t.amount, 0);
}

async function collect<T>(list: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const item of list) out.push(item);
  return out;
}
