// POST /functions/v1/guest-checkout: a checkout by email, no account (verify_jwt = false); the caller
// sends the project's publishable key in `apikey`.
// Body { event_id, items: [{ tier_id, quantity }], email, ui_mode? }; Idempotency-Key required.
// Rate-limited per email, per event (all guests together) and, when the deployment names the header that
// carries it (CLIENT_IP_HEADER), per client address (429 with Retry-After); a header that holds no IP
// address counts as the one shared address `invalid`.
import { requireApiKey } from "../_shared/auth.ts";
import { checkout, GuestCheckoutBody } from "../_shared/checkout.ts";
import { clientAddress, handler, INVALID_CLIENT_ADDRESS, readJson } from "../_shared/http.ts";
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
  } else if (clientIp === INVALID_CLIENT_ADDRESS) {
    log("warn", "the client-address header holds no IP address: counted in the shared 'ip:invalid' bucket", {
      header: Deno.env.get("CLIENT_IP_HEADER"),
    });
  }
  const buyer = { scope: await guestScope(body.email), guestEmail: body.email, clientIp };
  return checkout(req, "guest-checkout", buyer, body);
}));
