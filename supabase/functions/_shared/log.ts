/**
 * Structured logs: one JSON object per line on stdout/stderr. Secrets never reach a line: any string
 * that looks like a Stripe key, a webhook secret or a JWT is replaced, and errors are logged by name
 * and message only (no stack).
 * @module
 */

/** Severity, lowest first. */
export type Level = "debug" | "info" | "warn" | "error";

const ORDER: Record<Level, number> = { debug: 0, info: 1, warn: 2, error: 3 };
const SECRET =
  /\b(?:sk|rk|pk)_(?:test|live)_[A-Za-z0-9_]+|\bwhsec_[A-Za-z0-9_]+|\beyJ[\w-]+\.[\w-]+\.[\w-]+/g;

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
  const line = JSON.stringify({ ts: new Date().toISOString(), level, msg, ...(redact(fields) as object) });
  if (level === "error" || level === "warn") console.error(line);
  else console.log(line);
}
