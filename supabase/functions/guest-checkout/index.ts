// POST /functions/v1/guest-checkout: a checkout by email, no account (verify_jwt = false); the caller
// sends the project's publishable key in `apikey`.
// Body { event_id, items: [{ tier_id, quantity }], email, ui_mode? }; Idempotency-Key required.
// Rate-limited per email and, when the deployment names the header that carries it (CLIENT_IP_HEADER),
// per client address (429 with Retry-After).
import { requireApiKey } from "../_shared/auth.ts";
import { checkout, GuestCheckoutBody } from "../_shared/checkout.ts";
import { clientAddress, handler, readJson } from "../_shared/http.ts";
import { guestScope } from "../_shared/idempotency_http.ts";
import { log } from "../_shared/log.ts";
import { parseBody } from "../_shared/validate.ts";

Deno.serve(handler("guest-checkout", async (req) => {
  await requireApiKey(req);
  const body = parseBody(GuestCheckoutBody, await readJson(req));
  const clientIp = clientAddress(req);
  if (!clientIp) {
    log("info", "no client address: the per-address rate limit is skipped", {
      header: Deno.env.get("CLIENT_IP_HEADER") ?? null,
    });
  }
  const buyer = { scope: await guestScope(body.email), guestEmail: body.email, clientIp };
  return checkout(req, "guest-checkout", buyer, body);
}));
