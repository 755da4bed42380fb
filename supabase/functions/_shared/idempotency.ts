/**
 * The idempotency core for Stripe side effects: claim in Postgres, settle with Stripe, record the outcome.
 *
 * - `claim` (one RPC, one transaction) answers acquired | replay | in_progress | needs_attention | mismatch.
 *   The Stripe key is generated once, when the row is created, and every retry (and the reconciler) reuses
 *   it, so Stripe itself deduplicates a call whose outcome was never recorded.
 * - An acquired operation is settled by sending its stored request with its stored key, or, when that key
 *   can no longer settle it, by looking its object up in Stripe: when Stripe replays a saved 5xx for the
 *   key, when Stripe's 24 h key window passed, or when the stored parameters are no longer ones Stripe
 *   accepts (a Checkout Session's `expires_at` too close).
 * - Then: `complete` (the object), `fail` (a terminal Stripe 4xx, or a look-up that proved no object was
 *   made; replayed as such), `release` (outcome unknown: timeout, reset, 5xx, 409, 429; retried with the
 *   same key) or `attention` (a look-up that cannot decide). Each is accepted only with the current
 *   fencing token.
 * - If the store cannot be reached, nothing is sent to Stripe: the request fails closed (503).
 * @module
 */
import {
  NOT_CREATED,
  OperationInProgressError,
  OperationNeedsAttentionError,
  type StripeFailure,
  StripeOutcomeUnknownError,
  StripeRejectedError,
} from "./errors.ts";
import { generateIdempotencyKey } from "./idempotency_keys.ts";
import {
  type Json,
  type StripeClaim,
  type StripeOperation,
  type StripeOperationStore,
  stripeOperationStore,
} from "./idempotency_store.ts";
import { log } from "./log.ts";
import { Stripe } from "./stripe.ts";

export type { Json, StripeClaim, StripeOperation, StripeOperationStore } from "./idempotency_store.ts";

/** Defaults of the core, in one place. */
export const IDEMPOTENCY_DEFAULTS = {
  /** How long a claimant may hold a Stripe operation (above the SDK's timeout x attempts). */
  stripeLeaseSeconds: 60,
  /** How long a request may hold its Idempotency-Key. */
  requestLeaseSeconds: 90,
  /** How long an Idempotency-Key is remembered (Stripe's window). */
  requestTtlSeconds: 86_400,
} as const;

/** What a look-up in Stripe found: the object, proof that there is none, or why it cannot decide. */
export type LookupResult<R> = { found: R } | { absent: string } | { undecided: Json };

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
  /** A claim already acquired elsewhere (a merged RPC, or the reconciler's bulk claim). */
  claim?: StripeClaim;
  /** Finds the operation's object in Stripe when its key cannot settle it (see the module doc). */
  lookup?: (createdAt: string) => Promise<LookupResult<R>>;
  /** Why Stripe would refuse the stored parameters now (then they are not sent), or null. */
  refusal?: () => string | null;
}

/**
 * Test hooks, unset in production: the crash and chaos tests make a handler die at the worst moment,
 * after Stripe acted and before the outcome is recorded.
 */
export const testHooks: { afterStripe?: (op: StripeOperation) => void | Promise<void> } = {};

