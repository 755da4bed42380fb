// POST /functions/v1/stripe-reconcile: the scheduled reconciler, for holders of a secret key only
// (verify_jwt = false; `apikey: sb_secret_...`, or the legacy service_role key).
// - re-drives Stripe operations whose lease ran out, with their stored key and parameters (Stripe
//   deduplicates what already happened); older than ~23 hours, or without stored parameters, they are
//   not re-sent but marked needs_attention and reported;
// - expires unpaid orders whose holds ran out, and purges expired idempotency rows, old processed
//   webhook events and old rate-limit windows, each in one bounded batch.
// Safe to run concurrently with itself: the claims use `for update skip locked`.
import { requireSecretKey } from "../_shared/auth.ts";
import { StripeOutcomeUnknownError, StripeRejectedError } from "../_shared/errors.ts";
import { handler, json } from "../_shared/http.ts";
import type { Json } from "../_shared/idempotency.ts";
import { log } from "../_shared/log.ts";
import { OPERATIONS, type OperationType, runOperation } from "../_shared/operations.ts";
import { rpc } from "../_shared/supabase.ts";

interface Claimed {
  operation_type: string;
  operation_id: string;
  stripe_idempotency_key: string;
  fencing_token: number;
  request_params: Json;
}

Deno.serve(handler("stripe-reconcile", async (req, { requestId }) => {
  await requireSecretKey(req);
  const stale = await rpc<{ claimed: Claimed[]; needs_attention: Json[] }>(
    "claim_stale_stripe_operations",
    {},
  );
  const redriven = { completed: 0, failed: 0, unknown: 0, errors: 0 };
  for (const op of stale.claimed) {
    const type = op.operation_type as OperationType;
    try {
      if (!(type in OPERATIONS)) throw new Error(`No Stripe call is defined for '${op.operation_type}'`);
      await runOperation(type, op.operation_id, op.request_params, {
        claim: {
          outcome: "acquired",
          stripeKey: op.stripe_idempotency_key,
          fencingToken: op.fencing_token,
        },
      });
      redriven.completed++;
    } catch (e) {
      if (e instanceof StripeRejectedError) redriven.failed++;
      else if (e instanceof StripeOutcomeUnknownError) redriven.unknown++;
      else {
        redriven.errors++;
        log("error", "re-driving an operation failed", {
          operation: `${op.operation_type}/${op.operation_id}`,
          error: e,
        });
      }
    }
  }
  const housekeeping = await rpc<Record<string, Json>>("reconcile_housekeeping", { p_batch_size: 1000 });
  const report = { redriven, needs_attention: stale.needs_attention, ...housekeeping };
  log(stale.needs_attention.length ? "warn" : "info", "reconcile report", {
    request_id: requestId,
    ...report,
  });
  return json(200, report);
}));
