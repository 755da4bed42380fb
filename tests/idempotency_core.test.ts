// withStripeIdempotency and withIdempotencyKey end to end: supabase-js -> the REST gateway -> real
// Postgres, and the official Stripe SDK -> the emulator. Crashes, lost answers, terminal errors, a
// store that cannot be reached, and the Idempotency-Key header's contract.
import assert from "node:assert/strict";
import { createClient } from "npm:@supabase/supabase-js@2.109.0";
import {
  StoreUnavailableError,
  StripeOutcomeUnknownError,
  StripeRejectedError,
} from "../supabase/functions/_shared/errors.ts";
import { handler, json } from "../supabase/functions/_shared/http.ts";
import { testHooks, withStripeIdempotency } from "../supabase/functions/_shared/idempotency.ts";
import {
  generateIdempotencyKey,
  generateIdempotencyKeyLegacy,
} from "../supabase/functions/_shared/idempotency_keys.ts";
import {
  type StripeOperation,
  stripeOperationStore,
} from "../supabase/functions/_shared/idempotency_store.ts";
import {
  canonicalJson,
  requestKeyStore,
  withIdempotencyKey,
} from "../supabase/functions/_shared/idempotency_http.ts";
import { stripeClient } from "../supabase/functions/_shared/stripe.ts";
import { sharedStack, stackTest, waitFor } from "./_helpers.ts";

const uid = () => crypto.randomUUID();

function sessionParams(orderId: string) {
  return {
    mode: "payment" as const,
    line_items: [{
      quantity: 1,
      price_data: { currency: "usd", unit_amount: 2500, product_data: { name: "GA" } },
    }],
    metadata: { order_id: orderId },
    success_url: "https://example.com/done",
  };
}

function checkoutOp(orderId: string): StripeOperation {
  return { operationType: "checkout:create", operationId: orderId, params: sessionParams(orderId) };
}

const createSession = (op: StripeOperation) => (key: string) =>
  stripeClient().checkout.sessions.create(sessionParams(op.operationId), { idempotencyKey: key });

async function operationRow(id: string) {
  const stack = await sharedStack();
  const [row] = await stack.db.query<Record<string, unknown>>(
    "select * from public.stripe_idempotency_keys where operation_id = $1",
    [id],
  );
  return row;
}

