/**
 * One mutation as the HTTP contract asks (README, "HTTP contract"): the intent's Idempotency-Key on every
 * attempt; retries for no answer, 503, 502/504, 429 with `Retry-After` and the in-progress 409s (waiting at
 * least as long as `Retry-After` says, 1 s when it is missing), with capped exponential backoff, full jitter
 * and an overall deadline; never for another 4xx.
 * @module
 */
import { forgetIntent, intentKey, intentOf, type KeyStorage, memoryStorage, storedKey } from "./intent.ts";
import { DeadlineError, IdempotencyKeyReusedError, NetworkError, ProblemError } from "./problem.ts";
import type { Transport } from "./transport.ts";

/** How long and how often to retry. */
export interface RetryOptions {
  /** Give up after this long, in ms (default 20 000): the page tells the user, and the key is kept. */
  deadlineMs: number;
  /** At most this many attempts (default 10). */
  maxAttempts: number;
  /** First backoff, in ms (default 250); doubled per attempt up to `capMs`. */
  baseMs: number;
  /** Largest backoff, in ms (default 4 000). */
  capMs: number;
  /** A number in [0, 1) for the jitter (default `Math.random`). */
  random: () => number;
  /** Waits `ms` (default `setTimeout`); tests pass a fake clock. */
  sleep: (ms: number) => Promise<void>;
  /** The clock, in ms (default `Date.now`). */
  now: () => number;
}

/** The defaults, in one place. */
export const RETRY_DEFAULTS: Readonly<RetryOptions> = {
  deadlineMs: 20_000,
  maxAttempts: 10,
  baseMs: 250,
  capMs: 4_000,
  random: Math.random,
  sleep: (ms) => new Promise((resolve) => setTimeout(resolve, ms)),
  now: () => Date.now(),
};

/** Options of one call. */
export interface CallOptions {
  /** The intent's name (default: the endpoint and the body, canonical JSON). */
  intent?: string;
  /** Where the key is kept (default `localStorage`, else memory). */
  storage?: KeyStorage;
  retry?: Partial<RetryOptions>;
  /** Called before each retry, with why and how long it waits (to show "still trying..."). */
  onRetry?: (info: { attempt: number; waitMs: number; reason: string }) => void;
}

/** A definite, successful answer. */
export interface Result<T> {
  data: T;
  status: number;
  /** `Idempotent-Replayed: true`: the stored answer of an earlier request with this key. */
  replayed: boolean;
  /** The Idempotency-Key the request was made with. */
  key: string;
  requestId: string | null;
  attempts: number;
}

/**
 * Sends `body` to `endpoint` under the intent's key until a definite answer. Resolves with a 2xx answer;
 * throws `ProblemError` for a problem answer, `IdempotencyKeyReusedError` for 422 `idempotency-key-reused`
 * (a bug: one key for two payloads), and `DeadlineError` when retries ran out of time (or the next wait
 * would outlast the deadline). Both errors say in `keyKept` whether the key was kept.
 *
 * The key is forgotten after a definite answer: 2xx, or a 4xx that is not "in progress" (a refusal such as
 * `sold-out` stored nothing; an outcome such as `stripe-rejected` is replayed for the old key), unless an
 * earlier attempt's outcome is unknown (see `isDefinite`). It is kept after no answer, a 5xx, and 409
 * `operation-needs-attention`, whose outcome is still to come.
 *
 * @example
 * const { data, replayed } = await callIdempotent(transport, "guest-checkout", body);
 */
