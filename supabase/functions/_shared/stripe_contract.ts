/**
 * What the product may send to Stripe, tied to the pinned SDK's types (`stripe@23.1.0`, API version
 * `2026-10-28.endive`). Enum lists are constants checked against the SDK at compile time (`Known`
 * strips the SDK's `string & Record<never, never>` widening, so a value the SDK drops fails
 * `deno check`); amounts and currencies follow docs.stripe.com/currencies. The emulator refuses
 * requests with the same constants, and a test parses every parameter builder's output with the
 * strict schemas below.
 * @module
 */
import type { Stripe } from "./stripe.ts";
import { z } from "./validate.ts";

/** The string literals of an SDK enum type, without its open-ended `OtherString` member. */
export type Known<T> = T extends string ? (string extends T ? never : T) : never;

/** `true` when `A` and `B` are the same type, else `false` (for compile-time checks). */
export type Equal<A, B> = (<T>() => T extends A ? 1 : 2) extends (<T>() => T extends B ? 1 : 2) ? true
  : false;

/** The members of a constant list, to compare with an SDK enum: `const _: Equal<Values<...>, Known<...>> = true`. */
export type Values<T extends readonly string[]> = T[number];

/** Checkout Session `ui_mode` since 2026-03-25.dahlia (docs.stripe.com/changelog/dahlia/2026-03-25/updates-available-checkout-session-ui-modes). */
export const CHECKOUT_UI_MODES = ["elements", "embedded_page", "form", "hosted_page"] as const;
const _uiModes: Equal<
  Values<typeof CHECKOUT_UI_MODES>,
  Known<NonNullable<Stripe.Checkout.SessionCreateParams["ui_mode"]>>
> = true;

/** Checkout Session `mode`. */
export const CHECKOUT_MODES = ["payment", "setup", "subscription"] as const;
const _modes: Equal<
  Values<typeof CHECKOUT_MODES>,
  Known<NonNullable<Stripe.Checkout.SessionCreateParams["mode"]>>
> = true;

/** Refund `reason` as the API accepts it on create. */
export const REFUND_REASONS = ["duplicate", "fraudulent", "requested_by_customer"] as const;
const _reasons: Equal<
  Values<typeof REFUND_REASONS>,
  Known<NonNullable<Stripe.RefundCreateParams["reason"]>>
> = true;

/** Checkout Session `status` (and the `status` filter of the list endpoint). */
export const CHECKOUT_SESSION_STATUSES = ["complete", "expired", "open"] as const;
const _sessionStatuses: Equal<
  Values<typeof CHECKOUT_SESSION_STATUSES>,
  Known<NonNullable<Stripe.Checkout.Session["status"]>>
> = true;

/** Why a refund is `pending` (docs.stripe.com/changelog/basil/2025-04-30/refund-pending-reason). */
export const REFUND_PENDING_REASONS = ["charge_pending", "insufficient_funds", "processing"] as const;
const _pendingReasons: Equal<
  Values<typeof REFUND_PENDING_REASONS>,
  Known<NonNullable<Stripe.Refund["pending_reason"]>>
> = true;

/** Dispute `status` (docs.stripe.com/api/disputes/object). */
export const DISPUTE_STATUSES = [
  "appeal_needs_response",
  "appeal_under_review",
  "lost",
  "needs_response",
  "prevented",
  "under_review",
  "warning_closed",
  "warning_needs_response",
  "warning_under_review",
  "won",
] as const;
const _disputeStatuses: Equal<Values<typeof DISPUTE_STATUSES>, Known<Stripe.Dispute["status"]>> = true;

/**
 * Dispute `reason`. The SDK types it as a plain `string`, so this list cannot be checked at compile time;
 * it is the list in `Disputes.d.ts` (`reason`) and docs.stripe.com/disputes/categories.
 */
export const DISPUTE_REASONS = [
  "bank_cannot_process",
  "check_returned",
  "credit_not_processed",
  "customer_initiated",
  "debit_not_authorized",
  "duplicate",
  "fraudulent",
  "general",
  "incorrect_account_details",
  "insufficient_funds",
  "noncompliant",
  "product_not_received",
  "product_unacceptable",
  "subscription_canceled",
  "unrecognized",
] as const;

/** The project's own body values for `ui_mode`, and what each one sends to Stripe. */
export const UI_MODE_OF = { hosted: "hosted_page", embedded: "embedded_page" } as const satisfies Record<
  string,
  Values<typeof CHECKOUT_UI_MODES>
>;

/** Refund reasons an organiser may give; `fraudulent` adds the card and email to Stripe's block lists (admins only). */
export const ORGANISER_REFUND_REASONS = [
  "duplicate",
  "requested_by_customer",
] as const satisfies readonly Values<
  typeof REFUND_REASONS
>[];

/**
 * The largest amount Stripe accepts in one charge, refund or transfer: eight digits in minor units
 * (docs.stripe.com/currencies#minimum-and-maximum-charge-amounts).
 */
export const MAX_AMOUNT = 99_999_999;

