/**
 * The functions' only way to the database: `rpc()` through supabase-js with the project's secret key
 * (`databaseKey()`: the new secret key first, the legacy service_role key otherwise; one RPC = one
 * transaction). It never swallows an error: an unreachable database throws `StoreUnavailableError`, a
 * key the platform refuses (e.g. "Legacy API keys are disabled") throws `ConfigurationError`, a problem
 * a function raised for the caller (`PTnnn` with a type as hint) throws that `HttpError`, anything else
 * the database refused throws `RpcError`.
 * @module
 */
import { createClient, type SupabaseClient } from "npm:@supabase/supabase-js@2.109.0";
import { ConfigurationError, problemFromDatabase, StoreUnavailableError } from "./errors.ts";
import { databaseKey, LEGACY_SECRET, projectEnv } from "./keys.ts";

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
    this.name = "RpcError";
  }
}

/** How long one RPC may take before the function gives up waiting (the database may still commit). */
const RPC_TIMEOUT_MS = 10_000;

let cached: { signature: string; client: SupabaseClient } | undefined;

/**
 * The client for `SUPABASE_URL` with the project's secret key, built once per configuration. Throws
 * `ConfigurationError` when the URL or every secret key is missing.
 */
export function serviceClient(): SupabaseClient {
  const { url } = projectEnv();
  const { key } = databaseKey();
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
  } catch (e) {
    throw new StoreUnavailableError(undefined, { cause: e });
  }
  const { data, error, status } = result;
  if (!error) return data as T;
  // the API gateway refused the key itself (no SQLSTATE), or PostgREST refused its JWT (PGRST30x)
  if ((status === 401 || status === 403) && (!error.code || error.code.startsWith("PGRST3"))) {
    const { name } = databaseKey();
    const which = name === LEGACY_SECRET ? "legacy service_role key" : `secret key '${name}'`;
    throw new ConfigurationError(
      `The database API refused the functions' ${which} (${status} ${error.message}): ` +
        "set SUPABASE_SECRET_KEYS to a valid secret key",
    );
  }
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
