/**
 * Typed functions for every endpoint. Request types come from the zod schemas the functions validate with
 * (type-only imports: nothing of zod or the functions reaches a browser bundle), so `deno check` fails the
 * moment client and server drift apart.
 * @module
 */
import type { CheckoutBody, GuestCheckoutBody } from "../supabase/functions/_shared/checkout.ts";
import type { z } from "../supabase/functions/_shared/validate.ts";
import type { ResolveBody } from "../supabase/functions/operator-resolve/index.ts";
import type { PayoutBody } from "../supabase/functions/payouts/index.ts";
import type { RefundBody } from "../supabase/functions/refunds/index.ts";
import { callIdempotent, type CallOptions, type Result } from "./call.ts";
import { intentOf } from "./intent.ts";
import type { Transport } from "./transport.ts";

/** `enhanced-checkout`'s body: `{ event_id, items: [{ tier_id, quantity }], ui_mode? }`. */
export type CheckoutRequest = z.input<typeof CheckoutBody>;
/** `guest-checkout`'s body: the same plus `email`. */
export type GuestCheckoutRequest = z.input<typeof GuestCheckoutBody>;
/** `refunds`' body: `{ order_id, amount_cents?, reason? }`. */
export type RefundRequest = z.input<typeof RefundBody>;
/** `payouts`' body: `{ amount_cents, currency? }`. */
export type PayoutRequest = z.input<typeof PayoutBody>;

/**
 * `operator-resolve`'s body (platform admins): `{ operation_type, operation_id, stripe_object_id }` or
 * `{ operation_type, operation_id, no_object: true }`.
 */
export type ResolveRequest = z.input<typeof ResolveBody>;

/** A resolution's answer (200): what the operation was settled with, checked at Stripe. */
export interface ResolveAnswer {
  operation_type: string;
  operation_id: string;
  p_result?: Record<string, unknown>;
  p_error?: Record<string, unknown>;
  settled: unknown;
}

/** A checkout's answer (201): go to `url` (hosted) or mount `client_secret` (embedded). */
export interface CheckoutAnswer {
  order_id: string;
  checkout_session_id: string;
  url?: string;
  client_secret?: string;
  expires_at: string;
  amount_total: number;
  currency: string;
}

/** A refund's answer (201). */
export interface RefundAnswer {
  refund_id: string;
  stripe_refund_id: string;
  status: string;
  amount_cents: number;
  order_status: string;
}

/** A payout's answer (201). */
export interface PayoutAnswer {
  payout_id: string;
  stripe_transfer_id: string;
  status: string;
  amount_cents: number;
}

/** The endpoints, each one intent per call (see `callIdempotent`). */
export interface TicketsClient {
  checkout(body: CheckoutRequest, options?: CallOptions): Promise<Result<CheckoutAnswer>>;
  guestCheckout(body: GuestCheckoutRequest, options?: CallOptions): Promise<Result<CheckoutAnswer>>;
  refund(body: RefundRequest, options?: CallOptions): Promise<Result<RefundAnswer>>;
  payout(body: PayoutRequest, options?: CallOptions): Promise<Result<PayoutAnswer>>;
  /** A platform admin settles an operation that needs attention; the object is checked at Stripe. */
  resolve(body: ResolveRequest, options?: CallOptions): Promise<Result<ResolveAnswer>>;
}

/**
 * The endpoints over `transport` (`fetchTransport` or `invokeTransport`), with `defaults` for every call.
 * Calls of one intent made while one is running (a double click) share its promise.
 *
 * @example
 * const tickets = ticketsClient(invokeTransport(supabase));
 * const { data } = await tickets.guestCheckout({ event_id, items: [{ tier_id, quantity: 2 }], email });
 * location.assign(data.url!);
 */
export function ticketsClient(transport: Transport, defaults: CallOptions = {}): TicketsClient {
  const running = new Map<string, Promise<Result<unknown>>>();
  function call<T>(endpoint: string, body: unknown, options?: CallOptions): Promise<Result<T>> {
    const merged = { ...defaults, ...options, retry: { ...defaults.retry, ...options?.retry } };
    const intent = merged.intent ?? intentOf(endpoint, body);
    let promise = running.get(intent);
    if (!promise) {
      promise = callIdempotent<unknown>(transport, endpoint, body, { ...merged, intent })
        .finally(() => running.delete(intent));
      running.set(intent, promise);
    }
    return promise as Promise<Result<T>>;
  }
  return {
    checkout: (body, options) => call("enhanced-checkout", body, options),
    guestCheckout: (body, options) => call("guest-checkout", body, options),
    refund: (body, options) => call("refunds", body, options),
    payout: (body, options) => call("payouts", body, options),
    resolve: (body, options) => call("operator-resolve", body, options),
  };
}
