/**
 * The functions' only way to the database: `rpc()` through supabase-js with the service-role key
 * (one RPC = one transaction). It never swallows an error: an unreachable database throws
 * `StoreUnavailableError`, a problem a function raised for the caller (`PTnnn` with a type as hint)
 * throws that `HttpError`, anything else the database refused throws `RpcError`.
 * @module
 */
import { createClient, type SupabaseClient } from "npm:@supabase/supabase-js@2.109.0";
import { problemFromDatabase, StoreUnavailableError } from "./errors.ts";

/** An error PostgreSQL (through PostgREST) answered with. */
export class RpcError extends Error {
  constructor(
    readonly fn: string,
    readonly status: number,
    readonly code: string,
    message: string,
    readonly details: string | null = null,
    readonly hint: string | null = null,
  ) {
    super(`${fn}: ${message}`);
  }
}

/** How long one RPC may take before the function gives up waiting (the database may still commit). */
const RPC_TIMEOUT_MS = 10_000;

let cached: { signature: string; client: SupabaseClient } | undefined;

/** The service-role client for `SUPABASE_URL`, built once per configuration. */
export function serviceClient(): SupabaseClient {
  const url = Deno.env.get("SUPABASE_URL");
  const key = Deno.env.get("SUPABASE_SERVICE_ROLE_KEY");
  if (!url || !key) throw new Error("SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY must be set");
  const signature = `${url}\n${key}`;
  if (cached?.signature !== signature) {
    cached = {
      signature,
      client: createClient(url, key, {
        auth: { persistSession: false, autoRefreshToken: false },
        global: {
          fetch: (input, init) => fetch(input, { ...init, signal: AbortSignal.timeout(RPC_TIMEOUT_MS) }),
        },
      }),
    };
  }
  return cached.client;
}

/** Calls `fn` with named `args`; returns its result or throws (see the module doc). */
export async function rpc<T>(
  fn: string,
  args: Record<string, unknown>,
  client = serviceClient(),
): Promise<T> {
  let result;
  try {
    result = await client.rpc(fn, args);
  } catch {
    throw new StoreUnavailableError();
  }
  const { data, error, status } = result;
  if (!error) return data as T;
  if (status === 0 || status >= 500 || !error.code) throw new StoreUnavailableError();
  const details = {
    code: error.code,
    message: error.message,
    details: error.details ?? null,
    hint: error.hint ?? null,
  };
  throw problemFromDatabase(details) ??
    new RpcError(fn, status, error.code, error.message, details.details, details.hint);
}
