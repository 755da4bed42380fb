/**
 * The Stripe objects the emulator keeps (Checkout Sessions, PaymentIntents, charges, Refunds,
 * Transfers and their reversals, Events) and the API operations on them, with Stripe's validation
 * and error objects. Pure state: no HTTP here.
 * @module
 */
import { CHECKOUT_UI_MODES } from "../../../supabase/functions/_shared/stripe_contract.ts";
import type { Param, Params } from "./form.ts";

/** The API version the emulator speaks (the one `stripe@23.1.0` pins). */
export const API_VERSION = "2026-10-28.endive";

/** A Stripe error: HTTP status, the `error` object, and whether Stripe would store it for the key. */
export class StripeError extends Error {
  constructor(
    readonly status: number,
    readonly body: { type: string; code?: string; message: string; param?: string },
    /** Validation failures happen before the endpoint executes: Stripe does not store them. */
    readonly stored = true,
  ) {
    super(body.message);
  }
}

/** A plain Stripe object (`id`, `object`, fields). */
export type StripeObject = Record<string, unknown> & { id: string; object: string };

/** An event as Stripe sends it to webhooks. */
export type StripeEvent = StripeObject & { type: string; data: { object: StripeObject }; created: number };

/** The emulator's objects and clock. */
export interface State {
  now(): number;
  baseUrl: string;
  balance: number;
  sessions: Map<string, StripeObject>;
  paymentIntents: Map<string, StripeObject>;
  charges: Map<string, StripeObject>;
  refunds: Map<string, StripeObject>;
  transfers: Map<string, StripeObject>;
  events: Map<string, StripeEvent>;
  /** Called with each event the state emits, for delivery to the webhook. */
  emit(event: StripeEvent): void;
}

/** Creates an empty state. */
export function createState(baseUrl: string, now: () => number, emit: (e: StripeEvent) => void): State {
  return {
    now,
    baseUrl,
    balance: 100_000_000,
    sessions: new Map(),
    paymentIntents: new Map(),
    charges: new Map(),
    refunds: new Map(),
    transfers: new Map(),
    events: new Map(),
    emit,
  };
}

/** A Stripe-looking id with `prefix`. */
export function newId(prefix: string): string {
  const alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
  const bytes = crypto.getRandomValues(new Uint8Array(24));
  return `${prefix}_${[...bytes].map((b) => alphabet[b % alphabet.length]).join("")}`;
}

function invalid(message: string, param?: string, code = "parameter_invalid"): StripeError {
  return new StripeError(
    400,
    { type: "invalid_request_error", code, message, ...(param ? { param } : {}) },
    false,
  );
}

function missing(param: string): StripeError {
  return invalid(`Missing required param: ${param}.`, param, "parameter_missing");
}

/** A missing object: 404 when named in the path, 400 when named by a parameter (as Stripe answers). */
function noSuch(kind: string, id: string, param?: string): StripeError {
  return new StripeError(param ? 400 : 404, {
    type: "invalid_request_error",
    code: "resource_missing",
    message: `No such ${kind}: '${id}'`,
    ...(param ? { param } : {}),
  });
}

function str(params: Params, name: string, path = name): string | undefined {
  const v = params[name];
  if (v === undefined) return undefined;
  if (typeof v !== "string") throw invalid(`Invalid string: ${path}`, path);
  return v;
}

function int(params: Params, name: string, path = name, min = 0): number | undefined {
  const v = str(params, name, path);
  if (v === undefined) return undefined;
  if (!/^-?\d+$/.test(v)) throw invalid(`Invalid integer: ${v}`, path);
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < min) throw invalid(`Invalid ${path}: must be at least ${min}`, path);
  return n;
}

function obj(params: Params, name: string): Params | undefined {
  const v = params[name];
  if (v === undefined || v === "") return undefined;
  if (typeof v !== "object" || Array.isArray(v)) throw invalid(`Invalid object: ${name}`, name);
  return v;
}

function currency(params: Params, name: string, path = name): string | undefined {
  const c = str(params, name, path)?.toLowerCase();
  if (c !== undefined && !/^[a-z]{3}$/.test(c)) throw invalid(`Invalid currency: ${c}`, path);
  return c;
}

