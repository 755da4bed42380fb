// client/: the browser side of the Idempotency-Key contract, under Deno with a fake fetch (no browser, no
// database): one key per intent, retries as the contract asks, problems as typed errors, both transports.
import assert from "node:assert/strict";
import { createClient } from "npm:@supabase/supabase-js@2.109.0";
import {
  backoff,
  type CallOptions,
  canonicalJson,
  DeadlineError,
  fetchTransport,
  IdempotencyKeyReusedError,
  IN_PROGRESS_WAIT_SECONDS,
  intentKey,
  intentOf,
  invokeTransport,
  KEY_PREFIX,
  KEY_TTL_MS,
  memoryStorage,
  NetworkError,
  ProblemError,
  retryAfterSeconds,
  storedKey,
  ticketsClient,
} from "../client/mod.ts";

const URL_ = "http://stack.test";
const PUBLISHABLE = "sb_publishable_test";
const EVENT = "33333333-3333-4333-8333-333333333333";
const TIER = "44444444-4444-4444-8444-444444444444";
const BODY = { event_id: EVENT, items: [{ tier_id: TIER, quantity: 2 }], email: "a@example.com" };

/** What the fake server saw, and a scripted answer per request (the last one repeats). */
interface Seen {
  url: string;
  headers: Headers;
  body: unknown;
}

type Step =
  | { status: number; body?: unknown; headers?: Record<string, string> }
  | "lost" // the server handled it, the answer never arrived
  | "hang"; // no answer until the request is aborted

function fakeFetch(steps: Step[]) {
  const seen: Seen[] = [];
  const fetch = (input: string | URL | Request, init?: RequestInit): Promise<Response> => {
    const req = new Request(input, init);
    seen.push({
      url: req.url,
      headers: req.headers,
      body: init?.body ? JSON.parse(String(init.body)) : null,
    });
    const step = steps[Math.min(seen.length - 1, steps.length - 1)];
    if (step === "lost") return Promise.reject(new TypeError("connection reset"));
    if (step === "hang") {
      return new Promise((_, reject) =>
        init?.signal?.addEventListener("abort", () => reject(new DOMException("aborted", "AbortError")))
      );
    }
    const problem = step.status >= 400;
    return Promise.resolve(
      new Response(JSON.stringify(step.body ?? {}), {
        status: step.status,
        headers: {
          "content-type": problem ? "application/problem+json" : "application/json",
          "x-request-id": `req-${seen.length}`,
          ...step.headers,
        },
      }),
    );
  };
  return { fetch: fetch as typeof globalThis.fetch, seen };
}

/** A clock that moves only when the client sleeps, and the sleeps it was asked for. */
function fakeClock() {
  let now = 0;
  const sleeps: number[] = [];
  return {
    sleeps,
    retry: {
      now: () => now,
      sleep: (ms: number) => {
        sleeps.push(ms);
        now += ms;
        return Promise.resolve();
      },
      random: () => 0.5,
    },
  };
}

const created = (
  body: Record<string, unknown> = { order_id: "o-1", url: "https://pay" },
  replayed = false,
): Step => ({ status: 201, body, headers: replayed ? { "idempotent-replayed": "true" } : {} });
const problem = (status: number, type: string, extra: Record<string, unknown> = {}, headers = {}) => ({
  status,
  body: {
    type: `/problems/${type}`,
    title: "Refused",
    status,
    detail: `it was ${type}`,
    request_id: "r-9",
    ...extra,
  },
  headers,
});

function setup(steps: Step[], options: CallOptions = {}) {
  const server = fakeFetch(steps);
  const clock = fakeClock();
  const storage = memoryStorage();
  const tickets = ticketsClient(fetchTransport({ url: URL_, apikey: PUBLISHABLE, fetch: server.fetch }), {
    storage,
    ...options,
    retry: { ...clock.retry, ...options.retry },
  });
  const keys = () => server.seen.map((s) => s.headers.get("idempotency-key"));
  return { ...server, ...clock, storage, tickets, keys };
}

Deno.test("a double click is one request: calls of one intent while it runs share it", async () => {
  const { tickets, seen, storage } = setup([created()]);
  const [a, b] = await Promise.all([tickets.guestCheckout(BODY), tickets.guestCheckout({ ...BODY })]);
  assert.equal(seen.length, 1);
  assert.equal(a, b);
  assert.equal(a.data.order_id, "o-1");
  assert.equal(storage.items.size, 0, "forgotten after a definite answer");
});

