/**
 * The parameters each endpoint of the emulator accepts, one list per endpoint (and per nested object it
 * reads), each held to the pinned SDK's parameter type at compile time: a name the SDK does not have
 * fails `deno check`. Any other parameter is refused as Stripe refuses an unknown one (400
 * `parameter_unknown`), including parameters Stripe has but the emulator does not model, so that nothing
 * is silently ignored. `expand` is listed where the SDK has it.
 * @module
 */
import type { Stripe } from "../../../supabase/functions/_shared/stripe.ts";

/** The names of a parameter type, for `as const satisfies Names<Stripe.XParams>`. */
type Names<T> = readonly (keyof T)[];

const PAGE = ["ending_before", "limit", "starting_after"] as const satisfies Names<Stripe.PaginationParams>;

/** Retrieve endpoints: `expand` only (every `*RetrieveParams` of the SDK has just that). */
export const RETRIEVE = ["expand"] as const satisfies Names<Stripe.ChargeRetrieveParams>;

export const CHECKOUT_SESSION_CREATE = [
  "cancel_url",
  "client_reference_id",
  "customer_email",
  "expand",
  "expires_at",
  "line_items",
  "metadata",
  "mode",
  "payment_intent_data",
  "return_url",
  "success_url",
  "ui_mode",
] as const satisfies Names<Stripe.Checkout.SessionCreateParams>;
export const LINE_ITEM = ["price_data", "quantity"] as const satisfies Names<
  Stripe.Checkout.SessionCreateParams.LineItem
>;
export const PRICE_DATA = ["currency", "product_data", "unit_amount"] as const satisfies Names<
  Stripe.Checkout.SessionCreateParams.LineItem.PriceData
>;
export const PRODUCT_DATA = ["name"] as const satisfies Names<
  Stripe.Checkout.SessionCreateParams.LineItem.PriceData.ProductData
>;
export const PAYMENT_INTENT_DATA = ["metadata", "transfer_group"] as const satisfies Names<
  Stripe.Checkout.SessionCreateParams.PaymentIntentData
>;
export const CHECKOUT_SESSION_LIST = [
  ...PAGE,
  "created",
  "expand",
  "payment_intent",
  "status",
] as const satisfies Names<
  Stripe.Checkout.SessionListParams
>;
export const CHECKOUT_SESSION_EXPIRE = ["expand"] as const satisfies Names<
  Stripe.Checkout.SessionExpireParams
>;
export const LINE_ITEM_LIST = [...PAGE, "expand"] as const satisfies Names<
  Stripe.Checkout.SessionListLineItemsParams
>;

export const PAYMENT_INTENT_CREATE = [
  "amount",
  "currency",
  "description",
  "expand",
  "metadata",
  "transfer_group",
] as const satisfies Names<Stripe.PaymentIntentCreateParams>;

export const CHARGE_LIST = [
  ...PAGE,
  "created",
  "expand",
  "payment_intent",
  "transfer_group",
] as const satisfies Names<
  Stripe.ChargeListParams
>;

export const REFUND_CREATE = [
  "amount",
  "charge",
  "expand",
  "metadata",
  "payment_intent",
  "reason",
] as const satisfies Names<Stripe.RefundCreateParams>;
export const REFUND_LIST = [
  ...PAGE,
  "charge",
  "created",
  "expand",
  "payment_intent",
] as const satisfies Names<
  Stripe.RefundListParams
>;

export const TRANSFER_CREATE = [
  "amount",
  "currency",
  "description",
  "destination",
  "expand",
  "metadata",
  "source_transaction",
  "transfer_group",
] as const satisfies Names<Stripe.TransferCreateParams>;
export const TRANSFER_UPDATE = ["description", "expand", "metadata"] as const satisfies Names<
  Stripe.TransferUpdateParams
>;
export const TRANSFER_LIST = [
  ...PAGE,
  "created",
  "destination",
  "expand",
  "transfer_group",
] as const satisfies Names<
  Stripe.TransferListParams
>;
export const REVERSAL_CREATE = ["amount", "description", "expand", "metadata"] as const satisfies Names<
  Stripe.TransferCreateReversalParams
>;
export const REVERSAL_LIST = [...PAGE, "expand"] as const satisfies Names<Stripe.TransferListReversalsParams>;

export const DISPUTE_LIST = [
  ...PAGE,
  "charge",
  "created",
  "expand",
  "payment_intent",
] as const satisfies Names<
  Stripe.DisputeListParams
>;

export const BALANCE_RETRIEVE = ["expand"] as const satisfies Names<Stripe.BalanceRetrieveParams>;
export const BALANCE_TRANSACTION_LIST = [
  ...PAGE,
  "created",
  "currency",
  "expand",
  "source",
  "type",
] as const satisfies Names<Stripe.BalanceTransactionListParams>;

export const EVENT_LIST = [...PAGE, "created", "expand", "type", "types"] as const satisfies Names<
  Stripe.EventListParams
>;
