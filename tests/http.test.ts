// _shared/http.ts: what every function answers around its own logic.
import assert from "node:assert/strict";
import { clientAddress, handler, HttpError, problem, readJson } from "../supabase/functions/_shared/http.ts";
import { log, redact } from "../supabase/functions/_shared/log.ts";

const echo = handler(
  "echo",
  async (req) => new Response(JSON.stringify(await readJson(req, 64)), { status: 201 }),
);
const post = (body: BodyInit, headers: Record<string, string> = { "content-type": "application/json" }) =>
  echo(new Request("http://x/functions/v1/echo", { method: "POST", body, headers }));

Deno.test("handler answers OPTIONS with CORS that allows Idempotency-Key and exposes the replay header", async () => {
  const res = await echo(new Request("http://x/", { method: "OPTIONS" }));
  assert.equal(res.status, 204);
  assert.match(res.headers.get("access-control-allow-headers")!, /idempotency-key/);
  assert.match(res.headers.get("access-control-expose-headers")!, /idempotent-replayed/);
});

Deno.test("handler refuses other methods with 405 problem+json", async () => {
  const res = await echo(new Request("http://x/", { method: "GET" }));
  assert.equal(res.status, 405);
  assert.equal(res.headers.get("content-type"), "application/problem+json");
  assert.equal(res.headers.get("allow"), "POST, OPTIONS");
  assert.equal((await res.json()).type, "/problems/method-not-allowed");
});

Deno.test("readJson: 415 without a JSON content type, 413 over the limit, 400 on malformed JSON", async () => {
  const wrongType = await post("{}", { "content-type": "text/plain" });
  assert.equal(wrongType.status, 415);
  const large = await post(JSON.stringify({ pad: "x".repeat(100) }));
  assert.equal(large.status, 413);
  assert.equal((await large.json()).type, "/problems/payload-too-large");
  const malformed = await post("{nope");
  assert.equal(malformed.status, 400);
  const body = await malformed.json();
  assert.deepEqual([body.type, body.status, body.title], ["/problems/malformed-json", 400, "Malformed JSON"]);
  assert.ok(body.request_id);
  const ok = await post('{"a":1}');
  assert.equal(ok.status, 201);
  assert.deepEqual(await ok.json(), { a: 1 });
  assert.equal(ok.headers.get("access-control-allow-origin"), "*");
});

Deno.test("a thrown HttpError becomes problem+json with its members; anything else a bare 500", async () => {
  const failing = handler("failing", (req) => {
    if (req.headers.get("x-kind") === "known") {
      throw new HttpError(409, "sold-out", "Sold out", "Only 2 left", {
        errors: [{ field: "items", message: "x" }],
      });
    }
    throw new Error("database password is hunter2");
  });
  const known = await failing(new Request("http://x/", { method: "POST", headers: { "x-kind": "known" } }));
  assert.equal(known.status, 409);
  const body = await known.json();
  assert.deepEqual(
    [body.type, body.title, body.detail, body.errors],
    ["/problems/sold-out", "Sold out", "Only 2 left", [{ field: "items", message: "x" }]],
  );
  const unknown = await failing(new Request("http://x/", { method: "POST" }));
  assert.equal(unknown.status, 500);
  assert.doesNotMatch(await unknown.text(), /hunter2|at .*\.ts/);
});

