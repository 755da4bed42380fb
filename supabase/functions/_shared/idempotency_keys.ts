/**
 * Stripe idempotency keys: one per operation, generated once when the operation's row is created and
 * reused by every retry and by the reconciler.
 * @module
 */

const KEY_PART = /^[^\s]+$/;

/**
 * A Stripe idempotency key for an operation: `operation_type:stable_id:UUID`. Throws when a part is
 * empty or has white space, or when the key would exceed Stripe's 255 characters.
 */
export function generateIdempotencyKey(operationType: string, stableId: string): string {
  if (!KEY_PART.test(operationType)) {
    throw new Error(`Invalid operation type '${operationType}': empty or with white space`);
  }
  if (!KEY_PART.test(stableId)) throw new Error(`Invalid stable id '${stableId}': empty or with white space`);
  const key = `${operationType}:${stableId}:${crypto.randomUUID()}`;
  if (key.length > 255) {
    throw new Error(`Idempotency key for '${operationType}:${stableId}' exceeds 255 characters`);
  }
  return key;
}

/**
 * The old plan's generator, kept for its callers: the client's `x-idempotency-key` header when sent,
 * else the parts joined by `:` (with a UUID appended when the first part names an operation type).
 * New code runs operations through `runOperation`, whose key is stored once and reused by every retry.
 * @deprecated
 */
export function generateIdempotencyKeyLegacy(parts: string[], req?: Request): string {
  const clientKey = req?.headers.get("x-idempotency-key");
  const joined = parts.filter(Boolean).join(":");
  const key = clientKey ??
    (parts.length >= 2 && parts[0].includes(":") ? `${joined}:${crypto.randomUUID()}` : joined);
  if (!/^[\x21-\x7e]{1,255}$/.test(key)) {
    throw new Error(
      `Invalid idempotency key '${key.slice(0, 40)}': 1 to 255 visible ASCII characters expected`,
    );
  }
  return key;
}