function metadata(params: Params, name = "metadata"): Record<string, string> {
  const m = obj(params, name) ?? {};
  const entries = Object.entries(m);
  if (entries.length > 50) throw invalid("Metadata can have at most 50 keys", name);
  for (const [k, v] of entries) {
    if (typeof v !== "string") throw invalid(`Invalid metadata value for ${k}`, `${name}[${k}]`);
    if (k.length > 40) throw invalid(`Metadata keys can be at most 40 characters: ${k}`, `${name}[${k}]`);
    if (v.length > 500) throw invalid(`Metadata values can be at most 500 characters`, `${name}[${k}]`);
  }
  return m as Record<string, string>;
}

function oneOf<T extends string>(
  value: string | undefined,
  allowed: readonly T[],
  param: string,
): T | undefined {
  if (value !== undefined && !allowed.includes(value as T)) {
    throw invalid(`Invalid ${param}: must be one of ${allowed.join(", ")}`, param);
  }
  return value as T | undefined;
}

function event(state: State, type: string, object: StripeObject): StripeEvent {
  const e: StripeEvent = {
    id: newId("evt"),
    object: "event",
    api_version: API_VERSION,
    created: state.now(),
    data: { object: structuredClone(object) },
    livemode: false,
    pending_webhooks: 1,
    request: { id: null, idempotency_key: null },
    type,
  };
  state.events.set(e.id, e);
  state.emit(e);
  return e;
}

/** POST /v1/checkout/sessions */
export function createCheckoutSession(state: State, p: Params): StripeObject {
  const mode = oneOf(str(p, "mode"), ["payment"] as const, "mode");
  if (!mode) throw missing("mode");
  // Since 2026-03-25.dahlia; `hosted`, `embedded` and `custom` are refused
  // (docs.stripe.com/changelog/dahlia/2026-03-25/updates-available-checkout-session-ui-modes).
  const uiMode = oneOf(str(p, "ui_mode"), CHECKOUT_UI_MODES, "ui_mode") ?? "hosted_page";
  const items = p.line_items;
  if (items === undefined) throw missing("line_items");
  if (!Array.isArray(items) || items.length === 0) throw invalid("Invalid array: line_items", "line_items");
  let cur: string | undefined;
  let subtotal = 0;
  const lineItems = items.map((raw: Param, i) => {
    const path = `line_items[${i}]`;
    if (typeof raw !== "object" || Array.isArray(raw)) throw invalid(`Invalid object: ${path}`, path);
    const quantity = int(raw, "quantity", `${path}[quantity]`, 1);
    if (quantity === undefined) throw missing(`${path}[quantity]`);
    const priceData = obj(raw, "price_data");
    if (!priceData) throw missing(`${path}[price_data]`);
    const c = currency(priceData, "currency", `${path}[price_data][currency]`);
    if (!c) throw missing(`${path}[price_data][currency]`);
    if (cur && c !== cur) {
      throw invalid("All line items must use the same currency", `${path}[price_data][currency]`);
    }
    cur = c;
    const unit = int(priceData, "unit_amount", `${path}[price_data][unit_amount]`, 0);
    if (unit === undefined) throw missing(`${path}[price_data][unit_amount]`);
    const product = obj(priceData, "product_data");
    const name = product && str(product, "name", `${path}[price_data][product_data][name]`);
    if (!name) throw missing(`${path}[price_data][product_data][name]`);
    subtotal += unit * quantity;
    return {
      quantity,
      amount_total: unit * quantity,
      currency: c,
      description: name,
      price: { unit_amount: unit },
    };
  });
  const created = state.now();
  const expiresAt = int(p, "expires_at") ?? created + 86_400;
  if (expiresAt < created + 1800) {
    throw invalid(
      "The `expires_at` timestamp must be at least 30 minutes from Checkout Session creation.",
      "expires_at",
    );
  }
  if (expiresAt > created + 86_400) {
    throw invalid(
      "The `expires_at` timestamp must be less than 24 hours from Checkout Session creation.",
      "expires_at",
    );
  }
  const successUrl = str(p, "success_url");
  const returnUrl = str(p, "return_url");
  if (uiMode === "embedded_page" && successUrl) {
    throw invalid(
      "`success_url` is not allowed when `ui_mode` is `embedded_page`; use `return_url`",
      "success_url",
    );
  }
  if (uiMode === "embedded_page" && !returnUrl) throw missing("return_url");
  if (uiMode === "hosted_page" && returnUrl) {
    throw invalid("`return_url` needs `ui_mode: embedded_page`", "return_url");
  }
  const clientReference = str(p, "client_reference_id");
  if (clientReference && clientReference.length > 200) {
    throw invalid("client_reference_id can be at most 200 characters", "client_reference_id");
  }
  const pid = obj(p, "payment_intent_data");
  const id = newId("cs_test");
  const session: StripeObject = {
    id,
    object: "checkout.session",
    amount_subtotal: subtotal,
    amount_total: subtotal,
    client_reference_id: clientReference ?? null,
    client_secret: uiMode === "embedded_page" ? `${id}_secret_${newId("x").slice(2)}` : null,
    created,
    currency: cur,
    customer_email: str(p, "customer_email") ?? null,
    expires_at: expiresAt,
    line_items: { object: "list", data: lineItems },
    livemode: false,
    metadata: metadata(p),
    mode,
    payment_intent: null,
    payment_intent_data: pid
      ? {
        metadata: metadata(pid),
        transfer_group: str(pid, "transfer_group", "payment_intent_data[transfer_group]") ?? null,
      }
      : null,
    payment_status: "unpaid",
    return_url: returnUrl ?? null,
    status: "open",
    success_url: successUrl ?? null,
    ui_mode: uiMode,
    url: uiMode === "hosted_page" ? `${state.baseUrl}/_emulator/checkout/${id}` : null,
  };
  state.sessions.set(id, session);
  return session;
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
    throw new StripeError(400, {
      type: "invalid_request_error",
      message:
        `Only Checkout Sessions with a status in ["open"] can be expired. This Checkout Session has a status of "${s.status}".`,
    });
  }
  s.status = "expired";
  event(state, "checkout.session.expired", s);
  return s;
}

