/**
 * Checkout, shared by enhanced-checkout (signed-in buyers) and guest-checkout: the request's
 * Idempotency-Key -> `begin_checkout` (the order and its holds, one transaction, prices from the
 * database) -> one Checkout Session per order through `withStripeIdempotency` -> the session recorded
 * on the order with the operation that created it.
 * @module
 */
import { json } from "./http.ts";
import type { Json } from "./idempotency.ts";
import { withIdempotencyKey } from "./idempotency_http.ts";
import { runOperation } from "./operations.ts";
import type { Stripe } from "./stripe.ts";
import { rpc } from "./supabase.ts";
import { z } from "./validate.ts";

/** The body of enhanced-checkout; unknown fields are rejected (a price sent by a client is an error). */
export const CheckoutBody = z.strictObject({
  event_id: z.uuid(),
  items: z.array(z.strictObject({ tier_id: z.uuid(), quantity: z.int().min(1).max(100) })).min(1).max(20),
  ui_mode: z.enum(["hosted", "embedded"]).optional(),
});

/** The body of guest-checkout: the same plus the buyer's email, trimmed and lower-cased. */
export const GuestCheckoutBody = CheckoutBody.extend({
  email: z.string().trim().toLowerCase().pipe(z.email().max(254)),
});

/** Who buys: a signed-in user, or a guest by email; `scope` is their Idempotency-Key scope. */
export interface Buyer {
  scope: string;
  userId?: string;
  guestEmail?: string;
  clientIp?: string;
}

/** An order as `begin_checkout` returns it. */
interface Order {
  order_id: string;
  event_title: string;
  currency: string;
  subtotal_cents: number;
  fee_cents: number;
  total_cents: number;
  expires_at: string;
  buyer_email: string | null;
  items: { tier_id: string; name: string; quantity: number; unit_price_cents: number }[];
}

/** The session fields kept to answer again. */
interface SessionFields {
  id: string;
  url: string | null;
  client_secret: string | null;
  expires_at: number;
  amount_total: number | null;
  currency: string | null;
}

/** Runs one checkout request and answers `201 { order_id, checkout_session_id, url | client_secret, ... }`. */
export function checkout(
  req: Request,
  endpoint: string,
  buyer: Buyer,
  body: z.output<typeof CheckoutBody>,
): Promise<Response> {
  return withIdempotencyKey(req, { scope: buyer.scope, endpoint, payload: body }, async (key) => {
    const order = await rpc<Order>("begin_checkout", {
      p_scope: buyer.scope,
      p_idempotency_key: key,
      p_event_id: body.event_id,
      p_items: body.items,
      p_buyer_id: buyer.userId ?? null,
      p_guest_email: buyer.guestEmail ?? null,
      p_client_ip: buyer.clientIp ?? null,
    });
    const params = sessionParams(order, body.ui_mode ?? "hosted");
    const { response } = await runOperation("checkout:create", order.order_id, params as unknown as Json, {
      userId: buyer.userId,
    });
    const session = response as unknown as SessionFields;
    if (session.amount_total !== order.total_cents) {
      throw new Error(
        `Session ${session.id} charges ${session.amount_total}, order ${order.order_id} totals ${order.total_cents}`,
      );
    }
    return json(201, {
      order_id: order.order_id,
      checkout_session_id: session.id,
      ...(session.url ? { url: session.url } : { client_secret: session.client_secret }),
      expires_at: new Date(session.expires_at * 1000).toISOString(),
      amount_total: session.amount_total,
      currency: session.currency,
    });
  });
}

/** The Checkout Session for an order: every amount from the order's rows, nothing from the request. */
export function sessionParams(
  order: Order,
  uiMode: "hosted" | "embedded",
): Stripe.Checkout.SessionCreateParams {
  const line = (name: string, unitAmount: number, quantity: number) => ({
    quantity,
    price_data: { currency: order.currency, unit_amount: unitAmount, product_data: { name } },
  });
  const lineItems = order.items.map((i) =>
    line(`${order.event_title} - ${i.name}`, i.unit_price_cents, i.quantity)
  );
  if (order.fee_cents > 0) lineItems.push(line("Service fee", order.fee_cents, 1));
  const site = (Deno.env.get("SITE_URL") ?? "http://localhost:3000").replace(/\/$/, "");
  const back = `${site}/orders/${order.order_id}?session_id={CHECKOUT_SESSION_ID}`;
  return {
    mode: "payment",
    ui_mode: uiMode,
    line_items: lineItems,
    metadata: { order_id: order.order_id },
    client_reference_id: order.order_id,
    expires_at: Math.floor(Date.parse(order.expires_at) / 1000),
    payment_intent_data: {
      metadata: { order_id: order.order_id },
      transfer_group: `order_${order.order_id}`,
    },
    ...(order.buyer_email ? { customer_email: order.buyer_email } : {}),
    ...(uiMode === "hosted" ? { success_url: back } : { return_url: back }),
  };
}