Deno.test("a lost answer is retried with the same key, and the replay is reported", async () => {
  const { tickets, keys, sleeps } = setup(["lost", created(undefined, true)]);
  const result = await tickets.guestCheckout(BODY);
  assert.equal(new Set(keys()).size, 1);
  assert.equal(keys().length, 2);
  assert.equal(result.replayed, true);
  assert.equal(result.attempts, 2);
  assert.equal(result.key, keys()[0]);
  assert.equal(result.requestId, "req-2");
  assert.deepEqual(sleeps, [125], "full jitter of the first backoff (250 ms × 0.5)");
});

Deno.test("the key of an intent is kept in storage until a definite answer, so a reload reuses it", async () => {
  // every answer lost until the deadline: the page gives up, the user reloads and buys again
  const first = setup(["lost"], { retry: { deadlineMs: 5_000 } });
  await assert.rejects(first.tickets.guestCheckout(BODY), (e) => {
    assert.ok(e instanceof DeadlineError);
    assert.ok(e.cause instanceof NetworkError);
    return true;
  });
  const stored = storedKey(first.storage, intentOf("guest-checkout", BODY));
  assert.ok(stored && first.keys().every((k) => k === stored));

  const server = fakeFetch([created(undefined, true)]);
  const reloaded = ticketsClient(fetchTransport({ url: URL_, apikey: PUBLISHABLE, fetch: server.fetch }), {
    storage: first.storage,
  });
  // the same purchase, its fields in another order
  const again = await reloaded.guestCheckout({ email: BODY.email, items: BODY.items, event_id: EVENT });
  assert.equal(server.seen[0].headers.get("idempotency-key"), stored);
  assert.equal(again.replayed, true);
  assert.equal(first.storage.items.size, 0);
});

Deno.test("another intent (another quantity) gets another key", async () => {
  const { tickets, keys } = setup([created()]);
  await tickets.guestCheckout(BODY);
  await tickets.guestCheckout({ ...BODY, items: [{ tier_id: TIER, quantity: 3 }] });
  assert.equal(new Set(keys()).size, 2);
});

Deno.test("409 in progress with Retry-After: waits at least as long as it says, then replays", async () => {
  const inUse = problem(409, "idempotency-key-in-use", {}, { "retry-after": "2" });
  const { tickets, keys, sleeps } = setup([inUse, inUse, created(undefined, true)]);
  const result = await tickets.guestCheckout(BODY);
  assert.equal(result.replayed, true);
  assert.equal(new Set(keys()).size, 1);
  assert.deepEqual(sleeps, [2000 + 125, 2000 + 250]);
});

Deno.test("a 503 storm: capped exponential backoff with jitter, then the answer", async () => {
  const unavailable = problem(503, "stripe-unavailable", {}, { "retry-after": "1" });
  const { tickets, sleeps } = setup([...Array(6).fill(unavailable), created()], {
    retry: { deadlineMs: 60_000, maxAttempts: 10 },
  });
  await tickets.guestCheckout(BODY);
  // 1 s from Retry-After plus half of min(4000, 250 × 2^n)
  assert.deepEqual(sleeps, [1125, 1250, 1500, 2000, 3000, 3000]);
});

Deno.test("a 503 storm past the deadline: DeadlineError with the last problem, the key kept", async () => {
  const unavailable = problem(503, "store-unavailable", {}, { "retry-after": "1" });
  const { tickets, storage, seen } = setup([unavailable], { retry: { deadlineMs: 10_000 } });
  await assert.rejects(tickets.payout({ amount_cents: 500 }), (e) => {
    assert.ok(e instanceof DeadlineError);
    assert.ok(e.cause instanceof ProblemError);
    assert.equal((e.cause as ProblemError).code, "store-unavailable");
    return true;
  });
  assert.ok(seen.length >= 3 && seen.length <= 10, `${seen.length} attempts`);
  assert.equal(storage.items.size, 1);
});

Deno.test("an attempt still unanswered at the deadline is aborted", async () => {
  const server = fakeFetch(["hang"]);
  const tickets = ticketsClient(fetchTransport({ url: URL_, apikey: PUBLISHABLE, fetch: server.fetch }), {
    storage: memoryStorage(),
    retry: { deadlineMs: 50 },
  });
  const started = Date.now();
  await assert.rejects(tickets.payout({ amount_cents: 500 }), DeadlineError);
  assert.ok(Date.now() - started < 2_000);
  assert.equal(server.seen.length, 1);
});

