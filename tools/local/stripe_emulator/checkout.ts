/**
 * Checkout Sessions (with their line items), PaymentIntents and charges: what a buyer's payment creates.
 * @module
 */
import {
  CHECKOUT_EXPIRY,
  CHECKOUT_MODES,
  CHECKOUT_UI_MODES,
  type Currency,
  MAX_AMOUNT,
  MAX_LINE_ITEMS,
} from "../../../supabase/functions/_shared/stripe_contract.ts";
import type { Param, Params } from "./form.ts";
import { chargeSucceeded } from "./money.ts";
import * as P from "./params.ts";
import {
  chargeLimits,
  currency,
  event,
  int,
  invalid,
  known,
  metadata,
  missing,
  newId,
  noSuch,
  obj,
  oneOf,
  refused,
  type State,
  str,
  type StripeEvent,
  type StripeObject,
} from "./resources.ts";

/** POST /v1/checkout/sessions */
export function createCheckoutSession(state: State, p: Params): StripeObject {
  const mode = oneOf(str(p, "mode"), CHECKOUT_MODES, "mode");
  if (!mode) throw missing("mode");
  if (mode !== "payment") throw invalid(`The emulator models mode 'payment' only (got '${mode}')`, "mode");
  // Since 2026-03-25.dahlia; `hosted`, `embedded` and `custom` are refused
  // (docs.stripe.com/changelog/dahlia/2026-03-25/updates-available-checkout-session-ui-modes).
  // Defaults to `hosted_page` (Checkout/Sessions.d.ts, `ui_mode`).
  const uiMode = oneOf(str(p, "ui_mode"), CHECKOUT_UI_MODES, "ui_mode") ?? "hosted_page";
  const { items, cur, subtotal } = lineItems(p);

  const created = state.now();
  // "It can be anywhere from 30 minutes to 24 hours after Checkout Session creation. By default, this value
  // is 24 hours from creation." (Checkout/Sessions.d.ts, `expires_at`)
  const expiresAt = int(p, "expires_at") ?? created + CHECKOUT_EXPIRY.maxSeconds;
  if (expiresAt < created + CHECKOUT_EXPIRY.minSeconds) {
    throw invalid(
      `The \`expires_at\` timestamp must be at least 30 minutes from Checkout Session creation (got ${expiresAt}, created ${created}).`,
      "expires_at",
    );
  }
  if (expiresAt > created + CHECKOUT_EXPIRY.maxSeconds) {
    throw invalid(
      `The \`expires_at\` timestamp must be less than 24 hours from Checkout Session creation (got ${expiresAt}, created ${created}).`,
      "expires_at",
    );
  }

  // Checkout/Sessions.d.ts: `success_url` and `cancel_url` are "not allowed if ui_mode is `embedded_page` or
  // `elements`"; `return_url` applies to those two, and `embedded_page` needs it (its
  // `redirect_on_completion` defaults to `always`).
  const embedded = uiMode === "embedded_page" || uiMode === "elements";
  const url = (name: string) => {
    const v = str(p, name);
    if (v === undefined) return null;
    // docs.stripe.com/error-codes#url-invalid
    if (!URL.canParse(v)) {
      throw invalid(`Not a valid URL: ${v}`, name, "url_invalid");
    }
    const allowed = name === "return_url" ? embedded : !embedded;
    if (!allowed) throw invalid(`\`${name}\` is not allowed when \`ui_mode\` is \`${uiMode}\``, name);
    return v;
  };
  const successUrl = url("success_url");
  const cancelUrl = url("cancel_url");
  const returnUrl = url("return_url");
  if (uiMode === "embedded_page" && !returnUrl) throw missing("return_url");

  const clientReference = str(p, "client_reference_id");
  if (clientReference && clientReference.length > 200) {
    throw invalid(
      `client_reference_id can be at most 200 characters (got ${clientReference.length})`,
      "client_reference_id",
    );
  }
  const pid = obj(p, "payment_intent_data") ?? {};
  known(pid, P.PAYMENT_INTENT_DATA, "payment_intent_data");
  const id = newId("cs_test");
  const session: StripeObject = {
    id,
    object: "checkout.session",
    amount_subtotal: subtotal,
    amount_total: subtotal,
    cancel_url: cancelUrl,
    client_reference_id: clientReference ?? null,
    // "Applies to Checkout Sessions with ui_mode: embedded_page or ui_mode: elements" (Checkout/Sessions.d.ts)
    client_secret: embedded ? `${id}_secret_${newId("x").slice(2)}` : null,
    created,
    currency: cur,
    customer_email: str(p, "customer_email") ?? null,
    expires_at: expiresAt,
    livemode: false,
    metadata: metadata(p),
    mode,
    payment_intent: null,
    payment_status: "unpaid",
    ...(returnUrl ? { return_url: returnUrl } : {}),
    status: "open",
    success_url: successUrl,
    ui_mode: uiMode,
    // "Applies to Checkout Sessions with ui_mode: hosted_page ... only present when the session is active"
    url: uiMode === "hosted_page" ? `${state.baseUrl}/_emulator/checkout/${id}` : null,
  };
  state.sessions.set(id, session);
  state.lineItems.set(id, items);
  state.sessionPayments.set(id, {
    metadata: metadata(pid, "payment_intent_data[metadata]"),
    transfer_group: str(pid, "transfer_group", "payment_intent_data[transfer_group]") ?? null,
  });
  return session;
}

