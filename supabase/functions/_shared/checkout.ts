/**
 * Checkout, shared by enhanced-checkout (signed-in buyers) and guest-checkout: one Checkout Session per
 * order, in two database round trips (one for a replay).
 *
 * The generic layers run as for every endpoint (the Idempotency-Key's contract, then the Stripe
 * operation's), with stores whose steps are merged into two RPCs:
 * - `start_checkout`: the key's claim + `begin_checkout` (the order and its holds, prices from the
 *   database) + the session's parameters (built in SQL from the order) + the Stripe operation's claim;
 * - `finish_checkout`: the session recorded on the order with its operation + the answer stored for the key.
 * @module
 */
import { json } from "./http.ts";
import { IDEMPOTENCY_DEFAULTS } from "./idempotency.ts";
import { generateIdempotencyKey } from "./idempotency_keys.ts";
import { type ClaimRow, type Json, recordOutcome } from "./idempotency_store.ts";
import {
  requestClaimOf,
  type RequestClaimRow,
  type RequestKeyStore,
  requestKeyStore,
  withIdempotencyKey,
} from "./idempotency_http.ts";
import { runOperation } from "./operations.ts";
import { UI_MODE_OF } from "./stripe_contract.ts";
import { rpc } from "./supabase.ts";
import { z } from "./validate.ts";

/** The body of enhanced-checkout; unknown fields are rejected (a price sent by a client is an error). */
export const CheckoutBody = z.strictObject({
  event_id: z.uuid(),
  items: z.array(z.strictObject({ tier_id: z.uuid(), quantity: z.int().min(1).max(100) })).min(1).max(20),
  /** The project's own values; sent to Stripe as `hosted_page` / `embedded_page` (stripe_contract.ts). */
  ui_mode: z.enum(Object.keys(UI_MODE_OF) as [keyof typeof UI_MODE_OF]).optional(),
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

/** What start_checkout answers: the key's claim, and once acquired the order and the operation's claim. */
interface Started {
  request: RequestClaimRow;
  order?: { order_id: string; total_cents: number };
  stripe?: ClaimRow;
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
  let started: Started | undefined;
  let recorded: { fencingToken: number; session: Json } | undefined;
  const plain = requestKeyStore();
  const store: RequestKeyStore = {
    async claim(scope, key, endpoint, fingerprint, leaseSeconds) {
      const orderId = crypto.randomUUID(); // used only if this request creates the order
      started = await rpc<Started>("start_checkout", {
        p_scope: scope,
        p_idempotency_key: key,
        p_endpoint: endpoint,
        p_fingerprint: fingerprint,
        p_order_id: orderId,
        p_stripe_idempotency_key: generateIdempotencyKey("checkout:create", orderId),
        p_event_id: body.event_id,
        p_items: body.items,
        p_ui_mode: body.ui_mode ?? "hosted",
        p_site_url: Deno.env.get("SITE_URL") ?? "http://localhost:3000",
        p_buyer_id: buyer.userId ?? null,
        p_guest_email: buyer.guestEmail ?? null,
        p_client_ip: buyer.clientIp ?? null,
        p_request_lease_seconds: leaseSeconds,
        p_stripe_lease_seconds: IDEMPOTENCY_DEFAULTS.stripeLeaseSeconds,
      });
      return requestClaimOf(started.request);
    },
    async finish(scope, key, fencingToken, response) {
      const finish = () =>
        rpc("finish_checkout", {
          p_scope: scope,
          p_idempotency_key: key,
          p_request_token: fencingToken,
          p_response_status: response.status,
          p_response_headers: response.headers,
          p_response_body: response.body,
          p_order_id: recorded ? started!.order!.order_id : null,
          p_stripe_token: recorded?.fencingToken ?? null,
          p_session: recorded?.session ?? null,
        });
      // a newer holder of the operation (our lease ran out) records it instead: the answer is 409, retry
      await (recorded
        ? recordOutcome({ operationType: "checkout:create", operationId: started!.order!.order_id }, finish)
        : finish());
    },
    release: plain.release,
  };

  return withIdempotencyKey(req, { scope: buyer.scope, endpoint, payload: body, store }, async () => {
    const { order, stripe } = started!;
    const { response } = await runOperation("checkout:create", order!.order_id, stripe!.request_params, {
      userId: buyer.userId,
      claim: stripe!,
      // recorded by finish_checkout, with the answer
      complete: (fencingToken, session) => {
        recorded = { fencingToken, session };
        return Promise.resolve();
      },
    });
    const session = response as unknown as SessionFields;
    if (session.amount_total !== order!.total_cents) {
      throw new Error(
        `Session ${session.id} charges ${session.amount_total}, order ${order!.order_id} totals ${
          order!.total_cents
        }`,
      );
    }
    return json(201, {
      order_id: order!.order_id,
      checkout_session_id: session.id,
      ...(session.url ? { url: session.url } : { client_secret: session.client_secret }),
      expires_at: new Date(session.expires_at * 1000).toISOString(),
      amount_total: session.amount_total,
      currency: session.currency,
    });
  });
}