/** Completes an open session as if the buyer paid: a succeeded PaymentIntent and charge. */
export function payCheckoutSession(state: State, id: string): { session: StripeObject; event: StripeEvent } {
  const s = getCheckoutSession(state, id);
  if (s.status !== "open") {
    throw new StripeError(400, {
      type: "invalid_request_error",
      message: `Checkout Session ${id} is ${s.status}, not open`,
    });
  }
  const amount = s.amount_total as number;
  const piData = s.payment_intent_data as
    | { metadata?: Record<string, string>; transfer_group?: string }
    | null;
  const pi = succeededPaymentIntent(
    state,
    amount,
    s.currency as string,
    piData?.metadata ?? {},
    piData?.transfer_group,
  );
  Object.assign(s, { status: "complete", payment_status: "paid", payment_intent: pi.id });
  return { session: s, event: event(state, "checkout.session.completed", s) };
}

function succeededPaymentIntent(
  state: State,
  amount: number,
  cur: string,
  meta: Record<string, string>,
  transferGroup?: string | null,
): StripeObject {
  const pi: StripeObject = {
    id: newId("pi"),
    object: "payment_intent",
    amount,
    amount_received: amount,
    created: state.now(),
    currency: cur,
    latest_charge: null,
    livemode: false,
    metadata: meta,
    status: "succeeded",
    transfer_group: transferGroup ?? null,
  };
  const charge: StripeObject = {
    id: newId("ch"),
    object: "charge",
    amount,
    amount_refunded: 0,
    captured: true,
    created: state.now(),
    currency: cur,
    paid: true,
    payment_intent: pi.id,
    refunded: false,
    status: "succeeded",
  };
  pi.latest_charge = charge.id;
  state.paymentIntents.set(pi.id, pi);
  state.charges.set(charge.id, charge);
  state.balance += amount;
  return pi;
}

/** POST /v1/payment_intents (created unconfirmed, as without a payment method). */
export function createPaymentIntent(state: State, p: Params): StripeObject {
  const amount = int(p, "amount", "amount", 50);
  if (amount === undefined) throw missing("amount");
  const cur = currency(p, "currency");
  if (!cur) throw missing("currency");
  const pi: StripeObject = {
    id: newId("pi"),
    object: "payment_intent",
    amount,
    amount_received: 0,
    client_secret: null,
    created: state.now(),
    currency: cur,
    latest_charge: null,
    livemode: false,
    metadata: metadata(p),
    status: "requires_payment_method",
    transfer_group: str(p, "transfer_group") ?? null,
  };
  pi.client_secret = `${pi.id}_secret_${newId("x").slice(2)}`;
  state.paymentIntents.set(pi.id, pi);
  return pi;
}

