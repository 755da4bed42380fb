// POST /functions/v1/refunds: the organiser of the order's event (or a platform admin) refunds all or
// part of a paid order. Body { order_id, amount_cents?, reason? }; Idempotency-Key required.
// The limits (never more than paid - refunded - in flight) and the wallet debit live in create_refund.
import { requireUser } from "../_shared/auth.ts";
import { handler, json, readJson } from "../_shared/http.ts";
import { withIdempotencyKey } from "../_shared/idempotency_http.ts";
import { runOperation } from "../_shared/operations.ts";
import { rpc } from "../_shared/supabase.ts";
import { parseBody, z } from "../_shared/validate.ts";

const RefundBody = z.strictObject({
  order_id: z.uuid(),
  amount_cents: z.int().min(1).max(100_000_000).optional(),
  reason: z.enum(["duplicate", "fraudulent", "requested_by_customer"]).optional(),
});

interface Refund {
  refund_id: string;
  order_id: string;
  amount_cents: number;
  reason: string | null;
  status: string;
  payment_intent: string;
  order_status: string;
}

Deno.serve(handler("refunds", async (req) => {
  const user = await requireUser(req);
  const body = parseBody(RefundBody, await readJson(req));
  const scope = `user:${user.id}`;
  return withIdempotencyKey(req, { scope, endpoint: "refunds", payload: body }, async (key) => {
    const refund = await rpc<Refund>("create_refund", {
      p_scope: scope,
      p_idempotency_key: key,
      p_order_id: body.order_id,
      p_requested_by: user.id,
      p_is_admin: user.isPlatformAdmin,
      p_amount_cents: body.amount_cents ?? null,
      p_reason: body.reason ?? null,
    });
    const params = {
      payment_intent: refund.payment_intent,
      amount: refund.amount_cents,
      ...(refund.reason ? { reason: refund.reason } : {}),
      metadata: { refund_id: refund.refund_id, order_id: refund.order_id },
    };
    const { response, recorded } = await runOperation("refund:create", refund.refund_id, params, {
      userId: user.id,
    });
    const stripeRefund = response as { id: string; status: string };
    const state = (recorded ?? refund) as Refund;
    return json(201, {
      refund_id: refund.refund_id,
      stripe_refund_id: stripeRefund.id,
      status: stripeRefund.status,
      amount_cents: refund.amount_cents,
      order_status: state.order_status,
    });
  });
}));
