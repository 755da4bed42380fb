/**
 * Every Stripe side effect of the product, in one table: the Stripe call, the fields kept to answer
 * again, and the RPCs that record its outcome together with the business row (the order, refund or
 * payout) in one transaction. The functions run them with `runOperation`; the reconciler re-drives a
 * stalled one from its stored parameters with the same table.
 * @module
 */
import {
  type Json,
  recordOutcome,
  type StripeClaim,
  type StripeOperationStore,
  stripeOperationStore,
  type StripeResult,
  withStripeIdempotency,
} from "./idempotency.ts";
import { type Stripe, stripeClient } from "./stripe.ts";
import { rpc } from "./supabase.ts";

/** The operation types. */
export type OperationType = "checkout:create" | "refund:create" | "payout:create";

interface OperationSpec {
  /** The business id's parameter in the recording RPCs. */
  idArg: string;
  complete: string;
  fail: string;
  create(stripe: Stripe, params: Json, stripeKey: string): Promise<{ id: string }>;
  pick(result: never): Json;
}

// The SDK's parameter types are checked where the parameters are built; here they are stored JSON.
// deno-lint-ignore no-explicit-any
type AnyParams = any;

/** What each operation calls and how its outcome is recorded. */
export const OPERATIONS: Record<OperationType, OperationSpec> = {
  "checkout:create": {
    idArg: "p_order_id",
    complete: "complete_checkout_session",
    fail: "fail_checkout_session",
    create: (stripe, params, key) =>
      stripe.checkout.sessions.create(params as AnyParams, { idempotencyKey: key }),
    pick: (s: Stripe.Checkout.Session) => ({
      id: s.id,
      url: s.url,
      client_secret: s.client_secret,
      expires_at: s.expires_at,
      amount_total: s.amount_total,
      currency: s.currency,
    }),
  },
  "refund:create": {
    idArg: "p_refund_id",
    complete: "complete_refund",
    fail: "fail_refund",
    create: (stripe, params, key) => stripe.refunds.create(params as AnyParams, { idempotencyKey: key }),
    pick: (r: Stripe.Refund) => ({ id: r.id, status: r.status, amount: r.amount, currency: r.currency }),
  },
  "payout:create": {
    idArg: "p_payout_id",
    complete: "complete_payout",
    fail: "fail_payout",
    create: (stripe, params, key) => stripe.transfers.create(params as AnyParams, { idempotencyKey: key }),
    pick: (t: Stripe.Transfer) => ({
      id: t.id,
      amount: t.amount,
      currency: t.currency,
      destination: t.destination as string,
    }),
  },
};

/**
 * Runs operation `type` for the business row `id` with Stripe parameters `params` through the
 * idempotency core (see `withStripeIdempotency` for what it throws).
 */
export function runOperation(
  type: OperationType,
  id: string,
  params: Json,
  options: {
    userId?: string | null;
    leaseSeconds?: number;
    /** A claim already made (the reconciler's bulk claim, or a merged RPC such as start_checkout). */
    claim?: StripeClaim;
    /** Records the outcome instead of the operation's complete RPC (to merge it into a later RPC). */
    complete?: (fencingToken: number, response: Json) => Promise<Json | void>;
  } = {},
): Promise<StripeResult> {
  const spec = OPERATIONS[type];
  const op = {
    operationType: type,
    operationId: id,
    params: params as { [key: string]: Json },
    userId: options.userId,
  };
  const record = (fn: string, args: Record<string, unknown>) =>
    recordOutcome(op, () => rpc<Json>(fn, { [spec.idArg]: id, ...args }));
  const store: StripeOperationStore = {
    ...stripeOperationStore(),
    complete: (_op, token, _resourceId, response) =>
      options.complete
        ? options.complete(token, response)
        : record(spec.complete, { p_fencing_token: token, p_result: response }),
    fail: async (_op, token, error) => {
      await record(spec.fail, { p_fencing_token: token, p_error: error });
    },
  };
  return withStripeIdempotency(op, (key) => spec.create(stripeClient(), params, key), {
    store,
    pick: spec.pick as (r: { id: string }) => Json,
    leaseSeconds: options.leaseSeconds,
    claim: options.claim,
  });
}