Deno.test("other 4xx are never retried: typed problems, the fields named, the key forgotten", async () => {
  const invalid = problem(400, "validation", {
    errors: [{ field: "items[0].quantity", message: "too big" }],
  });
  const { tickets, seen, storage } = setup([invalid]);
  await assert.rejects(tickets.guestCheckout(BODY), (e) => {
    assert.ok(e instanceof ProblemError);
    assert.deepEqual([e.status, e.code, e.type, e.requestId], [
      400,
      "validation",
      "/problems/validation",
      "r-9",
    ]);
    assert.deepEqual(e.errors, [{ field: "items[0].quantity", message: "too big" }]);
    assert.equal(e.detail, "it was validation");
    return true;
  });
  assert.equal(seen.length, 1);
  assert.equal(storage.items.size, 0);
});

Deno.test("sold out (409 without Retry-After) is the answer at once, with its figures", async () => {
  const { tickets, seen } = setup([problem(409, "sold-out", { available: 0 })]);
  await assert.rejects(tickets.guestCheckout(BODY), (e) => {
    assert.ok(e instanceof ProblemError && e.code === "sold-out");
    assert.equal(e.body.available, 0);
    return true;
  });
  assert.equal(seen.length, 1);
});

Deno.test("a Retry-After longer than the deadline (funds pending for days) is the answer, not a wait", async () => {
  const pending = problem(409, "funds-pending", { available_cents: 0 }, { "retry-after": "172800" });
  const { tickets, sleeps } = setup([pending]);
  await assert.rejects(tickets.payout({ amount_cents: 500 }), (e) => {
    assert.ok(e instanceof ProblemError && e.code === "funds-pending" && e.retryAfter === 172800);
    return true;
  });
  assert.deepEqual(sleeps, []);
});

Deno.test("422 idempotency-key-reused is a programming error; the key is dropped", async () => {
  const { tickets, storage } = setup([problem(422, "idempotency-key-reused")]);
  await assert.rejects(
    tickets.refund({ order_id: EVENT }, { intent: "refund-everything" }),
    IdempotencyKeyReusedError,
  );
  assert.equal(storage.items.size, 0);
});

Deno.test("a 500 and 409 operation-needs-attention are not retried, and keep the key", async () => {
  for (const answer of [problem(500, "internal"), problem(409, "operation-needs-attention")]) {
    const { tickets, storage, seen } = setup([answer]);
    await assert.rejects(
      tickets.payout({ amount_cents: 500 }),
      (e) => e instanceof ProblemError && e.keyKept,
    );
    assert.equal(seen.length, 1);
    assert.equal(storage.items.size, 1, answer.body.type);
  }
});

Deno.test("fetchTransport: POST JSON with the publishable key; a user's token only when signed in", async () => {
  const server = fakeFetch([created()]);
  const guest = fetchTransport({ url: `${URL_}/`, apikey: PUBLISHABLE, fetch: server.fetch });
  await guest("guest-checkout", BODY, { "Idempotency-Key": "k1" });
  const user = fetchTransport({
    url: URL_,
    apikey: PUBLISHABLE,
    fetch: server.fetch,
    accessToken: () => "eyJ.user",
  });
  await user("refunds", { order_id: EVENT }, { "Idempotency-Key": "k2" });
  const [a, b] = server.seen;
  assert.equal(a.url, `${URL_}/functions/v1/guest-checkout`);
  assert.deepEqual(a.body, BODY);
  assert.equal(a.headers.get("apikey"), PUBLISHABLE);
  assert.equal(a.headers.get("authorization"), null, "never Authorization: Bearer sb_...");
  assert.equal(a.headers.get("content-type"), "application/json");
  assert.equal(b.headers.get("authorization"), "Bearer eyJ.user");
  assert.equal(b.headers.get("idempotency-key"), "k2");
});

