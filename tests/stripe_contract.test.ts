// The emulator's enum lists held to the pinned SDK's types. At compile time (`deno check`): each list equals
// the SDK's enum, each value the tests below send as a non-member is not in it, and one deliberately wrong list
// fails to compile (`@ts-expect-error`: were the check toothless, the directive itself would be the error).
// At run time: the emulator refuses every non-member, through the official SDK.
import assert from "node:assert/strict";
import { Stripe } from "../supabase/functions/_shared/stripe.ts";
import {
  CHECKOUT_MODES,
  CHECKOUT_SESSION_STATUSES,
  CHECKOUT_UI_MODES,
  DISPUTE_STATUSES,
  type Equal,
  type Known,
  REFUND_PENDING_REASONS,
  REFUND_REASONS,
  type Values,
} from "../supabase/functions/_shared/stripe_contract.ts";
import { startStripeEmulator } from "../tools/local/stripe_emulator/mod.ts";

type UiMode = Known<NonNullable<Stripe.Checkout.SessionCreateParams["ui_mode"]>>;
type Mode = Known<NonNullable<Stripe.Checkout.SessionCreateParams["mode"]>>;
type RefundReason = Known<NonNullable<Stripe.RefundCreateParams["reason"]>>;
type SessionStatus = Known<NonNullable<Stripe.Checkout.SessionListParams["status"]>>;

const _uiModes: Equal<Values<typeof CHECKOUT_UI_MODES>, UiMode> = true;
const _modes: Equal<Values<typeof CHECKOUT_MODES>, Mode> = true;
const _reasons: Equal<Values<typeof REFUND_REASONS>, RefundReason> = true;
const _statuses: Equal<Values<typeof CHECKOUT_SESSION_STATUSES>, SessionStatus> = true;
const _pending: Equal<
  Values<typeof REFUND_PENDING_REASONS>,
  Known<NonNullable<Stripe.Refund["pending_reason"]>>
> = true;
const _disputes: Equal<Values<typeof DISPUTE_STATUSES>, Known<Stripe.Dispute["status"]>> = true;

/** The list as it was before 2026-03-25.dahlia: `hosted` and `embedded` no longer exist, so this must not compile. */
const OLD_UI_MODES = ["hosted", "embedded", "elements", "form"] as const;
// @ts-expect-error `hosted` and `embedded` are not ui_modes of the pinned SDK (and hosted_page is missing)
const _old: Equal<Values<typeof OLD_UI_MODES>, UiMode> = true;

/** Values the emulator must refuse, each proven at compile time to be outside the SDK's enum. */
const NOT_UI_MODES = ["hosted", "embedded", "custom"] as const;
const NOT_MODES = ["pay", "one_time"] as const;
// `expired_uncaptured_charge` is a Refund's reason on the object, never one a create request may send.
const NOT_REFUND_REASONS = ["expired_uncaptured_charge", "other"] as const;
const NOT_SESSION_STATUSES = ["paid", "canceled"] as const;
const _notUiModes: Equal<Extract<Values<typeof NOT_UI_MODES>, UiMode>, never> = true;
const _notModes: Equal<Extract<Values<typeof NOT_MODES>, Mode>, never> = true;
const _notReasons: Equal<Extract<Values<typeof NOT_REFUND_REASONS>, RefundReason>, never> = true;
const _notStatuses: Equal<Extract<Values<typeof NOT_SESSION_STATUSES>, SessionStatus>, never> = true;
const _objectReason: "expired_uncaptured_charge" extends Known<NonNullable<Stripe.Refund["reason"]>> ? true
  : false = true;

async function withStripe(fn: (stripe: Stripe) => Promise<void>): Promise<void> {
  const emu = await startStripeEmulator({
    webhookSecret: "whsec_contract",
    initialBalance: { usd: 100_000 },
  });
  const url = new URL(emu.url);
  try {
    await fn(
      new Stripe("sk_test_contract", {
        httpClient: Stripe.createFetchHttpClient(),
        host: url.hostname,
        port: Number(url.port),
        protocol: "http",
        maxNetworkRetries: 0,
      }),
    );
  } finally {
    await emu.close();
  }
}

const session = (overrides: Record<string, unknown>) =>
  ({
    mode: "payment",
    line_items: [{
      quantity: 1,
      price_data: { currency: "usd", unit_amount: 1000, product_data: { name: "GA" } },
    }],
    success_url: "https://example.com/ok",
    ...overrides,
  }) as Stripe.Checkout.SessionCreateParams;

/** A 400 `parameter_invalid` on `param` naming the refused value. */
const refusedValue = (param: string, value: string) => (e: Stripe.errors.StripeError) =>
  e.statusCode === 400 && e.code === "parameter_invalid" && e.param === param &&
  e.message.includes(`'${value}'`);

Deno.test("the emulator refuses every ui_mode, mode and session status outside the SDK's enums", () =>
  withStripe(async (stripe) => {
    for (const uiMode of NOT_UI_MODES) {
      await assert.rejects(
        stripe.checkout.sessions.create(session({ ui_mode: uiMode })),
        refusedValue("ui_mode", uiMode),
      );
    }
    for (const mode of NOT_MODES) {
      await assert.rejects(stripe.checkout.sessions.create(session({ mode })), refusedValue("mode", mode));
    }
    for (const status of NOT_SESSION_STATUSES) {
      await assert.rejects(
        stripe.checkout.sessions.list({ status: status as SessionStatus }),
        refusedValue("status", status),
      );
    }
    // and accepts the members it models
    assert.equal((await stripe.checkout.sessions.create(session({ ui_mode: "form" }))).ui_mode, "form");
    for (const status of CHECKOUT_SESSION_STATUSES) await stripe.checkout.sessions.list({ status });
  }));

Deno.test("the emulator refuses every refund reason outside the SDK's create enum", () =>
  withStripe(async (stripe) => {
    const pi = await stripe.paymentIntents.create({ amount: 1000, currency: "usd" });
    for (const reason of NOT_REFUND_REASONS) {
      await assert.rejects(
        stripe.refunds.create({ payment_intent: pi.id, reason: reason as RefundReason }),
        refusedValue("reason", reason),
      );
    }
  }));
