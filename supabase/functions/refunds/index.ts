// POST /functions/v1/refunds: the organiser of the order's event (or a platform admin) refunds all or
// part of a paid order. Body { order_id, amount_cents?, reason? }; Idempotency-Key required.
// create_refund holds the rules (never more than paid - refunded - in flight; the wallet debit) and claims
// the Stripe refund in the same transaction.
import { requireUser } from "../_shared/auth.ts";
import { handler, json, readJson } from "../_shared/http.ts";
import { generateIdempotencyKey } from "../_shared/idempotency_keys.ts";
import type { ClaimRow } from "../_shared/idempotency_store.ts";
import { withIdempotencyKey } from "../_shared/idempotency_http.ts";
import { runOperation } from "../_shared/operations.ts";
import { MAX_AMOUNT, REFUND_REASONS } from "../_shared/stripe_contract.ts";
import { rpc } from "../_shared/supabase.ts";
import { parseBody, z } from "../_shared/validate.ts";

/** The body, also the client's type for it (client/endpoints.ts). */
export const RefundBody = z.strictObject({
  order_id: z.uuid(),
  amount_cents: z.int().min(1).max(MAX_AMOUNT).optional(),
  // `fraudulent` only for platform admins (create_refund)
  reason: z.enum(REFUND_REASONS).optional(),
});

interface Refund {
  refund_id: string;
  amount_cents: number;
  status: string;
  order_status: string;
}

Deno.serve(handler("refunds", async (req) => {
  const user = await requireUser(req);
  const body = parseBody(RefundBody, await readJson(req));
  const scope = `user:${user.id}`;
  return withIdempotencyKey(req, { scope, endpoint: "refunds", payload: body }, async (key) => {
    const refundId = crypto.randomUUID(); // used only if this request creates the refund
    const { refund, stripe } = await rpc<{ refund: Refund; stripe: ClaimRow }>("create_refund", {
      p_scope: scope,
      p_idempotency_key: key,
      p_refund_id: refundId,
      p_stripe_idempotency_key: generateIdempotencyKey("refund:create", refundId),
      p_order_id: body.order_id,
      p_requested_by: user.id,
      p_is_admin: user.isPlatformAdmin,
      p_amount_cents: body.amount_cents ?? null,
      p_reason: body.reason ?? null,
    });
    const { resourceId, recorded } = await runOperation(
      "refund:create",
      refund.refund_id,
      stripe.request_params,
      {
        userId: user.id,
        claim: stripe,
      },
    );
    const state = (recorded ?? refund) as Refund;
    return json(201, {
      refund_id: refund.refund_id,
      stripe_refund_id: resourceId,
      status: state.status,
      amount_cents: refund.amount_cents,
      order_status: state.order_status,
    });
  });
}));
