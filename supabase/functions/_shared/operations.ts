/**
 * Every Stripe side effect of the product, one declaration each: its operation type, the strict schema of
 * the parameters it sends (as Stripe accepts them at API 2026-10-28.endive), the Stripe call, the fields
 * kept to answer again, how its object is looked up in Stripe when its key can no longer settle it, and
 * the RPCs that record its outcome together with its business row (the order, refund or payout) in one
 * transaction. The functions, the reconciler and operators' resolution all run operations from here;
 * `private.stripe_operation_types` is the SQL side of the same list (a test holds the two together).
 *
 * Adding an operation: one declaration here, one migration (its business row, its parameter builder,
 * its create/complete/fail RPCs and its row in `private.stripe_operation_types`), one function.
 * @module
 */
import {
  IDEMPOTENCY_DEFAULTS,
  type LookupResult,
  type StripeResult,
  withStripeIdempotency,
} from "./idempotency.ts";
import {
  type ClaimRow,
  type Json,
  recordOutcome,
  stripeClaimOf,
  type StripeOperationStore,
  stripeOperationStore,
} from "./idempotency_store.ts";
import {
  checkoutSessionSchema,
  refundSchema,
  transferReversalSchema,
  transferSchema,
} from "./stripe_contract.ts";
import { type Stripe, stripeClient } from "./stripe.ts";
import { rpc } from "./supabase.ts";
import type { z } from "./validate.ts";

/** Where a look-up starts from: the operation's id, its stored parameters, and when it was created. */
export interface LookupContext<P> {
  operationId: string;
  params: P;
  /** When the operation was first claimed (unix seconds): nothing of it at Stripe is older. */
  createdAt: number;
}

/** One Stripe operation, declared once. `P` is the parameters as sent, `R` the Stripe object it makes. */
export interface OperationDeclaration<P, R extends { id: string }, T extends string = string> {
  type: T;
  /** The business row's id parameter of the complete and fail RPCs (`(id uuid, fencing_token, jsonb)`). */
  idArg: string;
  complete: string;
  fail: string;
  /** The parameters as Stripe accepts them when sent at `now` (unix seconds); strict. */
  schema(now: number): z.ZodType<P>;
  send(stripe: Stripe, params: P, idempotencyKey: string): Promise<R>;
  /** The fields kept to answer again (and handed to the complete RPC). */
  pick(result: R): Json;
  /** Finds the object in Stripe by what the product put on it. */
  lookup(stripe: Stripe, context: LookupContext<P>): Promise<LookupResult<R>>;
  /** Whether `object` is the operation's, by what the product put on it: the rule `lookup` finds it by. */
  matches(object: R, context: LookupContext<P>): boolean;
  /** The object `id` from Stripe (an operator says it is the operation's), or null when Stripe has none. */
  retrieve(stripe: Stripe, id: string, params: P): Promise<R | null>;
}

/** The one object of `candidates` that `isOurs`, proof there is none, or undecided when there are several. */
function single<R extends { id: string }>(candidates: R[], where: string): LookupResult<R> {
  if (candidates.length === 1) return { found: candidates[0] };
  if (candidates.length === 0) return { absent: `none in ${where}` };
  return { undecided: { reason: `several objects in ${where}`, ids: candidates.map((c) => c.id) } };
}

/** Collects the items of a Stripe list (all pages) that satisfy `keep`. */
async function collect<T>(list: AsyncIterable<T>, keep: (item: T) => boolean): Promise<T[]> {
  const out: T[] = [];
  for await (const item of list) if (keep(item)) out.push(item);
  return out;
}

/** The id of an expandable field (`"pi_..."` or `{ id: "pi_..." }`). */
function idOf(field: string | { id: string } | null | undefined): string | null {
  return typeof field === "string" ? field : field?.id ?? null;
}

