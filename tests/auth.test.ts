// _shared/auth.ts and _shared/keys.ts: the platform's keys read new names first and legacy names after;
// user tokens verified with the project's JWKS (through @supabase/server) or its legacy HS256 secret; API
// keys checked in the function. And what @supabase/server itself cannot do here (docs/adr/0007).
import assert from "node:assert/strict";
import { withSupabase } from "npm:@supabase/server@1.4.1";
import { verifyCredentials } from "npm:@supabase/server@1.4.1/core";
import { exportJWK, generateKeyPair, SignJWT } from "npm:jose@6.2.18";
import { requireApiKey, requireSecretKey, requireUser } from "../supabase/functions/_shared/auth.ts";
import { ConfigurationError, HttpError } from "../supabase/functions/_shared/errors.ts";
import { handler } from "../supabase/functions/_shared/http.ts";
import { databaseKey, projectEnv } from "../supabase/functions/_shared/keys.ts";
import { signJwt } from "../tools/local/jwt.ts";

const USER = "22222222-2222-4222-8222-222222222222";
const SECRET = "a-legacy-secret-of-at-least-32-characters!";
const KEYS = {
  SUPABASE_URL: "http://127.0.0.1:1",
  SUPABASE_PUBLISHABLE_KEYS: JSON.stringify({ default: "sb_publishable_test" }),
  SUPABASE_SECRET_KEYS: JSON.stringify({ default: "sb_secret_test", cron: "sb_secret_cron" }),
};
/** The issuer of the project's user tokens (supabase.com/docs/guides/auth/jwts). */
const ISS = `${KEYS.SUPABASE_URL}/auth/v1`;
const ENV_NAMES = [
  "SUPABASE_URL",
  "SUPABASE_PUBLISHABLE_KEYS",
  "SUPABASE_SECRET_KEYS",
  "SUPABASE_JWKS",
  "SUPABASE_JWKS_URL",
  "SUPABASE_ANON_KEY",
  "SUPABASE_SERVICE_ROLE_KEY",
  "JWT_SECRET",
  "LEGACY_API_KEYS",
];

/** Runs `fn` with exactly `vars` of the project's key variables set. */
async function withEnv(vars: Record<string, string>, fn: () => Promise<void> | void): Promise<void> {
  const before = Object.fromEntries(ENV_NAMES.map((n) => [n, Deno.env.get(n)]));
  for (const n of ENV_NAMES) vars[n] === undefined ? Deno.env.delete(n) : Deno.env.set(n, vars[n]);
  try {
    await fn();
  } finally {
    for (const n of ENV_NAMES) before[n] === undefined ? Deno.env.delete(n) : Deno.env.set(n, before[n]!);
  }
}

const request = (headers: Record<string, string>) => new Request("http://x/", { headers });
const status = (e: unknown) => (e as HttpError).status;

async function es256() {
  const [ours, theirs] = [await generateKeyPair("ES256"), await generateKeyPair("ES256")];
  const jwk = { ...await exportJWK(ours.publicKey), kid: "k1", alg: "ES256" };
  const sign = (
    key: CryptoKey,
    claims: Record<string, unknown> = {},
    header: Record<string, unknown> = {},
  ) => {
    const jwt = new SignJWT({ sub: USER, role: "authenticated", aud: "authenticated", iss: ISS, ...claims })
      .setProtectedHeader({ alg: "ES256", kid: "k1", ...header });
    return ("exp" in claims ? jwt : jwt.setExpirationTime("1h")).sign(key);
  };
  return { jwks: JSON.stringify({ keys: [jwk] }), ours: ours.privateKey, theirs: theirs.privateKey, sign };
}

Deno.test("requireUser verifies ES256 tokens against SUPABASE_JWKS and refuses other keys", async () => {
  const { jwks, ours, theirs, sign } = await es256();
  await withEnv({ ...KEYS, SUPABASE_JWKS: jwks }, async () => {
    const bearer = async (key: CryptoKey, claims?: Record<string, unknown>) =>
      request({ authorization: `Bearer ${await sign(key, claims)}` });
    assert.equal((await requireUser(await bearer(ours))).id, USER);
    assert.equal((await requireUser(await bearer(ours))).id, USER, "again, with the cached configuration");
    await assert.rejects(requireUser(await bearer(theirs)), (e) => status(e) === 401);
    await assert.rejects(requireUser(await bearer(ours, { role: "anon" })), (e) => status(e) === 401);
    await assert.rejects(requireUser(request({})), (e) => status(e) === 401);
    await assert.rejects(
      requireUser(request({ authorization: "Bearer sb_publishable_test" })),
      (e) => status(e) === 401,
      "an API key is not a user's token",
    );
  });
});

