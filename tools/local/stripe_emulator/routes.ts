/**
 * The API the emulator serves, one row per endpoint: its method and path, the parameters it accepts
 * (params.ts, held to the SDK's types) and what it does. Lists have Stripe's shape and pagination and the
 * filters a product needs to look its objects up; every answer is expanded as `expand` asks.
 * @module
 */
import { CHECKOUT_SESSION_STATUSES } from "../../../supabase/functions/_shared/stripe_contract.ts";
import * as C from "./checkout.ts";
import type { Params } from "./form.ts";
import * as M from "./money.ts";
import * as P from "./params.ts";
import {
  type Answer,
  createdFilter,
  equals,
  expand,
  invalid,
  known,
  list,
  newestFirst,
  noSuch,
  oneOf,
  type State,
  str,
  strings,
  StripeError,
  type StripeObject,
} from "./resources.ts";

interface Route {
  method: "GET" | "POST";
  /** The path, with `:id` for the object's id. */
  path: string;
  names: readonly string[];
  run(state: State, p: Params, id: string, path: string): Answer;
}

const get = (path: string, names: readonly string[], run: Route["run"]): Route => ({
  method: "GET",
  path,
  names,
  run,
});
const post = (path: string, names: readonly string[], run: Route["run"]): Route => ({
  method: "POST",
  path,
  names,
  run,
});

const ROUTES: Route[] = [
  post("/v1/checkout/sessions", P.CHECKOUT_SESSION_CREATE, (s, p) => C.createCheckoutSession(s, p)),
  get("/v1/checkout/sessions", P.CHECKOUT_SESSION_LIST, (s, p, _, path) => {
    const status = oneOf(str(p, "status"), CHECKOUT_SESSION_STATUSES, "status");
    return list(
      path,
      newestFirst(s.sessions.values()),
      p,
      createdFilter(p),
      equals(p, "payment_intent"),
      (o) => status === undefined || o.status === status,
    );
  }),
  get("/v1/checkout/sessions/:id", P.RETRIEVE, (s, _, id) => C.getCheckoutSession(s, id)),
  post(
    "/v1/checkout/sessions/:id/expire",
    P.CHECKOUT_SESSION_EXPIRE,
    (s, _, id) => C.expireCheckoutSession(s, id),
  ),
  get("/v1/checkout/sessions/:id/line_items", P.LINE_ITEM_LIST, (s, p, id, path) => {
    C.getCheckoutSession(s, id);
    return list(path, s.lineItems.get(id) ?? [], p);
  }),
  post("/v1/payment_intents", P.PAYMENT_INTENT_CREATE, (s, p) => C.createPaymentIntent(s, p)),
  get("/v1/payment_intents/:id", P.RETRIEVE, (s, _, id) => C.getPaymentIntent(s, id)),
  get(
    "/v1/charges",
    P.CHARGE_LIST,
    (s, p, _, path) =>
      list(
        path,
        newestFirst(s.charges.values()),
        p,
        createdFilter(p),
        equals(p, "payment_intent"),
        equals(p, "transfer_group"),
      ),
  ),
  get("/v1/charges/:id", P.RETRIEVE, (s, _, id) => C.getCharge(s, id)),
  post("/v1/refunds", P.REFUND_CREATE, (s, p) => M.createRefund(s, p)),
  get(
    "/v1/refunds",
    P.REFUND_LIST,
    (s, p, _, path) =>
      list(
        path,
        newestFirst(s.refunds.values()),
        p,
        createdFilter(p),
        equals(p, "payment_intent"),
        equals(p, "charge"),
      ),
  ),
  get("/v1/refunds/:id", P.RETRIEVE, (s, _, id) => M.getRefund(s, id)),
  post("/v1/transfers", P.TRANSFER_CREATE, (s, p) => M.createTransfer(s, p)),
  get(
    "/v1/transfers",
    P.TRANSFER_LIST,
    (s, p, _, path) =>
      list(
        path,
        newestFirst(s.transfers.values()),
        p,
        createdFilter(p),
        equals(p, "transfer_group"),
        equals(p, "destination"),
      ),
  ),
  get("/v1/transfers/:id", P.RETRIEVE, (s, _, id) => M.getTransfer(s, id)),
  post("/v1/transfers/:id", P.TRANSFER_UPDATE, (s, p, id) => M.updateTransfer(s, id, p)),
  post("/v1/transfers/:id/reversals", P.REVERSAL_CREATE, (s, p, id) => M.reverseTransfer(s, id, p)),
  get("/v1/transfers/:id/reversals", P.REVERSAL_LIST, (s, p, id, path) => {
    M.getTransfer(s, id);
    return list(path, newestFirst(s.reversals.values()), p, (r) => r.transfer === id);
  }),
  get(
    "/v1/disputes",
    P.DISPUTE_LIST,
    (s, p, _, path) =>
      list(
        path,
        newestFirst(s.disputes.values()),
        p,
        createdFilter(p),
        equals(p, "charge"),
        equals(p, "payment_intent"),
      ),
  ),
  get("/v1/disputes/:id", P.RETRIEVE, (s, _, id) => M.getDispute(s, id)),
  get("/v1/balance", P.BALANCE_RETRIEVE, (s) => M.balance(s)),
  get("/v1/balance_transactions", P.BALANCE_TRANSACTION_LIST, (s, p, _, path) =>
    list(
      path,
      newestFirst(s.balanceTransactions.values()),
      p,
      createdFilter(p),
      equals(p, "source"),
      equals(p, "type"),
      equals(p, "currency"),
    )),
  get(
    "/v1/balance_transactions/:id",
    P.RETRIEVE,
    (s, _, id) => found(s.balanceTransactions, "balance_transaction", id),
  ),
  get(
    "/v1/events",
    P.EVENT_LIST,
    (s, p, _, path) => list(path, newestFirst(s.events.values()), p, createdFilter(p), eventTypes(p)),
  ),
  get("/v1/events/:id", P.RETRIEVE, (s, _, id) => found(s.events, "event", id)),
];

