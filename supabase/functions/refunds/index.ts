// POST /functions/v1/refunds: the organiser of the order's event (or a platform admin) refunds all or
// part of a paid order. Body { order_id, amount_cents?, reason? }; Idempotency-Key required.
// create_refund holds the rules (never more than paid - refunded - in flight; the organiser's share) and
// claims the Stripe refund in the same transaction. When the organiser's wallet cannot cover their share
// (they were paid out), it also claims transfer reversals that recover the shortfall, and holds the refund
// back until they succeed: they are run first, then the refund (or 409 insufficient-organiser-balance).
import { requireUser } from "../_shared/auth.ts";
import { StripeRejectedError } from "../_shared/errors.ts";
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

/** Transfers an organiser may need reversing for one refund, at most (their latest payouts). */
const MAX_REVERSALS = 5;

interface Created {
  refund: Refund;
  stripe: ClaimRow;
  reversals: { reversal_id: string; stripe: ClaimRow }[];
}

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
    // used only if this request needs to recover the organiser's share from their transfers, in order
    const reversalIds = Array.from({ length: MAX_REVERSALS }, () => crypto.randomUUID());
    const args = {
      p_scope: scope,
      p_idempotency_key: key,
      p_refund_id: refundId,
      p_stripe_idempotency_key: generateIdempotencyKey("refund:create", refundId),
      p_order_id: body.order_id,
      p_requested_by: user.id,
      p_is_admin: user.isPlatformAdmin,
      p_amount_cents: body.amount_cents ?? null,
      p_reason: body.reason ?? null,
      p_reversal_ids: reversalIds,
      p_reversal_keys: reversalIds.map((id) => generateIdempotencyKey("transfer_reversal:create", id)),
    };
    let created = await rpc<Created>("create_refund", args);
    if (created.reversals.length > 0) {
      try {
        for (const reversal of created.reversals) {
          await runOperation(
            "transfer_reversal:create",
            reversal.reversal_id,
            reversal.stripe.request_params,
            {
              userId: user.id,
              claim: reversal.stripe,
            },
          );
        }
      } catch (e) {
        // a reversal Stripe refused failed the refund with it: its stored failure answers below (409)
        if (!(e instanceof StripeRejectedError)) throw e;
      }
      created = await rpc<Created>("create_refund", args); // the refund, released now that it is covered
    }
    const { refund, stripe } = created;
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
