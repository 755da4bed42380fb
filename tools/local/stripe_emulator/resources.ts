/**
 * The emulator's core: its state (objects, clock, the request being served), Stripe's error objects,
 * parameter readers with Stripe's validation, events, lists with Stripe's pagination, and `expand`.
 * The operations live in checkout.ts and money.ts. Pure state: no HTTP here.
 * @module
 */
import { Stripe } from "../../../supabase/functions/_shared/stripe.ts";
import {
  CURRENCIES,
  type Currency,
  MAX_AMOUNT,
} from "../../../supabase/functions/_shared/stripe_contract.ts";
import type { Params } from "./form.ts";

/** The only API version the emulator speaks: the one the pinned SDK sends (`Stripe.API_VERSION`). */
export const API_VERSION: string = Stripe.API_VERSION;

/** A Stripe error: HTTP status, the `error` object, and whether Stripe would store it for the key. */
export class StripeError extends Error {
  constructor(
    readonly status: number,
    readonly body: { type: string; code?: string; message: string; param?: string },
    /** Validation failures happen before the endpoint executes: Stripe does not store them. */
    readonly stored = true,
  ) {
    super(body.message);
  }
}

/** A plain Stripe object (`id`, `object`, fields). */
export type StripeObject = Record<string, unknown> & { id: string; object: string };

/** What an endpoint answers: an object, or a list (which has no `id`). */
export type Answer = Record<string, unknown> & { object: string };

/** An event as Stripe sends it to webhooks. */
export type StripeEvent = StripeObject & {
  type: string;
  data: { object: StripeObject; previous_attributes?: Record<string, unknown> };
  created: number;
};

/** The money options of an emulator (see `EmulatorOptions`), read whenever they apply. */
export interface MoneyOptions {
  /** Seconds until a charge's funds are available (default 2 days). */
  fundsDelaySeconds?: number;
  /** The platform's available balance before any activity, per currency (default none: a new platform). */
  initialBalance?: Record<string, number>;
}

/** An entry of a connected account's balance (credited by transfers, debited by reversals and payouts). */
export interface AccountEntry {
  account: string;
  currency: string;
  amount: number;
  available_on: number;
}

/** The emulator's objects and clock. */
export interface State {
  now(): number;
  baseUrl: string;
  options: MoneyOptions;
  sessions: Map<string, StripeObject>;
  /** A session's line items (GET /v1/checkout/sessions/:id/line_items); not part of the session object. */
  lineItems: Map<string, StripeObject[]>;
  /** A session's `payment_intent_data`, for the PaymentIntent its payment creates. */
  sessionPayments: Map<string, { metadata: Record<string, string>; transfer_group: string | null }>;
  paymentIntents: Map<string, StripeObject>;
  charges: Map<string, StripeObject>;
  refunds: Map<string, StripeObject>;
  transfers: Map<string, StripeObject>;
  reversals: Map<string, StripeObject>;
  disputes: Map<string, StripeObject>;
  balanceTransactions: Map<string, StripeObject>;
  accountEntries: AccountEntry[];
  events: Map<string, StripeEvent>;
  /** The API request being executed (for events' `request`); null for the clock and dashboard actions. */
  request: { id: string; idempotency_key: string | null } | null;
  /** Called with each event the state emits, for delivery to the webhook. */
  emit(event: StripeEvent): void;
}

/** Creates an empty state. */
export function createState(
  baseUrl: string,
  now: () => number,
  emit: (e: StripeEvent) => void,
  options: MoneyOptions,
): State {
  return {
    now,
    baseUrl,
    options,
    sessions: new Map(),
    lineItems: new Map(),
    sessionPayments: new Map(),
    paymentIntents: new Map(),
    charges: new Map(),
    refunds: new Map(),
    transfers: new Map(),
    reversals: new Map(),
    disputes: new Map(),
    balanceTransactions: new Map(),
    accountEntries: [],
    events: new Map(),
    request: null,
    emit,
  };
}

/** A Stripe-looking id with `prefix`. */
export function newId(prefix: string): string {
  const alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
  const bytes = crypto.getRandomValues(new Uint8Array(24));
  return `${prefix}_${[...bytes].map((b) => alphabet[b % alphabet.length]).join("")}`;
}

/** A 400 `invalid_request_error` found before the endpoint executes (not stored for the key). */
export function invalid(message: string, param?: string, code = "parameter_invalid"): StripeError {
  return new StripeError(
    400,
    { type: "invalid_request_error", code, message, ...(param ? { param } : {}) },
    false,
  );
}

