/**
 * The one place that builds the Stripe client: the official SDK with its fetch HTTP client and a
 * pinned API version. `STRIPE_API_BASE` (e.g. `http://127.0.0.1:12111`) points it at an emulator;
 * absent, it talks to api.stripe.com.
 * @module
 */
import Stripe from "npm:stripe@23.1.0";

export { Stripe };

/** The API version every request pins (the one `stripe@23.1.0` was generated for). */
export const STRIPE_API_VERSION = "2026-10-28.endive";

let cached: { signature: string; client: Stripe } | undefined;

/**
 * The Stripe client for the current environment (`STRIPE_SECRET_KEY`, `STRIPE_API_BASE`), built once
 * per configuration. Throws when no secret key is configured.
 */
export function stripeClient(): Stripe {
  const key = Deno.env.get("STRIPE_SECRET_KEY");
  if (!key) throw new Error("STRIPE_SECRET_KEY is not set");
  const base = Deno.env.get("STRIPE_API_BASE") ?? "";
  const signature = `${key}\n${base}`;
  if (cached?.signature !== signature) {
    const url = base ? new URL(base) : undefined;
    const client = new Stripe(key, {
      apiVersion: STRIPE_API_VERSION as Stripe.LatestApiVersion,
      httpClient: Stripe.createFetchHttpClient(),
      // The SDK retries connection errors, 409 and 5xx with the same idempotency key.
      maxNetworkRetries: 2,
      timeout: 15_000,
      ...(url
        ? {
          protocol: url.protocol.replace(":", "") as "http" | "https",
          host: url.hostname,
          port: Number(url.port || (url.protocol === "https:" ? 443 : 80)),
        }
        : {}),
    });
    cached = { signature, client };
  }
  return cached.client;
}
