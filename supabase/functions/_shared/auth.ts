/**
 * Who is calling, checked in the function (every function has `verify_jwt = false`: the platform's
 * check accepts legacy JWTs only, supabase.com/docs/guides/functions/auth). The credentials are the
 * platform's (supabase.com/docs/guides/functions/auth-headers): a user's access token in
 * `Authorization: Bearer`, an API key in `apikey`.
 *
 * The new-style checks are `@supabase/server`'s (`verifyCredentials`: user tokens against the project's
 * JWKS, publishable and secret keys compared in constant time); around them, what old projects still
 * send: user tokens signed with the legacy HS256 `JWT_SECRET`, the legacy anon and service_role keys
 * (also as a bearer token, as older pg_cron jobs send them), all of them refused once the project sets
 * `LEGACY_API_KEYS=off` (keys.ts). Whatever verifies a user's token, the token must then carry `exp`,
 * `aud: authenticated` and the project's issuer, `${SUPABASE_URL}/auth/v1`
 * (supabase.com/docs/guides/auth/jwts). A new-style key (`sb_...`) is never taken from `Authorization`:
 * it belongs in `apikey`. See docs/adr/0009.
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

/** The bearer token; never a new-style API key (`sb_...`), which belongs in `apikey`. */
function bearerOf(req: Request): string | null {
  const token = req.headers.get("authorization")?.match(/^Bearer\s+(\S+)$/i)?.[1];
  return token && !token.startsWith("sb_") ? token : null;
}

/** `@supabase/server`'s view of the project: its keys, the legacy ones named among them. */
function serverEnv(env: ProjectEnv) {
  return {
    url: env.url,
    publishableKeys: env.publishableKeys,
    secretKeys: env.secretKeys,
    jwks: env.jwks,
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
 * `@supabase/server`), HS256 tokens against `JWT_SECRET`; then `exp`, `aud` and `iss` as Supabase Auth
 * sets them. Returns null for a missing, forged, expired or foreign token; throws `ConfigurationError`
 * when the project's keys are unusable, or when a token names a signing key (`kid`) and no JWKS is
 * configured to look it up.
 */
async function userClaims(token: string | null): Promise<JWTPayload | null> {
  if (!token) return null;
  const env = projectEnv();
  let header;
  try {
    header = decodeProtectedHeader(token);
  } catch {
    return null;
  }
  let claims: JWTPayload | null = null;
  if (header.alg === "HS256" && env.jwtSecret) {
    try {
      const secret = new TextEncoder().encode(env.jwtSecret);
      claims = (await jwtVerify(token, secret, { algorithms: ["HS256"] })).payload;
    } catch {
      return null;
    }
  } else if (!env.jwks) {
    if (!header.kid) return null;
    throw new ConfigurationError(
      env.jwksProblem ??
        "A user token signed with a signing key (kid) arrived, but no JWKS is configured: " +
          "set SUPABASE_JWKS (or SUPABASE_JWKS_URL)",
    );
  } else {
    const { data, error } = await verifyCredentials({ token, apikey: null }, {
      auth: "user",
      env: serverEnv(env),
    });
    if (error && error.status >= 500) throw new ConfigurationError(error.message);
    claims = data?.jwtClaims ?? null;
  }
  if (!claims) return null;
  const aud = Array.isArray(claims.aud) ? claims.aud : [claims.aud];
  const issuer = `${env.url.replace(/\/+$/, "")}/auth/v1`;
  if (typeof claims.exp !== "number" || !aud.includes("authenticated") || claims.iss !== issuer) return null;
  return claims;
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
