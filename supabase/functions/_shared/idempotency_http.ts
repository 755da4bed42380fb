/**
 * The inbound layer: the `Idempotency-Key` request header (IETF draft "The Idempotency-Key HTTP Header
 * Field") on every mutating endpoint.
 *
 * - missing or malformed key (1-255 visible ASCII characters; a quoted sf-string is accepted) -> 400;
 * - the key is scoped to the caller, so user A's keys never replay for user B;
 * - the same key with another payload (endpoint + canonical JSON, key order ignored) -> 422;
 * - the same key while its first request runs -> 409 with `Retry-After`;
 * - a finished response (2xx-4xx) is stored and replayed byte for byte with `Idempotent-Replayed: true`;
 *   a 5xx of ours releases the key for a retry with the same payload; a refusal thrown before anything
 *   was done (bad input, unknown ids, sold out) forgets the key, so that bad input writes nothing.
 * @module
 */
import type { SupabaseClient } from "npm:@supabase/supabase-js@2.109.0";
import { HttpError } from "./errors.ts";
import { problem } from "./http.ts";
import { IDEMPOTENCY_DEFAULTS } from "./idempotency.ts";
import { log } from "./log.ts";
import { rpc } from "./supabase.ts";

/** What the store answers to a claim of (scope, key). */
export type RequestClaim =
  | { outcome: "acquired"; fencingToken: number }
  | { outcome: "replay"; status: number; headers: Record<string, string>; body: string }
  | { outcome: "in_progress" }
  | { outcome: "mismatch" };

/** Persistence of request keys (the RPC implementation below in production). */
export interface RequestKeyStore {
  claim(
    scope: string,
    key: string,
    endpoint: string,
    fingerprint: string,
    leaseSeconds: number,
  ): Promise<RequestClaim>;
  finish(
    scope: string,
    key: string,
    fencingToken: number,
    response: { status: number; headers: Record<string, string>; body: string },
  ): Promise<void>;
  /** Gives the key back: bound to its payload and claimable at once, or (`forget`) deleted. */
  release(scope: string, key: string, fencingToken: number, forget: boolean): Promise<void>;
}

/** Where and for whom a request runs. */
export interface IdempotentRequest {
  /** The caller: `user:<uuid>`, or `guest:<hash>` (see `guestScope`). */
  scope: string;
  /** The function's name; part of the fingerprint, so one key cannot serve two endpoints. */
  endpoint: string;
  /** The validated payload, fingerprinted as canonical JSON. */
  payload: unknown;
  store?: RequestKeyStore;
  leaseSeconds?: number;
}

/** Headers kept with a stored response (the rest are added again on every answer). */
const STORED_HEADERS = ["content-type", "location"];

/**
 * Runs `handle(key)` once per (scope, Idempotency-Key) and answers retries from the store (see the module
 * doc). Throws `HttpError` 400/409/422 for key problems, and `StoreUnavailableError` (503) when the
 * store cannot be reached, in which case `handle` is not run.
 */
export async function withIdempotencyKey(
  req: Request,
  request: IdempotentRequest,
  handle: (key: string) => Promise<Response>,
): Promise<Response> {
  const key = idempotencyKeyOf(req);
  const store = request.store ?? requestKeyStore();
  const fingerprint = await sha256Hex(`${request.endpoint}\n${canonicalJson(request.payload)}`);
  const claim = await store.claim(
    request.scope,
    key,
    request.endpoint,
    fingerprint,
    request.leaseSeconds ?? IDEMPOTENCY_DEFAULTS.requestLeaseSeconds,
  );

  switch (claim.outcome) {
    case "replay":
      return new Response(claim.body, {
        status: claim.status,
        headers: { ...claim.headers, "idempotent-replayed": "true" },
      });
    case "in_progress":
      throw new HttpError(
        409,
        "idempotency-key-in-use",
        "Request in progress",
        "A request with this Idempotency-Key is still being processed",
        // The lease only bounds a crash; a running request usually finishes within a second.
        { headers: { "retry-after": "1" } },
      );
    case "mismatch":
      throw new HttpError(
        422,
        "idempotency-key-reused",
        "Idempotency-Key reused",
        "This Idempotency-Key was used with a different request",
      );
  }

  let res: Response;
  try {
    res = await handle(key);
  } catch (e) {
    const disposition = e instanceof HttpError ? e.disposition : "transient";
    if (disposition !== "outcome") {
      await releaseQuietly(store, request.scope, key, claim.fencingToken, disposition === "refusal");
      throw e;
    }
    res = problem(e as HttpError);
  }
  if (res.status >= 500) {
    await releaseQuietly(store, request.scope, key, claim.fencingToken, false);
    return res;
  }
  const body = await res.text();
  const headers: Record<string, string> = {};
  for (const name of STORED_HEADERS) {
    const value = res.headers.get(name);
    if (value !== null) headers[name] = value;
  }
  await store.finish(request.scope, key, claim.fencingToken, { status: res.status, headers, body });
  return new Response(body, { status: res.status, headers: res.headers });
}

