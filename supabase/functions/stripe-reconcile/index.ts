// POST /functions/v1/stripe-reconcile: the scheduled reconciler, for holders of a secret key only
// (verify_jwt = false; `apikey: sb_secret_...`, or the legacy service_role key).
// - settles Stripe operations whose lease ran out, through their declaration in _shared/operations.ts:
//   re-sent with their stored key and parameters (Stripe deduplicates what already happened), or looked
//   up in Stripe when the key can no longer settle them (past Stripe's 24 h key window, no stored
//   parameters); operations a look-up could not decide are looked at again every 15 minutes;
// - expires unpaid orders whose holds ran out, and purges expired idempotency rows, old processed
//   webhook events and old rate-limit windows, each in one bounded batch.
// Safe to run concurrently with itself: the claims use `for update skip locked`.
import { requireSecretKey } from "../_shared/auth.ts";
import {
  OperationInProgressError,
  OperationNeedsAttentionError,
  StripeOutcomeUnknownError,
  StripeRejectedError,
} from "../_shared/errors.ts";
import { handler, json } from "../_shared/http.ts";
import { type ClaimRow, type Json, stripeOperationStore } from "../_shared/idempotency_store.ts";
import { log } from "../_shared/log.ts";
import { isOperationType, runOperation } from "../_shared/operations.ts";
import { type Stripe, stripeClient } from "../_shared/stripe.ts";
import { rpc } from "../_shared/supabase.ts";

type Claimed = ClaimRow & { operation_type: string; operation_id: string };

Deno.serve(handler("stripe-reconcile", async (req, { requestId }) => {
  await requireSecretKey(req);
  const stale = await rpc<{ claimed: Claimed[] }>("claim_stale_stripe_operations", {});
  const settled = { completed: 0, failed: 0, unknown: 0, deferred: 0, attention: 0, errors: 0 };
  const needsAttention: Json[] = [];
  for (const row of stale.claimed) {
    const operation = `${row.operation_type}/${row.operation_id}`;
    try {
      if (!isOperationType(row.operation_type)) {
        const op = { operationType: row.operation_type, operationId: row.operation_id, params: {} };
        await stripeOperationStore().attention(op, row.fencing_token, {
          reason: `no declaration for operation type '${row.operation_type}'`,
        });
        throw new OperationNeedsAttentionError(`Operation '${operation}'`);
      }
      await runOperation(row.operation_type, row.operation_id, row.request_params, { claim: row });
      settled.completed++;
    } catch (e) {
      if (e instanceof StripeRejectedError) settled.failed++;
      else if (e instanceof StripeOutcomeUnknownError) settled.unknown++;
      // deferred until Stripe forgets the key, or taken over by a newer holder meanwhile
      else if (e instanceof OperationInProgressError) settled.deferred++;
      else if (e instanceof OperationNeedsAttentionError) {
        settled.attention++;
        needsAttention.push({ operation_type: row.operation_type, operation_id: row.operation_id });
      } else {
        settled.errors++;
        log("error", "settling an operation failed", { request_id: requestId, operation, error: e });
      }
    }
  }
  const parked = await settleParkedEvents();
  const housekeeping = await rpc<Record<string, Json>>("reconcile_housekeeping", { p_batch_size: 1000 });
  const report = { settled, needs_attention: needsAttention, parked_events: parked, ...housekeeping };
  log(needsAttention.length || settled.errors ? "warn" : "info", "reconcile report", {
    request_id: requestId,
    ...report,
  });
  return json(200, report);
}));

/**
 * Events parked for 10 minutes or more, waiting for a payment we have not recorded: whose payment is it?
 * Looked up in Stripe: one that is not ours (no order of ours in its metadata) is ignored for good; one that
 * is ours stays parked until its payment is recorded (by the webhook, or the audit that finds it paid).
 */
async function settleParkedEvents(): Promise<{ ignored: number; waiting: number; applied: number }> {
  const counts = { ignored: 0, waiting: 0, applied: 0 };
  const parked = await rpc<{ event_id: string; parked_on: string }[]>("claim_parked_events", {});
  for (const { event_id, parked_on } of parked) {
    const ours = await isOurPayment(stripeClient(), parked_on);
    const { status } = await rpc<{ status: string }>("settle_parked_event", {
      p_event_id: event_id,
      p_ours: ours,
    });
    if (status === "ignored") counts.ignored++;
    else if (status === "parked") counts.waiting++;
    else counts.applied++;
  }
  return counts;
}

/** Whether a payment (a PaymentIntent, or a charge's) carries one of our orders in its metadata. */
async function isOurPayment(stripe: Stripe, id: string): Promise<boolean> {
  let intentId = id;
  if (id.startsWith("ch_")) {
    const charge = await stripe.charges.retrieve(id);
    if (typeof charge.payment_intent !== "string") return Boolean(charge.metadata?.order_id);
    intentId = charge.payment_intent;
  }
  const intent = await stripe.paymentIntents.retrieve(intentId);
  return /^[0-9a-f-]{36}$/.test(intent.metadata?.order_id ?? "");
}
