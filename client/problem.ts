/**
 * The errors the client throws: a function's `application/problem+json` answer (RFC 9457) as a typed
 * `ProblemError`, a request that got no answer (`NetworkError`), and retries that ran out of time
 * (`DeadlineError`). `ProblemError` and `DeadlineError` both say, in `keyKept`, whether the intent's key
 * was kept (the outcome is unknown or still to come: doing the same thing again resumes it) or forgotten
 * (a definite answer: doing it again is a new intent).
 * @module
 */

/** One field a problem names (`errors` of a 400 `validation` problem). */
export interface FieldProblem {
  field: string;
  message: string;
}

/** A function's answer, as a transport hands it over. */
export interface Answer {
  status: number;
  headers: Headers;
  /** The parsed JSON body, or the text when it is not JSON. */
  body: unknown;
}

/**
 * A function refused or failed the request with a problem: `code` is the problem type's last segment
 * (`sold-out`, `refund-exceeds-refundable`, ...), so a page branches on it without parsing text; extra
 * members (`available`, `refundable_cents`, ...) are in `body`.
 */
export class ProblemError extends Error {
  /** The problem type, e.g. `/problems/sold-out`. */
  readonly type: string;
  /** The type's last segment, e.g. `sold-out`. */
  readonly code: string;
  readonly title: string;
  readonly status: number;
  readonly detail: string | undefined;
  /** The request's id, to quote to support and find in the logs. */
  readonly requestId: string | undefined;
  readonly errors: FieldProblem[];
  /** `Retry-After` in seconds, when the answer had one. */
  readonly retryAfter: number | undefined;
  /** The whole problem document. */
  readonly body: Record<string, unknown>;
  /** Whether the intent's key was kept (set by `callIdempotent`; false until then). */
  keyKept = false;

  constructor(answer: Answer) {
    const body = isRecord(answer.body) ? answer.body : {};
    const type = typeof body.type === "string" ? body.type : "about:blank";
    const title = typeof body.title === "string"
      ? body.title
      : typeof body.message === "string"
      ? body.message
      : `Request failed with status ${answer.status}`;
    const detail = typeof body.detail === "string" ? body.detail : undefined;
    super(detail ? `${title}: ${detail}` : title);
    this.name = new.target.name;
    this.type = type;
    this.code = type.split("/").pop() || type;
    this.title = title;
    this.status = answer.status;
    this.detail = detail;
    this.requestId = typeof body.request_id === "string"
      ? body.request_id
      : answer.headers.get("x-request-id") ?? undefined;
    this.errors = Array.isArray(body.errors) ? body.errors.filter(isFieldProblem) : [];
    this.retryAfter = retryAfterSeconds(answer.headers.get("retry-after"));
    this.body = body;
  }
}

/**
 * 422 `idempotency-key-reused`: the key was sent with another payload or to another endpoint. A bug in the
 * caller (one key, two intents), never something a user can fix: the client has forgotten the key.
 */
export class IdempotencyKeyReusedError extends ProblemError {}

/** No answer came: the connection failed or was reset, or the answer was lost. Safe to retry with the same key. */
export class NetworkError extends Error {
  constructor(message = "The request got no answer", options?: { cause?: unknown }) {
    super(message, options);
    this.name = "NetworkError";
  }
}

/**
 * The retries ran out of time (or attempts) without a definite answer, or the next wait (`Retry-After` of a
 * 503 or an in-progress 409) would outlast the deadline. The outcome is unknown: the key is kept, so doing
 * the same thing again (even after a reload) reuses it and cannot do it twice. `cause` is the last error: a
 * `NetworkError` or a `ProblemError`.
 */
export class DeadlineError extends Error {
  /** Always true: the outcome is unknown. */
  readonly keyKept = true;
  /** The last answer's problem, when the last attempt had one. */
  readonly problem: ProblemError | undefined;
  constructor(readonly attempts: number, readonly elapsedMs: number, options: { cause: unknown }) {
    super(`No definite answer after ${attempts} attempts in ${Math.round(elapsedMs / 1000)} s`, options);
    this.name = "DeadlineError";
    this.problem = options.cause instanceof ProblemError ? options.cause : undefined;
  }
}

/** `Retry-After` as seconds (delta-seconds or an HTTP date), or undefined when absent or unreadable. */
export function retryAfterSeconds(value: string | null, now = Date.now()): number | undefined {
  if (value === null || value.trim() === "") return undefined;
  if (/^\s*\d+\s*$/.test(value)) return Number(value);
  const at = Date.parse(value);
  return Number.isNaN(at) ? undefined : Math.max(0, Math.ceil((at - now) / 1000));
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function isFieldProblem(value: unknown): value is FieldProblem {
  return isRecord(value) && typeof value.field === "string" && typeof value.message === "string";
}
