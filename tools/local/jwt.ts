/**
 * The project's keys, as a Supabase project has them (supabase.com/docs/guides/api/api-keys,
 * /guides/auth/signing-keys):
 * - user access tokens signed with an asymmetric key (ES256), verified against a JWKS;
 * - API keys `sb_publishable_...` (role anon) and `sb_secret_...` (role service_role), which are not JWTs;
 * - the legacy keys of older projects: the HS256 `JWT_SECRET` and the anon and service_role JWTs signed
 *   with it.
 * @module
 */
import {
  createLocalJWKSet,
  decodeProtectedHeader,
  exportJWK,
  generateKeyPair,
  importJWK,
  type JWK,
  type JWTPayload,
  jwtVerify,
  SignJWT,
} from "npm:jose@6.2.18";
import { join } from "node:path";

/** Supabase's local default secret, used when `JWT_SECRET` is not set. */
export const DEFAULT_JWT_SECRET = "super-secret-jwt-token-with-at-least-32-characters-long";

/** Where the local stack keeps its signing key: the file `supabase gen signing-key` writes. */
export const SIGNING_KEYS_FILE = "signing_keys.json";

/** Every key of a project. */
export interface ProjectKeys {
  /** `sb_publishable_...`: the key a browser or app sends in `apikey` (role anon). */
  publishableKey: string;
  /** `sb_secret_...`: the key a server sends in `apikey` (role service_role). */
  secretKey: string;
  /** The legacy HS256 secret. */
  jwtSecret: string;
  /** The legacy anon key (an HS256 JWT). */
  anonKey: string;
  /** The legacy service_role key (an HS256 JWT). */
  serviceRoleKey: string;
  /** The private ES256 key that signs user tokens. */
  signingKey: JWK;
  /** Its public half, as `/auth/v1/.well-known/jwks.json` serves it. */
  jwks: { keys: JWK[] };
}

/** A new ES256 signing key (private JWK with `kid`, `alg`, `use`), in the CLI's format. */
export async function generateSigningKey(): Promise<JWK> {
  const { privateKey } = await generateKeyPair("ES256", { extractable: true });
  return {
    ...await exportJWK(privateKey),
    kid: crypto.randomUUID(),
    alg: "ES256",
    use: "sig",
  };
}

/**
 * The signing key in `<supabaseDir>/signing_keys.json` (a JSON array of private JWKs, as
 * `supabase gen signing-key` writes it; the first one signs), created on first use. The stack and
 * `npm run token` read the same file, so a token minted by one verifies in the other.
 */