/**
 * Runs `call` (a Stripe request made with the key it is given) at most once in effect for `op`, or settles
 * `op` by its look-up. Returns the stored result on a replay. Throws `OperationInProgressError` (409) while
 * another holder has the operation, `OperationNeedsAttentionError` (409) when neither its key nor a
 * look-up can settle it, `StripeRejectedError` for a terminal failure (now or stored),
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
    case "needs_attention":
      throw new OperationNeedsAttentionError(`Operation '${name}'`);
    case "mismatch":
      throw new Error(`Operation '${name}' was claimed before with other Stripe parameters`);
  }

  const token = claim.fencingToken;
  const unknown = async (e: unknown, message: string): Promise<never> => {
    try {
      await store.release(op, token, String((e as Error)?.message ?? e));
    } catch (releaseError) {
      // The lease then simply runs out; the operation stays claimable with the same key.
      log("warn", "could not release a Stripe operation", { operation: name, error: releaseError });
    }
    log("warn", message, { operation: name, error: e });
    throw new StripeOutcomeUnknownError({ cause: e });
  };

  let result: R | undefined;
  let lookup = claim.mode === "lookup";
  // Whether "Stripe holds no object" proves that none will ever exist: no request with the key can still
  // execute (model/protocol.pml, property P5); else the look-up is deferred to `lookAgain`.
  let absentIsProof = claim.absentIsProof;
  let lookAgain: { until?: Date; burned?: boolean } = {};
  const refusal = lookup ? null : options.refusal?.() ?? null;
  if (refusal !== null && claim.attempts === 1) {
    // Never sent, and Stripe would refuse it: the parameters built for it are wrong.
    log("error", "the operation's parameters are not ones Stripe accepts", { operation: name, refusal });
    const failure = {
      status: 400,
      type: "invalid_request_error",
      code: "parameters_refused",
      message: refusal,
    };
    await store.fail(op, token, failure);
    throw new StripeRejectedError(failure);
  }
  if (refusal !== null) {
    // Sent before, but Stripe would refuse them now (a Checkout Session's expires_at too close): look the
    // object up; a request from before may still be executing, so nothing found proves nothing for a while.
    log("info", "stored parameters can no longer be sent; settling by look-up", { operation: name, refusal });
    const graceEnd = new Date(Date.parse(claim.createdAt) + SENT_REQUEST_GRACE_MS);
    lookup = true;
    absentIsProof ||= Date.now() >= graceEnd.getTime();
    lookAgain = { until: graceEnd };
  }
  if (!lookup) {
    try {
      result = await call(claim.stripeKey);
    } catch (e) {
      const failure = terminalFailure(e);
      if (failure) {
        await store.fail(op, token, failure);
        throw new StripeRejectedError(failure);
      }
      if (e instanceof Stripe.errors.StripeIdempotencyError) {
        log("error", "Stripe refused a stored idempotency key", { operation: name, error: e });
      }
      if (!savedServerError(e) || !options.lookup) {
        await unknown(e, "Stripe outcome unknown; released for a retry with the same key");
      }
      // Stripe saved a 5xx for this key once execution began and replays it: the key cannot settle it and
      // cannot execute again, but a 5xx does not prove that nothing was made: nothing found counts as proof
      // only after a grace period (key_burned_at).
      log("warn", "Stripe replays a saved 5xx for this key; settling by look-up", {
        operation: name,
        error: e,
      });
      lookup = true;
      lookAgain = { until: new Date(Date.now() + SENT_REQUEST_GRACE_MS), burned: true };
    }
  }
  if (lookup) {
    if (!options.lookup) {
      await store.attention(op, token, { reason: "no look-up is declared for this operation type" });
      throw new OperationNeedsAttentionError(`Operation '${name}'`);
    }
    let found: LookupResult<R>;
    try {
      found = await options.lookup(claim.createdAt);
    } catch (e) {
      return await unknown(e, "Stripe look-up failed; released for a retry");
    }
    if ("undecided" in found) {
      log("warn", "a look-up could not settle the operation; it needs attention", {
        operation: name,
        evidence: found.undecided,
      });
      await store.attention(op, token, found.undecided);
      throw new OperationNeedsAttentionError(`Operation '${name}'`);
    }
    if ("absent" in found && !absentIsProof) {
      await store.defer(op, token, `look-up found ${found.absent}; that is no proof yet`, lookAgain);
      const wait = lookAgain.until ? secondsUntil(lookAgain.until.toISOString()) : KEY_FORGOTTEN_SECONDS;
      throw new OperationInProgressError(`Operation '${name}'`, Math.min(wait, KEY_FORGOTTEN_SECONDS));
    }
    if ("absent" in found) {
      const failure: StripeFailure = {
        status: 409,
        type: NOT_CREATED,
        message: `Stripe holds no object for this operation (${found.absent}); nothing was done there`,
      };
      await store.fail(op, token, failure);
      throw new StripeRejectedError(failure);
    }
    result = found.found;
  }

  await testHooks.afterStripe?.(op);
  const response = options.pick ? options.pick(result!) : { id: result!.id };
  const recorded = await store.complete(op, token, result!.id, response);
  return { resourceId: result!.id, response, replayed: false, recorded: recorded ?? null };
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

/**
 * A 5xx that Stripe saved for the key and replays (`Idempotent-Replayed: true`): "Retries with the same
 * key return the saved response, including 500 errors" (docs.stripe.com/api/idempotent_requests).
 */
function savedServerError(error: unknown): boolean {
  if (!(error instanceof Stripe.errors.StripeError) || (error.statusCode ?? 0) < 500) return false;
  const headers = Object.entries(error.headers ?? {});
  return headers.some(([name, value]) => name.toLowerCase() === "idempotent-replayed" && value === "true");
}

/** How long after a deferred look-up to try again, at most (Stripe keeps keys 24 hours). */
const KEY_FORGOTTEN_SECONDS = 3600;

/**
 * How long a request Stripe was sent may still be executing or becoming visible in Stripe's lists: nothing
 * found within this time of it is no proof (a 5xx does not prove that nothing was made).
 */
const SENT_REQUEST_GRACE_MS = 15 * 60_000;

function secondsUntil(iso: string): number {
  const seconds = Math.ceil((Date.parse(iso) - Date.now()) / 1000);
  // 'infinity': held until something else releases it (a refund waiting for its recovery)
  return Number.isFinite(seconds) ? Math.max(1, seconds) : 60;
}
