// The functions host routes like Supabase's edge runtime (verify_jwt accepts legacy JWTs only), runs each
// function in a process of its own with the platform's limits, invents no client address, and answers
// its own errors as problem+json with CORS; `npm run dev` (tools/local/main.ts) serves functions, RPCs,
// the JWKS and the Stripe emulator with no PostgreSQL server, and says what is wrong in one line.
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { createClient } from "npm:@supabase/supabase-js@2.109.0";
import { Stripe } from "../supabase/functions/_shared/stripe.ts";
import {
  createFunctionsHost,
  type FunctionLimits,
  type FunctionsHost,
} from "../tools/local/functions_host.ts";
import {
  DEFAULT_JWT_SECRET,
  generateSigningKey,
  projectKeys,
  signJwt,
  userToken,
} from "../tools/local/jwt.ts";

const FIXTURE = fileURLToPath(new URL("./fixtures/supabase", import.meta.url));
const keys = await projectKeys(DEFAULT_JWT_SECRET, await generateSigningKey());

interface Host {
  url: string;
  host: FunctionsHost;
  errors: unknown[];
}

async function withHost(
  fn: (h: Host) => Promise<void>,
  options: {
    isolation?: "process" | "in-process";
    limits?: Partial<FunctionLimits>;
    trustedClientHeader?: string;
  } = {},
) {
  const errors: unknown[] = [];
  const host = await createFunctionsHost({
    supabaseDir: FIXTURE,
    keys,
    env: { SUPABASE_URL: "http://127.0.0.1:1", FIXTURE_SETTING: "given" },
    isolation: options.isolation ?? "process",
    limits: options.limits,
    trustedClientHeader: options.trustedClientHeader,
    onError: (_n, e) => errors.push(e),
  });
  const server = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen: () => {} }, host.handle);
  try {
    await fn({ url: `http://127.0.0.1:${server.addr.port}`, host, errors });
  } finally {
    await server.shutdown();
    await host.close();
  }
}

async function probe(url: string, query = "", headers: Record<string, string> = {}) {
  const res = await fetch(`${url}/functions/v1/probe${query}`, { headers });
  const text = await res.text();
  let body: Record<string, unknown> = {};
  try {
    body = JSON.parse(text);
  } catch { /* not JSON */ }
  return { status: res.status, headers: res.headers, body, text };
}

/** The host's own error answers: problem+json with the platform's code and message, CORS, a request id. */
function assertHostProblem(
  res: { status: number; headers: Headers; body: Record<string, unknown> },
  code: unknown,
) {
  assert.equal(res.headers.get("content-type"), "application/problem+json");
  assert.equal(res.headers.get("access-control-allow-origin"), "*");
  assert.equal(res.body.status, res.status);
  assert.equal(res.body.code, code);
  assert.equal(typeof res.body.message, "string");
  assert.equal(res.body.request_id, res.headers.get("x-request-id"));
}

Deno.test("functions host: unknown functions and _shared folders are 404 problem+json", () =>
  withHost(async ({ url }) => {
    for (const name of ["nope", "_shared"]) {
      const res = await fetch(`${url}/functions/v1/${name}`, {
        method: "POST",
        headers: { authorization: `Bearer ${keys.anonKey}` },
      });
      assertHostProblem({ status: res.status, headers: res.headers, body: await res.json() }, "NOT_FOUND");
      assert.equal(res.status, 404);
    }
  }));

Deno.test("functions host: verify_jwt takes legacy HS256 JWTs only, as the platform; OPTIONS passes", () =>
  withHost(async ({ url }) => {
    const post = async (headers: Record<string, string>) => {
      const res = await fetch(`${url}/functions/v1/hello`, { method: "POST", headers, body: "{}" });
      return { status: res.status, headers: res.headers, body: await res.json() };
    };
    const missing = await post({});
    assert.equal(missing.status, 401);
    assertHostProblem(missing, 401);
    assert.equal(missing.body.message, "Missing authorization header");
    const refused = {
      forged: await signJwt("another-secret-that-is-long-enough!!", { role: "anon" }),
      expired: await signJwt(DEFAULT_JWT_SECRET, { role: "anon", exp: 1 }),
      "ES256 user token": await userToken(keys, "22222222-2222-4222-8222-222222222222", {
        issuer: "http://127.0.0.1:54321/auth/v1",
      }),
      "publishable key": keys.publishableKey,
    };
    for (const [what, token] of Object.entries(refused)) {
      const res = await post({ authorization: `Bearer ${token}` });
      assert.deepEqual([res.status, res.body.message], [401, "Invalid JWT"], what);
    }
    const ok = await post({ authorization: `Bearer ${keys.anonKey}`, "content-type": "application/json" });
    assert.equal(ok.status, 200);
    assert.deepEqual(ok.body, { method: "POST", path: "/functions/v1/hello", body: {} });
    const preflight = await fetch(`${url}/functions/v1/hello`, { method: "OPTIONS" });
    assert.equal(preflight.status, 200);
    assert.equal((await preflight.json()).method, "OPTIONS");
  }));