/** GET /v1/payment_intents/:id */
export function getPaymentIntent(state: State, id: string): StripeObject {
  const pi = state.paymentIntents.get(id);
  if (!pi) throw noSuch("payment_intent", id);
  return pi;
}

/** POST /v1/refunds */
export function createRefund(state: State, p: Params): StripeObject {
  const piId = str(p, "payment_intent");
  const chargeId = str(p, "charge");
  if (!piId && !chargeId) throw missing("payment_intent");
  const amount = int(p, "amount", "amount", 1);
  const reason = oneOf(
    str(p, "reason"),
    ["duplicate", "fraudulent", "requested_by_customer"] as const,
    "reason",
  );
  const meta = metadata(p);
  let charge: StripeObject | undefined;
  if (piId) {
    const pi = state.paymentIntents.get(piId);
    if (!pi) throw noSuch("payment_intent", piId, "payment_intent");
    charge = pi.latest_charge ? state.charges.get(pi.latest_charge as string) : undefined;
    if (!charge || pi.status !== "succeeded") {
      throw new StripeError(400, {
        type: "invalid_request_error",
        code: "charge_not_refundable",
        message: `This PaymentIntent (${piId}) does not have a successful charge to refund.`,
      });
    }
  } else {
    charge = state.charges.get(chargeId!);
    if (!charge) throw noSuch("charge", chargeId!, "charge");
  }
  const remaining = (charge.amount as number) - (charge.amount_refunded as number);
  if (remaining === 0) {
    throw new StripeError(400, {
      type: "invalid_request_error",
      code: "charge_already_refunded",
      message: `Charge ${charge.id} has already been refunded.`,
    });
  }
  const value = amount ?? remaining;
  if (value > remaining) {
    throw new StripeError(400, {
      type: "invalid_request_error",
      code: "amount_too_large",
      param: "amount",
      message: `Refund amount (${value}) is greater than unrefunded amount on charge (${remaining})`,
    });
  }
  const refund: StripeObject = {
    id: newId("re"),
    object: "refund",
    amount: value,
    charge: charge.id,
    created: state.now(),
    currency: charge.currency,
    metadata: meta,
    payment_intent: charge.payment_intent,
    reason: reason ?? null,
    status: "succeeded",
  };
  state.refunds.set(refund.id, refund);
  charge.amount_refunded = (charge.amount_refunded as number) + value;
  charge.refunded = charge.amount_refunded === charge.amount;
  state.balance -= value;
  event(state, "charge.refunded", charge);
  event(state, "refund.created", refund);
  return refund;
}

/** A refund's later status change (succeeded -> failed gives the charge its amount back). */
export function updateRefundStatus(state: State, id: string, status: string): StripeObject {
  const refund = getRefund(state, id);
  const charge = state.charges.get(refund.charge as string)!;
  const counted = (s: unknown) => s === "succeeded" || s === "pending";
  if (counted(refund.status) && !counted(status)) {
    charge.amount_refunded = (charge.amount_refunded as number) - (refund.amount as number);
    state.balance += refund.amount as number;
  }
  refund.status = status;
  charge.refunded = charge.amount_refunded === charge.amount;
  event(state, "refund.updated", refund);
  return refund;
}

/** GET /v1/refunds/:id */
export function getRefund(state: State, id: string): StripeObject {
  const r = state.refunds.get(id);
  if (!r) throw noSuch("refund", id);
  return r;
}

