/**
 * The idempotency core for Stripe side effects: claim in Postgres, call Stripe with the stored key,
 * record the outcome.
 *
 * - `claim` (one RPC, one transaction) answers acquired | replay | in_progress | mismatch. The Stripe
 *   key is generated once, when the row is created, and every retry (and the reconciler) reuses it, so
 *   Stripe itself deduplicates a call whose outcome was never recorded.
 * - After the call: `complete` (the object), `fail` (a terminal Stripe 4xx, replayed as such) or
 *   `release` (outcome unknown: timeout, reset, 5xx, 409; retried with the same key). Each is accepted
 *   only with the current fencing token.
 * - If the store cannot be reached, nothing is sent to Stripe: the request fails closed (503).
 * @module
 */
import {
  HttpError,
  OperationInProgressError,
  type StripeFailure,
  StripeOutcomeUnknownError,
  StripeRejectedError,
} from "./errors.ts";
import type { SupabaseClient } from "npm:@supabase/supabase-js@2.109.0";
import { log } from "./log.ts";
import { Stripe } from "./stripe.ts";
import { rpc, RpcError } from "./supabase.ts";

/** JSON values as they go in and out of jsonb. */
export type Json = string | number | boolean | null | Json[] | { [key: string]: Json };

/** Defaults of the core, in one place. */
export const IDEMPOTENCY_DEFAULTS = {
  /** How long a claimant may hold a Stripe operation (above the SDK's timeout x attempts). */
  stripeLeaseSeconds: 60,
  /** How long a request may hold its Idempotency-Key. */
  requestLeaseSeconds: 90,
  /** How long an Idempotency-Key is remembered (Stripe's window). */
  requestTtlSeconds: 86_400,
} as const;

/** A Stripe side effect, named by a stable internal id. */
export interface StripeOperation {
  /** e.g. `checkout:create`, `refund:create`, `payout:create` */
  operationType: string;
  /** The order, refund or payout id: never a per-request value. */
  operationId: string;
  /** The exact Stripe parameters; stored with the claim and fingerprinted. */
  params: { [key: string]: Json };
  userId?: string | null;
  metadata?: { [key: string]: Json };
}

/** What the store answers to a claim. */
export type StripeClaim =
  | { outcome: "acquired"; stripeKey: string; fencingToken: number }
  | { outcome: "replay"; status: "completed"; resourceId: string; response: Json }
  | { outcome: "replay"; status: "failed"; error: StripeFailure }
  | { outcome: "in_progress"; lockedUntil: string }
  | { outcome: "needs_attention" }
  | { outcome: "mismatch" };

/** Persistence of Stripe operations (the RPC implementation below in production). */
export interface StripeOperationStore {
  claim(op: StripeOperation, candidateKey: string, leaseSeconds: number): Promise<StripeClaim>;
  /** Records the object; may answer with what it recorded besides (e.g. the business row's new state). */
  complete(
    op: StripeOperation,
    fencingToken: number,
    resourceId: string,
    response: Json,
  ): Promise<Json | void>;
  fail(op: StripeOperation, fencingToken: number, error: StripeFailure): Promise<void>;
  release(op: StripeOperation, fencingToken: number, reason: string): Promise<void>;
}

/** The outcome of an operation: the Stripe object's id and the fields kept to answer again. */
export interface StripeResult {
  resourceId: string;
  response: Json;
  /** True when the stored result was returned without calling Stripe. */
  replayed: boolean;
  /** What the store's `complete` answered (null on a replay). */
  recorded: Json | null;
}

/** Options of `withStripeIdempotency`. */
export interface StripeIdempotencyOptions<R> {
  store?: StripeOperationStore;
  leaseSeconds?: number;
  /** The fields of Stripe's answer to keep for replays (default: `{ id }`). */
  pick?: (result: R) => Json;
  /** A claim already acquired elsewhere (the reconciler claims stalled operations in bulk). */
  claim?: StripeClaim;
}

/**
 * Test hooks, unset in production: the crash and chaos tests make a handler die at the worst moment,
 * after Stripe acted and before the outcome is recorded.
 */
export const testHooks: { afterStripe?: (op: StripeOperation) => void | Promise<void> } = {};

