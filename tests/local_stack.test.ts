// The functions host routes like Supabase's edge runtime, and `npm run dev` (tools/local/main.ts)
// serves functions, RPCs and the Stripe emulator with no PostgreSQL server (embedded PGlite).
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { createClient } from "npm:@supabase/supabase-js@2.109.0";
import { Stripe } from "../supabase/functions/_shared/stripe.ts";
import { createFunctionsHost } from "../tools/local/functions_host.ts";
import { apiKeys, DEFAULT_JWT_SECRET, signJwt } from "../tools/local/jwt.ts";

const FIXTURE = fileURLToPath(new URL("./fixtures/supabase", import.meta.url));

async function withHost(fn: (url: string, anonKey: string) => Promise<void>) {
  const errors: unknown[] = [];
  const host = await createFunctionsHost({
    supabaseDir: FIXTURE,
    jwtSecret: DEFAULT_JWT_SECRET,
    onError: (_n, e) => errors.push(e),
  });
  const server = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen: () => {} }, host);
  try {
    await fn(`http://127.0.0.1:${server.addr.port}`, (await apiKeys(DEFAULT_JWT_SECRET)).anonKey);
  } finally {
    await server.shutdown();
  }
}

Deno.test("functions host: unknown functions and _shared folders are 404", () =>
  withHost(async (url, anonKey) => {
    for (const name of ["nope", "_shared"]) {
      const res = await fetch(`${url}/functions/v1/${name}`, {
        method: "POST",
        headers: { authorization: `Bearer ${anonKey}` },
      });
      assert.equal(res.status, 404);
      assert.deepEqual(await res.json(), { code: "NOT_FOUND", message: "Requested function was not found" });
    }
  }));

Deno.test("functions host: verify_jwt refuses missing, forged and expired tokens; OPTIONS passes", () =>
  withHost(async (url, anonKey) => {
    const post = (headers: Record<string, string>) =>
      fetch(`${url}/functions/v1/hello`, { method: "POST", headers, body: "{}" });
    const missing = await post({});
    assert.equal(missing.status, 401);
    assert.equal((await missing.json()).message, "Missing authorization header");
    const forged = await post({
      authorization: `Bearer ${await signJwt("another-secret-that-is-long-enough!!", { role: "anon" })}`,
    });
    assert.equal(forged.status, 401);
    assert.equal((await forged.json()).message, "Invalid JWT");
    const expired = await post({
      authorization: `Bearer ${await signJwt(DEFAULT_JWT_SECRET, { role: "anon", exp: 1 })}`,
    });
    assert.equal(expired.status, 401);
    await expired.body?.cancel();
    const ok = await post({ authorization: `Bearer ${anonKey}`, "content-type": "application/json" });
    assert.equal(ok.status, 200);
    assert.deepEqual(await ok.json(), { method: "POST", path: "/functions/v1/hello", body: {} });
    const preflight = await fetch(`${url}/functions/v1/hello`, { method: "OPTIONS" });
    assert.equal(preflight.status, 200);
    assert.equal((await preflight.json()).method, "OPTIONS");
  }));

Deno.test("functions host: verify_jwt = false and `export default { fetch }` are honoured", () =>
  withHost(async (url) => {
    const res = await fetch(`${url}/functions/v1/open-door`, { method: "POST" });
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), { open: true, authorization: false });
  }));

Deno.test("functions host: a throwing function is a bare 500 without its error text", () =>
  withHost(async (url, anonKey) => {
    const res = await fetch(`${url}/functions/v1/crash`, {
      method: "POST",
      headers: { authorization: `Bearer ${anonKey}` },
    });
    assert.equal(res.status, 500);
    const text = await res.text();
    assert.doesNotMatch(text, /secret internal detail/);
  }));

Deno.test("functions host: supabase-js functions.invoke works", () =>
  withHost(async (url, anonKey) => {
    const supabase = createClient(url, anonKey, { auth: { persistSession: false } });
    const { data, error } = await supabase.functions.invoke("hello", { body: { seats: 2 } });
    assert.equal(error, null);
    assert.deepEqual(data, { method: "POST", path: "/functions/v1/hello", body: { seats: 2 } });
  }));

Deno.test({
  name: "npm run dev serves functions, RPCs and the Stripe emulator with no PostgreSQL server",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const main = fileURLToPath(new URL("../tools/local/main.ts", import.meta.url));
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", main],
      // a clean environment, as on a fresh machine (other test files' stacks set variables in this process)
      clearEnv: true,
      env: {
        PATH: Deno.env.get("PATH") ?? "",
        HOME: Deno.env.get("HOME") ?? "",
        PORT: "0",
        STRIPE_EMULATOR_PORT: "0",
        SUPABASE_DIR: FIXTURE,
        LOG_LEVEL: "error",
      },
      stdout: "piped",
      stderr: "inherit",
    }).spawn();
    try {
      const printed = await readUntil(child.stdout, /service_role key\s+\S+/);
      const field = (label: string) => printed.match(new RegExp(`${label}\\s+(\\S+)`))![1];
      const url = field("API URL");
      assert.match(printed, /embedded PGlite/);

      const service = createClient(url, field("service_role key"), { auth: { persistSession: false } });
      const visit = await service.rpc("fixture_visit", { name: "test" });
      assert.equal(visit.error, null);
      assert.equal(visit.data, 2); // the seed's row is 1
      const anon = createClient(url, field("anon key"), { auth: { persistSession: false } });
      const anonVisit = await anon.rpc("fixture_visit", { name: "anon" });
      assert.equal(anonVisit.error, null, "Supabase's default grants let anon execute what was not revoked");
      const invoked = await anon.functions.invoke("hello", { body: { ok: true } });
      assert.deepEqual(invoked.data?.body, { ok: true });

      const emulator = printed.match(/emulator at (\S+)/);
      assert.ok(emulator, `no emulator line in: ${printed}`);
      const stripeBase = new URL(emulator[1]);
      const stripe = new Stripe("sk_test_x", {
        httpClient: Stripe.createFetchHttpClient(),
        host: stripeBase.hostname,
        port: Number(stripeBase.port),
        protocol: "http",
      });
      assert.equal(
        (await stripe.paymentIntents.create({ amount: 1000, currency: "usd" })).status,
        "requires_payment_method",
      );
    } finally {
      child.kill("SIGTERM");
      await child.status;
    }
  },
});

async function readUntil(stream: ReadableStream<Uint8Array>, pattern: RegExp): Promise<string> {
  const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  const deadline = Date.now() + 60_000;
  while (!pattern.test(text)) {
    if (Date.now() > deadline) throw new Error(`dev server did not start; it printed: ${text}`);
    const { value, done } = await reader.read();
    if (done) throw new Error(`dev server exited; it printed: ${text}`);
    text += value;
  }
  // keep draining so the child never blocks on a full pipe
  (async () => {
    try {
      while (!(await reader.read()).done) { /* discard */ }
    } catch { /* closed */ }
  })();
  return text;
}