/** The line items of a create request, as Stripe's LineItem objects, checked against Stripe's limits. */
function lineItems(p: Params): { items: StripeObject[]; cur: Currency; subtotal: number } {
  const raw = p.line_items;
  if (raw === undefined) throw missing("line_items");
  if (!Array.isArray(raw) || raw.length === 0) throw invalid("Invalid array: line_items", "line_items");
  // "For `payment` mode, there is a maximum of 100 line items" (Checkout/Sessions.d.ts, `line_items`)
  if (raw.length > MAX_LINE_ITEMS) {
    throw invalid(
      `line_items can have at most ${MAX_LINE_ITEMS} items in payment mode (got ${raw.length})`,
      "line_items",
    );
  }
  let cur: Currency | undefined;
  const items = raw.map((item: Param, i) => {
    const path = `line_items[${i}]`;
    if (typeof item !== "object" || Array.isArray(item)) throw invalid(`Invalid object: ${path}`, path);
    known(item, P.LINE_ITEM, path);
    const quantity = int(item, "quantity", `${path}[quantity]`, 1);
    if (quantity === undefined) throw missing(`${path}[quantity]`);
    const priceData = obj(item, "price_data", `${path}[price_data]`);
    if (!priceData) throw missing(`${path}[price_data]`);
    known(priceData, P.PRICE_DATA, `${path}[price_data]`);
    const c = currency(priceData, "currency", `${path}[price_data][currency]`);
    if (!c) throw missing(`${path}[price_data][currency]`);
    if (cur && c !== cur) {
      throw invalid(
        `All line items must use the same currency (got ${c} after ${cur})`,
        `${path}[price_data][currency]`,
      );
    }
    cur = c;
    const unit = int(priceData, "unit_amount", `${path}[price_data][unit_amount]`, 0);
    if (unit === undefined) throw missing(`${path}[price_data][unit_amount]`);
    if (unit > MAX_AMOUNT) {
      throw invalid(
        `Invalid ${path}[price_data][unit_amount]: at most ${MAX_AMOUNT} (got ${unit})`,
        `${path}[price_data][unit_amount]`,
        "amount_too_large",
      );
    }
    const product = obj(priceData, "product_data", `${path}[price_data][product_data]`);
    if (product) known(product, P.PRODUCT_DATA, `${path}[price_data][product_data]`);
    const name = product && str(product, "name", `${path}[price_data][product_data][name]`);
    if (!name) throw missing(`${path}[price_data][product_data][name]`);
    return {
      id: newId("li"),
      object: "item",
      amount_discount: 0,
      amount_subtotal: unit * quantity,
      amount_tax: 0,
      amount_total: unit * quantity,
      currency: c,
      description: name,
      price: { id: newId("price"), object: "price", currency: c, product: newId("prod"), unit_amount: unit },
      quantity,
    };
  });
  const subtotal = items.reduce((n, i) => n + (i.amount_total as number), 0);
  chargeLimits(subtotal, cur!, "line_items", "The Checkout Session's total amount due");
  return { items, cur: cur!, subtotal };
}

/** GET /v1/checkout/sessions/:id */
export function getCheckoutSession(state: State, id: string): StripeObject {
  const s = state.sessions.get(id);
  if (!s) throw noSuch("checkout.session", id);
  return s;
}

/** POST /v1/checkout/sessions/:id/expire (also used when the clock passes `expires_at`). */
export function expireCheckoutSession(state: State, id: string): StripeObject {
  const s = getCheckoutSession(state, id);
  if (s.status !== "open") {
    throw refused(
      "checkout_session_not_open",
      `Only Checkout Sessions with a status in ["open"] can be expired. This Checkout Session has a status of "${s.status}".`,
    );
  }
  Object.assign(s, { status: "expired", url: null });
  event(state, "checkout.session.expired", s);
  return s;
}

/**
 * Completes an open session as if the buyer paid by card: a succeeded PaymentIntent and charge, and
 * `checkout.session.completed` with `payment_status: paid`. With `processing` (a delayed payment method),
 * the session completes `unpaid` and `settleAsyncPayment` decides later (`Events.d.ts`:
 * `checkout.session.async_payment_succeeded` "occurs when a payment intent using a delayed payment method
 * finally succeeds", `async_payment_failed` when it fails).
 */