stackTest("generateIdempotencyKey: operation_type:stable_id:UUID, validated", () => {
  const key = generateIdempotencyKey("refund:create", "9f3c");
  assert.match(
    key,
    /^refund:create:9f3c:[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/,
  );
  assert.notEqual(generateIdempotencyKey("refund:create", "9f3c"), key);
  assert.throws(() => generateIdempotencyKey("refund:create", "has space"), /Invalid stable id 'has space'/);
  assert.throws(() => generateIdempotencyKey("", "x"), /Invalid operation type ''/);
  assert.throws(() => generateIdempotencyKey("refund:create", "x".repeat(250)), /exceeds 255 characters/);
  return Promise.resolve();
});

stackTest("generateIdempotencyKeyLegacy keeps the old callers' behaviour, validated", () => {
  assert.match(generateIdempotencyKeyLegacy(["checkout:create", "o1"]), /^checkout:create:o1:[0-9a-f-]{36}$/);
  assert.equal(generateIdempotencyKeyLegacy(["order", "o1"]), "order:o1");
  const req = new Request("http://x/", { headers: { "x-idempotency-key": "client-key-1" } });
  assert.equal(generateIdempotencyKeyLegacy(["checkout:create", "o1"], req), "client-key-1");
  const bad = new Request("http://x/", { headers: { "x-idempotency-key": "with space" } });
  assert.throws(() => generateIdempotencyKeyLegacy(["a"], bad), /Invalid idempotency key/);
  assert.throws(() => generateIdempotencyKeyLegacy([]), /Invalid idempotency key ''/);
  return Promise.resolve();
});

stackTest("canonicalJson ignores key order at every depth, keeps array order", () => {
  assert.equal(
    canonicalJson({ b: 1, a: { d: [2, 1], c: null } }),
    canonicalJson({ a: { c: null, d: [2, 1] }, b: 1 }),
  );
  assert.notEqual(canonicalJson({ a: [1, 2] }), canonicalJson({ a: [2, 1] }));
  assert.equal(canonicalJson({ a: 1, skip: undefined }), '{"a":1}');
  return Promise.resolve();
});

stackTest("a completed operation replays without calling Stripe", async () => {
  const stack = await sharedStack();
  const op = checkoutOp(uid());
  const first = await withStripeIdempotency(op, createSession(op), {
    pick: (s) => ({ id: s.id, url: s.url }),
  });
  assert.equal(first.replayed, false);
  const calls = stack.stripe!.requests.length;
  const again = await withStripeIdempotency(op, createSession(op));
  assert.deepEqual(again, { ...first, replayed: true, recorded: null });
  assert.equal(stack.stripe!.requests.length, calls, "no Stripe call on a replay");
});

stackTest(
  "crash after Stripe acted: the takeover reuses the key, Stripe replays, one object exists",
  async () => {
    const stack = await sharedStack();
    const op = checkoutOp(uid());
    testHooks.afterStripe = () => {
      throw new Error("the function died here");
    };
    try {
      await assert.rejects(withStripeIdempotency(op, createSession(op), { leaseSeconds: 1 }), /died here/);
    } finally {
      delete testHooks.afterStripe;
    }
    const crashed = await operationRow(op.operationId);
    assert.equal(crashed.status, "in_progress");
    const sessionsBefore = [...stack.stripe!.state.sessions.values()].filter((s) =>
      (s.metadata as Record<string, string>).order_id === op.operationId
    );
    assert.equal(sessionsBefore.length, 1);

    await assert.rejects(
      withStripeIdempotency(op, createSession(op)),
      (e: Error) => e.name === "OperationInProgressError" && /in progress/.test(e.message),
    );
    await new Promise((r) => setTimeout(r, 1100));
    const retried = await withStripeIdempotency(op, createSession(op));
    assert.equal(retried.resourceId, sessionsBefore[0].id);
    const last = stack.stripe!.requests.filter((r) => r.idempotencyKey === crashed.stripe_idempotency_key);
    assert.deepEqual(
      last.map((r) => r.replayed),
      [false, true],
      "the second call with the stored key was Stripe's replay",
    );
    const row = await operationRow(op.operationId);
    assert.deepEqual([row.status, row.attempts, row.stripe_resource_id], [
      "completed",
      2,
      sessionsBefore[0].id,
    ]);
  },
);

stackTest("a terminal Stripe 4xx is stored and replayed without a second Stripe call", async () => {
  const stack = await sharedStack();
  const pi = await stripeClient().paymentIntents.create({ amount: 1000, currency: "usd" });
  const op: StripeOperation = {
    operationType: "refund:create",
    operationId: uid(),
    params: { payment_intent: pi.id },
  };
  const refund = (key: string) =>
    stripeClient().refunds.create({ payment_intent: pi.id }, { idempotencyKey: key });
  await assert.rejects(
    withStripeIdempotency(op, refund),
    (e: StripeRejectedError) =>
      e instanceof StripeRejectedError && e.failure.code === "charge_not_refundable" && e.status === 422,
  );
  const calls = stack.stripe!.requests.length;
  await assert.rejects(
    withStripeIdempotency(op, refund),
    (e: StripeRejectedError) =>
      e instanceof StripeRejectedError && e.failure.code === "charge_not_refundable",
  );
  assert.equal(stack.stripe!.requests.length, calls);
  assert.equal((await operationRow(op.operationId)).status, "failed");
});

stackTest(
  "5xx and resets beyond the SDK's retries release the lease; the next try uses the same key",
  async () => {
    const stack = await sharedStack();
    for (const kind of ["error_before", "reset_after"] as const) {
      const op = checkoutOp(uid());
      stack.stripe!.addFault({ kind, path: "/v1/checkout/sessions", times: 10 }); // more than the SDK retries
      await assert.rejects(withStripeIdempotency(op, createSession(op)), StripeOutcomeUnknownError, kind);
      stack.stripe!.clearFaults();
      const released = await operationRow(op.operationId);
      assert.equal(released.status, "in_progress");
      assert.ok(Date.parse(released.locked_until as string) <= Date.now(), "released: claimable at once");
      const done = await withStripeIdempotency(op, createSession(op));
      const ours = stack.stripe!.requests.filter((r) => r.idempotencyKey === released.stripe_idempotency_key);
      assert.ok(
        ours.length >= 4,
        `${kind}: the SDK's tries and ours, all with the stored key (${ours.length})`,
      );
      assert.equal(
        ours.at(-1)!.replayed,
        kind === "reset_after",
        "after a reset Stripe replays the object it made",
      );
      const sessions = [...stack.stripe!.state.sessions.values()].filter((s) =>
        (s.metadata as Record<string, string>).order_id === op.operationId
      );
      assert.deepEqual(sessions.map((s) => s.id), [done.resourceId], `${kind}: exactly one session`);
    }
  },
);

stackTest(
  "Stripe's idempotency_error (the key was sent with other parameters) is no refusal: released, never failed",
  async () => {
    await sharedStack();
    const op = checkoutOp(uid());
    let sends = 0;
    // the operation's key already went out with other parameters (say, from an older build of the function)
    const call = async (key: string) => {
      if (sends++ === 0) {
        await stripeClient().checkout.sessions.create({
          ...sessionParams(op.operationId),
          metadata: { order_id: op.operationId, build: "older" },
        }, { idempotencyKey: key });
      }
      return createSession(op)(key);
    };
    await assert.rejects(withStripeIdempotency(op, call), StripeOutcomeUnknownError);
    const row = await operationRow(op.operationId);
    assert.deepEqual([row.status, row.error], ["in_progress", null], "not stored as Stripe's refusal");
    assert.ok(Date.parse(row.locked_until as string) <= Date.now(), "released: claimable at once");
    assert.match(row.last_error as string, /same parameters/);
  },
);

stackTest(
  "parameters Stripe would refuse fail at once on the first send (no call, no look-up); once sent, they are looked up",
  async () => {
    await sharedStack();
    const op = checkoutOp(uid());
    const seen = { sends: 0, lookups: 0 };
    const call = (key: string) => {
      seen.sends++;
      return createSession(op)(key);
    };
    const options = {
      refusal: () => "expires_at must be at least 30 minutes away",
      lookup: () => {
        seen.lookups++;
        return Promise.resolve({ absent: "no session with this order's metadata" });
      },
    };
    await assert.rejects(
      withStripeIdempotency(op, call, options),
      (e: StripeRejectedError) =>
        e instanceof StripeRejectedError && e.failure.code === "parameters_refused" && e.status === 422,
    );
    assert.deepEqual(seen, { sends: 0, lookups: 0 });
    const failed = await operationRow(op.operationId);
    assert.deepEqual([failed.status, (failed.error as { code: string }).code], [
      "failed",
      "parameters_refused",
    ]);

    // sent once before (its answer lost): the same refusal now settles it by look-up, never by failing it
    const sent = checkoutOp(uid());
    await assert.rejects(
      withStripeIdempotency(sent, () => Promise.reject(new Error("connection reset"))),
      StripeOutcomeUnknownError,
    );
    const found = await withStripeIdempotency(sent, call, {
      ...options,
      lookup: () => Promise.resolve({ found: { id: "cs_found_by_look_up" } }),
    });
    assert.deepEqual([found.resourceId, seen.sends], ["cs_found_by_look_up", 0]);
  },
);

stackTest("the store unreachable: 503 and not one Stripe call", async () => {
  const stack = await sharedStack();
  const down = createClient("http://127.0.0.1:9", stack.serviceRoleKey, { auth: { persistSession: false } });
  const op = checkoutOp(uid());
  const calls = stack.stripe!.requests.length;
  let called = false;
  await assert.rejects(
    withStripeIdempotency(op, (key) => {
      called = true;
      return createSession(op)(key);
    }, { store: stripeOperationStore(down) }),
    (e: StoreUnavailableError) => e instanceof StoreUnavailableError && e.status === 503,
  );
  assert.equal(called, false);
  assert.equal(stack.stripe!.requests.length, calls);
});

// ---- inbound: the Idempotency-Key header, through a handler like a function's ----

let runs = 0;
let gate: Promise<void> | null = null;

const endpoint = handler("test-endpoint", async (req) => {
  const body = await req.json();
  const user = req.headers.get("x-user") ?? "a";
  return await withIdempotencyKey(
    req,
    { scope: `user:${user}`, endpoint: "test-endpoint", payload: body },
    async () => {
      runs++;
      if (gate) await gate;
      if (body.fail === "500") return json(500, { error: "ours" });
      if (body.fail === "409") return json(409, { error: "sold out" });
      return json(201, { run: runs, at: crypto.randomUUID(), echo: body });
    },
  );
});

function send(key: string | null, body: unknown, user = "a") {
  const headers: Record<string, string> = { "content-type": "application/json", "x-user": user };
  if (key !== null) headers["idempotency-key"] = key;
  return endpoint(
    new Request("http://x/functions/v1/test-endpoint", {
      method: "POST",
      headers,
      body: JSON.stringify(body),
    }),
  );
}

stackTest("inbound: a missing or malformed key is 400 and nothing runs", async () => {
  await sharedStack();
  const before = runs;
  for (const key of [null, "with space", "x".repeat(256), "tab\tkey", '""']) {
    const res = await send(key, { a: 1 });
    assert.equal(res.status, 400, String(key));
    assert.equal(res.headers.get("content-type"), "application/problem+json");
    assert.match((await res.json()).type, /idempotency-key-(missing|invalid)/);
  }
  assert.equal(runs, before);
});

stackTest(
  "inbound: a replay returns the stored bytes with Idempotent-Replayed, key order ignored",
  async () => {
    await sharedStack();
    const key = uid();
    const first = await send(key, { a: 1, b: { c: 2, d: 3 } });
    const firstBody = await first.text();
    assert.equal(first.status, 201);
    assert.equal(first.headers.get("idempotent-replayed"), null);
    const before = runs;
    const again = await send(key, { b: { d: 3, c: 2 }, a: 1 });
    assert.equal(again.status, 201);
    assert.equal(again.headers.get("idempotent-replayed"), "true");
    assert.equal(await again.text(), firstBody);
    assert.equal(again.headers.get("content-type"), "application/json");
    assert.equal(again.headers.get("access-control-expose-headers")?.includes("idempotent-replayed"), true);
    assert.equal(runs, before);
  },
);

stackTest("inbound: another payload under the same key is 422", async () => {
  await sharedStack();
  const key = uid();
  await (await send(key, { a: 1 })).body?.cancel();
  const res = await send(key, { a: 2 });
  assert.equal(res.status, 422);
  assert.equal((await res.json()).type, "/problems/idempotency-key-reused");
});

stackTest("inbound: the same key while the first runs is 409 with Retry-After", async () => {
  await sharedStack();
  const key = uid();
  let open!: () => void;
  gate = new Promise((r) => (open = r));
  const first = send(key, { a: 1 });
  // the first request holds its key (and waits at the gate) before the second is sent
  const stack = await sharedStack();
  await waitFor(
    "the first request to claim its key",
    async () =>
      (await stack.db.query(
        "select 1 from public.idempotency_keys where key = $1 and status = 'in_progress'",
        [key],
      ))
        .length === 1,
  );
  const second = await send(key, { a: 1 });
  assert.equal(second.status, 409);
  assert.ok(Number(second.headers.get("retry-after")) >= 1);
  assert.equal((await second.json()).type, "/problems/idempotency-key-in-use");
  open();
  gate = null;
  assert.equal((await first).status, 201);
});

stackTest("inbound: user A's key never replays for user B", async () => {
  await sharedStack();
  const key = uid();
  const a = await (await send(key, { a: 1 }, "a")).json();
  const b = await (await send(key, { a: 1 }, "b")).json();
  assert.notEqual(a.at, b.at);
});

stackTest("inbound: a 4xx is stored and replayed; a 5xx releases the key for a retry", async () => {
  await sharedStack();
  const conflictKey = uid();
  const conflict = await send(conflictKey, { fail: "409" });
  assert.equal(conflict.status, 409);
  const conflictText = await conflict.text();
  const replay = await send(conflictKey, { fail: "409" });
  assert.equal(replay.headers.get("idempotent-replayed"), "true");
  assert.equal(await replay.text(), conflictText);

  const errorKey = uid();
  const before = runs;
  assert.equal((await send(errorKey, { fail: "500" })).status, 500);
  assert.equal((await send(errorKey, { fail: "500" })).status, 500);
  assert.equal(runs, before + 2, "a released key runs again");
  const stack = await sharedStack();
  const [row] = await stack.db.query<{ status: string }>(
    "select status from public.idempotency_keys where key = $1",
    [errorKey],
  );
  assert.equal(row.status, "in_progress");
});

stackTest("inbound: the store unreachable is 503 and the handler never runs", async () => {
  const stack = await sharedStack();
  const down = createClient("http://127.0.0.1:9", stack.serviceRoleKey, { auth: { persistSession: false } });
  let ran = false;
  const guarded = handler(
    "guarded",
    (req) =>
      withIdempotencyKey(req, {
        scope: "user:a",
        endpoint: "guarded",
        payload: {},
        store: requestKeyStore(down),
      }, () => {
        ran = true;
        return Promise.resolve(json(201, {}));
      }),
  );
  const res = await guarded(
    new Request("http://x/", {
      method: "POST",
      headers: { "idempotency-key": uid(), "content-type": "application/json" },
      body: "{}",
    }),
  );
  assert.equal(res.status, 503);
  assert.equal((await res.json()).type, "/problems/store-unavailable");
  assert.equal(ran, false);
});
