/**
 * Who is calling: the signed-in user of the request's access token, verified here as well as by the
 * platform (verify_jwt). Tokens are checked against `SUPABASE_JWKS` (asymmetric signing keys) or,
 * for HS256 tokens, `JWT_SECRET`; with neither configured every token is refused.
 * @module
 */
import { createLocalJWKSet, decodeProtectedHeader, type JWTPayload, jwtVerify } from "npm:jose@6.2.18";
import { HttpError } from "./errors.ts";

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

let cachedKeySet: { jwks: string; keys: ReturnType<typeof createLocalJWKSet> } | undefined;

/** The key set of `SUPABASE_JWKS`, parsed once per value rather than on every request. */
function keySet(jwks: string): ReturnType<typeof createLocalJWKSet> {
  if (cachedKeySet?.jwks !== jwks) {
    const parsed = JSON.parse(jwks);
    cachedKeySet = { jwks, keys: createLocalJWKSet(Array.isArray(parsed) ? { keys: parsed } : parsed) };
  }
  return cachedKeySet.keys;
}

/** The verified claims of the bearer token; throws 401 when it is missing, forged or expired. */
export async function verifiedClaims(req: Request): Promise<JWTPayload> {
  const token = req.headers.get("authorization")?.match(/^Bearer\s+(\S+)$/i)?.[1];
  if (!token) throw unauthorized("Send the user's access token as Authorization: Bearer <token>");
  const jwks = Deno.env.get("SUPABASE_JWKS");
  const secret = Deno.env.get("JWT_SECRET");
  try {
    if (decodeProtectedHeader(token).alg === "HS256") {
      if (!secret) throw new Error("no HS256 secret configured");
      return (await jwtVerify(token, new TextEncoder().encode(secret), { algorithms: ["HS256"] })).payload;
    }
    if (!jwks) throw new Error("no JWKS configured");
    return (await jwtVerify(token, keySet(jwks))).payload;
  } catch {
    throw unauthorized("The access token is invalid or expired");
  }
}

/** The signed-in user; throws 401 unless the token is a verified `authenticated` user's. */
export async function requireUser(req: Request): Promise<User> {
  const claims = await verifiedClaims(req);
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

/** Throws 403 unless the verified token is the service role's (scheduled jobs, operators). */
export async function requireServiceRole(req: Request): Promise<void> {
  const claims = await verifiedClaims(req);
  if (claims.role !== "service_role") {
    throw new HttpError(403, "forbidden", "Forbidden", "Only the service role may call this endpoint");
  }
}