export async function loadSigningKey(supabaseDir: string): Promise<JWK> {
  const path = join(supabaseDir, SIGNING_KEYS_FILE);
  try {
    const keys = JSON.parse(await Deno.readTextFile(path)) as JWK[];
    if (!Array.isArray(keys) || !keys[0]?.d || keys[0].alg !== "ES256") {
      throw new Error(`${path} must hold a JSON array of private ES256 JWKs`);
    }
    return keys[0];
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  const key = await generateSigningKey();
  try {
    await Deno.writeTextFile(path, JSON.stringify([key], null, 2) + "\n", { createNew: true, mode: 0o600 });
    return key;
  } catch (e) {
    if (e instanceof Deno.errors.AlreadyExists) return loadSigningKey(supabaseDir); // created meanwhile
    throw e;
  }
}

/**
 * All of a project's keys. The API keys are derived from `jwtSecret`, so they are the same on every
 * start; the legacy JWTs carry fixed `iat`/`exp` claims (2026 to 2036), like Supabase's local keys.
 */
export async function projectKeys(jwtSecret: string, signingKey: JWK): Promise<ProjectKeys> {
  const derive = async (label: string) => {
    const key = await crypto.subtle.importKey(
      "raw",
      secretBytes(jwtSecret),
      { name: "HMAC", hash: "SHA-256" },
      false,
      [
        "sign",
      ],
    );
    const mac = new Uint8Array(await crypto.subtle.sign("HMAC", key, new TextEncoder().encode(label)));
    return btoa(String.fromCharCode(...mac)).replace(/[+/=]/g, "").slice(0, 32);
  };
  const legacy = (role: string) =>
    new SignJWT({ iss: "supabase-local", role, iat: 1_767_225_600, exp: 2_082_758_400 })
      .setProtectedHeader({ alg: "HS256", typ: "JWT" })
      .sign(secretBytes(jwtSecret));
  const { d: _private, key_ops: _ops, ...publicKey } = signingKey;
  return {
    publishableKey: `sb_publishable_${await derive("publishable")}`,
    secretKey: `sb_secret_${await derive("secret")}`,
    jwtSecret,
    anonKey: await legacy("anon"),
    serviceRoleKey: await legacy("service_role"),
    signingKey,
    jwks: { keys: [publicKey] },
  };
}

/** Signs `claims` with HS256 (legacy); `expiresIn` (a jose duration such as `"1h"`) applies unless `claims.exp` is set. */
export function signJwt(secret: string, claims: JWTPayload, expiresIn = "1h"): Promise<string> {
  const jwt = new SignJWT(claims).setProtectedHeader({ alg: "HS256", typ: "JWT" }).setIssuedAt();
  return (claims.exp === undefined ? jwt.setExpirationTime(expiresIn) : jwt).sign(secretBytes(secret));
}

/**
 * A signed-in user's access token, as Supabase Auth issues it (supabase.com/docs/guides/auth/jwts):
 * `iss` (the project's URL + `/auth/v1`, `issuer`), `sub`, `role: authenticated`, `aud: authenticated`,
 * `iat` and `exp`, signed ES256 with the project's signing key (`kid` in the header), or HS256 with the
 * legacy secret when `legacy` is set.
 */
export async function userToken(
  keys: Pick<ProjectKeys, "signingKey" | "jwtSecret">,
  userId: string,
  options: { issuer: string; email?: string; expiresIn?: string; claims?: JWTPayload; legacy?: boolean },
): Promise<string> {
  const claims: JWTPayload = {
    iss: options.issuer,
    sub: userId,
    role: "authenticated",
    aud: "authenticated",
    ...(options.email ? { email: options.email } : {}),
    ...options.claims,
  };
  if (options.legacy) return signJwt(keys.jwtSecret, claims, options.expiresIn ?? "1h");
  const jwt = new SignJWT(claims)
    .setProtectedHeader({ alg: "ES256", kid: keys.signingKey.kid, typ: "JWT" })
    .setIssuedAt();
  // a private key only signs, whatever `key_ops` the file lists (the CLI writes ["sign", "verify"])
  const { key_ops: _ops, ...privateKey } = keys.signingKey;
  return (claims.exp === undefined ? jwt.setExpirationTime(options.expiresIn ?? "1h") : jwt)
    .sign(await importJWK(privateKey, "ES256"));
}

/** The issuer of a project's user tokens: its API URL + `/auth/v1`, as Supabase Auth sets `iss`. */
export function issuerOf(url: string): string {
  return `${url.replace(/\/+$/, "")}/auth/v1`;
}

/**
 * Verifies a JWT and returns its claims: asymmetric tokens against the JWKS, HS256 tokens against the
 * legacy secret when `legacy` is set. Throws jose's error (e.g. `code: "ERR_JWT_EXPIRED"`) otherwise.
 */
export async function verifyJwt(
  keys: Pick<ProjectKeys, "jwks" | "jwtSecret">,
  token: string,
  options: { legacy: boolean },
): Promise<JWTPayload> {
  if (decodeProtectedHeader(token).alg === "HS256") {
    if (!options.legacy) throw Object.assign(new Error("Legacy JWTs are disabled"), { code: "ERR_LEGACY" });
    return (await jwtVerify(token, secretBytes(keys.jwtSecret), { algorithms: ["HS256"] })).payload;
  }
  return (await jwtVerify(token, createLocalJWKSet(keys.jwks), { algorithms: ["ES256", "RS256"] })).payload;
}

function secretBytes(secret: string): Uint8Array<ArrayBuffer> {
  return new TextEncoder().encode(secret);
}
