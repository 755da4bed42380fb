// POST /functions/v1/guest-checkout: a checkout by email, no account (verify_jwt = false).
// Body { event_id, items: [{ tier_id, quantity }], email, ui_mode? }; Idempotency-Key required.
// Rate-limited per email and per client address (429 with Retry-After).
import { checkout, GuestCheckoutBody } from "../_shared/checkout.ts";
import { clientAddress, handler, readJson } from "../_shared/http.ts";
import { guestScope } from "../_shared/idempotency_http.ts";
import { parseBody } from "../_shared/validate.ts";

Deno.serve(handler("guest-checkout", async (req, { info }) => {
  const body = parseBody(GuestCheckoutBody, await readJson(req));
  const buyer = {
    scope: await guestScope(body.email),
    guestEmail: body.email,
    clientIp: clientAddress(req, info),
  };
  return checkout(req, "guest-checkout", buyer, body);
}));