/** A 400 refusal after the endpoint began executing (stored for the key, like a decline). */
export function refused(code: string, message: string, param?: string): StripeError {
  return new StripeError(400, { type: "invalid_request_error", code, message, ...(param ? { param } : {}) });
}

/** `Missing required param: x.` */
export function missing(param: string): StripeError {
  return invalid(`Missing required param: ${param}.`, param, "parameter_missing");
}

/** A missing object: 404 when named in the path, 400 when named by a parameter (as Stripe answers). */
export function noSuch(kind: string, id: string, param?: string): StripeError {
  return new StripeError(param ? 400 : 404, {
    type: "invalid_request_error",
    code: "resource_missing",
    message: `No such ${kind}: '${id}'`,
    ...(param ? { param } : {}),
  });
}

/**
 * Refuses the first parameter not in `names`: 400 `parameter_unknown`, "Received unknown parameter: x"
 * (docs.stripe.com/error-codes#parameter-unknown; changelog 2011-06-21 "Errors now produce exceptions for
 * unrecognized API parameters"). `prefix` names a nested object (`line_items[0]`).
 */
export function known(params: Params, names: readonly string[], prefix = ""): void {
  for (const key of Object.keys(params)) {
    if (!names.includes(key)) {
      const param = prefix ? `${prefix}[${key}]` : key;
      throw invalid(`Received unknown parameter: ${param}`, param, "parameter_unknown");
    }
  }
}

/** A string parameter. */
export function str(params: Params, name: string, path = name): string | undefined {
  const v = params[name];
  if (v === undefined) return undefined;
  if (typeof v !== "string") throw invalid(`Invalid string: ${path}`, path);
  return v;
}

/** An integer parameter, at least `min`. */
export function int(params: Params, name: string, path = name, min = 0): number | undefined {
  const v = str(params, name, path);
  if (v === undefined) return undefined;
  if (!/^-?\d+$/.test(v)) throw invalid(`Invalid integer: ${v}`, path, "parameter_invalid_integer");
  const n = Number(v);
  if (!Number.isSafeInteger(n)) throw invalid(`Invalid integer: ${v}`, path, "parameter_invalid_integer");
  if (n < min) {
    throw invalid(`Invalid ${path}: must be at least ${min} (got ${v})`, path, "parameter_invalid_integer");
  }
  return n;
}

/** An object parameter (a hash). */
export function obj(params: Params, name: string, path = name): Params | undefined {
  const v = params[name];
  if (v === undefined || v === "") return undefined;
  if (typeof v !== "object" || Array.isArray(v)) throw invalid(`Invalid object: ${path}`, path);
  return v;
}

/** A string-or-array parameter as an array of strings (`expand`, `types`). */
export function strings(params: Params, name: string): string[] {
  const v = params[name];
  if (v === undefined) return [];
  const list = Array.isArray(v) ? v : [v];
  if (!list.every((s): s is string => typeof s === "string")) throw invalid(`Invalid array: ${name}`, name);
  return list;
}

/**
 * A currency the platform settles in. Stripe refuses a currency it does not support with "Invalid
 * currency: x. Stripe currently supports these currencies: ..." (docs.stripe.com/currencies); the
 * emulator supports the platform's `CURRENCIES` only, and lists them.
 */
export function currency(params: Params, name: string, path = name): Currency | undefined {
  const c = str(params, name, path)?.toLowerCase();
  if (c === undefined) return undefined;
  if (!(c in CURRENCIES)) {
    throw invalid(
      `Invalid currency: ${c}. Stripe currently supports these currencies: ${
        Object.keys(CURRENCIES).join(", ")
      }`,
      path,
    );
  }
  return c as Currency;
}

/** An amount in minor units, formatted as Stripe writes it in errors (`$0.50 usd`). */
export function money(amount: number, cur: Currency): string {
  const exponent = CURRENCIES[cur].exponent;
  const major = new Intl.NumberFormat("en-US", {
    style: "currency",
    currency: cur.toUpperCase(),
    minimumFractionDigits: exponent,
  }).format(amount / 10 ** exponent);
  return `${major} ${cur}`;
}

