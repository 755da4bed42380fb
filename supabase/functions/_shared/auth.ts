/**
 * Who is calling, checked in the function (every function has `verify_jwt = false`: the platform's
 * check accepts legacy JWTs only, supabase.com/docs/guides/functions/auth). The credentials are the
 * platform's (supabase.com/docs/guides/functions/auth-headers): a user's access token in
 * `Authorization: Bearer`, an API key in `apikey`.
 *
 * The new-style checks are `@supabase/server`'s (`verifyCredentials`: user tokens against the project's
 * JWKS, publishable and secret keys compared in constant time); around them, what old projects still
 * send: user tokens signed with the legacy HS256 `JWT_SECRET`, the legacy anon and service_role keys
 * (also as a bearer token, as older pg_cron jobs send them). See docs/adr/0007.
 * @module
 */
import { verifyCredentials } from "npm:@supabase/server@1.4.1/core";
import { decodeProtectedHeader, type JWTPayload, jwtVerify } from "npm:jose@6.2.18";
import { ConfigurationError, HttpError } from "./errors.ts";
import { LEGACY_SECRET, type ProjectEnv, projectEnv } from "./keys.ts";

/** A verified caller. */
export interface User {
  id: string;
  email: string | null;
  /** A platform administrator (`app_metadata.role = "platform_admin"`). */
  isPlatformAdmin: boolean;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

function unauthorized(detail: string): HttpError {
  return new HttpError(401, "unauthorized", "Unauthorized", detail, {
    headers: { "www-authenticate": "Bearer" },
  });
}

function bearerOf(req: Request): string | null {
  return req.headers.get("authorization")?.match(/^Bearer\s+(\S+)$/i)?.[1] ?? null;
}

/** `@supabase/server`'s view of the project: its keys, the legacy ones named among them. */
function serverEnv(env: ProjectEnv) {
  return {
    url: env.url,
    publishableKeys: env.publishableKeys,
    secretKeys: env.secretKeys,
    // absent: the library reads SUPABASE_JWKS_URL, if set
    ...(env.jwks ? { jwks: env.jwks } : {}),
  };
}

/** Does `key` match one of the project's keys of `kind` (by name, or any with `*`)? */
async function keyMatches(key: string | null, kind: "publishable" | "secret", name = "*"): Promise<boolean> {
  if (!key) return false;
  const { data } = await verifyCredentials({ token: null, apikey: key }, {
    auth: `${kind}:${name}`,
    env: serverEnv(projectEnv()),
  });
  return data !== null;
}

/**
 * The verified claims of a user's access token: asymmetric tokens against the JWKS (through
 * `@supabase/server`), HS256 tokens against `JWT_SECRET`. Returns null for a missing, forged or expired
 * token; throws `ConfigurationError` when the project's keys are unusable.
 */
async function userClaims(token: string | null): Promise<JWTPayload | null> {
  if (!token || token.startsWith("sb_")) return null;
  const env = projectEnv();
  let alg: string | undefined;
  try {
    alg = decodeProtectedHeader(token).alg;
  } catch {
    return null;
  }
  if (alg === "HS256" && env.jwtSecret) {
    try {
      const secret = new TextEncoder().encode(env.jwtSecret);
      return (await jwtVerify(token, secret, { algorithms: ["HS256"] })).payload;
    } catch {
      return null;
    }
  }
  const { data, error } = await verifyCredentials({ token, apikey: null }, {
    auth: "user",
    env: serverEnv(env),
  });
  if (error && error.status >= 500) throw new ConfigurationError(error.message);
  return data?.jwtClaims ?? null;
}

/** The signed-in user; throws 401 unless the bearer token is a verified `authenticated` user's. */
export async function requireUser(req: Request): Promise<User> {
  const token = bearerOf(req);
  if (!token) throw unauthorized("Send the user's access token as Authorization: Bearer <token>");
  const claims = await userClaims(token);
  if (!claims) throw unauthorized("The access token is invalid or expired");
  if (claims.role !== "authenticated" || typeof claims.sub !== "string" || !UUID.test(claims.sub)) {
    throw unauthorized("Sign in: this endpoint needs a user's access token, not an API key");
  }
  const appMetadata = (claims.app_metadata ?? {}) as Record<string, unknown>;
  return {
    id: claims.sub.toLowerCase(),
    email: typeof claims.email === "string" ? claims.email : null,
    isPlatformAdmin: appMetadata.role === "platform_admin",
  };
}

/**
 * Throws 401 unless the request carries one of the project's API keys in `apikey` (publishable or
 * secret), or a legacy key as its bearer token (endpoints open to apps: guest checkout).
 */
export async function requireApiKey(req: Request): Promise<void> {
  const apikey = req.headers.get("apikey");
  const bearer = bearerOf(req);
  if (await keyMatches(apikey, "publishable") || await keyMatches(apikey, "secret")) return;
  if (
    await keyMatches(bearer, "publishable", "legacy_anon") ||
    await keyMatches(bearer, "secret", LEGACY_SECRET)
  ) {
    return;
  }
  throw unauthorized("Send the project's publishable key in the apikey header");
}

/**
 * Throws unless the caller holds a secret key (scheduled jobs, operators): a secret key in `apikey`, or
 * the legacy service_role key in `apikey` or as the bearer token. A publishable key or a user's token is
 * 403; no known credential 401.
 */
export async function requireSecretKey(req: Request): Promise<void> {
  const apikey = req.headers.get("apikey");
  const bearer = bearerOf(req);
  if (await keyMatches(apikey, "secret") || await keyMatches(bearer, "secret", LEGACY_SECRET)) return;
  if (
    await keyMatches(apikey, "publishable") || await keyMatches(bearer, "publishable") ||
    await userClaims(bearer)
  ) {
    throw new HttpError(403, "forbidden", "Forbidden", "Only a secret key may call this endpoint");
  }
  throw unauthorized("Send a secret key (sb_secret_...) in the apikey header");
}