Deno.test("invokeTransport: supabase.functions.invoke with the same semantics", async () => {
  const server = fakeFetch([
    "lost",
    problem(409, "operation-in-progress", {}, { "retry-after": "1" }),
    created({ order_id: "o-7", url: "https://pay" }, true),
    problem(409, "sold-out", { available: 1 }),
  ]);
  const supabase = createClient(URL_, PUBLISHABLE, {
    auth: { persistSession: false },
    global: { fetch: server.fetch },
  });
  const clock = fakeClock();
  const tickets = ticketsClient(invokeTransport(supabase), { storage: memoryStorage(), retry: clock.retry });
  const result = await tickets.guestCheckout(BODY);
  assert.deepEqual([result.data.order_id, result.replayed, result.attempts], ["o-7", true, 3]);
  assert.equal(new Set(server.seen.map((s) => s.headers.get("idempotency-key"))).size, 1);
  assert.equal(server.seen[0].url, `${URL_}/functions/v1/guest-checkout`);
  assert.equal(server.seen[0].headers.get("apikey"), PUBLISHABLE);
  assert.deepEqual(clock.sleeps, [125, 1250]);

  await assert.rejects(tickets.guestCheckout({ ...BODY, email: "b@example.com" }), (e) => {
    assert.ok(e instanceof ProblemError);
    assert.deepEqual([e.status, e.code, e.body.available, e.requestId], [409, "sold-out", 1, "r-9"]);
    return true;
  });
});

Deno.test("Retry-After as seconds or as an HTTP date", () => {
  const now = Date.parse("2026-11-30T10:00:00Z");
  assert.equal(retryAfterSeconds("3", now), 3);
  assert.equal(retryAfterSeconds("Mon, 30 Nov 2026 10:00:30 GMT", now), 30);
  assert.equal(retryAfterSeconds("soon", now), undefined);
  assert.equal(retryAfterSeconds(null, now), undefined);
});

Deno.test("backoff: full jitter under a cap", () => {
  const at = (attempt: number, r: number) => backoff(attempt, { baseMs: 250, capMs: 4000, random: () => r });
  assert.deepEqual([at(1, 0.999), at(3, 0.999), at(10, 0.999), at(10, 0)], [249, 999, 3996, 0]);
});

Deno.test("canonical JSON: one intent whatever the order of its fields", () => {
  assert.equal(
    canonicalJson({ b: 1, a: { d: [2, { f: 1, e: 0 }], c: null } }),
    '{"a":{"c":null,"d":[2,{"e":0,"f":1}]},"b":1}',
  );
  assert.equal(
    intentOf("payouts", { currency: "usd", amount_cents: 5 }),
    intentOf("payouts", { amount_cents: 5, currency: "usd" }),
  );
});

// Red team of issue 13, finding 3: a 4xx after an attempt whose outcome is unknown proves nothing about it.
Deno.test("after a lost answer, a 4xx that is not the key's stored answer keeps the key", async () => {
  const expired = problem(401, "unauthorized");
  const sold = problem(409, "sold-out", { available: 0 });
  for (const answer of [expired, sold, problem(429, "rate-limited")]) {
    const { tickets, storage, keys } = setup(["lost", answer]);
    await assert.rejects(tickets.guestCheckout(BODY), (e) => {
      assert.ok(e instanceof ProblemError && e.keyKept, answer.body.type);
      return true;
    });
    // the first attempt may have made the order: the next click must find it with the same key
    assert.equal(storedKey(storage, intentOf("guest-checkout", BODY)), keys()[0], answer.body.type);
  }
});

Deno.test("after a lost answer, the key's stored 4xx (replayed) or key-reused forgets the key", async () => {
  const rejected = { ...problem(402, "stripe-rejected"), headers: { "idempotent-replayed": "true" } };
  for (const answer of [rejected, problem(422, "idempotency-key-reused")]) {
    const { tickets, storage } = setup(["lost", answer]);
    await assert.rejects(tickets.refund({ order_id: EVENT }), (e) => {
      assert.ok(e instanceof ProblemError && !e.keyKept, answer.body.type);
      return true;
    });
    assert.equal(storage.items.size, 0, answer.body.type);
  }
});

Deno.test("a key left by an earlier call (a reload after a lost answer) is not forgotten on a 401", async () => {
  const storage = memoryStorage();
  const key = intentKey(storage, intentOf("payouts", { amount_cents: 500 }));
  const { tickets, keys } = setup([problem(401, "unauthorized")], { storage });
  await assert.rejects(tickets.payout({ amount_cents: 500 }), (e) => e instanceof ProblemError && e.keyKept);
  assert.deepEqual(keys(), [key]);
  assert.equal(storedKey(storage, intentOf("payouts", { amount_cents: 500 })), key);
});

Deno.test("a first attempt's refusal is definite: the key is forgotten", async () => {
  const { tickets, storage } = setup([problem(409, "sold-out")]);
  await assert.rejects(tickets.guestCheckout(BODY), (e) => e instanceof ProblemError && !e.keyKept);
  assert.equal(storage.items.size, 0);
});

