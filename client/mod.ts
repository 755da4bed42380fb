/**
 * The browser side of the functions' Idempotency-Key contract: one key per user intent kept in
 * `localStorage` (for 24 hours), retries as the contract asks, problems as typed errors, with `fetch` or
 * `supabase.functions.invoke`. No dependency: supabase-js is used only if you pass a client of it.
 *
 * @example
 * import { createClient } from "@supabase/supabase-js";
 * import { invokeTransport, ProblemError, ticketsClient } from "./client/mod.ts";
 *
 * const tickets = ticketsClient(invokeTransport(createClient(url, publishableKey)));
 * try {
 *   const { data } = await tickets.guestCheckout({ event_id, items: [{ tier_id, quantity: 2 }], email });
 *   location.assign(data.url!);
 * } catch (e) {
 *   if (e instanceof ProblemError && e.code === "sold-out") showSoldOut(e.detail);
 *   else throw e;
 * }
 * @module
 */
export * from "./call.ts";
export * from "./endpoints.ts";
export * from "./intent.ts";
export * from "./problem.ts";
export * from "./transport.ts";