/**
 * Stripe's limits on one charge (docs.stripe.com/currencies#minimum-and-maximum-charge-amounts): at least
 * the currency's minimum charge, at most eight digits (`MAX_AMOUNT`) in minor units; zero-decimal
 * currencies (jpy) count whole units. `what` names the amount in the message.
 */
export function chargeLimits(amount: number, cur: Currency, param: string, what = "Amount"): void {
  const min = CURRENCIES[cur].minimumCharge;
  if (amount < min) {
    throw invalid(
      `${what} must be at least ${money(min, cur)} (got ${money(amount, cur)})`,
      param,
      "amount_too_small",
    );
  }
  if (amount > MAX_AMOUNT) {
    throw invalid(
      `${what} must be no more than ${money(MAX_AMOUNT, cur)} (got ${money(amount, cur)})`,
      param,
      "amount_too_large",
    );
  }
}

/** Metadata as Stripe limits it: 50 keys, keys up to 40 characters, values up to 500 (docs.stripe.com/api/metadata). */
export function metadata(params: Params, path = "metadata"): Record<string, string> {
  const m = obj(params, "metadata", path) ?? {};
  const entries = Object.entries(m);
  if (entries.length > 50) throw invalid(`Metadata can have at most 50 keys, got ${entries.length}`, path);
  for (const [k, v] of entries) {
    if (typeof v !== "string") throw invalid(`Invalid metadata value for ${k}`, `${path}[${k}]`);
    if (k.length > 40) throw invalid(`Metadata keys can be at most 40 characters: ${k}`, `${path}[${k}]`);
    if (v.length > 500) throw invalid(`Metadata values can be at most 500 characters: ${k}`, `${path}[${k}]`);
  }
  return m as Record<string, string>;
}

/** An enum parameter: one of `allowed`. */
export function oneOf<T extends string>(
  value: string | undefined,
  allowed: readonly T[],
  param: string,
): T | undefined {
  if (value !== undefined && !allowed.includes(value as T)) {
    throw invalid(`Invalid ${param}: must be one of ${allowed.join(", ")} (got '${value}')`, param);
  }
  return value as T | undefined;
}

/**
 * Records an event and hands it to the emitter. `data.object` is the object after the change;
 * `previous` becomes `data.previous_attributes` (on `*.updated` events); `request` is the API request that
 * caused it, or `{id: null, idempotency_key: null}` for the clock and dashboard actions (`Events.d.ts`:
 * "If null, the event was automatic"). `api_version` is the version the emulator speaks.
 */
export function event(
  state: State,
  type: string,
  object: StripeObject,
  previous?: Record<string, unknown>,
): StripeEvent {
  const e: StripeEvent = {
    id: newId("evt"),
    object: "event",
    api_version: API_VERSION,
    created: state.now(),
    data: { object: structuredClone(object), ...(previous ? { previous_attributes: previous } : {}) },
    livemode: false,
    pending_webhooks: 0,
    request: state.request ?? { id: null, idempotency_key: null },
    type,
  };
  state.events.set(e.id, e);
  state.emit(e);
  return e;
}

/** The values `fields` of `object` had, for `previous_attributes`. */
export function before(object: StripeObject, fields: string[]): Record<string, unknown> {
  return Object.fromEntries(fields.map((f) => [f, structuredClone(object[f] ?? null)]));
}

/** The objects an id names, by its prefix (`ch_` charges, ...), for `expand` and look-ups. */
function collection(state: State, id: string): Map<string, StripeObject> | undefined {
  const prefix = id.slice(0, id.indexOf("_"));
  return {
    cs: state.sessions,
    pi: state.paymentIntents,
    ch: state.charges,
    re: state.refunds,
    tr: state.transfers,
    trr: state.reversals,
    dp: state.disputes,
    txn: state.balanceTransactions,
    evt: state.events,
  }[prefix];
}

/**
 * `expand`: replaces each path's id (`latest_charge.balance_transaction`; `data.x` in lists) by its
 * object (docs.stripe.com/expand). A path that does not name an expandable id is refused.
 */
export function expand<T extends Answer>(state: State, object: T, paths: string[]): T {
  if (paths.length === 0) return object;
  const out = structuredClone(object);
  for (const path of paths) expandPath(state, out, path.split("."), path);
  return out;
}