// Finding 4: the in-progress 409 is known by its problem type.
Deno.test("409 in progress without Retry-After is retried after a default wait", async () => {
  for (const type of ["idempotency-key-in-use", "operation-in-progress"]) {
    const { tickets, sleeps, keys } = setup([problem(409, type), created(undefined, true)]);
    const result = await tickets.guestCheckout(BODY);
    assert.equal(result.replayed, true);
    assert.equal(new Set(keys()).size, 1);
    assert.deepEqual(sleeps, [IN_PROGRESS_WAIT_SECONDS * 1000 + 125], type);
  }
});

Deno.test("a 409 with Retry-After that is not in progress (funds-pending) is the answer, not a retry", async () => {
  const pending = problem(409, "funds-pending", { available_cents: 0 }, { "retry-after": "2" });
  const { tickets, sleeps, seen } = setup([pending, created()]);
  await assert.rejects(tickets.payout({ amount_cents: 500 }), (e) => e instanceof ProblemError);
  assert.equal(seen.length, 1);
  assert.deepEqual(sleeps, []);
});

// Finding 5: keys in localStorage (shared by tabs) for 24 hours, Stripe's key window.
Deno.test("a stored key expires after 24 hours; expired keys of other intents are cleaned", async () => {
  const storage = memoryStorage();
  const intent = intentOf("payouts", { amount_cents: 500 });
  const t0 = Date.parse("2026-11-30T10:00:00Z");
  const key = intentKey(storage, intent, t0);
  intentKey(storage, "other-intent", t0);
  storage.setItem(`${KEY_PREFIX}unreadable`, "not json");
  assert.equal(intentKey(storage, intent, t0 + KEY_TTL_MS - 1), key, "the same key within 24 h");
  assert.equal(storedKey(storage, intent, t0 + KEY_TTL_MS), null);
  const fresh = intentKey(storage, intent, t0 + KEY_TTL_MS);
  assert.notEqual(fresh, key);
  assert.deepEqual([...storage.items.keys()], [KEY_PREFIX + intent], "the expired and unreadable are gone");
  const { tickets, keys } = setup([created()], { storage });
  await tickets.payout({ amount_cents: 500 });
  assert.notEqual(keys()[0], key, "an expired key is not sent");
});

Deno.test("the default storage is localStorage, shared by every tab of the origin", async () => {
  const server = fakeFetch(["lost"]);
  const tickets = ticketsClient(fetchTransport({ url: URL_, apikey: PUBLISHABLE, fetch: server.fetch }), {
    retry: { deadlineMs: 10, maxAttempts: 1 },
  });
  localStorage.clear();
  try {
    await assert.rejects(tickets.payout({ amount_cents: 700 }), DeadlineError);
    const key = storedKey(localStorage, intentOf("payouts", { amount_cents: 700 }));
    assert.equal(key, server.seen[0].headers.get("idempotency-key"));
  } finally {
    localStorage.clear();
  }
});

// Finding 9: DeadlineError and ProblemError say the same things the same way.
Deno.test("a 503 whose Retry-After outlasts the deadline is a DeadlineError with the problem, key kept", async () => {
  const unavailable = problem(503, "store-unavailable", {}, { "retry-after": "60" });
  const { tickets, storage, seen } = setup([unavailable], { retry: { deadlineMs: 10_000 } });
  await assert.rejects(tickets.payout({ amount_cents: 500 }), (e) => {
    assert.ok(e instanceof DeadlineError && e.keyKept);
    assert.ok(e.problem instanceof ProblemError && e.problem.code === "store-unavailable");
    assert.equal(e.cause, e.problem);
    return true;
  });
  assert.equal(seen.length, 1);
  assert.equal(storage.items.size, 1);
});

// Compile-time only (deno check): the request types are the functions' zod schemas.
function _typesFollowTheSchemas(tickets: ReturnType<typeof ticketsClient>) {
  // @ts-expect-error prices come from the database: the schema has no such field
  tickets.checkout({ event_id: EVENT, items: [{ tier_id: TIER, quantity: 1 }], price: 1 });
  // @ts-expect-error a guest checkout needs an email
  tickets.guestCheckout({ event_id: EVENT, items: [] });
  // @ts-expect-error a reason outside the enum
  tickets.refund({ order_id: EVENT, reason: "because" });
  tickets.payout({ amount_cents: 100, currency: "usd" });
}