/**
 * Runs `call` (a Stripe request made with the key it is given) at most once in effect for `op`.
 * Returns the stored result on a replay. Throws `OperationInProgressError` (409) while another holder
 * has the operation, `StripeRejectedError` for a terminal Stripe error (now or stored),
 * `StripeOutcomeUnknownError` (503) when Stripe's answer was lost, and `StoreUnavailableError` (503)
 * when the store cannot be reached, in which case Stripe was not called.
 */
export async function withStripeIdempotency<R extends { id: string }>(
  op: StripeOperation,
  call: (stripeKey: string) => Promise<R>,
  options: StripeIdempotencyOptions<R> = {},
): Promise<StripeResult> {
  const store = options.store ?? stripeOperationStore();
  const leaseSeconds = options.leaseSeconds ?? IDEMPOTENCY_DEFAULTS.stripeLeaseSeconds;
  const name = `${op.operationType}/${op.operationId}`;
  const claim = options.claim ??
    await store.claim(op, generateIdempotencyKey(op.operationType, op.operationId), leaseSeconds);

  switch (claim.outcome) {
    case "replay":
      if (claim.status === "failed") throw new StripeRejectedError(claim.error);
      return { resourceId: claim.resourceId, response: claim.response, replayed: true, recorded: null };
    case "in_progress":
      throw new OperationInProgressError(`Operation '${name}'`, secondsUntil(claim.lockedUntil));
    case "needs_attention": {
      const error = new HttpError(
        409,
        "operation-needs-attention",
        "Operation needs attention",
        `Operation '${name}' stalled beyond Stripe's idempotency window; an operator is resolving it`,
      );
      error.disposition = "transient"; // the request had effects: its key stays bound to it
      throw error;
    }
    case "mismatch":
      throw new Error(`Operation '${name}' was claimed before with other Stripe parameters`);
  }

  let result: R;
  try {
    result = await call(claim.stripeKey);
  } catch (e) {
    const failure = terminalFailure(e);
    if (failure) {
      await store.fail(op, claim.fencingToken, failure);
      throw new StripeRejectedError(failure);
    }
    if (e instanceof Stripe.errors.StripeIdempotencyError) {
      log("error", "Stripe refused a stored idempotency key", { operation: name, error: e });
    }
    try {
      await store.release(op, claim.fencingToken, String((e as Error)?.message ?? e));
    } catch (releaseError) {
      // The lease then simply runs out; the operation stays claimable with the same key.
      log("warn", "could not release a Stripe operation", { operation: name, error: releaseError });
    }
    log("warn", "Stripe outcome unknown; released for a retry with the same key", {
      operation: name,
      error: e,
    });
    throw new StripeOutcomeUnknownError();
  }

  await testHooks.afterStripe?.(op);
  const response = options.pick ? options.pick(result) : { id: result.id };
  const recorded = await store.complete(op, claim.fencingToken, result.id, response);
  return { resourceId: result.id, response, replayed: false, recorded: recorded ?? null };
}

/**
 * A terminal Stripe error (the request executed and was refused: 400, 402, 403, 404), or null for an
 * unknown outcome (connection errors, timeouts, 409, 429, 5xx) and for our own mistakes (401, a
 * reused key with other parameters), which are retried with the same key instead.
 */
function terminalFailure(error: unknown): StripeFailure | null {
  if (!(error instanceof Stripe.errors.StripeError)) return null;
  if (error instanceof Stripe.errors.StripeIdempotencyError) return null;
  const status = error.statusCode ?? 0;
  if (![400, 402, 403, 404].includes(status)) return null;
  return {
    status,
    type: error.rawType ?? error.type,
    ...(error.code ? { code: error.code } : {}),
    message: error.message,
    ...(error.param ? { param: error.param } : {}),
  };
}

function secondsUntil(iso: string): number {
  return Math.max(1, Math.ceil((Date.parse(iso) - Date.now()) / 1000));
}