/** Every endpoint the emulator serves, as `METHOD /path` with `:id` (for tests that cover them all). */
export const ENDPOINTS: readonly string[] = ROUTES.map((r) => `${r.method} ${r.path}`);

function found(objects: Map<string, StripeObject>, kind: string, id: string): StripeObject {
  const o = objects.get(id);
  if (!o) throw noSuch(kind, id);
  return o;
}

/** `type` ("a specific event name, or group of events using * as a wildcard") or `types` (up to 20), not both (`Events.d.ts`). */
function eventTypes(p: Params): (o: StripeObject) => boolean {
  const type = str(p, "type");
  const types = strings(p, "types");
  if (type !== undefined && types.length > 0) {
    throw invalid("You may pass either `type` or `types`, but not both", "types");
  }
  if (types.length > 20) {
    throw invalid(`types can name at most 20 event types (got ${types.length})`, "types");
  }
  if (type !== undefined) {
    const pattern = new RegExp(
      `^${type.split("*").map((s) => s.replace(/[.+?^${}()|[\]\\]/g, "\\$&")).join(".*")}$`,
    );
    return (o) => pattern.test(o.type as string);
  }
  return (o) => types.length === 0 || types.includes(o.type as string);
}

/** The id in `path` when it matches `pattern` ("" when the pattern has no `:id`), else null. */
function match(pattern: string, path: string): string | null {
  const want = pattern.split("/");
  const got = path.split("/");
  if (want.length !== got.length) return null;
  let id = "";
  for (let i = 0; i < want.length; i++) {
    if (want[i] === ":id") id = decodeURIComponent(got[i]);
    else if (want[i] !== got[i]) return null;
  }
  return id;
}

/** Runs the endpoint of `method` `path` with `params`, or answers 404 as Stripe does for an unknown URL. */
export function serve(state: State, method: string, path: string, params: Params): Answer {
  for (const route of ROUTES) {
    if (route.method !== method) continue;
    const id = match(route.path, path);
    if (id === null) continue;
    known(params, route.names);
    return expand(state, route.run(state, params, id, path), strings(params, "expand"));
  }
  throw new StripeError(404, {
    type: "invalid_request_error",
    message: `Unrecognized request URL (${method}: ${path}).`,
  }, false);
}
