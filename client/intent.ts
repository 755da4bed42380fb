/**
 * One Idempotency-Key per user intent, not per request: made when the intent first runs, kept in
 * `localStorage` under a name derived from the intent with an expiry, so that a double click, a second tab
 * of the same browser and a reload after a lost answer all send the same key; forgotten after a definite
 * answer, and dropped once expired: after 24 hours, the window in which Stripe and the functions remember a
 * key (docs.stripe.com/idempotency: keys may be removed once they are at least 24 hours old, and a key reused
 * after that makes a new request), a key no longer protects anything.
 * @module
 */

/** Where keys are kept: `localStorage` in a browser; any `Storage`-like object elsewhere. */
export interface KeyStorage {
  getItem(name: string): string | null;
  setItem(name: string, value: string): void;
  removeItem(name: string): void;
  /** The number of names stored (`Storage.length`), to find expired keys; without it none are cleaned. */
  readonly length?: number;
  /** The name at `index` (`Storage.key`). */
  key?(index: number): string | null;
}

/** The prefix of the names keys are stored under. */
export const KEY_PREFIX = "idempotency-key:";

/** How long a stored key is used, in ms: 24 hours, Stripe's and the functions' key window. */
export const KEY_TTL_MS = 24 * 60 * 60 * 1000;

/** A stored key: `{"key": "<uuid>", "expires_at": <ms since the epoch>}`. */
interface Stored {
  key: string;
  expires_at: number;
}

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

/** The stored, unexpired key of `intent`, or null (none, expired, or unreadable). */
export function storedKey(storage: KeyStorage, intent: string, now = Date.now()): string | null {
  const stored = readStored(storage.getItem(KEY_PREFIX + intent));
  return stored && stored.expires_at > now ? stored.key : null;
}

/** The key of `intent`: the stored, unexpired one, or a new one stored now (expired keys are dropped first). */
export function intentKey(storage: KeyStorage, intent: string, now = Date.now()): string {
  forgetExpired(storage, now);
  const stored = storedKey(storage, intent, now);
  if (stored) return stored;
  const key = newKey();
  storage.setItem(
    KEY_PREFIX + intent,
    JSON.stringify({ key, expires_at: now + KEY_TTL_MS } satisfies Stored),
  );
  return key;
}

/** Forgets the key of `intent` (after a definite answer: the next time is a new intent). */
export function forgetIntent(storage: KeyStorage, intent: string): void {
  storage.removeItem(KEY_PREFIX + intent);
}

/** Removes the stored keys that expired (or cannot be read); needs `length` and `key()` of the storage. */
export function forgetExpired(storage: KeyStorage, now = Date.now()): void {
  if (typeof storage.key !== "function" || typeof storage.length !== "number") return;
  const names: string[] = [];
  for (let i = 0; i < storage.length; i++) {
    const name = storage.key(i);
    if (name?.startsWith(KEY_PREFIX)) names.push(name);
  }
  for (const name of names) {
    const stored = readStored(storage.getItem(name));
    if (!stored || stored.expires_at <= now) storage.removeItem(name);
  }
}

function readStored(value: string | null): Stored | null {
  if (value === null) return null;
  try {
    const stored = JSON.parse(value);
    return typeof stored?.key === "string" && typeof stored?.expires_at === "number" ? stored : null;
  } catch {
    return null;
  }
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

/** A `KeyStorage` in memory (tests, and where `localStorage` is unavailable). */
export function memoryStorage(): KeyStorage & { readonly items: Map<string, string> } {
  const items = new Map<string, string>();
  return {
    items,
    getItem: (name) => items.get(name) ?? null,
    setItem: (name, value) => void items.set(name, value),
    removeItem: (name) => void items.delete(name),
    get length() {
      return items.size;
    },
    key: (index) => [...items.keys()][index] ?? null,
  };
}