Deno.test("functions host: verify_jwt = false and `export default { fetch }` are honoured", () =>
  withHost(async ({ url }) => {
    const res = await fetch(`${url}/functions/v1/open-door`, { method: "POST" });
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), { open: true, authorization: false });
  }));

Deno.test("functions host: a throwing function is a bare 500 without its error text, in both isolations", async () => {
  for (const isolation of ["process", "in-process"] as const) {
    await withHost(async ({ url }) => {
      const res = await fetch(`${url}/functions/v1/crash`, {
        method: "POST",
        headers: { authorization: `Bearer ${keys.anonKey}` },
      });
      assert.equal(res.status, 500, isolation);
      assert.equal(res.headers.get("access-control-allow-origin"), "*");
      assert.doesNotMatch(await res.text(), /secret internal detail/);
    }, { isolation });
  }
});

Deno.test("functions host: supabase-js functions.invoke works", () =>
  withHost(async ({ url }) => {
    const supabase = createClient(url, keys.anonKey, { auth: { persistSession: false } });
    const { data, error } = await supabase.functions.invoke("hello", { body: { seats: 2 } });
    assert.equal(error, null);
    assert.deepEqual(data, { method: "POST", path: "/functions/v1/hello", body: { seats: 2 } });
  }));

Deno.test("each function runs in a process of its own, kept warm, seeing only its own environment", () =>
  withHost(async ({ url, host }) => {
    const first = await probe(url);
    const second = await probe(url);
    const hello = await fetch(`${url}/functions/v1/hello`, {
      method: "POST",
      headers: { authorization: `Bearer ${keys.anonKey}` },
      body: "{}",
    });
    await hello.body?.cancel();
    assert.notEqual(first.body.pid, Deno.pid);
    assert.equal(second.body.pid, first.body.pid, "a warm worker serves the next request");
    assert.deepEqual([first.body.served, second.body.served], [1, 2]);
    const workers = host.workers();
    assert.deepEqual(workers.probe, [first.body.pid]);
    assert.equal(workers.hello.length, 1);
    assert.notEqual(workers.hello[0], first.body.pid);
    const env = first.body.env as string[];
    assert.ok(env.includes("SUPABASE_URL") && env.includes("FIXTURE_SETTING"));
    for (const hostOnly of ["TEST_ADMIN_URL", "TEST_DB_PREFIX", "DATABASE_URL"]) {
      assert.ok(!env.includes(hostOnly), `${hostOnly} is the host's, not the function's`);
    }
  }));

Deno.test("a worker that dies takes only itself down: 500 WORKER_ERROR, and the next request starts a new one", () =>
  withHost(async ({ url, host, errors }) => {
    const before = await probe(url);
    const helloPid = () => host.workers().hello?.[0];
    const hello = await fetch(`${url}/functions/v1/hello`, {
      method: "POST",
      headers: { authorization: `Bearer ${keys.anonKey}` },
      body: "{}",
    });
    await hello.body?.cancel();
    const helloBefore = helloPid();
    const died = await probe(url, "?do=exit");
    assert.equal(died.status, 500);
    assertHostProblem(died, "WORKER_ERROR");
    const after = await probe(url);
    assert.equal(after.status, 200);
    assert.notEqual(after.body.pid, before.body.pid);
    assert.equal(after.body.served, 1);
    assert.equal(helloPid(), helloBefore, "the other function's worker lives on");
    assert.ok(errors.some((e) => /crashed/.test(String(e))));
  }));