/** The object, or null when Stripe answers 404 (`resource_missing`: docs.stripe.com/error-codes/resource-missing). */
async function orNull<R>(retrieving: Promise<R>): Promise<R | null> {
  try {
    return await retrieving;
  } catch (e) {
    if ((e as { statusCode?: number }).statusCode === 404) return null;
    throw e;
  }
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** Seconds of clock difference allowed between our database and Stripe when searching by creation time. */
const CLOCK_SKEW_SECONDS = 300;

const checkoutCreate: OperationDeclaration<
  Stripe.Checkout.SessionCreateParams,
  Stripe.Checkout.Session,
  "checkout:create"
> = {
  type: "checkout:create",
  idArg: "p_order_id",
  complete: "complete_checkout_session",
  fail: "fail_checkout_session",
  schema: checkoutSessionSchema,
  send: (stripe, params, key) => stripe.checkout.sessions.create(params, { idempotencyKey: key }),
  pick: (s) => ({
    id: s.id,
    url: s.url,
    client_secret: s.client_secret,
    expires_at: s.expires_at,
    amount_total: s.amount_total,
    currency: s.currency,
  }),
  matches: (s, { operationId, params, createdAt }) =>
    s.metadata?.order_id === operationId && s.client_reference_id === params.client_reference_id &&
    s.created >= createdAt - CLOCK_SKEW_SECONDS,
  retrieve: (stripe, id) => orNull(stripe.checkout.sessions.retrieve(id)),
  // Sessions cannot be searched by metadata: list those created since the operation began.
  lookup: async (stripe, context) =>
    single(
      await collect(
        stripe.checkout.sessions.list({
          created: { gte: context.createdAt - CLOCK_SKEW_SECONDS },
          limit: 100,
        }),
        (s) => checkoutCreate.matches(s, context),
      ),
      `Checkout Sessions created since ${
        context.createdAt - CLOCK_SKEW_SECONDS
      } with metadata.order_id ${context.operationId}`,
    ),
};

const refundCreate: OperationDeclaration<Stripe.RefundCreateParams, Stripe.Refund, "refund:create"> = {
  type: "refund:create",
  idArg: "p_refund_id",
  complete: "complete_refund",
  fail: "fail_refund",
  schema: () => refundSchema,
  send: (stripe, params, key) => stripe.refunds.create(params, { idempotencyKey: key }),
  pick: (r) => ({ id: r.id, status: r.status, amount: r.amount, currency: r.currency }),
  matches: (r, { operationId, params }) =>
    r.metadata?.refund_id === operationId && idOf(r.payment_intent) === params.payment_intent,
  retrieve: (stripe, id) => orNull(stripe.refunds.retrieve(id)),
  lookup: async (stripe, context) =>
    single(
      await collect(
        stripe.refunds.list({ payment_intent: context.params.payment_intent, limit: 100 }),
        (r) => refundCreate.matches(r, context),
      ),
      `the refunds of ${context.params.payment_intent} with metadata.refund_id ${context.operationId}`,
    ),
};

const payoutCreate: OperationDeclaration<Stripe.TransferCreateParams, Stripe.Transfer, "payout:create"> = {
  type: "payout:create",
  idArg: "p_payout_id",
  complete: "complete_payout",
  fail: "fail_payout",
  schema: () => transferSchema,
  send: (stripe, params, key) => stripe.transfers.create(params, { idempotencyKey: key }),
  pick: (t) => ({
    id: t.id,
    amount: t.amount,
    currency: t.currency,
    destination: typeof t.destination === "string" ? t.destination : t.destination?.id ?? null,
  }),
  matches: (t, { operationId, params }) =>
    t.metadata?.payout_id === operationId && t.transfer_group === params.transfer_group,
  retrieve: (stripe, id) => orNull(stripe.transfers.retrieve(id)),
  lookup: async (stripe, context) =>
    single(
      await collect(
        stripe.transfers.list({ transfer_group: context.params.transfer_group, limit: 100 }),
        (t) => payoutCreate.matches(t, context),
      ),
      `the transfers of group ${context.params.transfer_group} with metadata.payout_id ${context.operationId}`,
    ),
};

/** A reversal with what the product credits by: its transfer's cumulative `amount_reversed`. */
type Reversal = Stripe.TransferReversal & { transfer_amount_reversed: number };

async function withTransferReversed(stripe: Stripe, reversal: Stripe.TransferReversal): Promise<Reversal> {
  const transfer = await stripe.transfers.retrieve(
    typeof reversal.transfer === "string" ? reversal.transfer : reversal.transfer.id,
  );
  return { ...reversal, transfer_amount_reversed: transfer.amount_reversed };
}

function reversalMatches(
  r: Stripe.TransferReversal,
  { operationId, params }: LookupContext<z.output<typeof transferReversalSchema>>,
): boolean {
  return r.metadata?.reversal_id === operationId && idOf(r.transfer) === params.transfer;
}

const transferReversalCreate: OperationDeclaration<
  z.output<typeof transferReversalSchema>,
  Reversal,
  "transfer_reversal:create"
> = {
  type: "transfer_reversal:create",
  idArg: "p_reversal_id",
  complete: "complete_transfer_reversal",
  fail: "fail_transfer_reversal",
  schema: () => transferReversalSchema,
  send: async (stripe, { transfer, ...body }, key) =>
    withTransferReversed(
      stripe,
      await stripe.transfers.createReversal(transfer, body, { idempotencyKey: key }),
    ),
  pick: (r) => ({
    id: r.id,
    amount: r.amount,
    transfer: typeof r.transfer === "string" ? r.transfer : r.transfer.id,
    transfer_amount_reversed: r.transfer_amount_reversed,
  }),
  matches: reversalMatches,
  // a reversal is reached through its transfer: the one the operation reverses
  retrieve: async (stripe, id, params) => {
    const [reversal] = await collect(
      stripe.transfers.listReversals(params.transfer, { limit: 100 }),
      (r) => r.id === id,
    );
    return reversal ? withTransferReversed(stripe, reversal) : null;
  },
  lookup: async (stripe, context) => {
    const found = single(
      await collect(
        stripe.transfers.listReversals(context.params.transfer, { limit: 100 }),
        (r) => reversalMatches(r, context),
      ),
      `the reversals of ${context.params.transfer} with metadata.reversal_id ${context.operationId}`,
    );
    return "found" in found ? { found: await withTransferReversed(stripe, found.found) } : found;
  },
};

// The declarations' parameter and object types differ; the registry holds them side by side.
// deno-lint-ignore no-explicit-any
type AnyDeclaration = OperationDeclaration<any, any>;

/** The registry: every Stripe operation of the product. */
export const OPERATIONS = {
  [checkoutCreate.type]: checkoutCreate,
  [refundCreate.type]: refundCreate,
  [payoutCreate.type]: payoutCreate,
  [transferReversalCreate.type]: transferReversalCreate,
} as const satisfies Record<string, AnyDeclaration>;

/** The operation types. */
export type OperationType = keyof typeof OPERATIONS;

/** True when `type` is a declared operation type. */
export function isOperationType(type: string): type is OperationType {
  return Object.hasOwn(OPERATIONS, type);
}

/** How `runOperation` is to run. */
export interface RunOptions {
  /** The claim, as a claiming RPC answered it (a business RPC claims in its own transaction). */
  claim: ClaimRow;
  userId?: string | null;
  leaseSeconds?: number;
  /** Records the outcome instead of the operation's complete RPC (to merge it into a later RPC). */
  complete?: (fencingToken: number, response: Json) => Promise<Json | void>;
}

/**
 * Runs operation `type` for the business row `id` with its stored Stripe parameters `params` through the
 * idempotency core (see `withStripeIdempotency` for what it throws).
 *
 * ```ts
 * const { refund, stripe } = await rpc("create_refund", { ... }); // the row and its claim, one transaction
 * const { resourceId, recorded } = await runOperation("refund:create", refund.refund_id, stripe.request_params, {
 *   claim: stripe,
 * });
 * ```
 */
export function runOperation(
  type: OperationType,
  id: string,
  params: Json,
  options: RunOptions,
): Promise<StripeResult> {
  const declaration: AnyDeclaration = OPERATIONS[type];
  const op = {
    operationType: type,
    operationId: id,
    params: params as { [key: string]: Json },
    userId: options.userId,
  };
  // Rows adopted from the old plan may have no stored parameters, or an id that is not a business row's:
  // nothing can be sent or looked up for them, so they go to a person at once.
  const unusable = params === null || !UUID.test(id);
  const record = (fn: string, args: Record<string, unknown>) =>
    recordOutcome(op, () => rpc<Json>(fn, { [declaration.idArg]: id, ...args }));
  const store: StripeOperationStore = {
    ...stripeOperationStore(),
    complete: (_op, token, _resourceId, response) =>
      options.complete
        ? options.complete(token, response)
        : record(declaration.complete, { p_fencing_token: token, p_result: response }),
    fail: (_op, token, error) =>
      record(declaration.fail, { p_fencing_token: token, p_error: error as unknown as Json }),
  };
  return withStripeIdempotency(op, (key) => declaration.send(stripeClient(), params, key), {
    store,
    claim: stripeClaimOf(options.claim),
    pick: declaration.pick,
    leaseSeconds: options.leaseSeconds ?? IDEMPOTENCY_DEFAULTS.stripeLeaseSeconds,
    refusal: () => {
      const parsed = declaration.schema(Math.floor(Date.now() / 1000)).safeParse(params);
      return parsed.success
        ? null
        : parsed.error.issues.map((i) => `${i.path.join(".")}: ${i.message}`).join("; ");
    },
    lookup: (createdAt) =>
      unusable
        ? Promise.resolve({
          undecided: { reason: "no stored parameters or no business row id to look up by" },
        })
        : declaration.lookup(stripeClient(), {
          operationId: id,
          params,
          createdAt: Math.floor(Date.parse(createdAt) / 1000),
        }),
  });
}

/** What an operator's object is to an operation: its fields to settle it with, or why it is not its object. */
export type Verdict = { result: Json } | { missing: string } | { mismatch: string };

/**
 * Checks that Stripe object `objectId` is operation `type`'s by the rules its look-up finds it by (`matches`:
 * the metadata the product put on it, and where it belongs), so that an operator settles an operation only
 * with an object Stripe has and that is its own. `result` is what `pick` keeps (resolve_stripe_operation's
 * `p_result`). Throws what the Stripe SDK throws for anything but a 404.
 */
export async function verifyStripeObject(
  type: OperationType,
  objectId: string,
  context: LookupContext<Json>,
): Promise<Verdict> {
  const declaration: AnyDeclaration = OPERATIONS[type];
  const object = await declaration.retrieve(stripeClient(), objectId, context.params);
  if (!object) return { missing: `Stripe has no object '${objectId}' of a ${type} operation` };
  if (!declaration.matches(object, context)) {
    return {
      mismatch: `Stripe object '${objectId}' is not ${type} ${context.operationId}'s: its metadata or ` +
        "what it belongs to differ from what the operation sent",
    };
  }
  // What the operation sent must be what the object has: an object with the product's metadata but another
  // amount, currency or destination (only someone with the secret key can make one) settles nothing.
  const result = declaration.pick(object) as Record<string, Json>;
  const sent = context.params as Record<string, Json>;
  for (const field of ["amount", "currency", "destination"]) {
    if (field in sent && field in result && sent[field] !== result[field]) {
      return {
        mismatch: `Stripe object '${objectId}' has ${field} ${JSON.stringify(result[field])}; ${type} ` +
          `${context.operationId} sent ${JSON.stringify(sent[field])}`,
      };
    }
  }
  return { result };
}

/** Looks operation `type`'s object up in Stripe by its declaration (an operator's "Stripe has no object"). */
export function lookupOperation(
  type: OperationType,
  context: LookupContext<Json>,
): Promise<LookupResult<{ id: string }>> {
  const declaration: AnyDeclaration = OPERATIONS[type];
  return declaration.lookup(stripeClient(), context);
}
