/**
 * The errors a function answers with. Each is an `HttpError`, which `handler()` (http.ts) turns into
 * `application/problem+json`; anything else thrown becomes a bare 500.
 * @module
 */

/** One field that failed validation. */
export interface FieldError {
  field: string;
  message: string;
}

/**
 * What an error means for the request's Idempotency-Key:
 * - `refusal`: nothing was done (bad input, not found, sold out); the key is forgotten, a retry runs again;
 * - `transient`: try again later with the same request (in progress, unavailable); the key stays bound to
 *   its payload and may be claimed again at once;
 * - `outcome`: the request had effects and this is their final answer; it is stored and replayed.
 */
export type Disposition = "refusal" | "transient" | "outcome";

/**
 * An error answered as problem+json. `type` is a short stable code (`validation`, `sold-out`, ...);
 * the response's `type` member is `/problems/<code>`. 4xx errors are refusals and 5xx transient
 * unless a subclass says otherwise.
 */
export class HttpError extends Error {
  disposition: Disposition;

  constructor(
    readonly status: number,
    readonly type: string,
    readonly title: string,
    readonly detail?: string,
    readonly extra: { errors?: FieldError[]; headers?: Record<string, string>; [member: string]: unknown } =
      {},
    options?: { cause?: unknown },
  ) {
    super(detail ? `${title}: ${detail}` : title, options);
    this.name = new.target.name;
    this.disposition = status >= 500 ? "transient" : "refusal";
  }
}

/**
 * The function is not configured to run: a key is missing, malformed, or refused by the platform. Not an
 * `HttpError`: the caller gets a bare 500 and the log says what to change (never "store unavailable",
 * which a retry could cure).
 */
export class ConfigurationError extends Error {
  override name = "ConfigurationError";
}

/** 503: the database (the idempotency store) could not be reached; nothing unguarded was done. */
export class StoreUnavailableError extends HttpError {
  constructor(
    detail = "The request could not be recorded safely; retry it with the same Idempotency-Key",
    options?: { cause?: unknown },
  ) {
    super(
      503,
      "store-unavailable",
      "Service unavailable",
      detail,
      { headers: { "retry-after": "1" } },
      options,
    );
  }
}

/** 409: another request holds this operation; retry after `retryAfter` seconds. */
export class OperationInProgressError extends HttpError {
  constructor(what: string, readonly retryAfter: number) {
    super(
      409,
      "operation-in-progress",
      "Operation in progress",
      `${what} is being processed; retry shortly`,
      {
        headers: { "retry-after": String(retryAfter) },
      },
    );
    // The request's effects so far stand; the same request is to be retried, not forgotten.
    this.disposition = "transient";
  }
}

/** 409: the operation stalled and neither its key nor a look-up in Stripe could settle it; an operator must. */
export class OperationNeedsAttentionError extends HttpError {
  constructor(what: string) {
    super(
      409,
      "operation-needs-attention",
      "Operation needs attention",
      `${what} could not be settled from Stripe; an operator is resolving it`,
    );
    // The request had effects: its key stays bound to it.
    this.disposition = "transient";
  }
}

/** 503: Stripe's answer was lost (timeout, reset, 5xx, 409, 429); the same key is retried later. */
export class StripeOutcomeUnknownError extends HttpError {
  constructor(options?: { cause?: unknown }) {
    super(
      503,
      "stripe-unavailable",
      "Payment provider unavailable",
      "Stripe did not confirm the operation; retry with the same Idempotency-Key",
      { headers: { "retry-after": "1" } },
      options,
    );
  }
}

/** What Stripe said when it refused an operation for good. */
export interface StripeFailure {
  status: number;
  type: string;
  code?: string;
  message: string;
  param?: string;
}

/**
 * The failure stored when a look-up in Stripe proves that an operation made no object (its key could no
 * longer settle it: a saved 5xx, Stripe's 24 h key window passed, or its parameters could no longer be
 * sent). Nothing happened at Stripe; the request may be made again under a new Idempotency-Key.
 */
export const NOT_CREATED = "not_created";

/** The failure stored for a refund whose recovery from the organiser's transfers failed (it was never sent). */
export const RECOVERY_FAILED = "recovery_failed";

/** How each kind of stored failure is answered: status, problem type and title. */
function rejection(failure: StripeFailure): [number, string, string] {
  if (failure.type === NOT_CREATED) return [409, "operation-not-created", "Not carried out"];
  if (failure.type === RECOVERY_FAILED) {
    return [409, "insufficient-organiser-balance", "Organiser's balance insufficient"];
  }
  return [failure.status === 402 ? 402 : 422, "stripe-rejected", "Refused by the payment provider"];
}

/**
 * 402/422: Stripe executed the request and refused it; 409 `operation-not-created`: a look-up proved that
 * Stripe holds no object for it; 409 `insufficient-organiser-balance`: a refund whose recovery from the
 * organiser's transfers failed. Each stored, and replayed as such.
 */
export class StripeRejectedError extends HttpError {
  constructor(readonly failure: StripeFailure) {
    const [status, type, title] = rejection(failure);
    super(status, type, title, failure.message, { stripe_code: failure.code ?? failure.type });
    this.disposition = "outcome";
  }
}

const TITLES: Record<number, string> = {
  400: "Invalid request",
  401: "Unauthorized",
  403: "Forbidden",
  404: "Not found",
  409: "Conflict",
  410: "Gone",
  422: "Unprocessable request",
  429: "Too many requests",
};

/**
 * The problem a database function raised on purpose: SQLSTATE `PTnnn` gives the status, the hint the
 * problem type, the detail (a JSON object) extra members such as `errors` or `retry_after`. Returns
 * null for any other error, which is ours to fix rather than the caller's.
 */
export function problemFromDatabase(
  e: { code: string; message: string; details: string | null; hint: string | null },
): HttpError | null {
  const status = /^PT([1-5]\d\d)$/.exec(e.code)?.[1];
  if (!status || !e.hint || !/^[a-z-]+$/.test(e.hint)) return null;
  let extra: Record<string, unknown> = {};
  try {
    const parsed = e.details ? JSON.parse(e.details) : {};
    if (parsed && typeof parsed === "object" && !Array.isArray(parsed)) extra = parsed;
  } catch { /* a plain-text detail adds nothing */ }
  const headers = typeof extra.retry_after === "number"
    ? { "retry-after": String(extra.retry_after) }
    : undefined;
  const code = Number(status);
  return new HttpError(code, e.hint, TITLES[code] ?? "Request refused", e.message, {
    ...extra,
    ...(headers ? { headers } : {}),
  });
}