Deno.test("requireUser accepts legacy HS256 tokens only when the project set JWT_SECRET", async () => {
  const token = await signJwt(SECRET, { sub: USER, role: "authenticated", aud: "authenticated", iss: ISS });
  const req = request({ authorization: `Bearer ${token}` });
  await withEnv({ ...KEYS, JWT_SECRET: SECRET }, async () => {
    assert.equal((await requireUser(req)).id, USER);
  });
  await withEnv(KEYS, async () => {
    await assert.rejects(requireUser(req), (e) => status(e) === 401);
  });
});

Deno.test("the database key: the secret key named default, else another, else the legacy service_role key", async () => {
  await withEnv({ ...KEYS, SUPABASE_SERVICE_ROLE_KEY: "eyJlegacy" }, () => {
    assert.deepEqual(databaseKey(), { name: "default", key: "sb_secret_test" });
  });
  await withEnv({ ...KEYS, SUPABASE_SECRET_KEYS: '{"cron": "sb_secret_cron"}' }, () => {
    assert.deepEqual(databaseKey(), { name: "cron", key: "sb_secret_cron" });
  });
  await withEnv({ SUPABASE_URL: KEYS.SUPABASE_URL, SUPABASE_SERVICE_ROLE_KEY: "eyJlegacy" }, () => {
    assert.deepEqual(databaseKey(), { name: "legacy_service_role", key: "eyJlegacy" });
  });
  await withEnv({ SUPABASE_URL: KEYS.SUPABASE_URL }, () => {
    assert.throws(
      () => databaseKey(),
      (e) => e instanceof ConfigurationError && /SUPABASE_SECRET_KEYS/.test(e.message),
    );
  });
  await withEnv({ ...KEYS, SUPABASE_SECRET_KEYS: "sb_secret_not_json" }, () => {
    assert.throws(
      () => projectEnv(),
      (e) =>
        e instanceof ConfigurationError && /JSON object/.test(e.message) && !e.message.includes("not_json"),
      "the message names the variable, never its value",
    );
  });
  await withEnv({}, () => {
    assert.throws(
      () => projectEnv(),
      (e) => e instanceof ConfigurationError && /SUPABASE_URL/.test(e.message),
    );
  });
});

Deno.test("requireSecretKey: any secret key in apikey, or the legacy service_role key; publishable keys and users are 403", async () => {
  const { jwks, ours, sign } = await es256();
  await withEnv(
    { ...KEYS, SUPABASE_JWKS: jwks, SUPABASE_SERVICE_ROLE_KEY: "eyJ.legacy.service" },
    async () => {
      await requireSecretKey(request({ apikey: "sb_secret_test" }));
      await requireSecretKey(request({ apikey: "sb_secret_cron" }));
      await requireSecretKey(request({ authorization: "Bearer eyJ.legacy.service" })); // pg_cron jobs of old
      await requireSecretKey(request({ apikey: "eyJ.legacy.service" }));
      for (
        const [headers, expected] of [
          [{ apikey: "sb_publishable_test" }, 403],
          [{ apikey: "sb_publishable_test", authorization: "Bearer sb_publishable_test" }, 403],
          [{ authorization: `Bearer ${await sign(ours)}` }, 403],
          [{ authorization: "Bearer sb_secret_test" }, 401], // a secret key belongs in apikey
          [{ apikey: "sb_secret_other_project" }, 401],
          [{}, 401],
        ] as const
      ) {
        await assert.rejects(
          requireSecretKey(request(headers)),
          (e) => status(e) === expected,
          JSON.stringify(headers),
        );
      }
    },
  );
});

Deno.test("requireApiKey: a publishable or secret key in apikey, or the legacy anon key as bearer", async () => {
  await withEnv({ ...KEYS, SUPABASE_ANON_KEY: "eyJ.legacy.anon" }, async () => {
    await requireApiKey(request({ apikey: "sb_publishable_test" }));
    await requireApiKey(request({ apikey: "sb_secret_cron" }));
    await requireApiKey(request({ authorization: "Bearer eyJ.legacy.anon" }));
    await assert.rejects(
      requireApiKey(request({ apikey: "sb_publishable_other" })),
      (e) => status(e) === 401,
    );
    await assert.rejects(requireApiKey(request({})), (e) => status(e) === 401);
  });
});