function expandPath(
  state: State,
  node: Record<string, unknown>,
  [head, ...rest]: string[],
  path: string,
): void {
  let value = node[head];
  if (typeof value === "string") {
    const found = collection(state, value)?.get(value);
    if (!found) throw invalid(`This property cannot be expanded (${path}).`, "expand");
    value = node[head] = structuredClone(found);
  }
  if (value === null) return;
  if (typeof value !== "object" || value === undefined) {
    throw invalid(`This property cannot be expanded (${path}).`, "expand");
  }
  if (rest.length === 0) return;
  for (const item of Array.isArray(value) ? value : [value]) expandPath(state, item, rest, path);
}

/** A `created` filter: a timestamp, or a range `{gt, gte, lt, lte}`. */
export function createdFilter(params: Params): (o: StripeObject) => boolean {
  const c = params.created;
  if (c === undefined) return () => true;
  if (typeof c === "string") {
    const at = int(params, "created");
    return (o) => o.created === at;
  }
  if (Array.isArray(c)) throw invalid("Invalid created: a timestamp or a range", "created");
  known(c, ["gt", "gte", "lt", "lte"], "created");
  const bound = (k: string) => int(c, k, `created[${k}]`);
  const [gt, gte, lt, lte] = ["gt", "gte", "lt", "lte"].map(bound);
  return (o) => {
    const t = o.created as number;
    return (gt === undefined || t > gt) && (gte === undefined || t >= gte) &&
      (lt === undefined || t < lt) && (lte === undefined || t <= lte);
  };
}

/** Keeps the objects whose `field` equals the parameter of the same name, when given. */
export function equals(params: Params, name: string, field = name): (o: StripeObject) => boolean {
  const v = str(params, name);
  return (o) => v === undefined || o[field] === v;
}

/** Objects newest first, as Stripe lists them (a Map keeps insertion order; ties stay newest first). */
export function newestFirst(objects: Iterable<StripeObject>): StripeObject[] {
  return [...objects].reverse().sort((a, b) => (b.created as number) - (a.created as number));
}

/**
 * A page of a list as Stripe answers it (docs.stripe.com/api/pagination): `objects` in the list's order,
 * `limit` 1-100 (default 10), `starting_after` / `ending_before` an object's id,
 * `{object: "list", data, has_more, url}`.
 */
export function list(
  url: string,
  objects: StripeObject[],
  params: Params,
  ...filters: ((o: StripeObject) => boolean)[]
): Answer {
  const limit = int(params, "limit", "limit", 1) ?? 10;
  if (limit > 100) {
    throw invalid(
      `This value must be less than or equal to 100 (it currently is '${limit}').`,
      "limit",
      "parameter_invalid_integer",
    );
  }
  const all = objects.filter((o) => filters.every((f) => f(o)));
  const cursor = (name: string) => {
    const id = str(params, name);
    if (id === undefined) return undefined;
    const at = all.findIndex((o) => o.id === id);
    if (at < 0) throw invalid(`Invalid ${name}: no object '${id}' in this list`, name, "resource_missing");
    return at;
  };
  const after = cursor("starting_after");
  const beforeAt = cursor("ending_before");
  let data: StripeObject[];
  let hasMore: boolean;
  if (beforeAt !== undefined) {
    data = all.slice(Math.max(0, beforeAt - limit), beforeAt);
    hasMore = beforeAt - limit > 0;
  } else {
    const from = after === undefined ? 0 : after + 1;
    data = all.slice(from, from + limit);
    hasMore = from + limit < all.length;
  }
  return { object: "list", data, has_more: hasMore, url };
}

/** A list object as it appears inside another object (`transfer.reversals`). */
export function embeddedList(url: string, data: StripeObject[]): Answer {
  return { object: "list", data, has_more: false, total_count: data.length, url };
}

/** The timestamp fields (unix seconds) of the objects the emulator keeps. */
const TIME_FIELDS = new Set(["created", "expires_at", "available_on", "due_by", "arrival_date"]);

/** Moves every timestamp the state holds `seconds` into the past, as if that much time had passed. */
export function age(state: State, seconds: number): void {
  const walk = (node: unknown): void => {
    if (Array.isArray(node)) return node.forEach(walk);
    if (node === null || typeof node !== "object") return;
    for (const [key, value] of Object.entries(node)) {
      if (TIME_FIELDS.has(key) && typeof value === "number") {
        (node as Record<string, number>)[key] = value - seconds;
      } else walk(value);
    }
  };
  for (const value of Object.values(state)) {
    if (value instanceof Map) { for (const o of value.values()) walk(o); }
    else if (Array.isArray(value)) walk(value);
  }
}