Deno.test("CPU time is measured per request, and a request past the limit ends its worker: 546 WORKER_LIMIT", () =>
  withHost(async ({ url, host }) => {
    const light = await probe(url, "?do=cpu&ms=50");
    assert.equal(light.status, 200);
    const lines: string[] = [];
    const error = console.error;
    console.error = (line: string) => lines.push(line);
    let burned;
    try {
      burned = await probe(url, "?do=cpu&ms=5000");
    } finally {
      console.error = error;
    }
    assert.equal(burned.status, 546);
    assertHostProblem(burned, "WORKER_LIMIT");
    const [lightMetric, burnedMetric] = host.metrics.filter((m) => m.function === "probe").slice(-2);
    assert.ok(lightMetric.cpuMs! >= 30 && lightMetric.cpuMs! < 400, `light request: ${lightMetric.cpuMs} ms`);
    assert.equal(burnedMetric.failure, "cpu-limit");
    assert.ok(burnedMetric.cpuMs! >= 400 && burnedMetric.wallMs < 2_500, JSON.stringify(burnedMetric));
    const reported = lines.map((l) => JSON.parse(l)).find((l) =>
      l.msg === "function worker failed: cpu-limit"
    );
    assert.deepEqual([reported?.function, reported?.status, reported?.cpu_ms], [
      "probe",
      546,
      burnedMetric.cpuMs,
    ]);
    assert.equal((await probe(url)).status, 200, "a new worker serves the next request");
  }, { limits: { cpuMs: 400 } }));

Deno.test("memory is capped per worker: a function past its heap ends with 546 WORKER_LIMIT", () =>
  withHost(async ({ url, host }) => {
    const info = await probe(url);
    assert.ok((host.metrics.at(-1)!.rssMb ?? 0) > 0, "resident memory is reported");
    const hog = await probe(url, "?do=memory");
    assert.equal(hog.status, 546);
    assertHostProblem(hog, "WORKER_LIMIT");
    assert.equal(host.metrics.at(-1)!.failure, "memory-limit");
    assert.notEqual((await probe(url)).body.pid, info.body.pid);
  }, { limits: { memoryMb: 48 } }));

Deno.test("a worker serves for its wall-clock lifetime, then new requests go to a new worker", () =>
  withHost(async ({ url, host }) => {
    const first = await probe(url);
    await new Promise((r) => setTimeout(r, 1_300));
    const later = await probe(url);
    assert.notEqual(later.body.pid, first.body.pid);
    assert.deepEqual(host.workers().probe, [later.body.pid], "the retired worker is gone");
  }, { limits: { wallClockMs: 1_000 } }));

Deno.test("a request unanswered past the idle timeout is 504", () =>
  withHost(async ({ url }) => {
    const late = await probe(url, "?do=sleep&ms=3000");
    assert.equal(late.status, 504);
    assertHostProblem(late, "TIMEOUT");
  }, { limits: { requestIdleMs: 500 } }));

Deno.test("no client-address header reaches a function unless the deployment names it; none is invented", async () => {
  const sent = { "x-forwarded-for": "6.6.6.6", "cf-connecting-ip": "7.7.7.7", "x-real-ip": "8.8.8.8" };
  await withHost(async ({ url }) => {
    const answer = await probe(url, "", { ...sent, "sb-request-id": "chosen", "x-request-id": "chosen" });
    const { headers } = answer.body as { headers: Record<string, string> };
    for (const h of [...Object.keys(sent), "forwarded", "true-client-ip"]) assert.ok(!(h in headers), h);
    // the host's own request id, as the platform's sb-request-id; never the client's
    assert.match(headers["sb-request-id"], /^[0-9a-f-]{36}$/);
    assert.equal(answer.headers.get("x-request-id"), headers["sb-request-id"]);
  });
  await withHost(async ({ url }) => {
    const { headers } = (await probe(url, "", sent)).body as { headers: Record<string, string> };
    assert.equal(headers["cf-connecting-ip"], "7.7.7.7");
    assert.ok(!("x-forwarded-for" in headers));
  }, { trustedClientHeader: "cf-connecting-ip" });
});