export function payCheckoutSession(
  state: State,
  id: string,
  processing = false,
): { session: StripeObject; event: StripeEvent } {
  const s = getCheckoutSession(state, id);
  if (s.status !== "open") {
    throw refused("checkout_session_not_open", `Checkout Session ${id} is ${s.status}, not open`);
  }
  const pay = state.sessionPayments.get(id)!;
  const pi = newPayment(state, s.amount_total as number, s.currency as Currency, pay, processing);
  Object.assign(s, {
    status: "complete",
    payment_status: processing ? "unpaid" : "paid",
    payment_intent: pi.id,
    url: null,
  });
  return { session: s, event: event(state, "checkout.session.completed", s) };
}

/** A delayed payment's outcome: `checkout.session.async_payment_succeeded` or `async_payment_failed`. */
export function settleAsyncPayment(
  state: State,
  id: string,
  outcome: "succeeded" | "failed",
): { session: StripeObject; event: StripeEvent } {
  oneOf(outcome, ["succeeded", "failed"] as const, "outcome");
  const s = getCheckoutSession(state, id);
  const pi = s.payment_intent ? state.paymentIntents.get(s.payment_intent as string) : undefined;
  if (!pi || pi.status !== "processing") {
    throw refused("payment_intent_unexpected_state", `Checkout Session ${id} has no payment in processing`);
  }
  const charge = state.charges.get(pi.latest_charge as string)!;
  if (outcome === "succeeded") {
    Object.assign(pi, { status: "succeeded", amount_received: pi.amount });
    Object.assign(charge, { status: "succeeded", paid: true });
    chargeSucceeded(state, charge);
    s.payment_status = "paid";
  } else {
    const error = {
      code: "payment_method_unactivated",
      message: "The payment failed (emulated)",
      type: "card_error",
    };
    Object.assign(pi, { status: "requires_payment_method", last_payment_error: error });
    Object.assign(charge, { status: "failed", failure_code: error.code, failure_message: error.message });
  }
  return { session: s, event: event(state, `checkout.session.async_payment_${outcome}`, s) };
}

/** A PaymentIntent with one charge, succeeded (or processing), for a session's payment. */
function newPayment(
  state: State,
  amount: number,
  cur: Currency,
  pay: { metadata: Record<string, string>; transfer_group: string | null },
  processing: boolean,
): StripeObject {
  const pi = paymentIntent(state, amount, cur, pay.metadata, pay.transfer_group);
  const charge: StripeObject = {
    id: newId("ch"),
    object: "charge",
    amount,
    amount_captured: amount,
    amount_refunded: 0,
    balance_transaction: null,
    captured: true,
    created: state.now(),
    currency: cur,
    description: null,
    disputed: false,
    failure_code: null,
    failure_message: null,
    livemode: false,
    metadata: {},
    paid: !processing,
    payment_intent: pi.id,
    refunded: false,
    status: processing ? "pending" : "succeeded",
    transfer_group: pay.transfer_group,
  };
  state.charges.set(charge.id, charge);
  Object.assign(pi, {
    status: processing ? "processing" : "succeeded",
    amount_received: processing ? 0 : amount,
    latest_charge: charge.id,
  });
  if (!processing) chargeSucceeded(state, charge);
  return pi;
}

function paymentIntent(
  state: State,
  amount: number,
  cur: Currency,
  meta: Record<string, string>,
  transferGroup: string | null,
  description: string | null = null,
): StripeObject {
  const id = newId("pi");
  const pi: StripeObject = {
    id,
    object: "payment_intent",
    amount,
    amount_received: 0,
    client_secret: `${id}_secret_${newId("x").slice(2)}`,
    created: state.now(),
    currency: cur,
    description,
    last_payment_error: null,
    latest_charge: null,
    livemode: false,
    metadata: meta,
    payment_method_types: ["card"],
    status: "requires_payment_method",
    transfer_group: transferGroup,
  };
  state.paymentIntents.set(id, pi);
  return pi;
}

/** POST /v1/payment_intents (created unconfirmed, as without a payment method). */
export function createPaymentIntent(state: State, p: Params): StripeObject {
  const cur = currency(p, "currency");
  if (!cur) throw missing("currency");
  const amount = int(p, "amount");
  if (amount === undefined) throw missing("amount");
  // Minimum and maximum charge amounts (docs.stripe.com/currencies#minimum-and-maximum-charge-amounts)
  chargeLimits(amount, cur, "amount");
  return paymentIntent(
    state,
    amount,
    cur,
    metadata(p),
    str(p, "transfer_group") ?? null,
    str(p, "description"),
  );
}

/** GET /v1/payment_intents/:id */
export function getPaymentIntent(state: State, id: string): StripeObject {
  const pi = state.paymentIntents.get(id);
  if (!pi) throw noSuch("payment_intent", id);
  return pi;
}

/** GET /v1/charges/:id */
export function getCharge(state: State, id: string): StripeObject {
  const charge = state.charges.get(id);
  if (!charge) throw noSuch("charge", id);
  return charge;
}
