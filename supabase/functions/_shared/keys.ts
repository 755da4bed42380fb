/**
 * The project's keys as the edge runtime gives them to functions
 * (supabase.com/docs/guides/functions/secrets): the new `SUPABASE_PUBLISHABLE_KEYS` and
 * `SUPABASE_SECRET_KEYS` (JSON objects of named keys) and `SUPABASE_JWKS` first, then the legacy
 * `SUPABASE_ANON_KEY` and `SUPABASE_SERVICE_ROLE_KEY`, and `JWT_SECRET` for projects that still sign
 * user tokens with the legacy HS256 secret (a secret the project sets itself).
 * @module
 */
import { ConfigurationError } from "./errors.ts";

/** A JSON Web Key Set. */
export interface Jwks {
  keys: Record<string, unknown>[];
}

/** Everything the functions know about the project's keys. */
export interface ProjectEnv {
  url: string;
  /** Publishable keys by name, the legacy anon key as `legacy_anon`. */
  publishableKeys: Record<string, string>;
  /** Secret keys by name, the legacy service_role key as `legacy_service_role`. */
  secretKeys: Record<string, string>;
  jwks: Jwks | null;
  /** The legacy HS256 secret, when the project set it. */
  jwtSecret: string | null;
}

/** The name under which the legacy service_role key sits among the secret keys. */
export const LEGACY_SECRET = "legacy_service_role";

let cached: { signature: string; env: ProjectEnv } | undefined;

/**
 * The project's keys, read once per configuration. Throws `ConfigurationError` when `SUPABASE_URL` is
 * missing or a key variable is not the JSON it must be.
 */
export function projectEnv(): ProjectEnv {
  const names = [
    "SUPABASE_URL",
    "SUPABASE_PUBLISHABLE_KEYS",
    "SUPABASE_SECRET_KEYS",
    "SUPABASE_JWKS",
    "SUPABASE_ANON_KEY",
    "SUPABASE_SERVICE_ROLE_KEY",
    "JWT_SECRET",
  ] as const;
  const raw = Object.fromEntries(names.map((n) => [n, Deno.env.get(n) || undefined])) as Record<
    typeof names[number],
    string | undefined
  >;
  const signature = JSON.stringify(raw);
  if (cached?.signature === signature) return cached.env;
  if (!raw.SUPABASE_URL) throw new ConfigurationError("SUPABASE_URL is not set");
  const env: ProjectEnv = {
    url: raw.SUPABASE_URL,
    publishableKeys: {
      ...keyMap("SUPABASE_PUBLISHABLE_KEYS", raw.SUPABASE_PUBLISHABLE_KEYS),
      ...(raw.SUPABASE_ANON_KEY ? { legacy_anon: raw.SUPABASE_ANON_KEY } : {}),
    },
    secretKeys: {
      ...keyMap("SUPABASE_SECRET_KEYS", raw.SUPABASE_SECRET_KEYS),
      ...(raw.SUPABASE_SERVICE_ROLE_KEY ? { [LEGACY_SECRET]: raw.SUPABASE_SERVICE_ROLE_KEY } : {}),
    },
    jwks: jwks(raw.SUPABASE_JWKS),
    jwtSecret: raw.JWT_SECRET ?? null,
  };
  cached = { signature, env };
  return env;
}

/**
 * The key the functions reach the database with: the secret key named `default` (else the first one),
 * else the legacy service_role key. Throws `ConfigurationError` when there is none.
 */
export function databaseKey(): { name: string; key: string } {
  const { secretKeys } = projectEnv();
  const name = "default" in secretKeys
    ? "default"
    : Object.keys(secretKeys).find((n) => n !== LEGACY_SECRET) ?? LEGACY_SECRET;
  const key = secretKeys[name];
  if (!key) {
    throw new ConfigurationError(
      "No secret key to reach the database: set SUPABASE_SECRET_KEYS (or the legacy SUPABASE_SERVICE_ROLE_KEY)",
    );
  }
  return { name, key };
}

function keyMap(name: string, value: string | undefined): Record<string, string> {
  if (!value) return {};
  try {
    const parsed = JSON.parse(value);
    if (
      parsed && typeof parsed === "object" && !Array.isArray(parsed) &&
      Object.values(parsed).every((v) => typeof v === "string")
    ) {
      return parsed;
    }
  } catch { /* reported below */ }
  throw new ConfigurationError(`${name} must be a JSON object of named keys, e.g. {"default": "sb_..."}`);
}

function jwks(value: string | undefined): Jwks | null {
  if (!value) return null;
  try {
    const parsed = JSON.parse(value);
    if (Array.isArray(parsed)) return { keys: parsed };
    if (Array.isArray(parsed?.keys)) return parsed;
  } catch { /* reported below */ }
  throw new ConfigurationError('SUPABASE_JWKS must be a JSON Web Key Set ({"keys": [...]})');
}