Deno.test("a host killed outright takes its workers with it (no orphans)", async () => {
  const hostModule = new URL("../tools/local/functions_host.ts", import.meta.url).href;
  const jwtModule = new URL("../tools/local/jwt.ts", import.meta.url).href;
  const script = `
    const { createFunctionsHost } = await import(${JSON.stringify(hostModule)});
    const { projectKeys, generateSigningKey, DEFAULT_JWT_SECRET } = await import(${
    JSON.stringify(jwtModule)
  });
    const keys = await projectKeys(DEFAULT_JWT_SECRET, await generateSigningKey());
    const host = await createFunctionsHost({ supabaseDir: ${JSON.stringify(FIXTURE)}, keys, env: {} });
    const server = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen: () => {} }, host.handle);
    const res = await fetch("http://127.0.0.1:" + server.addr.port + "/functions/v1/probe");
    console.log(JSON.stringify({ worker: (await res.json()).pid }));`;
  const child = new Deno.Command(Deno.execPath(), {
    args: ["eval", script],
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const line = await readUntil(child.stdout, /\{"worker":\d+\}/);
  const worker = JSON.parse(line.match(/\{"worker":\d+\}/)![0]).worker as number;
  const alive = (pid: number) => {
    try {
      return Deno.readTextFileSync(`/proc/${pid}/stat`).split(" ")[2] !== "Z";
    } catch {
      return false;
    }
  };
  assert.ok(alive(worker));
  child.kill("SIGKILL");
  await child.status;
  for (let i = 0; i < 40 && alive(worker); i++) await new Promise((r) => setTimeout(r, 50));
  assert.ok(!alive(worker), `worker ${worker} outlived its host`);
});

/** Runs `npm run dev` (main.ts) on the fixture with a clean environment, plus `env`. */
function dev(env: Record<string, string>) {
  const main = fileURLToPath(new URL("../tools/local/main.ts", import.meta.url));
  return new Deno.Command(Deno.execPath(), {
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
      ...env,
    },
    stdout: "piped",
    stderr: "piped",
  });
}

Deno.test({
  name:
    "npm run dev serves functions, RPCs, the JWKS, the web app and the Stripe emulator with no PostgreSQL server",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const child = dev({}).spawn();
    drain(child.stderr);
    try {
      const printed = await readUntil(child.stdout, /pay a session\s+.+\n/);
      const field = (label: string) => printed.match(new RegExp(`${label}\\s+(\\S+)`))![1];
      const url = field("API URL");
      assert.match(printed, /embedded PGlite/);
      for (const id of ["11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222"]) {
        assert.ok(printed.includes(id), `the banner shows the demo id ${id}`);
      }
      assert.match(printed, /npm run --silent token -- 22222222/);

      const service = createClient(url, field("secret key"), { auth: { persistSession: false } });
      const visit = await service.rpc("fixture_visit", { name: "test" });
      assert.equal(visit.error, null);
      assert.equal(visit.data, 2); // the seed's row is 1
      const anon = createClient(url, field("publishable key"), { auth: { persistSession: false } });
      const anonVisit = await anon.rpc("fixture_visit", { name: "anon" });
      assert.equal(anonVisit.error, null, "PostgreSQL lets PUBLIC execute what was not revoked");
      const legacy = createClient(url, field("anon key \\(legacy\\)"), { auth: { persistSession: false } });
      const invoked = await legacy.functions.invoke("hello", { body: { ok: true } });
      assert.deepEqual(invoked.data?.body, { ok: true });
      const jwks = await (await fetch(`${url}/auth/v1/.well-known/jwks.json`)).json();
      assert.equal(jwks.keys[0].alg, "ES256");
      // the web app, built by the same command, at the root and at any page path
      assert.equal(field("Web app"), `${url}/`);
      for (const path of ["/", "/organiser"]) {
        assert.match(
          await (await fetch(`${url}${path}`)).text(),
          /<script type="module" crossorigin src="\/assets\/index-[\w-]+\.js">[\s\S]*<main id="main"/,
        );
      }

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

Deno.test("npm run dev: a busy port, a live Stripe key and an unreachable database are one clear line each", async () => {
  const busy = Deno.listen({ port: 0, hostname: "127.0.0.1" });
  const cases: [Record<string, string>, RegExp][] = [
    [
      { PORT: String(busy.addr.port) },
      new RegExp(`^npm run dev: Port ${busy.addr.port} is already in use: .*PORT=`),
    ],
    [
      { STRIPE_EMULATOR_PORT: String(busy.addr.port) },
      /^npm run dev: Port \d+ is already in use: .*STRIPE_EMULATOR_PORT=/,
    ],
    [{ STRIPE_SECRET_KEY: "sk_live_123" }, /^npm run dev: STRIPE_SECRET_KEY is not a test-mode key/],
    [
      { DATABASE_URL: "postgresql://postgres@127.0.0.1:9/nowhere" },
      /^npm run dev: Cannot reach PostgreSQL at 127\.0\.0\.1:9\/nowhere .*unset DATABASE_URL/,
    ],
  ];
  try {
    for (const [env, expected] of cases) {
      const { code, stderr } = await dev(env).output();
      const lines = new TextDecoder().decode(stderr).trim().split("\n");
      assert.equal(code, 1, JSON.stringify(env));
      assert.equal(lines.length, 1, lines.join("\n"));
      assert.match(lines[0], expected);
    }
  } finally {
    busy.close();
  }
});

function drain(stream: ReadableStream<Uint8Array>): void {
  (async () => {
    try {
      for await (const _ of stream) { /* discard */ }
    } catch { /* closed */ }
  })();
}

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