Deno.test("clientAddress: only the header CLIENT_IP_HEADER names, its last hop, never the peer or the client's own entries", () => {
  const req = (headers: Record<string, string>) => new Request("http://x/", { headers });
  const withHeader = (header: string | null, fn: () => void) => {
    const before = Deno.env.get("CLIENT_IP_HEADER");
    header === null ? Deno.env.delete("CLIENT_IP_HEADER") : Deno.env.set("CLIENT_IP_HEADER", header);
    try {
      fn();
    } finally {
      before === undefined ? Deno.env.delete("CLIENT_IP_HEADER") : Deno.env.set("CLIENT_IP_HEADER", before);
    }
  };
  const both = { "cf-connecting-ip": "203.0.113.9", "x-forwarded-for": "6.6.6.6, 198.51.100.7" };
  withHeader(null, () => {
    assert.equal(clientAddress(req(both)), undefined, "the platform documents no client-address header");
  });
  withHeader("CF-Connecting-IP", () => {
    assert.equal(clientAddress(req(both)), "203.0.113.9");
    assert.equal(clientAddress(req({ "x-forwarded-for": "198.51.100.7" })), undefined);
    // present but not an IP address (node:net isIP): one shared bucket, never "no address"
    for (
      const junk of [
        "not an address; drop table",
        "cafe",
        "bead",
        "a",
        ".",
        "",
        "1.2.3",
        "999.1.1.1",
        "1.2.3.4:80",
      ]
    ) {
      assert.equal(clientAddress(req({ "cf-connecting-ip": junk })), "invalid", JSON.stringify(junk));
    }
    assert.equal(clientAddress(req({ "cf-connecting-ip": " 192.0.2.1 " })), "192.0.2.1");
    assert.equal(clientAddress(req({ "cf-connecting-ip": "[2001:db8::1]" })), "2001:db8:0:0::/64");
  });
  withHeader("x-forwarded-for", () => {
    assert.equal(clientAddress(req(both)), "198.51.100.7");
    assert.equal(
      clientAddress(req({ "x-forwarded-for": "2001:db8:1:2:aaaa:bbbb:cccc:dddd" })),
      "2001:db8:1:2::/64",
    );
    assert.equal(clientAddress(req({ "x-forwarded-for": "2001:db8::1" })), "2001:db8:0:0::/64");
    assert.equal(clientAddress(req({ "x-forwarded-for": "::ffff:192.0.2.1" })), "192.0.2.1");
    assert.equal(clientAddress(req({})), undefined);
  });
});

Deno.test("every log line and every problem body carries the request's own id, never one the client chose; the platform's sb-request-id is logged apart", async () => {
  const lines: string[] = [];
  const [out, err] = [console.log, console.error];
  console.log = console.error = (line: string) => lines.push(line);
  const logLevel = Deno.env.get("LOG_LEVEL");
  Deno.env.set("LOG_LEVEL", "debug");
  let stored = "";
  let id = "";
  try {
    const deep = handler("deep", async () => {
      await Promise.resolve();
      log("warn", "something deep");
      stored = await problem(new HttpError(422, "stripe-rejected", "Refused")).text(); // as idempotency_http stores it
      throw new HttpError(409, "sold-out", "Sold out");
    });
    const res = await deep(
      new Request("http://x/", {
        method: "POST",
        headers: { "x-request-id": "req-42", "sb-request-id": "sb-req-42" },
      }),
    );
    id = (await res.json()).request_id;
    assert.match(id, /^[0-9a-f-]{36}$/, "a new id, not the client's");
    assert.equal(res.headers.get("x-request-id"), id);
    assert.equal(JSON.parse(stored).request_id, id);
    // an sb-request-id that is no sane token is not logged
    const odd = await deep(
      new Request("http://x/", { method: "POST", headers: { "sb-request-id": "a b;c" } }),
    );
    await odd.body?.cancel();
  } finally {
    console.log = out;
    console.error = err;
    logLevel === undefined ? Deno.env.delete("LOG_LEVEL") : Deno.env.set("LOG_LEVEL", logLevel);
  }
  assert.equal(lines.length, 4);
  for (const line of lines.slice(0, 2)) {
    assert.deepEqual([JSON.parse(line).request_id, JSON.parse(line).platform_request_id], [id, "sb-req-42"]);
  }
  for (const line of lines.slice(2)) {
    assert.notEqual(JSON.parse(line).request_id, id, "each request its own id");
    assert.equal(JSON.parse(line).platform_request_id, undefined);
  }
});

Deno.test("log redacts Supabase secret keys, Stripe keys and JWTs", () => {
  assert.equal(
    redact("keys sb_secret_abc-DEF_123 sk_live_xyz eyJa.eyJb.c ok"),
    "keys [redacted] [redacted] [redacted] ok",
  );
});
