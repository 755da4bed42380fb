// POST /functions/v1/operator-resolve: a platform admin settles a Stripe operation that needs attention,
// with the object they found in the Stripe dashboard or, once Stripe has forgotten the operation's key, with
// "Stripe has no object". Body { operation_type, operation_id, stripe_object_id } or { operation_type,
// operation_id, no_object: true }; Idempotency-Key required.
// Nothing an operator types is taken on trust: the object is retrieved from Stripe and must be the
// operation's by the rules its look-up finds it by (_shared/operations.ts, `matches`), and "no object" must
// be what the look-up finds too. Only then does resolve_stripe_operation (service role) settle it with the
// object as Stripe has it. A wrong object is 422 `stripe-object-mismatch` or `stripe-object-not-found`.
import { requireUser } from "../_shared/auth.ts";
import { HttpError, StripeOutcomeUnknownError } from "../_shared/errors.ts";
import { handler, json, readJson } from "../_shared/http.ts";
import type { Json } from "../_shared/idempotency_store.ts";
import { withIdempotencyKey } from "../_shared/idempotency_http.ts";
import {
  type LookupContext,
  lookupOperation,
  OPERATIONS,
  type OperationType,
  verifyStripeObject,
} from "../_shared/operations.ts";
import { rpc, RpcError } from "../_shared/supabase.ts";
import { parseBody, z } from "../_shared/validate.ts";

const TYPES = Object.keys(OPERATIONS) as [OperationType, ...OperationType[]];

/** The body, also the client's type for it (client/endpoints.ts). */
export const ResolveBody = z.union([
  z.strictObject({
    operation_type: z.enum(TYPES),
    operation_id: z.uuid(),
    // Stripe ids: a prefix, an underscore, letters and digits (cs_test_..., re_..., tr_..., trr_...)
    stripe_object_id: z.string().trim().regex(/^[a-z]+_[A-Za-z0-9_]+$/, "not a Stripe object id").max(255),
  }),
  z.strictObject({
    operation_type: z.enum(TYPES),
    operation_id: z.uuid(),
    no_object: z.literal(true),
  }),
]);

interface Operation {
  request_params: Json;
  created_at: string;
  no_object_allowed: boolean;
}

Deno.serve(handler("operator-resolve", async (req) => {
  const user = await requireUser(req);
  if (!user.isPlatformAdmin) {
    throw new HttpError(403, "forbidden", "Forbidden", "Only platform admins may resolve Stripe operations");
  }
  const body = parseBody(ResolveBody, await readJson(req));
  const scope = `user:${user.id}`;
  return withIdempotencyKey(req, { scope, endpoint: "operator-resolve", payload: body }, async () => {
    const { operation_type: type, operation_id: id } = body;
    const op = await rpc<Operation>("stripe_operation_to_resolve", {
      p_operation_type: type,
      p_operation_id: id,
    });
    if (op.request_params === null) {
      throw new HttpError(
        422,
        "operation-unverifiable",
        "Cannot be checked at Stripe",
        `${type} ${id} has no stored parameters to check an object against: settle it with the service role`,
      );
    }
    const context: LookupContext<Json> = {
      operationId: id,
      params: op.request_params,
      createdAt: Math.floor(Date.parse(op.created_at) / 1000),
    };
    let args: { p_result: Json } | { p_error: Json };
    if ("stripe_object_id" in body) {
      const verdict = await atStripe(() => verifyStripeObject(type, body.stripe_object_id, context));
      if ("missing" in verdict) {
        throw new HttpError(422, "stripe-object-not-found", "Not in Stripe", verdict.missing);
      }
      if ("mismatch" in verdict) {
        throw new HttpError(422, "stripe-object-mismatch", "Not this operation's object", verdict.mismatch);
      }
      args = { p_result: verdict.result };
    } else {
      if (!op.no_object_allowed) {
        throw new HttpError(
          409,
          "stripe-key-not-forgotten",
          "Stripe may still act",
          `${type} ${id} may still be carried out by Stripe with its key (24 hours): settle it with the object, or wait`,
        );
      }
      const found = await atStripe(() => lookupOperation(type, context));
      if (!("absent" in found)) {
        throw new HttpError(
          409,
          "stripe-object-exists",
          "Stripe has an object",
          `The look-up finds ${
            "found" in found ? `'${found.found.id}'` : "several objects"
          } for ${type} ${id}: settle it with the object`,
          { evidence: "found" in found ? { id: found.found.id } : found.undecided },
        );
      }
      args = { p_error: { message: "not in Stripe (operator)", lookup: found.absent, resolved_by: user.id } };
    }
    const settled = await rpc<Json>("resolve_stripe_operation", {
      p_operation_type: type,
      p_operation_id: id,
      p_result: null,
      p_error: null,
      ...args,
    }).catch((e) => {
      // Another operator settled it between our read and now: resolve_stripe_operation refuses (PT409).
      if (e instanceof RpcError && e.code === "PT409") {
        throw new HttpError(409, "operation-not-needing-attention", "Already settled", e.message);
      }
      throw e;
    });
    return json(200, { operation_type: type, operation_id: id, ...args, settled });
  });
}));

/** A Stripe call whose failure (unreachable, 5xx) is a 503 to retry, never a verdict. */
async function atStripe<T>(call: () => Promise<T>): Promise<T> {
  try {
    return await call();
  } catch (e) {
    throw new StripeOutcomeUnknownError({ cause: e });
  }
}
