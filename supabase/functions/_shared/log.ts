/**
 * Structured logs: one JSON object per line on stdout/stderr, each with the `request_id` of the request
 * it was written for (`withRequestId`: an id the function made, never one a client chose) and, when the
 * platform sent one, its `sb-request-id` as `platform_request_id`. Secrets never reach a line: any string that looks like a Stripe
 * key, a webhook secret, a Supabase secret key or a JWT is replaced, and errors are logged by name and
 * message only (no stack).
 * @module
 */
import { AsyncLocalStorage } from "node:async_hooks";

/** Severity, lowest first. */
export type Level = "debug" | "info" | "warn" | "error";

const ORDER: Record<Level, number> = { debug: 0, info: 1, warn: 2, error: 3 };
const SECRET =
  /\b(?:sk|rk|pk)_(?:test|live)_[A-Za-z0-9_]+|\bwhsec_[A-Za-z0-9_]+|\bsb_secret_[\w-]+|\beyJ[\w-]+\.[\w-]+\.[\w-]+/g;

const requestContext = new AsyncLocalStorage<{ requestId: string; platformRequestId?: string }>();

/**
 * Runs `fn` as the handling of request `requestId`: every line it logs carries that id, and the
 * platform's own id for the request (`platformRequestId`) when there is one.
 */
export function withRequestId<T>(requestId: string, fn: () => T, platformRequestId?: string): T {
  return requestContext.run({ requestId, platformRequestId }, fn);
}

/** The id of the request being handled, if any. */
export function currentRequestId(): string | undefined {
  return requestContext.getStore()?.requestId;
}

/** Replaces anything that looks like a secret in `value`, deeply; errors become `{name, message}`. */
export function redact(value: unknown, depth = 0): unknown {
  if (typeof value === "string") return value.replace(SECRET, "[redacted]");
  if (value instanceof Error) return { name: value.name, message: redact(value.message) };
  if (depth > 5 || value === null || typeof value !== "object") return value;
  if (Array.isArray(value)) return value.map((v) => redact(v, depth + 1));
  return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, redact(v, depth + 1)]));
}

/** Writes one log line if `level` reaches `LOG_LEVEL` (default `info`). */
export function log(level: Level, msg: string, fields: Record<string, unknown> = {}): void {
  const threshold = (Deno.env.get("LOG_LEVEL") ?? "info") as Level;
  if (ORDER[level] < (ORDER[threshold] ?? ORDER.info)) return;
  const context = requestContext.getStore();
  const line = JSON.stringify({
    ts: new Date().toISOString(),
    level,
    msg,
    ...(context ? { request_id: context.requestId } : {}),
    ...(context?.platformRequestId ? { platform_request_id: context.platformRequestId } : {}),
    ...(redact(fields) as object),
  });
  if (level === "error" || level === "warn") console.error(line);
  else console.log(line);
}