/** POST /v1/transfers (from the platform balance to a connected account). */
export function createTransfer(state: State, p: Params): StripeObject {
  const amount = int(p, "amount", "amount", 1);
  if (amount === undefined) throw missing("amount");
  const cur = currency(p, "currency");
  if (!cur) throw missing("currency");
  const destination = str(p, "destination");
  if (!destination) throw missing("destination");
  const meta = metadata(p);
  const transferGroup = str(p, "transfer_group") ?? null;
  if (!/^acct_[A-Za-z0-9_]+$/.test(destination)) throw noSuch("destination", destination, "destination");
  if (amount > state.balance) {
    throw new StripeError(400, {
      type: "invalid_request_error",
      code: "balance_insufficient",
      message: "You have insufficient available funds in your Stripe account.",
    });
  }
  const transfer: StripeObject = {
    id: newId("tr"),
    object: "transfer",
    amount,
    amount_reversed: 0,
    created: state.now(),
    currency: cur,
    destination,
    livemode: false,
    metadata: meta,
    reversals: { object: "list", data: [] },
    reversed: false,
    transfer_group: transferGroup,
  };
  state.transfers.set(transfer.id, transfer);
  state.balance -= amount;
  event(state, "transfer.created", transfer);
  return transfer;
}

/** GET /v1/transfers/:id */
export function getTransfer(state: State, id: string): StripeObject {
  const t = state.transfers.get(id);
  if (!t) throw noSuch("transfer", id);
  return t;
}

/** POST /v1/transfers/:id/reversals */
export function reverseTransfer(state: State, id: string, p: Params): StripeObject {
  const transfer = getTransfer(state, id);
  const left = (transfer.amount as number) - (transfer.amount_reversed as number);
  const amount = int(p, "amount", "amount", 1) ?? left;
  if (amount > left) {
    throw new StripeError(400, {
      type: "invalid_request_error",
      code: "amount_too_large",
      param: "amount",
      message: `Reversal amount (${amount}) is greater than the transfer's unreversed amount (${left})`,
    });
  }
  const reversal: StripeObject = {
    id: newId("trr"),
    object: "transfer_reversal",
    amount,
    created: state.now(),
    currency: transfer.currency,
    metadata: metadata(p),
    transfer: transfer.id,
  };
  transfer.amount_reversed = (transfer.amount_reversed as number) + amount;
  transfer.reversed = transfer.amount_reversed === transfer.amount;
  (transfer.reversals as { data: StripeObject[] }).data.push(reversal);
  state.balance += amount;
  event(state, "transfer.reversed", transfer);
  return reversal;
}

/**
 * GET on a collection: `{object: "list", data, has_more, url}`, newest first, `limit` (1-100, default 10),
 * `starting_after` / `ending_before`, and equality filters on `filters` (`created` also as a range with
 * gt/gte/lt/lte) (docs.stripe.com/api/pagination).
 */
export function list(
  objects: Map<string, StripeObject>,
  url: string,
  p: Params,
  filters: string[],
): StripeObject {
  for (const name of Object.keys(p)) {
    if (![...filters, "limit", "starting_after", "ending_before", "expand"].includes(name)) {
      throw invalid(`Received unknown parameter: ${name}`, name, "parameter_unknown");
    }
  }
  const limit = int(p, "limit", "limit", 1) ?? 10;
  if (limit > 100) throw invalid("Invalid limit: must be at most 100", "limit");
  const matches = (o: StripeObject) =>
    filters.every((name) => {
      const want = p[name];
      if (want === undefined) return true;
      if (name === "created" && typeof want === "object" && !Array.isArray(want)) {
        const at = o.created as number;
        const bound = (k: string) => (typeof want[k] === "string" ? Number(want[k]) : undefined);
        return (bound("gt") === undefined || at > bound("gt")!) &&
          (bound("gte") === undefined || at >= bound("gte")!) &&
          (bound("lt") === undefined || at < bound("lt")!) &&
          (bound("lte") === undefined || at <= bound("lte")!);
      }
      return String(o[name]) === want;
    });
  // Maps keep insertion order: reversed, newest first.
  let all = [...objects.values()].reverse().filter(matches);
  const after = str(p, "starting_after");
  const before = str(p, "ending_before");
  if (after) all = all.slice(all.findIndex((o) => o.id === after) + 1);
  const end = before ? Math.max(0, all.findIndex((o) => o.id === before)) : all.length;
  const data = before ? all.slice(Math.max(0, end - limit), end) : all.slice(0, limit);
  const hasMore = before ? end > limit : all.length > limit;
  return { id: "", object: "list", data, has_more: hasMore, url } as StripeObject;
}
