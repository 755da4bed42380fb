// POST /functions/v1/enhanced-checkout: a signed-in buyer's checkout.
// Body { event_id, items: [{ tier_id, quantity }], ui_mode?: "hosted" | "embedded" }; Idempotency-Key required.
import { requireUser } from "../_shared/auth.ts";
import { checkout, CheckoutBody } from "../_shared/checkout.ts";
import { handler, readJson } from "../_shared/http.ts";
import { parseBody } from "../_shared/validate.ts";

Deno.serve(handler("enhanced-checkout", async (req) => {
  const user = await requireUser(req);
  const body = parseBody(CheckoutBody, await readJson(req));
  return checkout(req, "enhanced-checkout", { scope: `user:${user.id}`, userId: user.id }, body);
}));
