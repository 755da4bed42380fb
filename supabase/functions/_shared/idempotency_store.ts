/**
 * Where the idempotency core keeps Stripe operations: the store interface, and its implementation over
 * the Postgres RPCs of the `stripe_idempotency` migrations (one RPC, one transaction). Every change of a
 * row after its claim is accepted only with the claim's fencing token.
 * @module
 */
import type { SupabaseClient } from "npm:@supabase/supabase-js@2.109.0";
import { OperationInProgressError, type StripeFailure } from "./errors.ts";
import { log } from "./log.ts";
import { rpc, RpcError } from "./supabase.ts";

/** JSON values as they go in and out of jsonb. */
export type Json = string | number | boolean | null | Json[] | { [key: string]: Json };

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

/**
 * How an acquired operation is settled: `send` the stored request with the stored key (Stripe replays what
 * it already did), or `lookup` the object in Stripe, because the key can no longer settle it (Stripe's 24 h
 * key window passed, no stored parameters, or a person is needed and the reconciler tries again).
 */
export type ClaimMode = "send" | "lookup";

/** What the store answers to a claim. */
export type StripeClaim =
  | {
    outcome: "acquired";
    stripeKey: string;
    fencingToken: number;
    mode: ClaimMode;
    /** 1 for the operation's first claim: nothing was ever sent with its key. */
    attempts: number;
    createdAt: string;
    /** No request with the key can still create the object (forgotten by Stripe, or burned by a saved 5xx). */
    absentIsProof: boolean;
  }
  | { outcome: "replay"; status: "completed"; resourceId: string; response: Json }
  | { outcome: "replay"; status: "failed"; error: StripeFailure }
  | { outcome: "in_progress"; lockedUntil: string }
  | { outcome: "needs_attention" }
  | { outcome: "mismatch" };

/** Persistence of Stripe operations. */
export interface StripeOperationStore {
  claim(op: StripeOperation, candidateKey: string, leaseSeconds: number): Promise<StripeClaim>;
  /** Records the object; may answer with what it recorded besides (e.g. the business row's new state). */
  complete(
    op: StripeOperation,
    fencingToken: number,
    resourceId: string,
    response: Json,
  ): Promise<Json | void>;
  /** Records a terminal failure (Stripe refused, or a look-up proved no object was made). */
  fail(op: StripeOperation, fencingToken: number, error: StripeFailure): Promise<Json | void>;
  /** Gives the lease up after an unknown outcome; the row keeps its key and is claimable at once. */
  release(op: StripeOperation, fencingToken: number, reason: string): Promise<void>;
  /** A look-up could not decide: the row needs a person; `evidence` is what the look-up found. */
  attention(op: StripeOperation, fencingToken: number, evidence: Json): Promise<void>;
  /**
   * A look-up found nothing while that proves nothing yet: look again at `until` (default: once Stripe has
   * forgotten the key); `burned`: Stripe saved a 5xx for the key.
   */
  defer(
    op: StripeOperation,
    fencingToken: number,
    reason: string,
    options?: { until?: Date; burned?: boolean },
  ): Promise<void>;
}

/** A claim row as the claiming RPCs answer it (`claim_stripe_operation`, or a merged RPC that includes it). */
export interface ClaimRow {
  outcome: "acquired" | "replay" | "in_progress" | "mismatch";
  status: "in_progress" | "completed" | "failed" | "needs_attention";
  mode: ClaimMode;
  absent_is_proof: boolean;
  stripe_idempotency_key: string;
  fencing_token: number;
  attempts: number;
  created_at: string;
  locked_until: string | null;
  request_params: Json;
  stripe_resource_id: string | null;
  response: Json;
  error: Json;
}

/** The claim a claim row stands for. */
export function stripeClaimOf(row: ClaimRow): StripeClaim {
  switch (row.outcome) {
    case "acquired":
      return {
        outcome: "acquired",
        stripeKey: row.stripe_idempotency_key,
        fencingToken: row.fencing_token,
        mode: row.mode,
        attempts: row.attempts,
        createdAt: row.created_at,
        absentIsProof: row.absent_is_proof,
      };
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
 * (`PT409`: a newer holder took the operation over) means the operation is in progress elsewhere: it
 * throws `OperationInProgressError`.
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

/**
 * The store over the generic RPCs (`claim_stripe_operation`, `complete_`, `fail_`, `release_`,
 * `attention_` and `defer_stripe_operation`), through `client` (default: the service client). Operations with a
 * business row record their outcome with their own RPCs instead (see operations.ts).
 */
export function stripeOperationStore(client?: SupabaseClient): StripeOperationStore {
  const finish = (fn: string, op: StripeOperation, args: Record<string, unknown>) =>
    recordOutcome(
      op,
      () =>
        rpc<Json>(
          fn,
          { p_operation_type: op.operationType, p_operation_id: op.operationId, ...args },
          client,
        ),
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
    complete: (op, fencingToken, resourceId, response) =>
      finish("complete_stripe_operation", op, {
        p_fencing_token: fencingToken,
        p_stripe_resource_id: resourceId,
        p_response: response,
      }),
    fail: (op, fencingToken, error) =>
      finish("fail_stripe_operation", op, { p_fencing_token: fencingToken, p_error: error }),
    async release(op, fencingToken, reason) {
      await finish("release_stripe_operation", op, { p_fencing_token: fencingToken, p_error: reason });
    },
    async attention(op, fencingToken, evidence) {
      await finish("attention_stripe_operation", op, { p_fencing_token: fencingToken, p_evidence: evidence });
    },
    async defer(op, fencingToken, reason, options = {}) {
      await finish("defer_stripe_operation", op, {
        p_fencing_token: fencingToken,
        p_reason: reason,
        p_until: options.until?.toISOString() ?? null,
        p_burned: options.burned ?? false,
      });
    },
  };
}
