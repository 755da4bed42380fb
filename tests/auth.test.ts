// _shared/auth.ts: user tokens verified with the project's JWKS (asymmetric keys) or its HS256 secret.
import assert from "node:assert/strict";
import { exportJWK, generateKeyPair, SignJWT } from "npm:jose@6.2.18";
import { requireUser } from "../supabase/functions/_shared/auth.ts";
import { HttpError } from "../supabase/functions/_shared/errors.ts";

const USER = "22222222-2222-4222-8222-222222222222";

Deno.test("requireUser verifies ES256 tokens against SUPABASE_JWKS and refuses other keys", async () => {
  const [ours, theirs] = [await generateKeyPair("ES256"), await generateKeyPair("ES256")];
  const jwk = { ...await exportJWK(ours.publicKey), kid: "k1", alg: "ES256" };
  const sign = (key: CryptoKey) =>
    new SignJWT({ sub: USER, role: "authenticated", aud: "authenticated" })
      .setProtectedHeader({ alg: "ES256", kid: "k1" }).setExpirationTime("1h").sign(key);
  const request = (token: string) =>
    new Request("http://x/", { headers: { authorization: `Bearer ${token}` } });
  Deno.env.set("SUPABASE_JWKS", JSON.stringify({ keys: [jwk] }));
  try {
    assert.equal((await requireUser(request(await sign(ours.privateKey)))).id, USER);
    assert.equal(
      (await requireUser(request(await sign(ours.privateKey)))).id,
      USER,
      "again, with the cached key set",
    );
    await assert.rejects(
      requireUser(request(await sign(theirs.privateKey))),
      (e: HttpError) => e.status === 401,
    );
  } finally {
    Deno.env.delete("SUPABASE_JWKS");
  }
});