export async function callIdempotent<T>(
  transport: Transport,
  endpoint: string,
  body: unknown,
  options: CallOptions = {},
): Promise<Result<T>> {
  const retry = { ...RETRY_DEFAULTS, ...options.retry };
  const storage = options.storage ?? defaultStorage();
  const intent = options.intent ?? intentOf(endpoint, body);
  // a key stored by an earlier call was sent with no definite answer (it would have been forgotten)
  let outcomeUnknown = storedKey(storage, intent) !== null;
  const key = intentKey(storage, intent);
  const started = retry.now();
  let lastError: unknown;
  for (let attempt = 1;; attempt++) {
    const left = () => started + retry.deadlineMs - retry.now();
    let waitMs: number;
    let reason: string;
    try {
      const answer = await withTimeout(
        left(),
        (signal) => transport(endpoint, body, { "Idempotency-Key": key }, signal),
      );
      const replayed = answer.headers.get("idempotent-replayed") === "true";
      if (answer.status >= 200 && answer.status < 300) {
        forgetIntent(storage, intent);
        return {
          data: answer.body as T,
          status: answer.status,
          replayed,
          key,
          requestId: answer.headers.get("x-request-id"),
          attempts: attempt,
        };
      }
      const problem = answer.status === 422 && problemCode(answer.body) === "idempotency-key-reused"
        ? new IdempotencyKeyReusedError(answer)
        : new ProblemError(answer);
      const afterMs = retryAfterMs(problem);
      if (isTransient(problem) && !(problem.status === 429 && afterMs > left())) {
        // a 429 is a refusal before anything was done; the others leave the outcome open
        if (problem.status !== 429) outcomeUnknown = true;
        // a wait the deadline cannot cover: no definite answer in time
        if (afterMs > left()) throw new DeadlineError(attempt, retry.now() - started, { cause: problem });
        lastError = problem;
        reason = `${problem.status} ${problem.code}`;
        waitMs = afterMs + backoff(attempt, retry);
      } else {
        problem.keyKept = !isDefinite(problem, outcomeUnknown, replayed);
        if (!problem.keyKept) forgetIntent(storage, intent);
        throw problem;
      }
    } catch (e) {
      if (!(e instanceof NetworkError)) throw e;
      outcomeUnknown = true;
      lastError = e;
      reason = "no answer";
      waitMs = backoff(attempt, retry);
    }
    const elapsed = retry.now() - started;
    if (attempt >= retry.maxAttempts || elapsed + waitMs >= retry.deadlineMs) {
      throw new DeadlineError(attempt, elapsed, { cause: lastError });
    }
    options.onRetry?.({ attempt, waitMs, reason });
    await retry.sleep(waitMs);
  }
}

/** Capped exponential backoff with full jitter: a random wait in [0, min(cap, base × 2^(attempt-1))). */
export function backoff(attempt: number, retry: Pick<RetryOptions, "baseMs" | "capMs" | "random">): number {
  return Math.floor(retry.random() * Math.min(retry.capMs, retry.baseMs * 2 ** (attempt - 1)));
}

/** The 409s that mean "a request with this key, or this operation, is still running": retried. */
export const IN_PROGRESS_PROBLEMS: readonly string[] = ["idempotency-key-in-use", "operation-in-progress"];

/** The wait after an in-progress 409 that has no `Retry-After`, in seconds (the functions send 1). */
export const IN_PROGRESS_WAIT_SECONDS = 1;

/**
 * Worth the same request again: 502, 503, 504; 409 that is in progress by its problem type (another 409
 * with `Retry-After`, such as `funds-pending`, is a refusal); 429 when it says when (`Retry-After`).
 */
function isTransient(problem: ProblemError): boolean {
  if ([502, 503, 504].includes(problem.status)) return true;
  if (problem.status === 409) return IN_PROGRESS_PROBLEMS.includes(problem.code);
  return problem.status === 429 && problem.retryAfter !== undefined;
}

/** How long a transient problem asks to wait, in ms (`Retry-After`, or the in-progress default). */
function retryAfterMs(problem: ProblemError): number {
  const inProgress = problem.status === 409 && IN_PROGRESS_PROBLEMS.includes(problem.code);
  return (problem.retryAfter ?? (inProgress ? IN_PROGRESS_WAIT_SECONDS : 0)) * 1000;
}

/**
 * Is `problem` a final answer for this key, so that the key can be forgotten? A 4xx but
 * `operation-needs-attention` (its outcome is still to come), and, when an earlier attempt with this key got
 * no definite answer (lost, 5xx, in progress, or sent by an earlier call), only a 4xx that speaks for that
 * attempt too: the key's stored answer (`Idempotent-Replayed: true`) or 422 `idempotency-key-reused` (the key
 * is bound to another payload). Any other 4xx (401 for an expired token, 403, 404, 429, a refusal) came from
 * this attempt alone: the earlier one may still have done the work, and only its key can find it again.
 */
function isDefinite(problem: ProblemError, outcomeUnknown: boolean, replayed: boolean): boolean {
  if (problem.status < 400 || problem.status >= 500 || problem.code === "operation-needs-attention") {
    return false;
  }
  return !outcomeUnknown || replayed || problem instanceof IdempotencyKeyReusedError;
}

function problemCode(body: unknown): string | undefined {
  const type = (body as { type?: unknown } | null)?.type;
  return typeof type === "string" ? type.split("/").pop() : undefined;
}

/** Runs `fn` with a signal aborted after `ms`; an attempt cut off by the deadline got no answer. */
async function withTimeout<T>(ms: number, fn: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), Math.max(ms, 0));
  try {
    return await fn(controller.signal);
  } finally {
    clearTimeout(timer);
  }
}

function defaultStorage(): KeyStorage {
  try {
    if (globalThis.localStorage) return globalThis.localStorage;
  } catch { /* storage disabled */ }
  return fallback ??= memoryStorage();
}

let fallback: KeyStorage | undefined;
