/**
 * What the product reads from Stripe about an event's objects, shared by the webhook and the audit (which
 * applies events and objects it finds in Stripe's lists the same way).
 * @module
 */
import type { Stripe } from "./stripe.ts";

/**
 * The charge an event needs, with its balance transaction when Stripe has made it: when the sale's funds
 * become available at Stripe (`available_on`), which payouts wait for (docs/adr/0007). For one of our paid
 * Checkout Sessions, its payment's charge; for `charge.updated`, the charge itself (with asynchronous capture
 * the balance transaction may come after the payment: docs.stripe.com/payments/payment-intents/asynchronous-capture;
 * the sale's funds count as pending until then). Null for other events and others' sessions. Throws when
 * Stripe cannot be reached: the delivery then fails and Stripe sends it again.
 */
export async function chargeOf(
  stripe: Stripe,
  event: Stripe.Event,
): Promise<Stripe.Charge | null> {
  if (event.type === "charge.updated") {
    const charge = event.data.object;
    if (!charge.balance_transaction || typeof charge.balance_transaction !== "string") return null;
    return await stripe.charges.retrieve(charge.id, { expand: ["balance_transaction"] });
  }
  if (
    event.type !== "checkout.session.completed" && event.type !== "checkout.session.async_payment_succeeded"
  ) {
    return null;
  }
  const session = event.data.object;
  if (session.payment_status !== "paid" || typeof session.payment_intent !== "string") return null;
  if (!session.metadata?.order_id) return null; // not one of ours: nothing to ask Stripe
  const intent = await stripe.paymentIntents.retrieve(session.payment_intent, {
    expand: ["latest_charge.balance_transaction"],
  });
  const charge = intent.latest_charge;
  if (typeof charge !== "object" || charge === null) {
    throw new Error(`PaymentIntent ${intent.id} of a paid session has no charge`);
  }
  return charge;
}