Deno.test("a user token needs exp, aud authenticated and the project's iss (SUPABASE_URL/auth/v1), ES256 and HS256 alike", async () => {
  const { jwks, ours, sign } = await es256();
  const refused = (token: string) =>
    assert.rejects(
      requireUser(request({ authorization: `Bearer ${token}` })),
      (e) => status(e) === 401,
      token,
    );
  await withEnv({ ...KEYS, SUPABASE_JWKS: jwks, JWT_SECRET: SECRET }, async () => {
    assert.equal((await requireUser(request({ authorization: `Bearer ${await sign(ours)}` }))).id, USER);
    await refused(await sign(ours, { iss: "https://another-ref.supabase.co/auth/v1" }));
    await refused(await sign(ours, { iss: undefined }));
    await refused(await sign(ours, { aud: "something-else" }));
    await refused(await sign(ours, { aud: undefined }));
    await refused(await sign(ours, { exp: undefined }));
    const legacy = (claims: Record<string, unknown>) =>
      signJwt(SECRET, { sub: USER, role: "authenticated", aud: "authenticated", iss: ISS, ...claims });
    assert.equal((await requireUser(request({ authorization: `Bearer ${await legacy({})}` }))).id, USER);
    await refused(await legacy({ iss: "supabase" }));
    await refused(await legacy({ aud: "anon" }));
    const eternal = await new SignJWT({ sub: USER, role: "authenticated", aud: "authenticated", iss: ISS })
      .setProtectedHeader({ alg: "HS256" }).sign(new TextEncoder().encode(SECRET));
    await refused(eternal);
  });
  await withEnv({ ...KEYS, SUPABASE_URL: `${KEYS.SUPABASE_URL}/`, SUPABASE_JWKS: jwks }, async () => {
    assert.equal((await requireUser(request({ authorization: `Bearer ${await sign(ours)}` }))).id, USER);
  });
});

Deno.test("nothing starting with sb_ is taken from Authorization; sb_ values of the legacy variables are new keys", async () => {
  const { jwks, ours, sign } = await es256();
  const legacyNamesNewValues = {
    SUPABASE_URL: KEYS.SUPABASE_URL,
    SUPABASE_JWKS: jwks,
    SUPABASE_ANON_KEY: "sb_publishable_prod",
    SUPABASE_SERVICE_ROLE_KEY: "sb_secret_prod",
  };
  await withEnv(legacyNamesNewValues, async () => {
    await assert.rejects(
      requireSecretKey(request({ authorization: "Bearer sb_secret_prod" })),
      (e) => status(e) === 401,
    );
    await assert.rejects(
      requireApiKey(request({ authorization: "Bearer sb_publishable_prod" })),
      (e) => status(e) === 401,
    );
    await assert.rejects(
      requireApiKey(request({ authorization: "Bearer sb_secret_prod" })),
      (e) => status(e) === 401,
    );
    await requireSecretKey(request({ apikey: "sb_secret_prod" }));
    await requireApiKey(request({ apikey: "sb_publishable_prod" }));
    assert.deepEqual(databaseKey(), { name: "SUPABASE_SERVICE_ROLE_KEY", key: "sb_secret_prod" });
    assert.equal((await requireUser(request({ authorization: `Bearer ${await sign(ours)}` }))).id, USER);
  });
  // JWT_SECRET holding a new key is no legacy secret: tokens signed with it are refused
  const sbSecret = "sb_secret_0123456789abcdefghijklmnopqrstuv";
  await withEnv({ ...KEYS, JWT_SECRET: sbSecret }, async () => {
    const token = await signJwt(sbSecret, {
      sub: USER,
      role: "authenticated",
      aud: "authenticated",
      iss: ISS,
    });
    await assert.rejects(
      requireUser(request({ authorization: `Bearer ${token}` })),
      (e) => status(e) === 401,
    );
  });
});

Deno.test("LEGACY_API_KEYS=off: the legacy keys and HS256 tokens are refused although their variables are set", async () => {
  const token = await signJwt(SECRET, {
    sub: USER,
    role: "authenticated",
    aud: "authenticated",
    iss: ISS,
    app_metadata: { role: "platform_admin" },
  });
  const legacy = {
    SUPABASE_ANON_KEY: "eyJ.legacy.anon",
    SUPABASE_SERVICE_ROLE_KEY: "eyJ.legacy.service",
    JWT_SECRET: SECRET,
  };
  await withEnv({ ...KEYS, ...legacy, LEGACY_API_KEYS: "off" }, async () => {
    for (
      const headers of [
        { authorization: "Bearer eyJ.legacy.service" },
        { apikey: "eyJ.legacy.service" },
        { authorization: "Bearer eyJ.legacy.anon" },
        { apikey: "eyJ.legacy.anon" },
      ] as Record<string, string>[]
    ) {
      await assert.rejects(
        requireSecretKey(request(headers)),
        (e) => status(e) === 401,
        JSON.stringify(headers),
      );
    }
    await assert.rejects(
      requireApiKey(request({ authorization: "Bearer eyJ.legacy.anon" })),
      (e) => status(e) === 401,
    );
    await assert.rejects(requireApiKey(request({ apikey: "eyJ.legacy.anon" })), (e) => status(e) === 401);
    await assert.rejects(
      requireUser(request({ authorization: `Bearer ${token}` })),
      (e) => status(e) === 401,
    );
    await requireSecretKey(request({ apikey: "sb_secret_test" }));
    await requireApiKey(request({ apikey: "sb_publishable_test" }));
  });
  await withEnv({ SUPABASE_URL: KEYS.SUPABASE_URL, ...legacy, LEGACY_API_KEYS: "off" }, () => {
    assert.throws(
      () => databaseKey(),
      (e) => e instanceof ConfigurationError && /SUPABASE_SECRET_KEYS/.test(e.message),
    );
  });
  await withEnv({ ...KEYS, ...legacy, LEGACY_API_KEYS: "of" }, () => {
    assert.throws(
      () => projectEnv(),
      (e) => e instanceof ConfigurationError && /LEGACY_API_KEYS/.test(e.message),
    );
  });
  await withEnv({ ...KEYS, ...legacy, LEGACY_API_KEYS: "on" }, async () => {
    assert.equal((await requireUser(request({ authorization: `Bearer ${token}` }))).isPlatformAdmin, true);
  });
});