/** The `Idempotency-Key` header, validated; a quoted value (sf-string) is unquoted. */
export function idempotencyKeyOf(req: Request): string {
  const raw = req.headers.get("idempotency-key");
  if (raw === null || raw === "") {
    throw new HttpError(
      400,
      "idempotency-key-missing",
      "Idempotency-Key required",
      "Send an Idempotency-Key header (for example a UUID) with every request that changes something",
      {
        errors: [{ field: "Idempotency-Key", message: "missing" }],
      },
    );
  }
  const key = /^".*"$/.test(raw) ? raw.slice(1, -1) : raw;
  if (!/^[\x21-\x7e]{1,255}$/.test(key)) {
    throw new HttpError(
      400,
      "idempotency-key-invalid",
      "Invalid Idempotency-Key",
      "The Idempotency-Key must be 1 to 255 visible ASCII characters",
      {
        errors: [{ field: "Idempotency-Key", message: "must be 1 to 255 visible ASCII characters" }],
      },
    );
  }
  return key;
}

/** The scope of a guest: a hash of the normalised (trimmed, lower-case) email, never the email itself. */
export async function guestScope(email: string): Promise<string> {
  return `guest:${await sha256Hex(email.trim().toLowerCase())}`;
}

/** JSON with object keys sorted at every depth: equal payloads give equal text whatever their key order. */
export function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(",")}]`;
  if (value !== null && typeof value === "object") {
    const entries = Object.entries(value as Record<string, unknown>).filter(([, v]) => v !== undefined);
    return `{${
      entries.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([k, v]) =>
        `${JSON.stringify(k)}:${canonicalJson(v)}`
      ).join(",")
    }}`;
  }
  return JSON.stringify(value) ?? "null";
}

async function sha256Hex(text: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

async function releaseQuietly(
  store: RequestKeyStore,
  scope: string,
  key: string,
  fencingToken: number,
  forget: boolean,
): Promise<void> {
  try {
    await store.release(scope, key, fencingToken, forget);
  } catch (e) {
    // Its lease then runs out and the key is claimable again; the error the caller sees matters more.
    log("warn", "could not release an idempotency key", { scope, error: e });
  }
}

/** The store over the Postgres RPCs of the `stripe_idempotency` migration (default: the service client). */
export function requestKeyStore(client?: SupabaseClient): RequestKeyStore {
  return {
    async claim(scope, key, endpoint, fingerprint, leaseSeconds) {
      const row = await rpc<RequestClaimRow>("claim_idempotency_key", {
        p_scope: scope,
        p_key: key,
        p_endpoint: endpoint,
        p_fingerprint: fingerprint,
        p_lease_seconds: leaseSeconds,
        p_ttl_seconds: IDEMPOTENCY_DEFAULTS.requestTtlSeconds,
      }, client);
      return requestClaimOf(row);
    },
    async finish(scope, key, fencingToken, response) {
      await rpc(response.status < 400 ? "complete_idempotency_key" : "fail_idempotency_key", {
        p_scope: scope,
        p_key: key,
        p_fencing_token: fencingToken,
        p_response_status: response.status,
        p_response_headers: response.headers,
        p_response_body: response.body,
      }, client);
    },
    async release(scope, key, fencingToken, forget) {
      await rpc(
        "release_idempotency_key",
        { p_scope: scope, p_key: key, p_fencing_token: fencingToken, p_forget: forget },
        client,
      );
    },
  };
}

export interface RequestClaimRow {
  outcome: "acquired" | "replay" | "in_progress" | "mismatch";
  fencing_token: number;
  locked_until: string | null;
  response_status: number | null;
  response_headers: Record<string, string> | null;
  response_body: string | null;
}

/** A claim as the claiming RPC answers it (claim_idempotency_key, or a merged RPC that includes it). */
export function requestClaimOf(row: RequestClaimRow): RequestClaim {
  switch (row.outcome) {
    case "acquired":
      return { outcome: "acquired", fencingToken: row.fencing_token };
    case "replay":
      return {
        outcome: "replay",
        status: row.response_status!,
        headers: row.response_headers ?? {},
        body: row.response_body!,
      };
    case "in_progress":
      return { outcome: "in_progress" };
    default:
      return { outcome: "mismatch" };
  }
}
