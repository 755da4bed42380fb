/**
 * One Idempotency-Key per user intent, not per request: made when the intent first runs, kept in
 * `sessionStorage` under a name derived from the intent, so that a double click, a second tab of the same
 * session and a reload after a lost answer all send the same key; forgotten after a definite answer.
 * @module
 */

/** Where keys are kept: `sessionStorage` in a browser; any `Storage`-like object elsewhere. */
export interface KeyStorage {
  getItem(name: string): string | null;
  setItem(name: string, value: string): void;
  removeItem(name: string): void;
}

/** The prefix of the names keys are stored under. */
export const KEY_PREFIX = "idempotency-key:";

/**
 * The name of an intent: the endpoint and its body as canonical JSON (keys sorted), so that the same
 * purchase is the same intent wherever it starts, and another quantity or email is another one.
 */
export function intentOf(endpoint: string, body: unknown): string {
  return `${endpoint}:${canonicalJson(body)}`;
}

/** JSON with object keys sorted at every level (arrays keep their order). */
export function canonicalJson(value: unknown): string {
  return JSON.stringify(
    value,
    (_key, v) =>
      v && typeof v === "object" && !Array.isArray(v)
        ? Object.fromEntries(Object.keys(v).sort().map((k) => [k, (v as Record<string, unknown>)[k]]))
        : v,
  );
}

/** The key of `intent`: the stored one, or a new one stored now. */
export function intentKey(storage: KeyStorage, intent: string): string {
  const name = KEY_PREFIX + intent;
  const stored = storage.getItem(name);
  if (stored) return stored;
  const key = newKey();
  storage.setItem(name, key);
  return key;
}

/** Forgets the key of `intent` (after a definite answer: the next time is a new intent). */
export function forgetIntent(storage: KeyStorage, intent: string): void {
  storage.removeItem(KEY_PREFIX + intent);
}

/** A random UUID v4; also where `crypto.randomUUID` is missing (pages served over plain http off localhost). */
export function newKey(): string {
  if (typeof crypto.randomUUID === "function") return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const hex = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** A `KeyStorage` in memory (tests, and where `sessionStorage` is unavailable). */
export function memoryStorage(): KeyStorage & { readonly items: Map<string, string> } {
  const items = new Map<string, string>();
  return {
    items,
    getItem: (name) => items.get(name) ?? null,
    setItem: (name, value) => void items.set(name, value),
    removeItem: (name) => void items.delete(name),
  };
}
