// Red team of issue 13 (the browser half): each finding's regression test, where no other file fits better.
// The client's (3, 4, 5, 9) are in tests/client.test.ts.
import assert from "node:assert/strict";
import { localSignInEnabled, StackError } from "../tools/local/stack.ts";
import { FRAME_HEADERS, webApp } from "../tools/local/web.ts";
import { sharedStack, stackTest } from "./_helpers.ts";

const OPERATOR = "77777777-7777-4777-8777-777777777777";

function signIn(url: string, init: { origin?: string | null; type?: string; method?: string } = {}) {
  const headers: Record<string, string> = { "content-type": init.type ?? "application/json" };
  if (init.origin !== null) headers.origin = init.origin ?? url;
  return fetch(`${url}/auth/v1/local/token`, {
    method: init.method ?? "POST",
    headers,
    body: init.method === "GET" ? undefined : JSON.stringify({ user_id: OPERATOR }),
  });
}

// Finding 2: the local sign-in mints admin tokens; only the stack's own pages may ask, and only locally.
stackTest("the local sign-in answers the stack's own origin only, JSON only, without CORS", async () => {
  const stack = await sharedStack();
  const ok = await signIn(stack.url);
  assert.equal(ok.status, 200);
  assert.equal(ok.headers.get("access-control-allow-origin"), null, "no other site may read a token");
  assert.ok((await ok.json()).access_token);
  const localhost = await signIn(stack.url, { origin: stack.url.replace("127.0.0.1", "localhost") });
  assert.equal(localhost.status, 200);
  await localhost.body?.cancel();
  for (
    const [init, status, type] of [
      [{ origin: "https://evil.example" }, 403, "origin-refused"],
      [{ origin: "null" }, 403, "origin-refused"],
      [{ origin: null }, 403, "origin-refused"],
      [{ origin: stack.url.replace(/:\d+$/, ":1") }, 403, "origin-refused"],
      [{ type: "text/plain" }, 415, "unsupported-media-type"],
      [{ type: "application/x-www-form-urlencoded" }, 415, "unsupported-media-type"],
      [{ method: "GET" }, 405, "method-not-allowed"],
    ] as const
  ) {
    const res = await signIn(stack.url, init);
    const body = await res.json();
    assert.deepEqual(
      [res.status, res.headers.get("content-type"), body.type],
      [status, "application/problem+json", `/problems/${type}`],
      JSON.stringify(init),
    );
    assert.equal(body.access_token, undefined);
    assert.equal(res.headers.get("access-control-allow-origin"), null);
  }
  const preflight = await fetch(`${stack.url}/auth/v1/local/token`, {
    method: "OPTIONS",
    headers: { origin: "https://evil.example", "access-control-request-method": "POST" },
  });
  assert.equal(preflight.headers.get("access-control-allow-origin"), null);
  await preflight.body?.cancel();
});

Deno.test("the local sign-in is on with the emulator only, unless LOCAL_SIGN_IN says", () => {
  assert.equal(localSignInEnabled(undefined, true), true);
  assert.equal(localSignInEnabled(undefined, false), false, "off against real Stripe (a test key)");
  assert.equal(localSignInEnabled("on", false), true);
  assert.equal(localSignInEnabled("off", true), false);
  assert.throws(() => localSignInEnabled("yes", true), StackError);
});

stackTest("with the emulator the web app's config offers the local sign-in", async () => {
  const stack = await sharedStack();
  const config = await (await fetch(`${stack.url}/config.json`)).json();
  assert.equal(config.localSignIn, true);
});

// Findings 6 and 7: the web handler's answers to odd paths, and frame protection on every answer.
Deno.test("the web handler: 400 for bad percent-encoding, 404 for directories, never framed", async () => {
  const root = await Deno.makeTempDir();
  const dir = `${root}/dist`;
  try {
    await Deno.mkdir(`${dir}/assets/sub`, { recursive: true });
    await Deno.writeTextFile(`${dir}/index.html`, "<!doctype html><title>app</title>");
    const serve = webApp(dir, () => ({}));
    const get = (path: string) => serve(new Request(`http://127.0.0.1:1${path}`));
    for (
      const [path, status] of [["/%E0%A4%A", 400], ["/%", 400], ["/assets", 404], [
        "/assets/sub/",
        404,
      ]] as const
    ) {
      const res = await get(path);
      const body = await res.json();
      assert.deepEqual([res.status, res.headers.get("content-type"), body.status], [
        status,
        "application/problem+json",
        status,
      ], path);
      assert.match(body.detail, status === 400 ? /percent-encoding/ : /No route/, path);
    }
    for (const path of ["/", "/config.json", "/missing.js", "/%"]) {
      const res = await get(path);
      await res.body?.cancel();
      for (const [name, value] of Object.entries(FRAME_HEADERS)) {
        assert.equal(res.headers.get(name), value, path);
      }
    }
    assert.deepEqual(FRAME_HEADERS, {
      "content-security-policy": "frame-ancestors 'none'",
      "x-frame-options": "DENY",
    });
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