Deno.test("a user token with a kid and no usable JWKS is a configuration error (500, the variable named), not a 401", async () => {
  const { ours, sign } = await es256();
  const token = await sign(ours);
  const cases: [Record<string, string>, RegExp][] = [
    [{}, /SUPABASE_JWKS/],
    [{ SUPABASE_JWKS_URL: "http://auth.internal/auth/v1/.well-known/jwks.json" }, /SUPABASE_JWKS_URL/],
    [{ SUPABASE_JWKS_URL: "not a url" }, /SUPABASE_JWKS_URL/],
  ];
  for (const [vars, named] of cases) {
    await withEnv({ ...KEYS, JWT_SECRET: SECRET, ...vars }, async () => {
      await assert.rejects(
        requireUser(request({ authorization: `Bearer ${token}` })),
        (e) => e instanceof ConfigurationError && named.test(e.message),
        JSON.stringify(vars),
      );
      // without a kid it is just not a token of this project
      await assert.rejects(
        requireUser(request({ authorization: `Bearer ${await sign(ours, {}, { kid: undefined })}` })),
        (e) => status(e) === 401,
      );
      const lines: string[] = [];
      const error = console.error;
      console.error = (line: string) => lines.push(line);
      let answer: Response;
      try {
        answer = await handler("t", async (req) => {
          await requireUser(req);
          return new Response("ok");
        })(new Request("http://x/", { method: "POST", headers: { authorization: `Bearer ${token}` } }));
      } finally {
        console.error = error;
      }
      assert.equal(answer.status, 500);
      assert.doesNotMatch(await answer.text(), /JWKS/, "the caller learns nothing of the configuration");
      assert.equal(lines.length, 1);
      assert.equal(JSON.parse(lines[0]).error.name, "ConfigurationError");
      assert.match(JSON.parse(lines[0]).error.message, named);
    });
  }
  // a JWKS URL the library may fetch (https, or http on a loopback host) is usable
  await withEnv(
    { ...KEYS, SUPABASE_JWKS_URL: "http://127.0.0.1:1/auth/v1/.well-known/jwks.json" },
    async () => {
      await assert.rejects(
        requireUser(request({ authorization: `Bearer ${token}` })),
        (e) => status(e) === 401,
      );
    },
  );
});

Deno.test("@supabase/server cannot verify the legacy HS256 tokens old projects issue (no kid, secret not in the JWKS)", async () => {
  const token = await signJwt(SECRET, { sub: USER, role: "authenticated", aud: "authenticated" });
  const { jwks } = await es256();
  const { data, error } = await verifyCredentials({ token, apikey: null }, {
    auth: "user",
    env: { url: "http://x", publishableKeys: {}, secretKeys: {}, jwks: JSON.parse(jwks) },
  });
  assert.equal(data, null);
  assert.equal(error?.status, 401);
});

Deno.test("@supabase/server's withSupabase answers errors as {message, code}, not problem+json, and its CORS omits Idempotency-Key", async () => {
  await withEnv(KEYS, async () => {
    const fn = withSupabase({ auth: "secret" }, () => Promise.resolve(new Response("ok")));
    const refused = await fn(new Request("http://x/", { method: "POST" }));
    assert.equal(refused.status, 401);
    assert.match(refused.headers.get("content-type") ?? "", /^application\/json/);
    assert.deepEqual(Object.keys(await refused.json()).sort(), ["code", "message"]);
    const preflight = await fn(new Request("http://x/", { method: "OPTIONS" }));
    assert.doesNotMatch(preflight.headers.get("access-control-allow-headers") ?? "", /idempotency-key/i);
  });
});
