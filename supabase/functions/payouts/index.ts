// POST /functions/v1/payouts: an organiser moves available wallet balance to their Stripe connected
// account with a Transfer. Body { amount_cents, currency? }; Idempotency-Key required.
// create_payout holds the rules (payouts enabled, a minimum, never more than available) and claims the
// Stripe transfer in the same transaction.
import { requireUser } from "../_shared/auth.ts";
import { handler, json, readJson } from "../_shared/http.ts";
import { generateIdempotencyKey } from "../_shared/idempotency_keys.ts";
import type { ClaimRow } from "../_shared/idempotency_store.ts";
import { withIdempotencyKey } from "../_shared/idempotency_http.ts";
import { runOperation } from "../_shared/operations.ts";
import { CURRENCIES, type Currency, MAX_AMOUNT } from "../_shared/stripe_contract.ts";
import { StripeOutcomeUnknownError } from "../_shared/errors.ts";
import { stripeClient } from "../_shared/stripe.ts";
import { rpc } from "../_shared/supabase.ts";
import { parseBody, z } from "../_shared/validate.ts";

/** The body, also the client's type for it (client/endpoints.ts). */
export const PayoutBody = z.strictObject({
  amount_cents: z.int().min(1).max(MAX_AMOUNT),
  currency: z.string().toLowerCase().pipe(z.enum(Object.keys(CURRENCIES) as [Currency, ...Currency[]]))
    .optional(),
});

interface Payout {
  payout_id: string;
  amount_cents: number;
  status: string;
}

Deno.serve(handler("payouts", async (req) => {
  const user = await requireUser(req);
  const body = parseBody(PayoutBody, await readJson(req));
  const scope = `user:${user.id}`;
  return withIdempotencyKey(req, { scope, endpoint: "payouts", payload: body }, async (key) => {
    const currency = body.currency ?? "usd";
    const payoutId = crypto.randomUUID(); // used only if this request creates the payout
    const { payout, stripe } = await rpc<{ payout: Payout; stripe: ClaimRow }>("create_payout", {
      p_scope: scope,
      p_idempotency_key: key,
      p_payout_id: payoutId,
      p_stripe_idempotency_key: generateIdempotencyKey("payout:create", payoutId),
      p_organiser_id: user.id,
      p_amount_cents: body.amount_cents,
      p_currency: currency,
      p_platform_available: await platformAvailable(currency),
    });
    const { resourceId, recorded } = await runOperation(
      "payout:create",
      payout.payout_id,
      stripe.request_params,
      {
        userId: user.id,
        claim: stripe,
      },
    );
    return json(201, {
      payout_id: payout.payout_id,
      stripe_transfer_id: resourceId,
      status: ((recorded ?? payout) as Payout).status,
      amount_cents: payout.amount_cents,
    });
  });
}));

/**
 * The platform's available balance at Stripe in `currency` (docs.stripe.com/api/balance): every organiser's
 * payout, every refund and Stripe's fees draw on it, so create_payout checks a payout against it too.
 */
async function platformAvailable(currency: string): Promise<number> {
  try {
    const balance = await stripeClient().balance.retrieve();
    return balance.available.find((b) => b.currency === currency)?.amount ?? 0;
  } catch (e) {
    throw new StripeOutcomeUnknownError({ cause: e });
  }
}
