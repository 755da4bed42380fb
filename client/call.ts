/**
 * One mutation as the HTTP contract asks (README, "HTTP contract"): the intent's Idempotency-Key on every
 * attempt; retries for no answer, 503, 502/504, 429 and 409 with `Retry-After` (waiting at least as long as
 * it says), with capped exponential backoff, full jitter and an overall deadline; never for another 4xx.
 * @module
 */
import { forgetIntent, intentKey, intentOf, type KeyStorage, memoryStorage } from "./intent.ts";
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
  /** Where the key is kept (default `sessionStorage`, else memory). */
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
 * (a bug: one key for two payloads), and `DeadlineError` when retries ran out of time.
 *
 * The key is forgotten after a definite answer: 2xx, or a 4xx that is not "in progress" (a refusal such as
 * `sold-out` stored nothing; an outcome such as `stripe-rejected` is replayed for the old key). It is kept
 * after no answer, a 5xx, and 409 `operation-needs-attention`, whose outcome is still to come.
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
  const key = intentKey(storage, intent);
  const started = retry.now();
  let lastError: unknown;
  for (let attempt = 1;; attempt++) {
    const left = started + retry.deadlineMs - retry.now();
    let waitMs: number;
    let reason: string;
    try {
      const answer = await withTimeout(
        left,
        (signal) => transport(endpoint, body, { "Idempotency-Key": key }, signal),
      );
      if (answer.status >= 200 && answer.status < 300) {
        forgetIntent(storage, intent);
        return {
          data: answer.body as T,
          status: answer.status,
          replayed: answer.headers.get("idempotent-replayed") === "true",
          key,
          requestId: answer.headers.get("x-request-id"),
          attempts: attempt,
        };
      }
      const problem = answer.status === 422 && problemCode(answer.body) === "idempotency-key-reused"
        ? new IdempotencyKeyReusedError(answer)
        : new ProblemError(answer);
      if (!isTransient(problem)) {
        if (isDefinite(problem)) forgetIntent(storage, intent);
        throw problem;
      }
      lastError = problem;
      reason = `${problem.status} ${problem.code}`;
      waitMs = (problem.retryAfter ?? 0) * 1000 + backoff(attempt, retry);
      // a wait the deadline cannot cover (e.g. funds pending for days) is the answer for now
      if (
        problem.retryAfter !== undefined &&
        problem.retryAfter * 1000 > started + retry.deadlineMs - retry.now()
      ) {
        throw problem;
      }
    } catch (e) {
      if (!(e instanceof NetworkError)) throw e;
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

/** Worth the same request again: 503, 502, 504; 429 and 409 when they say when (`Retry-After`). */
function isTransient(problem: ProblemError): boolean {
  if ([502, 503, 504].includes(problem.status)) return true;
  return (problem.status === 409 || problem.status === 429) && problem.retryAfter !== undefined;
}

/** A final answer for this key: any 4xx but `operation-needs-attention` (its outcome is still to come). */
function isDefinite(problem: ProblemError): boolean {
  return problem.status >= 400 && problem.status < 500 && problem.code !== "operation-needs-attention";
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
    if (globalThis.sessionStorage) return globalThis.sessionStorage;
  } catch { /* storage disabled */ }
  return fallback ??= memoryStorage();
}

let fallback: KeyStorage | undefined;