/** The store over the Postgres RPCs of the `stripe_idempotency` migration (default: the service client). */
export function stripeOperationStore(client?: SupabaseClient): StripeOperationStore {
  const finish = (fn: string, op: StripeOperation, args: Record<string, unknown>) =>
    recordOutcome(
      op,
      () => rpc(fn, { p_operation_type: op.operationType, p_operation_id: op.operationId, ...args }, client),
    );
  return {
    async claim(op, candidateKey, leaseSeconds) {
      const row = await rpc<ClaimRow>("claim_stripe_operation", {
        p_operation_type: op.operationType,
        p_operation_id: op.operationId,
        p_stripe_idempotency_key: candidateKey,
        p_params: op.params,
        p_user_id: op.userId ?? null,
        p_metadata: op.metadata ?? {},
        p_lease_seconds: leaseSeconds,
      }, client);
      return stripeClaimOf(row);
    },
    async complete(op, fencingToken, resourceId, response) {
      await finish("complete_stripe_operation", op, {
        p_fencing_token: fencingToken,
        p_stripe_resource_id: resourceId,
        p_response: response,
      });
    },
    async fail(op, fencingToken, error) {
      await finish("fail_stripe_operation", op, { p_fencing_token: fencingToken, p_error: error });
    },
    async release(op, fencingToken, reason) {
      await finish("release_stripe_operation", op, { p_fencing_token: fencingToken, p_error: reason });
    },
  };
}

export interface ClaimRow {
  outcome: "acquired" | "replay" | "in_progress" | "mismatch";
  status: "in_progress" | "completed" | "failed" | "needs_attention";
  stripe_idempotency_key: string;
  fencing_token: number;
  attempts: number;
  locked_until: string | null;
  request_params: Json;
  stripe_resource_id: string | null;
  response: Json;
  error: Json;
}

/** A claim as the claiming RPC answers it (claim_stripe_operation, or a merged RPC that includes it). */
export function stripeClaimOf(row: ClaimRow): StripeClaim {
  switch (row.outcome) {
    case "acquired":
      return { outcome: "acquired", stripeKey: row.stripe_idempotency_key, fencingToken: row.fencing_token };
    case "replay":
      if (row.status === "needs_attention") return { outcome: "needs_attention" };
      if (row.status === "failed") {
        return { outcome: "replay", status: "failed", error: row.error as unknown as StripeFailure };
      }
      return {
        outcome: "replay",
        status: "completed",
        resourceId: row.stripe_resource_id!,
        response: row.response,
      };
    case "in_progress":
      return { outcome: "in_progress", lockedUntil: row.locked_until! };
    default:
      return { outcome: "mismatch" };
  }
}

/**
 * Runs a finishing RPC (complete, fail, release, or a business RPC that includes one). A refusal
 * (`PT409`: a newer holder took the operation over) means the operation is in progress elsewhere.
 */
export async function recordOutcome<T>(
  op: Pick<StripeOperation, "operationType" | "operationId">,
  call: () => Promise<T>,
): Promise<T> {
  try {
    return await call();
  } catch (e) {
    if (e instanceof RpcError && e.code === "PT409") {
      const name = `${op.operationType}/${op.operationId}`;
      log("warn", "a newer holder owns the operation", { operation: name, error: e });
      throw new OperationInProgressError(`Operation '${name}'`, 1);
    }
    throw e;
  }
}

const KEY_PART = /^[^\s]+$/;

/**
 * A Stripe idempotency key for an operation: `operation_type:stable_id:UUID`. Throws when a part is
 * empty or has white space, or when the key would exceed Stripe's 255 characters.
 */
export function generateIdempotencyKey(operationType: string, stableId: string): string {
  if (!KEY_PART.test(operationType)) {
    throw new Error(`Invalid operation type '${operationType}': empty or with white space`);
  }
  if (!KEY_PART.test(stableId)) throw new Error(`Invalid stable id '${stableId}': empty or with white space`);
  const key = `${operationType}:${stableId}:${crypto.randomUUID()}`;
  if (key.length > 255) {
    throw new Error(`Idempotency key for '${operationType}:${stableId}' exceeds 255 characters`);
  }
  return key;
}

/**
 * The old plan's generator, kept for its callers: the client's `x-idempotency-key` header when sent,
 * else the parts joined by `:` (with a UUID appended when the first part names an operation type).
 * New code uses `withStripeIdempotency`, whose key is stored once and reused by every retry.
 * @deprecated
 */
export function generateIdempotencyKeyLegacy(parts: string[], req?: Request): string {
  const clientKey = req?.headers.get("x-idempotency-key");
  const joined = parts.filter(Boolean).join(":");
  const key = clientKey ??
    (parts.length >= 2 && parts[0].includes(":") ? `${joined}:${crypto.randomUUID()}` : joined);
  if (!/^[\x21-\x7e]{1,255}$/.test(key)) {
    throw new Error(
      `Invalid idempotency key '${key.slice(0, 40)}': 1 to 255 visible ASCII characters expected`,
    );
  }
  return key;
}
