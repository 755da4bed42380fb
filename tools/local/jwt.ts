/**
 * HS256 JWTs as Supabase issues them: the anon and service-role API keys and user access tokens.
 * @module
 */
import { jwtVerify, SignJWT } from "npm:jose@6.2.18";
import type { JWTPayload } from "npm:jose@6.2.18";

/** Supabase's local default secret, used when `JWT_SECRET` is not set. */
export const DEFAULT_JWT_SECRET = "super-secret-jwt-token-with-at-least-32-characters-long";

function key(secret: string): Uint8Array {
  return new TextEncoder().encode(secret);
}

/** Signs `claims` with HS256; `expiresIn` (a jose duration such as `"1h"`) applies unless `claims.exp` is set. */
export function signJwt(secret: string, claims: JWTPayload, expiresIn = "1h"): Promise<string> {
  const jwt = new SignJWT(claims).setProtectedHeader({ alg: "HS256", typ: "JWT" }).setIssuedAt();
  return (claims.exp === undefined ? jwt.setExpirationTime(expiresIn) : jwt).sign(key(secret));
}

/** Verifies an HS256 token and returns its claims; throws jose's error (e.g. `JWTExpired`) otherwise. */
export async function verifyJwt(secret: string, token: string): Promise<JWTPayload> {
  const { payload } = await jwtVerify(token, key(secret), { algorithms: ["HS256"] });
  return payload;
}

/**
 * The anon and service-role API keys for `secret`. Like Supabase's local keys they carry fixed
 * `iat`/`exp` claims (2026 to 2036), so the same secret always yields the same keys.
 */
export async function apiKeys(secret: string): Promise<{ anonKey: string; serviceRoleKey: string }> {
  const sign = (role: string) =>
    new SignJWT({ iss: "supabase-local", role, iat: 1_767_225_600, exp: 2_082_758_400 })
      .setProtectedHeader({ alg: "HS256", typ: "JWT" })
      .sign(key(secret));
  const [anonKey, serviceRoleKey] = await Promise.all([sign("anon"), sign("service_role")]);
  return { anonKey, serviceRoleKey };
}

/** A signed-in user's access token: `sub`, `role: authenticated`, `aud: authenticated`. */
export function userToken(
  secret: string,
  userId: string,
  options: { email?: string; expiresIn?: string; claims?: JWTPayload } = {},
): Promise<string> {
  return signJwt(
    secret,
    {
      sub: userId,
      role: "authenticated",
      aud: "authenticated",
      ...(options.email ? { email: options.email } : {}),
      ...options.claims,
    },
    options.expiresIn ?? "1h",
  );
}