/**
 * The currencies this platform settles in, with their minor-unit exponent (0 for zero-decimal
 * currencies, whose amounts count whole units) and Stripe's minimum charge in minor units
 * (docs.stripe.com/currencies: "Minimum and maximum charge amounts", "Zero-decimal currencies").
 */
export const CURRENCIES = {
  usd: { exponent: 2, minimumCharge: 50 },
  eur: { exponent: 2, minimumCharge: 50 },
  gbp: { exponent: 2, minimumCharge: 30 },
  cad: { exponent: 2, minimumCharge: 50 },
  aud: { exponent: 2, minimumCharge: 50 },
  jpy: { exponent: 0, minimumCharge: 50 },
} as const;

/** A settlement currency of the platform. */
export type Currency = keyof typeof CURRENCIES;

/** Checkout Sessions expire 30 minutes to 24 hours after they are created (`Checkout/Sessions.d.ts`, `expires_at`). */
export const CHECKOUT_EXPIRY = { minSeconds: 30 * 60, maxSeconds: 24 * 3600 } as const;

/** At most this many line items in a payment-mode session (`Checkout/Sessions.d.ts`, `line_items`). */
export const MAX_LINE_ITEMS = 100;

const currency = z.enum(Object.keys(CURRENCIES) as [Currency, ...Currency[]]);
const amount = z.int().min(1).max(MAX_AMOUNT);
const metadata = z.record(z.string().max(40), z.string().max(500)).refine(
  (m) => Object.keys(m).length <= 50,
  {
    message: "at most 50 keys",
  },
);
const url = z.url({ protocol: /^https?$/ });

/**
 * The Checkout Session parameters the product sends, as Stripe accepts them when created at `now`
 * (seconds): strict (unknown keys refused), `expires_at` in Stripe's window, amounts within limits,
 * URLs as the `ui_mode` requires.
 */
export function checkoutSessionSchema(now: number) {
  return z.strictObject({
    mode: z.literal("payment"),
    ui_mode: z.enum([UI_MODE_OF.hosted, UI_MODE_OF.embedded]),
    line_items: z.array(z.strictObject({
      quantity: z.int().min(1),
      price_data: z.strictObject({
        currency,
        unit_amount: z.int().min(0).max(MAX_AMOUNT),
        product_data: z.strictObject({ name: z.string().min(1) }),
      }),
    })).min(1).max(MAX_LINE_ITEMS),
    metadata,
    client_reference_id: z.string().max(200),
    expires_at: z.int().min(now + CHECKOUT_EXPIRY.minSeconds).max(now + CHECKOUT_EXPIRY.maxSeconds),
    payment_intent_data: z.strictObject({ metadata, transfer_group: z.string().max(500) }),
    customer_email: z.email().optional(),
    success_url: url.optional(),
    return_url: url.optional(),
  }).superRefine((p, ctx) => {
    const cur = p.line_items[0].price_data.currency;
    if (p.line_items.some((l) => l.price_data.currency !== cur)) {
      ctx.addIssue({ code: "custom", path: ["line_items"], message: "one currency for every line item" });
    }
    const total = p.line_items.reduce((n, l) => n + l.quantity * l.price_data.unit_amount, 0);
    if (total < CURRENCIES[cur].minimumCharge || total > MAX_AMOUNT) {
      ctx.addIssue({
        code: "custom",
        path: ["line_items"],
        message: `total ${total} outside Stripe's limits`,
      });
    }
    const hosted = p.ui_mode === UI_MODE_OF.hosted;
    if (hosted !== (p.success_url !== undefined) || hosted === (p.return_url !== undefined)) {
      ctx.addIssue({
        code: "custom",
        path: ["ui_mode"],
        message: "hosted_page takes success_url, embedded_page takes return_url",
      });
    }
  }) satisfies z.ZodType<Stripe.Checkout.SessionCreateParams>;
}

/** The Refund parameters the product sends. */
export const refundSchema = z.strictObject({
  payment_intent: z.string().regex(/^pi_/),
  amount,
  reason: z.enum(REFUND_REASONS).optional(),
  metadata,
}) satisfies z.ZodType<Stripe.RefundCreateParams>;

/** The Transfer parameters the product sends (a payout to an organiser's connected account). */
export const transferSchema = z.strictObject({
  amount,
  currency,
  destination: z.string().regex(/^acct_/),
  transfer_group: z.string().max(500),
  source_transaction: z.string().regex(/^ch_/).optional(),
  metadata,
}) satisfies z.ZodType<Stripe.TransferCreateParams>;

/**
 * The Transfer reversal parameters the product sends: the transfer (the call's path,
 * `POST /v1/transfers/:id/reversals`) and the body (`TransferCreateReversalParams`).
 */
export const transferReversalSchema = z.strictObject({
  transfer: z.string().regex(/^tr_/),
  amount,
  metadata,
});
const _reversalBody: Omit<z.output<typeof transferReversalSchema>, "transfer"> extends
  Stripe.TransferCreateReversalParams ? true : false = true;
