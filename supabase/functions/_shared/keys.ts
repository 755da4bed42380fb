/**
 * The project's keys as the edge runtime gives them to functions
 * (supabase.com/docs/guides/functions/secrets): the new `SUPABASE_PUBLISHABLE_KEYS` and
 * `SUPABASE_SECRET_KEYS` (JSON objects of named keys) and `SUPABASE_JWKS` first, then the legacy
 * `SUPABASE_ANON_KEY` and `SUPABASE_SERVICE_ROLE_KEY`, and `JWT_SECRET` for projects that still sign
 * user tokens with the legacy HS256 secret (a secret the project sets itself).
 *
 * `LEGACY_API_KEYS=off` (a secret the project sets when it disables its legacy keys) makes the functions
 * ignore the three legacy variables, whatever they still hold. A legacy variable holding a new-style key
 * (`sb_...`) is never a legacy key: `sb_publishable_` / `sb_secret_` values count as new keys named after
 * their variable, other `sb_` values are ignored.
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
  /** Publishable keys by name, the legacy anon key as `legacy_anon` (unless `LEGACY_API_KEYS=off`). */
  publishableKeys: Record<string, string>;
  /** Secret keys by name, the legacy service_role key as `legacy_service_role` (unless `LEGACY_API_KEYS=off`). */
  secretKeys: Record<string, string>;
  /** The JWKS user tokens are verified with: `SUPABASE_JWKS`, else `SUPABASE_JWKS_URL`; null if neither is usable. */
  jwks: Jwks | URL | null;
  /** Why there is no JWKS although one was configured (the variable to fix), or null. */
  jwksProblem: string | null;
  /** The legacy HS256 secret, when the project set it and legacy keys are on. */
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
    "SUPABASE_JWKS_URL",
    "SUPABASE_ANON_KEY",
    "SUPABASE_SERVICE_ROLE_KEY",
    "JWT_SECRET",
    "LEGACY_API_KEYS",
  ] as const;
  const raw = Object.fromEntries(names.map((n) => [n, Deno.env.get(n) || undefined])) as Record<
    typeof names[number],
    string | undefined
  >;
  const signature = JSON.stringify(raw);
  if (cached?.signature === signature) return cached.env;
  if (!raw.SUPABASE_URL) throw new ConfigurationError("SUPABASE_URL is not set");
  const switchValue = raw.LEGACY_API_KEYS?.trim().toLowerCase() ?? "on";
  if (switchValue !== "on" && switchValue !== "off") {
    throw new ConfigurationError(
      "LEGACY_API_KEYS must be 'on' or 'off' (set 'off' once the legacy keys are disabled)",
    );
  }
  const legacy = switchValue === "on";
  // a legacy variable's value: a legacy key only when legacy keys are on and it is not a new-style key
  const legacyValue = (value: string | undefined) =>
    legacy && value && !value.startsWith("sb_") ? value : undefined;
  const newKey = (name: string, value: string | undefined, prefix: string) =>
    value?.startsWith(prefix) ? { [name]: value } : {};
  const anon = legacyValue(raw.SUPABASE_ANON_KEY);
  const serviceRole = legacyValue(raw.SUPABASE_SERVICE_ROLE_KEY);
  const { jwks, problem } = jwksOf(raw.SUPABASE_JWKS, raw.SUPABASE_JWKS_URL);
  const env: ProjectEnv = {
    url: raw.SUPABASE_URL,
    publishableKeys: {
      ...keyMap("SUPABASE_PUBLISHABLE_KEYS", raw.SUPABASE_PUBLISHABLE_KEYS),
      ...newKey("SUPABASE_ANON_KEY", raw.SUPABASE_ANON_KEY, "sb_publishable_"),
      ...(anon ? { legacy_anon: anon } : {}),
    },
    secretKeys: {
      ...keyMap("SUPABASE_SECRET_KEYS", raw.SUPABASE_SECRET_KEYS),
      ...newKey("SUPABASE_SERVICE_ROLE_KEY", raw.SUPABASE_SERVICE_ROLE_KEY, "sb_secret_"),
      ...(serviceRole ? { [LEGACY_SECRET]: serviceRole } : {}),
    },
    jwks,
    jwksProblem: problem,
    jwtSecret: legacyValue(raw.JWT_SECRET) ?? null,
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

/**
 * The JWKS: `SUPABASE_JWKS` inline, else `SUPABASE_JWKS_URL` as `@supabase/server` would fetch it (https,
 * or http on a loopback host; a JWKS fetched over plain http could be swapped). A malformed
 * `SUPABASE_JWKS` throws; an unusable URL is kept as the problem to report when a token needs the JWKS.
 */
function jwksOf(
  inline: string | undefined,
  url: string | undefined,
): { jwks: Jwks | URL | null; problem: string | null } {
  if (inline) {
    try {
      const parsed = JSON.parse(inline);
      if (Array.isArray(parsed)) return { jwks: { keys: parsed }, problem: null };
      if (Array.isArray(parsed?.keys)) return { jwks: parsed, problem: null };
    } catch { /* reported below */ }
    throw new ConfigurationError('SUPABASE_JWKS must be a JSON Web Key Set ({"keys": [...]})');
  }
  if (!url) return { jwks: null, problem: null };
  try {
    const parsed = new URL(url.trim());
    const loopback = /^(localhost|127\.\d+\.\d+\.\d+|\[::1\])$/.test(parsed.hostname);
    if (parsed.protocol === "https:" || (parsed.protocol === "http:" && loopback)) {
      return { jwks: parsed, problem: null };
    }
  } catch { /* reported below */ }
  return {
    jwks: null,
    problem: "SUPABASE_JWKS_URL is not usable: it must be an https URL (http only for localhost)",
  };
}
