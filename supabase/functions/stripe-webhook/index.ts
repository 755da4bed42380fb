// POST /functions/v1/stripe-webhook (verify_jwt = false): Stripe's events, verified by their signature.
// A bad or missing signature is 400 and nothing is stored. Each delivery is one RPC, handle_stripe_event,
// which claims the event, applies its effect idempotently per Stripe object and records the outcome; a
// failure answers 500 so that Stripe delivers it again.
import { HttpError } from "../_shared/errors.ts";
import { handler, json, readText } from "../_shared/http.ts";
import { log } from "../_shared/log.ts";
import { Stripe, STRIPE_API_VERSION, stripeClient } from "../_shared/stripe.ts";
import { chargeOf } from "../_shared/stripe_events.ts";
import { rpc } from "../_shared/supabase.ts";

/** Stripe's events are well under this; a larger body is not one of them. */
const MAX_EVENT_BYTES = 512 * 1024;
const TOLERANCE_SECONDS = 300;
const crypto = Stripe.createSubtleCryptoProvider();

Deno.serve(handler("stripe-webhook", async (req, { requestId }) => {
  const secret = Deno.env.get("STRIPE_WEBHOOK_SECRET");
  if (!secret) throw new Error("STRIPE_WEBHOOK_SECRET is not set");
  const signature = req.headers.get("stripe-signature");
  const payload = await readText(req, MAX_EVENT_BYTES);
  let event: Stripe.Event;
  try {
    if (!signature) throw new Error("missing Stripe-Signature header");
    event = await stripeClient().webhooks.constructEventAsync(
      payload,
      signature,
      secret,
      TOLERANCE_SECONDS,
      crypto,
    );
  } catch (e) {
    throw refusal(e, payload, requestId);
  }
  // The payload's shape is the endpoint's API version, fixed when the endpoint was created
  // (WebhookEndpoints.d.ts, api_version): this code reads the shapes of the SDK's version only.
  if (event.api_version && event.api_version !== STRIPE_API_VERSION) {
    log("error", "webhook event of another API version", {
      request_id: requestId,
      event_id: event.id,
      api_version: event.api_version,
    });
    throw new HttpError(
      400,
      "unsupported-api-version",
      "Unsupported API version",
      `Event ${event.id} is rendered for API ${event.api_version}; create the webhook endpoint with api_version ${STRIPE_API_VERSION} (Stripe delivers it again meanwhile)`,
    );
  }

  const result = await rpc<{ status: string; error?: string }>("handle_stripe_event", {
    p_event: event,
    p_charge: await chargeOf(stripeClient(), event),
  });
  if (result.status === "failed") {
    log("error", "webhook event failed; Stripe will deliver it again", {
      request_id: requestId,
      event_id: event.id,
      type: event.type,
      error: result.error,
    });
    throw new HttpError(
      500,
      "event-failed",
      "Event not processed",
      `Event ${event.id} failed and was recorded; it will be processed on redelivery`,
    );
  }
  return json(200, { received: true, event_id: event.id, status: result.status });
}));

/**
 * Why a delivery was refused: a bad or missing signature, or a signed "thin" event (`v2.core.event`,
 * which carries no object: docs.stripe.com/changelog, thin events for API v1 resources), which this
 * endpoint cannot use; it needs snapshot payloads.
 */
function refusal(error: unknown, payload: string, requestId: string): HttpError {
  if (
    !(error instanceof Stripe.errors.StripeSignatureVerificationError) &&
    objectOf(payload) === "v2.core.event"
  ) {
    log("error", "a thin event was delivered; the endpoint needs snapshot payloads", {
      request_id: requestId,
    });
    return new HttpError(
      400,
      "thin-event",
      "Thin event not supported",
      "This endpoint processes snapshot events; configure the Stripe event destination with snapshot payloads",
    );
  }
  log("warn", "webhook signature refused", { request_id: requestId, error });
  return new HttpError(
    400,
    "invalid-signature",
    "Invalid signature",
    "The Stripe-Signature header does not match this payload",
  );
}

function objectOf(payload: string): unknown {
  try {
    return JSON.parse(payload)?.object;
  } catch {
    return undefined;
  }
}
