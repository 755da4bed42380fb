// The Stripe emulator, driven through the official SDK: Stripe's idempotency semantics, its error
// objects, the injected faults, signed webhooks that the SDK itself verifies, the API version, unknown
// parameters, Checkout's rules, Stripe's money (balance, fees, settlement, refunds, transfers, reversals,
// disputes), lists, expand, and the dashboard's actions.
import assert from "node:assert/strict";
import { Stripe } from "../supabase/functions/_shared/stripe.ts";
import { ENDPOINTS } from "../tools/local/stripe_emulator/routes.ts";
import { waitFor, withTimeout } from "./_helpers.ts";
import {
  type Chaos,
  chaosFault,
  type EmulatorOptions,
  startStripeEmulator,
  type StripeEmulator,
  type StripeEvent,
} from "../tools/local/stripe_emulator/mod.ts";

const WEBHOOK_SECRET = "whsec_emulator_test";
const DAY = 86_400;

/** What the test webhook received: each payload with its `Stripe-Signature`. */
type Hook = { payload: string; signature: string }[];

/** An SDK client for `emu` (no retries: each test observes the emulator's raw answers). */
function client(emu: StripeEmulator, options: Partial<Stripe.StripeConfig> = {}): Stripe {
  const url = new URL(emu.url);
  return new Stripe("sk_test_emulator", {
    httpClient: Stripe.createFetchHttpClient(),
    host: url.hostname,
    port: Number(url.port),
    protocol: "http",
    maxNetworkRetries: 0,
    ...options,
  });
}

async function withEmulator(
  fn: (emu: StripeEmulator, stripe: Stripe, hook: Hook) => Promise<void>,
  options: Partial<EmulatorOptions> = {},
): Promise<void> {
  const received: Hook = [];
  const hook = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen: () => {} }, async (req) => {
    received.push({ payload: await req.text(), signature: req.headers.get("stripe-signature") ?? "" });
    return new Response("ok");
  });
  const emu = await startStripeEmulator({
    webhookSecret: WEBHOOK_SECRET,
    webhookUrl: `http://127.0.0.1:${hook.addr.port}/`,
    autoDeliver: false,
    ...options,
  });
  try {
    await fn(emu, client(emu), received);
  } finally {
    await emu.close();
    await hook.shutdown();
  }
}

const session = (overrides: Record<string, unknown> = {}) => ({
  mode: "payment" as const,
  line_items: [{
    quantity: 2,
    price_data: { currency: "usd", unit_amount: 2500, product_data: { name: "GA" } },
  }],
  metadata: { order_id: "order-1" },
  success_url: "https://example.com/ok",
  ...overrides,
});

/** One line item of `amount` in `currency`. */
const line = (amount: number, currency = "usd") => [{
  quantity: 1,
  price_data: { currency, unit_amount: amount, product_data: { name: "Ticket" } },
}];

/** A response header of an SDK result (the fetch client exposes a `Headers`). */
function header(result: { lastResponse: { headers: unknown } }, name: string): string | null {
  const headers = result.lastResponse.headers;
  return headers instanceof Headers ? headers.get(name) : (headers as Record<string, string>)[name] ?? null;
}

/** A Stripe error with `code` (and `param`, when given). */
const stripeError = (code: string, param?: string) => (e: Stripe.errors.StripeError) =>
  e.code === code && (param === undefined || e.param === param);

/** A raw API request, for what the SDK's types would not send. */
async function raw(
  emu: StripeEmulator,
  method: string,
  path: string,
  params: Record<string, string> = {},
  headers: Record<string, string> = {},
) {
  const form = new URLSearchParams(params).toString();
  const res = await fetch(method === "GET" ? `${emu.url}${path}?${form}` : `${emu.url}${path}`, {
    method,
    headers: {
      authorization: "Bearer sk_test_emulator",
      ...(method === "POST" ? { "content-type": "application/x-www-form-urlencoded" } : {}),
      ...headers,
    },
    body: method === "POST" ? form : undefined,
  });
  return { status: res.status, body: await res.json() };
}

/** A session of `amount` usd paid by card: its id, PaymentIntent and charge. */
async function paid(
  emu: StripeEmulator,
  stripe: Stripe,
  amount = 5000,
  metadata: Record<string, string> = {},
) {
  const s = await stripe.checkout.sessions.create(
    session({ line_items: line(amount), payment_intent_data: { metadata, transfer_group: "group-1" } }),
  );
  const { session: done } = await emu.paySession(s.id);
  const pi = await stripe.paymentIntents.retrieve(done.payment_intent as string);
  return { session: s.id, pi: pi.id, charge: pi.latest_charge as string };
}

/** The platform's balance in usd. */
async function usd(stripe: Stripe) {
  const b = await stripe.balance.retrieve();
  const pick = (rows: { amount: number; currency: string }[]) =>
    rows.find((r) => r.currency === "usd")?.amount;
  return { available: pick(b.available), pending: pick(b.pending) };
}

/** The types of the events the emulator recorded, oldest first. */
const types = (events: StripeEvent[]) => events.map((e) => e.type);

function emulatorTest(
  name: string,
  fn: (emu: StripeEmulator, stripe: Stripe, hook: Hook) => Promise<void>,
  options: Partial<EmulatorOptions> = {},
) {
  Deno.test(name, withTimeout(name, () => withEmulator(fn, options)));
}

emulatorTest(
  "same key and same params replays the stored response with Idempotent-Replayed",
  async (emu, stripe) => {
    const first = await stripe.checkout.sessions.create(session(), { idempotencyKey: "k-replay" });
    const again = await stripe.checkout.sessions.create(session(), { idempotencyKey: "k-replay" });
    assert.equal(again.id, first.id);
    assert.equal(first.amount_total, 5000);
    assert.equal(header(first, "idempotent-replayed"), null);
    assert.equal(header(again, "idempotent-replayed"), "true");
    assert.equal(emu.state.sessions.size, 1);
  },
);

emulatorTest("same key with other params is an idempotency_error, nothing created", async (emu, stripe) => {
  await stripe.checkout.sessions.create(session(), { idempotencyKey: "k-params" });
  await assert.rejects(
    stripe.checkout.sessions.create(session({ metadata: { order_id: "order-2" } }), {
      idempotencyKey: "k-params",
    }),
    (e: Stripe.errors.StripeError) => e.type === "StripeIdempotencyError" && e.statusCode === 400,
  );
  assert.equal(emu.state.sessions.size, 1);
});

emulatorTest("same key on another endpoint is an idempotency_error", async (_emu, stripe) => {
  await stripe.paymentIntents.create({ amount: 1000, currency: "usd" }, { idempotencyKey: "k-endpoint" });
  await assert.rejects(
    stripe.transfers.create({ amount: 1000, currency: "usd", destination: "acct_x" }, {
      idempotencyKey: "k-endpoint",
    }),
    (e: Stripe.errors.StripeError) => e.type === "StripeIdempotencyError" && /same endpoint/.test(e.message),
  );
});

emulatorTest(
  "a key still executing answers 409 idempotency_key_in_use, then replays",
  async (emu, stripe) => {
    emu.addFault({ kind: "latency", ms: 2000, path: "/v1/checkout/sessions" });
    const first = stripe.checkout.sessions.create(session(), { idempotencyKey: "k-inflight" });
    // the first request is executing (its key held) while the emulator pauses it
    await waitFor(
      "the first request to reach the emulator",
      () => emu.requests.some((r) => r.idempotencyKey === "k-inflight" && r.fault === "latency"),
    );
    await assert.rejects(
      stripe.checkout.sessions.create(session(), { idempotencyKey: "k-inflight" }),
      (e: Stripe.errors.StripeError) => e.statusCode === 409 && e.code === "idempotency_key_in_use",
    );
    const done = await first;
    const replay = await stripe.checkout.sessions.create(session(), { idempotencyKey: "k-inflight" });
    assert.equal(replay.id, done.id);
    assert.equal(emu.state.sessions.size, 1);
  },
);

emulatorTest("keys expire after 24 hours of the emulator's clock", async (emu, stripe) => {
  const first = await stripe.paymentIntents.create({ amount: 1000, currency: "usd" }, {
    idempotencyKey: "k-expiry",
  });
  await emu.advanceClock(86_400 - 10);
  const within = await stripe.paymentIntents.create({ amount: 1000, currency: "usd" }, {
    idempotencyKey: "k-expiry",
  });
  assert.equal(within.id, first.id);
  await emu.advanceClock(20);
  const after = await stripe.paymentIntents.create({ amount: 1000, currency: "usd" }, {
    idempotencyKey: "k-expiry",
  });
  assert.notEqual(after.id, first.id);
  assert.equal(emu.state.paymentIntents.size, 2);
});

emulatorTest(
  "validation failures are not stored: the key can then be used with valid params",
  async (emu, stripe) => {
    await assert.rejects(
      stripe.checkout.sessions.create(session({ line_items: [] }), { idempotencyKey: "k-invalid" }),
      (e: Stripe.errors.StripeError) => e.type === "StripeInvalidRequestError" && e.param === "line_items",
    );
    const ok = await stripe.checkout.sessions.create(session(), { idempotencyKey: "k-invalid" });
    assert.equal(ok.status, "open");
    assert.equal(emu.state.sessions.size, 1);
  },
);

emulatorTest("errors after execution began are stored and replayed", async (emu, stripe) => {
  const pi = await stripe.paymentIntents.create({ amount: 1000, currency: "usd" });
  const refund = () => stripe.refunds.create({ payment_intent: pi.id }, { idempotencyKey: "k-stored-error" });
  await assert.rejects(refund(), (e: Stripe.errors.StripeError) => e.code === "charge_not_refundable");
  await assert.rejects(
    refund(),
    (e: Stripe.errors.StripeError) =>
      e.code === "charge_not_refundable" && e.headers?.["idempotent-replayed"] === "true",
  );
  assert.equal(emu.state.refunds.size, 0);
});

emulatorTest(
  "a reset after commit loses the answer, and the same key then replays the object",
  async (emu, stripe) => {
    emu.addFault({ kind: "reset_after", path: "/v1/checkout/sessions" });
    await assert.rejects(
      stripe.checkout.sessions.create(session(), { idempotencyKey: "k-reset" }),
      (e: Stripe.errors.StripeError) => e.type === "StripeConnectionError",
    );
    assert.equal(emu.state.sessions.size, 1);
    const retry = await stripe.checkout.sessions.create(session(), { idempotencyKey: "k-reset" });
    assert.equal(header(retry, "idempotent-replayed"), "true");
    assert.deepEqual([...emu.state.sessions.keys()], [retry.id]);
  },
);

emulatorTest("a 500 before commit stores nothing: the retry executes once", async (emu, stripe) => {
  emu.addFault({ kind: "error_before", path: "/v1/transfers", times: 2 });
  const params = { amount: 500, currency: "usd", destination: "acct_demo" };
  for (let i = 0; i < 2; i++) {
    await assert.rejects(
      stripe.transfers.create(params, { idempotencyKey: "k-500" }),
      (e: Stripe.errors.StripeError) => e.statusCode === 500,
    );
  }
  assert.equal(emu.state.transfers.size, 0);
  const t = await stripe.transfers.create(params, { idempotencyKey: "k-500" });
  assert.equal(header(t, "idempotent-replayed"), null);
  assert.equal(emu.state.transfers.size, 1);
}, { initialBalance: { usd: 100_000 } });

emulatorTest("an injected Stripe error is executed, stored and replayed", async (emu, stripe) => {
  emu.addFault({
    kind: "error",
    path: "/v1/transfers",
    status: 400,
    error: { type: "invalid_request_error", code: "balance_insufficient", message: "Insufficient funds" },
  });
  const params = { amount: 500, currency: "usd", destination: "acct_demo" };
  for (let i = 0; i < 2; i++) {
    await assert.rejects(
      stripe.transfers.create(params, { idempotencyKey: "k-decline" }),
      (e: Stripe.errors.StripeError) => e.code === "balance_insufficient",
    );
  }
  assert.equal(emu.state.transfers.size, 0);
  assert.deepEqual(emu.requests.map((r) => r.replayed), [false, true]);
});

emulatorTest("in_flight fault answers 409 without storing the key", async (emu, stripe) => {
  emu.addFault({ kind: "in_flight", path: "/v1/refunds" });
  const pi = await stripe.paymentIntents.create({ amount: 1000, currency: "usd" });
  await assert.rejects(
    stripe.refunds.create({ payment_intent: pi.id }, { idempotencyKey: "k-409" }),
    (e: Stripe.errors.StripeError) => e.statusCode === 409,
  );
  await assert.rejects(
    stripe.refunds.create({ payment_intent: pi.id }, { idempotencyKey: "k-409" }),
    (e: Stripe.errors.StripeError) =>
      e.code === "charge_not_refundable" && !e.headers?.["idempotent-replayed"],
  );
});

emulatorTest(
  "chaos draws each request's fault from (seed, key's label, attempt): the same whatever the interleaving",
  async (emu, stripe) => {
    const kinds: Chaos["kinds"] = ["reset_after", "error_before", "in_flight", "latency"];
    const log = (run: string) =>
      emu.requests.filter((r) => r.idempotencyKey?.startsWith(`${run}-`))
        .map((r) => `${r.label}#${r.attempt}:${r.fault}`).sort();
    // Two runs of 24 keys x 2 attempts, the second in the opposite order and all at once; keys are named
    // without their run, as a test names keys that are random.
    const run = async (name: string, seed: number, order: number[]) => {
      emu.setChaos({
        seed,
        probability: 0.6,
        kinds,
        maxLatencyMs: 5,
        label: (k) => k.slice(k.indexOf("-") + 1),
      });
      for (let attempt = 0; attempt < 2; attempt++) {
        await Promise.allSettled(
          order.map((i) =>
            stripe.paymentIntents.create({ amount: 1000 + i, currency: "usd" }, {
              idempotencyKey: `${name}-k${i}`,
            })
          ),
        );
      }
      emu.clearFaults();
      return log(name);
    };
    const keys = Array.from({ length: 24 }, (_, i) => i);
    const first = await run("a", 42, keys);
    const second = await run("b", 42, [...keys].reverse());
    const other = await run("c", 43, keys);
    assert.equal(first.length, 48);
    assert.deepEqual(second, first, "the same seed gives each (key, attempt) the same fault");
    assert.notDeepEqual(other, first, "another seed gives other faults");
    const expected = keys.flatMap((i) =>
      [1, 2].map((attempt) =>
        `k${i}#${attempt}:${
          chaosFault({ seed: 42, probability: 0.6, kinds, maxLatencyMs: 5 }, {
            method: "POST",
            path: "/v1/payment_intents",
            key: `k${i}`,
            attempt,
          })?.kind ?? null
        }`
      )
    ).sort();
    assert.deepEqual(first, expected, "what chaosFault predicts");
    for (const kind of kinds) assert.ok(first.some((f) => f.endsWith(`:${kind}`)), `${kind} drawn`);
    assert.ok(first.some((f) => f.endsWith(":null")), "and some requests get no fault");

    // The control route: a seed over HTTP, the key itself as its label; DELETE stops it.
    const control = (method: string, body?: unknown) =>
      fetch(`${emu.url}/_emulator/chaos`, {
        method,
        body: body === undefined ? undefined : JSON.stringify(body),
      }).then((r) => r.json());
    await control("POST", { seed: 7, probability: 1, kinds: ["in_flight"] });
    await assert.rejects(
      stripe.paymentIntents.create({ amount: 1000, currency: "usd" }, { idempotencyKey: "http-k" }),
      (e: Stripe.errors.StripeError) => e.statusCode === 409,
    );
    await control("DELETE");
    await stripe.paymentIntents.create({ amount: 1000, currency: "usd" }, { idempotencyKey: "http-k" });
    assert.deepEqual(
      emu.requests.filter((r) => r.idempotencyKey === "http-k").map((r) => [r.attempt, r.label, r.fault]),
      [[1, "http-k", "in_flight"], [2, null, null]],
    );
  },
);

emulatorTest("a bad API key is refused with 401", async (emu) => {
  const url = new URL(emu.url);
  const live = new Stripe("sk_live_nope", {
    httpClient: Stripe.createFetchHttpClient(),
    host: url.hostname,
    port: Number(url.port),
    protocol: "http",
    maxNetworkRetries: 0,
  });
  await assert.rejects(
    live.paymentIntents.create({ amount: 1000, currency: "usd" }),
    (e: Stripe.errors.StripeError) => e.type === "StripeAuthenticationError",
  );
});

emulatorTest(
  "paying a session delivers a checkout.session.completed the SDK verifies",
  async (emu, stripe) => {
    const s = await stripe.checkout.sessions.create(session());
    const { deliveries, event } = await emu.paySession(s.id, { times: 2 });
    assert.deepEqual(deliveries.map((d) => d.status), [200, 200]);
    const paid = await stripe.checkout.sessions.retrieve(s.id);
    assert.equal(paid.payment_status, "paid");
    assert.ok(paid.payment_intent);

    const payload = JSON.stringify(event, null, 2);
    const header = await emu.signature(payload);
    const verified = await stripe.webhooks.constructEventAsync(
      payload,
      header,
      WEBHOOK_SECRET,
      300,
      Stripe.createSubtleCryptoProvider(),
    );
    assert.equal(verified.type, "checkout.session.completed");
    assert.equal((verified.data.object as Stripe.Checkout.Session).metadata?.order_id, "order-1");
    await assert.rejects(
      stripe.webhooks.constructEventAsync(
        payload,
        header,
        "whsec_wrong",
        300,
        Stripe.createSubtleCryptoProvider(),
      ),
    );

    const refund = await stripe.refunds.create({
      payment_intent: paid.payment_intent as string,
      amount: 1000,
    });
    assert.equal(refund.status, "succeeded");
    await assert.rejects(
      stripe.refunds.create({ payment_intent: paid.payment_intent as string, amount: 999_999 }),
      (e: Stripe.errors.StripeError) => e.code === "amount_too_large",
    );
  },
  { fundsDelaySeconds: 0 },
);

emulatorTest(
  "sessions expire when the clock passes expires_at, and emit checkout.session.expired",
  async (emu, stripe) => {
    const now = emu.state.now();
    const s = await stripe.checkout.sessions.create(session({ expires_at: now + 1800 }));
    await assert.rejects(
      stripe.checkout.sessions.create(session({ expires_at: now + 600 })),
      (e: Stripe.errors.StripeError) => e.param === "expires_at",
    );
    const deliveries = await emu.advanceClock(1801);
    assert.deepEqual(deliveries.map((d) => [d.type, d.status]), [["checkout.session.expired", 200]]);
    assert.equal((await stripe.checkout.sessions.retrieve(s.id)).status, "expired");
  },
);

// 1. The API version

emulatorTest(
  "a Stripe-Version other than the SDK's is refused as Stripe refuses an unknown one; events carry the SDK's",
  async (emu, stripe) => {
    const older = client(emu, { apiVersion: "2025-04-30.basil" as Stripe.LatestApiVersion });
    await assert.rejects(
      older.paymentIntents.create({ amount: 1000, currency: "usd" }),
      (e: Stripe.errors.StripeError) =>
        e.statusCode === 400 && e.message === "Invalid Stripe API version: 2025-04-30.basil",
    );
    assert.equal(emu.state.paymentIntents.size, 0);
    const s = await stripe.checkout.sessions.create(session());
    assert.equal(header(s, "stripe-version"), Stripe.API_VERSION);
    const { event } = await emu.paySession(s.id);
    assert.equal(event.api_version, Stripe.API_VERSION);
    assert.equal((await stripe.events.retrieve(event.id)).api_version, Stripe.API_VERSION);
  },
);

// 2. Unknown parameters

emulatorTest("every endpoint refuses an unknown parameter: 400 parameter_unknown", async (emu) => {
  assert.ok(ENDPOINTS.length >= 25, `${ENDPOINTS.length} endpoints`);
  for (const endpoint of ENDPOINTS) {
    const [method, path] = endpoint.split(" ");
    const answer = await raw(emu, method, path.replace(":id", "x_1"), { colour: "blue" });
    assert.equal(answer.status, 400, endpoint);
    assert.deepEqual(answer.body.error, {
      type: "invalid_request_error",
      code: "parameter_unknown",
      message: "Received unknown parameter: colour",
      param: "colour",
    }, endpoint);
  }
  assert.equal(emu.state.events.size, 0);
});

emulatorTest(
  "nested unknown parameters and ones the emulator does not model are refused; expand is accepted",
  async (emu, stripe) => {
    const withPrice = session({ line_items: [{ price: "price_1", quantity: 1 }] });
    await assert.rejects(
      stripe.checkout.sessions.create(withPrice as Stripe.Checkout.SessionCreateParams, {
        idempotencyKey: "k-u",
      }),
      stripeError("parameter_unknown", "line_items[0][price]"),
    );
    await assert.rejects(
      stripe.checkout.sessions.create(session({ payment_intent_data: { capture_method: "manual" } })),
      stripeError("parameter_unknown", "payment_intent_data[capture_method]"),
    );
    const { pi } = await paid(emu, stripe, 5000);
    await assert.rejects(
      stripe.refunds.create({ payment_intent: pi, reverse_transfer: true }),
      (e: Stripe.errors.StripeError) =>
        e.code === "parameter_unknown" && e.message === "Received unknown parameter: reverse_transfer",
    );
    assert.equal(emu.state.refunds.size, 0);
    // a refused parameter is a validation failure: not stored, the key is free
    const ok = await stripe.checkout.sessions.create(session(), { idempotencyKey: "k-u" });
    assert.equal(header(ok, "idempotent-replayed"), null);
    const refund = await stripe.refunds.create({ payment_intent: pi, amount: 100, expand: ["charge"] });
    assert.equal((refund.charge as Stripe.Charge).object, "charge");
  },
  { initialBalance: { usd: 100_000 } },
);

// 3. Checkout Sessions

emulatorTest(
  "ui_mode: hosted_page and embedded_page; hosted, embedded and custom are refused",
  async (_, stripe) => {
    const hosted = await stripe.checkout.sessions.create(session({ ui_mode: "hosted_page" }));
    assert.equal(hosted.ui_mode, "hosted_page");
    assert.match(hosted.url!, /\/_emulator\/checkout\/cs_test_/);
    assert.equal(hosted.client_secret, null);
    const embedded = await stripe.checkout.sessions.create(
      session({ ui_mode: "embedded_page", success_url: undefined, return_url: "https://example.com/r" }),
    );
    assert.equal(embedded.url, null);
    assert.match(embedded.client_secret!, /_secret_/);
    assert.equal((await stripe.checkout.sessions.create(session())).ui_mode, "hosted_page", "the default");
    for (const uiMode of ["hosted", "embedded", "custom"]) {
      await assert.rejects(
        stripe.checkout.sessions.create(session({ ui_mode: uiMode })),
        (e: Stripe.errors.StripeError) => e.param === "ui_mode" && e.message.includes(`'${uiMode}'`),
      );
    }
  },
);

emulatorTest("mode, expires_at window and at most 100 line items", async (emu, stripe) => {
  await assert.rejects(
    stripe.checkout.sessions.create(session({ mode: "pay" })),
    stripeError("parameter_invalid", "mode"),
  );
  await assert.rejects(
    stripe.checkout.sessions.create(session({ mode: "subscription" })),
    (e: Stripe.errors.StripeError) => e.param === "mode" && /models mode 'payment' only/.test(e.message),
  );
  await assert.rejects(
    stripe.checkout.sessions.create(session({ mode: undefined })),
    stripeError("parameter_missing", "mode"),
  );
  const now = emu.state.now();
  const defaulted = await stripe.checkout.sessions.create(session());
  assert.ok(Math.abs(defaulted.expires_at - (now + DAY)) <= 2, "24 hours by default");
  assert.equal(
    (await stripe.checkout.sessions.create(session({ expires_at: now + DAY }))).expires_at,
    now + DAY,
  );
  await assert.rejects(
    stripe.checkout.sessions.create(session({ expires_at: now + DAY + 60 })),
    (e: Stripe.errors.StripeError) => e.param === "expires_at" && /less than 24 hours/.test(e.message),
  );
  const items = (n: number) => Array.from({ length: n }, () => line(100)[0]);
  assert.equal(
    (await stripe.checkout.sessions.create(session({ line_items: items(100) }))).amount_total,
    10_000,
  );
  await assert.rejects(
    stripe.checkout.sessions.create(session({ line_items: items(101) })),
    (e: Stripe.errors.StripeError) => e.param === "line_items" && /at most 100/.test(e.message),
  );
});

emulatorTest(
  "amount limits per currency, zero-decimal jpy, and currencies outside CURRENCIES",
  async (_, stripe) => {
    await assert.rejects(
      stripe.checkout.sessions.create(session({ line_items: line(49) })),
      (e: Stripe.errors.StripeError) =>
        e.code === "amount_too_small" && e.param === "line_items" && e.message.includes("$0.50 usd"),
    );
    assert.equal((await stripe.checkout.sessions.create(session({ line_items: line(50) }))).amount_total, 50);
    assert.equal(
      (await stripe.checkout.sessions.create(session({ line_items: line(99_999_999) }))).amount_total,
      99_999_999,
    );
    await assert.rejects(
      stripe.checkout.sessions.create(session({ line_items: [...line(99_999_999), ...line(1)] })),
      stripeError("amount_too_large", "line_items"),
    );
    await assert.rejects(
      stripe.checkout.sessions.create(session({ line_items: line(29, "gbp") })),
      stripeError("amount_too_small"),
    );
    assert.equal(
      (await stripe.checkout.sessions.create(session({ line_items: line(30, "gbp") }))).currency,
      "gbp",
    );
    // jpy counts whole units: 50 is ¥50, the minimum
    const yen = await stripe.checkout.sessions.create(session({ line_items: line(50, "jpy") }));
    assert.deepEqual([yen.amount_total, yen.currency], [50, "jpy"]);
    await assert.rejects(
      stripe.checkout.sessions.create(session({ line_items: line(49, "jpy") })),
      (e: Stripe.errors.StripeError) => e.code === "amount_too_small" && e.message.includes("¥50 jpy"),
    );
    await assert.rejects(
      stripe.checkout.sessions.create(session({ line_items: line(5000, "chf") })),
      (e: Stripe.errors.StripeError) =>
        e.param === "line_items[0][price_data][currency]" &&
        e.message.startsWith("Invalid currency: chf. Stripe currently supports these currencies: usd"),
    );
    await assert.rejects(
      stripe.paymentIntents.create({ amount: 49, currency: "usd" }),
      stripeError("amount_too_small", "amount"),
    );
    await assert.rejects(
      stripe.transfers.create({ amount: 100, currency: "chf", destination: "acct_1" }),
      stripeError("parameter_invalid", "currency"),
    );
  },
);

emulatorTest("success_url, cancel_url and return_url as each ui_mode allows them", async (_, stripe) => {
  const embedded = { ui_mode: "embedded_page", success_url: undefined, return_url: "https://example.com/r" };
  await assert.rejects(
    stripe.checkout.sessions.create(session({ ...embedded, success_url: "https://example.com/ok" })),
    stripeError("parameter_invalid", "success_url"),
  );
  await assert.rejects(
    stripe.checkout.sessions.create(session({ ...embedded, cancel_url: "https://example.com/c" })),
    stripeError("parameter_invalid", "cancel_url"),
  );
  await assert.rejects(
    stripe.checkout.sessions.create(session({ ...embedded, return_url: undefined })),
    stripeError("parameter_missing", "return_url"),
  );
  await assert.rejects(
    stripe.checkout.sessions.create(session({ return_url: "https://example.com/r" })),
    stripeError("parameter_invalid", "return_url"),
  );
  await assert.rejects(
    stripe.checkout.sessions.create(session({ success_url: "not a url" })),
    stripeError("url_invalid", "success_url"),
  );
  const hosted = await stripe.checkout.sessions.create(session({ cancel_url: "https://example.com/c" }));
  assert.deepEqual([hosted.success_url, hosted.cancel_url], [
    "https://example.com/ok",
    "https://example.com/c",
  ]);
  const elements = await stripe.checkout.sessions.create(
    session({ ui_mode: "elements", success_url: undefined }),
  );
  assert.deepEqual([elements.url, elements.success_url], [null, null]);
});

emulatorTest(
  "sessions carry no line_items or payment_intent_data; line items are listed, the PaymentIntent gets the data",
  async (emu, stripe) => {
    const s = await stripe.checkout.sessions.create(session({
      line_items: [...line(1000), {
        quantity: 3,
        price_data: { currency: "usd", unit_amount: 500, product_data: { name: "VIP" } },
      }],
      payment_intent_data: { metadata: { order_id: "order-9" }, transfer_group: "order_9" },
    }));
    assert.equal("line_items" in s, false);
    assert.equal("payment_intent_data" in s, false);
    const items = await stripe.checkout.sessions.listLineItems(s.id);
    assert.deepEqual(
      items.data.map((l) => [l.object, l.description, l.quantity, l.price?.unit_amount, l.amount_total]),
      [
        ["item", "Ticket", 1, 1000, 1000],
        ["item", "VIP", 3, 500, 1500],
      ],
    );
    assert.equal(s.amount_total, 2500);
    const { session: done } = await emu.paySession(s.id);
    const pi = await stripe.paymentIntents.retrieve(done.payment_intent as string);
    assert.deepEqual([pi.metadata, pi.transfer_group, pi.status], [
      { order_id: "order-9" },
      "order_9",
      "succeeded",
    ]);
    assert.equal(done.url, null, "the url is only present while the session is open");
  },
);

emulatorTest(
  "the hosted page's Pay button pays and redirects (303) to success_url with the session id",
  async (emu, stripe) => {
    const s = await stripe.checkout.sessions.create(
      session({ success_url: "https://example.com/orders/1?session_id={CHECKOUT_SESSION_ID}" }),
    );
    const page = await fetch(s.url!);
    assert.match(
      await page.text(),
      /<form method="post" action="\/_emulator\/checkout\/cs_test_\w+"><button>Pay/,
    );
    const pay = await fetch(s.url!, { method: "POST", redirect: "manual" });
    await pay.body?.cancel();
    assert.equal(pay.status, 303);
    assert.equal(pay.headers.get("location"), `https://example.com/orders/1?session_id=${s.id}`);
    assert.deepEqual(
      [(await stripe.checkout.sessions.retrieve(s.id)).payment_status, emu.deliveries.map((d) => d.type)],
      ["paid", ["checkout.session.completed"]],
    );
    const again = await fetch(s.url!, { method: "POST", redirect: "manual" });
    await again.body?.cancel();
    assert.equal(again.status, 400, "a session is paid once");
  },
);

// 4. Money

emulatorTest(
  "a new platform has nothing; a card charge is pending less Stripe's fee until the settlement delay",
  async (emu, stripe) => {
    assert.deepEqual(await usd(stripe), { available: 0, pending: 0 });
    const { pi, charge } = await paid(emu, stripe, 10_000);
    const expanded = await stripe.paymentIntents.retrieve(pi, {
      expand: ["latest_charge.balance_transaction"],
    });
    const txn = (expanded.latest_charge as Stripe.Charge).balance_transaction as Stripe.BalanceTransaction;
    const fee = Math.round(10_000 * 0.029) + 30; // 2.9% + 30
    assert.deepEqual(
      [txn.type, txn.amount, txn.fee, txn.net, txn.status, txn.source, txn.reporting_category],
      ["charge", 10_000, fee, 10_000 - fee, "pending", charge, "charge"],
    );
    assert.equal(txn.available_on, (expanded.latest_charge as Stripe.Charge).created + 2 * DAY);
    const withTxn = await stripe.charges.retrieve(charge, { expand: ["balance_transaction"] });
    assert.equal((withTxn.balance_transaction as Stripe.BalanceTransaction).id, txn.id);
    const curlStyle = await raw(emu, "GET", `/v1/charges/${charge}`, { "expand[]": "balance_transaction" });
    assert.equal(curlStyle.body.balance_transaction.id, txn.id, "expand[] as curl sends it");
    assert.deepEqual(await usd(stripe), { available: 0, pending: 10_000 - fee });
    await emu.advanceClock(2 * DAY - 60);
    assert.deepEqual(await usd(stripe), { available: 0, pending: 10_000 - fee });
    await emu.advanceClock(60);
    assert.deepEqual(await usd(stripe), { available: 10_000 - fee, pending: 0 });
    assert.equal((await stripe.balanceTransactions.retrieve(txn.id)).status, "available");
  },
);

emulatorTest("initialBalance and fundsDelaySeconds, also set at runtime", async (emu, stripe) => {
  assert.deepEqual(await usd(stripe), { available: 700, pending: 0 });
  emu.options.fundsDelaySeconds = 0;
  emu.options.initialBalance = { usd: 0, eur: 5 };
  await paid(emu, stripe, 1000);
  assert.deepEqual(await usd(stripe), { available: 1000 - 59, pending: 0 });
  const eur = (await stripe.balance.retrieve()).available.find((r) => r.currency === "eur");
  assert.equal(eur?.amount, 5);
}, { initialBalance: { usd: 700 } });

emulatorTest(
  "transfers: balance_insufficient above the available balance; source_transaction follows the charge",
  async (emu, stripe) => {
    const { charge } = await paid(emu, stripe, 10_000);
    await assert.rejects(
      stripe.transfers.create({ amount: 100, currency: "usd", destination: "acct_org" }, {
        idempotencyKey: "k-t",
      }),
      (e: Stripe.errors.StripeError) =>
        e.code === "balance_insufficient" && e.message.startsWith("You have insufficient available funds"),
    );
    await assert.rejects(
      stripe.transfers.create({ amount: 100, currency: "usd", destination: "acct_org" }, {
        idempotencyKey: "k-t",
      }),
      (e: Stripe.errors.StripeError) =>
        e.code === "balance_insufficient" && e.headers?.["idempotent-replayed"] === "true",
      "executed and refused: stored for the key",
    );
    const t = await stripe.transfers.create({
      amount: 6000,
      currency: "usd",
      destination: "acct_org",
      source_transaction: charge,
      transfer_group: "order_1",
    });
    assert.equal(t.source_transaction, charge);
    await assert.rejects(
      stripe.transfers.create({
        amount: 4001,
        currency: "usd",
        destination: "acct_2",
        source_transaction: charge,
      }),
      stripeError("amount_too_large", "amount"),
    );
    assert.deepEqual(emu.accountBalance("acct_org"), {
      object: "balance",
      account: "acct_org",
      available: [{ amount: 0, currency: "usd" }],
      pending: [{ amount: 6000, currency: "usd" }],
    });
    const fee = Math.round(10_000 * 0.029) + 30;
    assert.deepEqual(await usd(stripe), { available: 0, pending: 10_000 - fee - 6000 });
    await emu.advanceClock(2 * DAY);
    assert.deepEqual(await usd(stripe), { available: 10_000 - fee - 6000, pending: 0 });
    assert.deepEqual((emu.accountBalance("acct_org").available as unknown[])[0], {
      amount: 6000,
      currency: "usd",
    });
    const plain = await stripe.transfers.create({ amount: 1000, currency: "usd", destination: "acct_org" });
    assert.equal(
      (await stripe.balanceTransactions.retrieve(plain.balance_transaction as string)).amount,
      -1000,
    );
    assert.deepEqual(await usd(stripe), { available: 10_000 - fee - 7000, pending: 0 });
    assert.deepEqual(types([...emu.state.events.values()]).filter((t) => t.startsWith("transfer.")), [
      "transfer.created",
      "transfer.created",
    ]);
  },
);

emulatorTest(
  "reversals: the connected account must cover them, none after a payout; the platform is credited",
  async (emu, stripe) => {
    const t = await stripe.transfers.create({ amount: 3000, currency: "usd", destination: "acct_org" });
    const r = await stripe.transfers.createReversal(t.id, { amount: 1000, metadata: { why: "refund" } });
    assert.deepEqual([r.object, r.amount, r.transfer], ["transfer_reversal", 1000, t.id]);
    assert.equal(
      (await stripe.balanceTransactions.retrieve(r.balance_transaction as string)).type,
      "transfer_refund",
    );
    assert.deepEqual(await usd(stripe), { available: 10_000 - 3000 + 1000, pending: 0 });
    const after = await stripe.transfers.retrieve(t.id);
    assert.deepEqual([after.amount_reversed, after.reversed, after.reversals.data.map((x) => x.id)], [
      1000,
      false,
      [r.id],
    ]);
    assert.deepEqual((await stripe.transfers.listReversals(t.id)).data.map((x) => x.id), [r.id]);
    const reversed = emu.takeEvents().filter((e) => e.type === "transfer.reversed");
    assert.deepEqual(reversed.map((e) => e.data.object.amount_reversed), [
      1000,
    ]);

    assert.deepEqual(await emu.payOut("acct_org"), { usd: 2000 });
    assert.deepEqual((emu.accountBalance("acct_org").available as unknown[])[0], {
      amount: 0,
      currency: "usd",
    });
    await assert.rejects(
      stripe.transfers.createReversal(t.id, { amount: 500 }),
      stripeError("balance_insufficient"),
    );
    await assert.rejects(emu.reverseTransfer(t.id), (e: Error) => /cannot cover a reversal/.test(e.message));
    assert.deepEqual(await usd(stripe), { available: 8000, pending: 0 });

    const updated = await stripe.transfers.update(t.id, { metadata: { payout_id: "p-1" } });
    assert.deepEqual(updated.metadata, { payout_id: "p-1" });
    const [event] = emu.takeEvents();
    assert.equal(event.type, "transfer.updated");
    assert.deepEqual(event.data.previous_attributes, { metadata: {} });
  },
  { initialBalance: { usd: 10_000 } },
);

emulatorTest(
  "a refund the balance cannot cover stays pending (charge_pending, insufficient_funds), then succeeds",
  async (emu, stripe) => {
    const a = await paid(emu, stripe, 5000);
    const refund = await stripe.refunds.create({ payment_intent: a.pi, amount: 2000 }, {
      idempotencyKey: "k-r",
    });
    assert.deepEqual([refund.status, refund.pending_reason, refund.balance_transaction], [
      "pending",
      "charge_pending",
      null,
    ]);
    assert.equal((await stripe.charges.retrieve(a.charge)).amount_refunded, 2000, "a pending refund counts");
    await emu.advanceClock(2 * DAY); // the charge's funds (4825) cover it
    const done = await stripe.refunds.retrieve(refund.id);
    assert.equal(done.status, "succeeded");
    assert.equal("pending_reason" in done, false);
    assert.deepEqual(await usd(stripe), { available: 5000 - 175 - 2000, pending: 0 });
    const updated = [...emu.state.events.values()].filter((e) => e.type === "refund.updated");
    assert.deepEqual(updated.map((e) => e.data.previous_attributes), [
      { status: "pending", pending_reason: "charge_pending", balance_transaction: null },
    ]);
    assert.deepEqual(updated[0].request, { id: null, idempotency_key: null }, "the clock, not a request");

    // more than the available balance, with the charge's funds already available: insufficient_funds
    const big = await stripe.refunds.create({ payment_intent: a.pi, amount: 2900 });
    assert.deepEqual([big.status, big.pending_reason], ["pending", "insufficient_funds"]);
    const b = await paid(emu, stripe, 5000);
    const queued = await stripe.refunds.create({ payment_intent: b.pi, amount: 100 });
    assert.equal(queued.status, "pending", "behind the refund waiting before it");
    await emu.advanceClock(2 * DAY);
    assert.deepEqual(
      [(await stripe.refunds.retrieve(big.id)).status, (await stripe.refunds.retrieve(queued.id)).status],
      ["succeeded", "succeeded"],
    );
  },
);

emulatorTest(
  "a pending refund's reason becomes insufficient_funds when its payment settles and the balance is still short",
  async (emu, stripe) => {
    const { pi } = await paid(emu, stripe, 5000);
    const refund = await stripe.refunds.create({ payment_intent: pi, amount: 4900 });
    assert.deepEqual([refund.status, refund.pending_reason], ["pending", "charge_pending"]);
    const deliveries = await emu.advanceClock(2 * DAY); // 4825 available: short of 4900
    assert.deepEqual(deliveries.map((d) => d.type), ["refund.updated"]);
    const waiting = await stripe.refunds.retrieve(refund.id);
    assert.deepEqual([waiting.status, waiting.pending_reason], ["pending", "insufficient_funds"]);
    const [updated] = [...emu.state.events.values()].filter((e) => e.type === "refund.updated");
    assert.deepEqual([updated.type, updated.data.previous_attributes], ["refund.updated", {
      pending_reason: "charge_pending",
    }]);
    emu.options.initialBalance = { usd: 100 };
    await emu.advanceClock(1);
    assert.equal((await stripe.refunds.retrieve(refund.id)).status, "succeeded");
    assert.deepEqual(await usd(stripe), { available: 25, pending: 0 });
  },
);

emulatorTest(
  "a refund failing later: refund.updated then refund.failed, its amount back on the charge and the balance",
  async (emu, stripe) => {
    const { pi, charge } = await paid(emu, stripe, 5000);
    const refund = await stripe.refunds.create({ payment_intent: pi, amount: 1200 });
    assert.equal(refund.status, "succeeded");
    const before = await usd(stripe);
    const { result, events, deliveries } = await emu.failRefund(refund.id);
    assert.deepEqual([result.status, result.failure_reason], ["failed", "expired_or_canceled_card"]);
    assert.deepEqual(types(events), ["refund.updated", "refund.failed"]);
    assert.deepEqual(events[0].data.previous_attributes, {
      status: "succeeded",
      failure_reason: null,
      failure_balance_transaction: null,
    });
    assert.deepEqual(deliveries.map((d) => d.status), [200, 200]);
    assert.equal((await stripe.charges.retrieve(charge)).amount_refunded, 0);
    assert.deepEqual(await usd(stripe), { ...before, available: before.available! + 1200 });
    const back = await stripe.balanceTransactions.retrieve(
      (await stripe.refunds.retrieve(refund.id)).failure_balance_transaction as string,
    );
    assert.deepEqual([back.type, back.amount], ["refund_failure", 1200]);
    await assert.rejects(emu.failRefund(refund.id), /only a succeeded or pending refund can fail/);
  },
  { fundsDelaySeconds: 0 },
);

emulatorTest(
  "disputes: funds withdrawn with the fee, reinstated when won, not when lost; the charge is disputed",
  async (emu, stripe) => {
    const a = await paid(emu, stripe, 5000);
    const b = await paid(emu, stripe, 3000);
    const start = await usd(stripe);
    const opened = await emu.openDispute(a.pi, { reason: "fraudulent" });
    assert.deepEqual(types(opened.events), ["charge.dispute.created", "charge.dispute.funds_withdrawn"]);
    const dispute = opened.result;
    assert.deepEqual([dispute.status, dispute.amount, dispute.charge, dispute.reason], [
      "needs_response",
      5000,
      a.charge,
      "fraudulent",
    ]);
    const [withdrawal] = dispute.balance_transactions as Stripe.BalanceTransaction[];
    assert.deepEqual([withdrawal.amount, withdrawal.fee, withdrawal.net, withdrawal.reporting_category], [
      -5000,
      1500,
      -6500,
      "dispute",
    ]);
    assert.deepEqual(await usd(stripe), { ...start, available: start.available! - 6500 });
    assert.equal((await stripe.charges.retrieve(a.charge)).disputed, true);
    await assert.rejects(stripe.refunds.create({ payment_intent: a.pi }), stripeError("charge_disputed"));

    const won = await emu.closeDispute(dispute.id, "won");
    assert.deepEqual(types(won.events), ["charge.dispute.funds_reinstated", "charge.dispute.closed"]);
    assert.deepEqual(await usd(stripe), { ...start, available: start.available! - 1500 }, "the fee stays");
    assert.equal((await stripe.disputes.retrieve(dispute.id)).status, "won");

    const lost = await emu.closeDispute(
      (await emu.openDispute(b.charge, { amount: 1000 })).result.id,
      "lost",
    );
    assert.deepEqual(types(lost.events), ["charge.dispute.closed"]);
    assert.deepEqual(await usd(stripe), { ...start, available: start.available! - 1500 - 2500 });
    await assert.rejects(emu.closeDispute(dispute.id, "lost"), /already closed/);
    await assert.rejects(emu.openDispute(a.charge), /already disputed/);

    assert.deepEqual((await stripe.disputes.list({ charge: b.charge })).data.map((d) => d.amount), [1000]);
    assert.deepEqual((await stripe.disputes.list({ payment_intent: a.pi })).data.map((d) => d.id), [
      dispute.id,
    ]);
    assert.equal((await stripe.disputes.list()).data.length, 2);
  },
  { fundsDelaySeconds: 0 },
);

// 5. Idempotency faults

emulatorTest(
  "error_after: a 500 after execution began is stored and replayed for the key, object created or not",
  async (emu, stripe) => {
    for (const created of [true, false]) {
      emu.addFault({ kind: "error_after", path: "/v1/payment_intents", created });
      const key = `k-after-${created}`;
      const first = await raw(emu, "POST", "/v1/payment_intents", { amount: "1000", currency: "usd" }, {
        "idempotency-key": key,
      });
      assert.deepEqual([first.status, first.body.error.type], [500, "api_error"]);
      await assert.rejects(
        stripe.paymentIntents.create({ amount: 1000, currency: "usd" }, { idempotencyKey: key }),
        (e: Stripe.errors.StripeError) =>
          e.statusCode === 500 && e.headers?.["idempotent-replayed"] === "true" &&
          e.headers?.["stripe-should-retry"] === "false",
      );
    }
    assert.equal(emu.state.paymentIntents.size, 1, "created before the failure once, not at all once");
    assert.deepEqual(emu.requests.map((r) => [r.status, r.replayed, r.fault]), [
      [500, false, "error_after"],
      [500, true, null],
      [500, false, "error_after"],
      [500, true, null],
    ]);
  },
);

emulatorTest(
  "rate_limit: 429 before the idempotency layer, nothing stored, the key stays free",
  async (emu, stripe) => {
    emu.addFault({ kind: "rate_limit", path: "/v1/payment_intents" });
    await assert.rejects(
      stripe.paymentIntents.create({ amount: 1000, currency: "usd" }, { idempotencyKey: "k-429" }),
      (e: Stripe.errors.StripeError) =>
        e.type === "StripeRateLimitError" && e.statusCode === 429 && e.code === "rate_limit",
    );
    const pi = await stripe.paymentIntents.create({ amount: 1000, currency: "usd" }, {
      idempotencyKey: "k-429",
    });
    assert.equal(header(pi, "idempotent-replayed"), null);
    assert.equal(emu.state.paymentIntents.size, 1);
  },
);

// 6. Lists

emulatorTest(
  "lists: newest first, limit 1-100, starting_after and ending_before, the SDK's auto-pagination",
  async (emu, stripe) => {
    const { pi } = await paid(emu, stripe, 5000);
    const made: string[] = [];
    for (let i = 0; i < 25; i++) {
      made.push(
        (await stripe.refunds.create({ payment_intent: pi, amount: 10 })).id,
      );
    }
    const newest = [...made].reverse();
    const page = await stripe.refunds.list({ payment_intent: pi, limit: 10 });
    assert.deepEqual([page.object, page.url, page.has_more], ["list", "/v1/refunds", true]);
    assert.deepEqual(page.data.map((r) => r.id), newest.slice(0, 10));
    assert.deepEqual(
      await stripe.refunds.list({ payment_intent: pi }).autoPagingToArray({ limit: 100 }).then((all) =>
        all.map((r) => r.id)
      ),
      newest,
    );
    const after = await stripe.refunds.list({ limit: 5, starting_after: newest[20] });
    assert.deepEqual([after.data.map((r) => r.id), after.has_more], [newest.slice(21), false]);
    const beforeIt = await stripe.refunds.list({ limit: 3, ending_before: newest[10] });
    assert.deepEqual([beforeIt.data.map((r) => r.id), beforeIt.has_more], [newest.slice(7, 10), true]);
    await assert.rejects(
      stripe.refunds.list({ limit: 101 }),
      stripeError("parameter_invalid_integer", "limit"),
    );
    await assert.rejects(
      stripe.refunds.list({ starting_after: "re_nope" }),
      stripeError("resource_missing", "starting_after"),
    );
    const expanded = await stripe.refunds.list({ limit: 1, expand: ["data.balance_transaction"] });
    assert.equal(
      (expanded.data[0].balance_transaction as Stripe.BalanceTransaction).object,
      "balance_transaction",
    );
  },
  { initialBalance: { usd: 100_000 } },
);

emulatorTest("list filters a product needs to look its objects up", async (emu, stripe) => {
  const a = await paid(emu, stripe, 5000);
  const t0 = emu.state.now();
  await emu.advanceClock(100);
  const b = await paid(emu, stripe, 7000);
  const open = await stripe.checkout.sessions.create(session());
  const sessions = await stripe.checkout.sessions.list({ created: { gte: t0 } });
  assert.deepEqual(sessions.data.map((s) => s.id), [open.id, b.session]);
  assert.deepEqual((await stripe.checkout.sessions.list({ payment_intent: a.pi })).data.map((s) => s.id), [
    a.session,
  ]);
  assert.deepEqual((await stripe.checkout.sessions.list({ status: "open" })).data.map((s) => s.id), [
    open.id,
  ]);
  await assert.rejects(
    stripe.checkout.sessions.list({ status: "paid" as "open" }),
    stripeError("parameter_invalid", "status"),
  );
  assert.deepEqual((await stripe.charges.list({ payment_intent: b.pi })).data.map((c) => c.id), [b.charge]);

  const ra = await stripe.refunds.create({ payment_intent: a.pi, amount: 100 });
  const rb = await stripe.refunds.create({ charge: b.charge, amount: 200 });
  assert.deepEqual((await stripe.refunds.list({ payment_intent: a.pi })).data.map((r) => r.id), [ra.id]);
  assert.deepEqual((await stripe.refunds.list({ charge: b.charge })).data.map((r) => r.id), [rb.id]);
  assert.deepEqual((await stripe.refunds.list({ created: { lt: t0 } })).data, []);

  const t1 = await stripe.transfers.create({
    amount: 100,
    currency: "usd",
    destination: "acct_a",
    transfer_group: "g1",
  });
  const t2 = await stripe.transfers.create({
    amount: 200,
    currency: "usd",
    destination: "acct_b",
    transfer_group: "g2",
  });
  assert.deepEqual((await stripe.transfers.list({ transfer_group: "g1" })).data.map((t) => t.id), [t1.id]);
  assert.deepEqual((await stripe.transfers.list({ destination: "acct_b" })).data.map((t) => t.id), [t2.id]);
  assert.deepEqual((await stripe.transfers.list({ created: { gte: t0 } })).data.length, 2);

  const bySource = await stripe.balanceTransactions.list({ source: a.charge });
  assert.deepEqual(bySource.data.map((t) => [t.type, t.amount]), [["charge", 5000]]);
  assert.deepEqual((await stripe.balanceTransactions.list({ type: "refund" })).data.map((t) => t.source), [
    rb.id,
    ra.id,
  ]);

  const completed = await stripe.events.list({ type: "checkout.session.completed" });
  assert.deepEqual(completed.data.map((e) => (e.data.object as { id: string }).id), [b.session, a.session]);
  assert.deepEqual(
    (await stripe.events.list({ type: "transfer.*", created: { gte: t0 } })).data.map((e) => e.type),
    ["transfer.created", "transfer.created"],
  );
  assert.deepEqual((await stripe.events.list({ types: ["refund.created"] })).data.length, 2);
}, { initialBalance: { usd: 100_000 } });

// 7. Dashboard actions and events

emulatorTest(
  "dashboard actions with deliver: false record their events without sending them; a product's audit can find them",
  async (emu, stripe) => {
    const { pi, charge } = await paid(emu, stripe, 5000);
    const t = await stripe.transfers.create({ amount: 1000, currency: "usd", destination: "acct_org" }, {
      idempotencyKey: "k-api",
    });
    const fromApi = emu.takeEvents().find((e) => e.type === "transfer.created")!;
    assert.deepEqual(fromApi.request, {
      id: fromApi.request && (fromApi.request as { id: string }).id,
      idempotency_key: "k-api",
    });
    assert.match((fromApi.request as { id: string }).id, /^req_/);
    const sent = emu.deliveries.length;

    const refund = await emu.refundFromDashboard(pi, 500, { deliver: false });
    assert.deepEqual([refund.result.metadata, refund.result.amount], [{}, 500]);
    const reversal = await emu.reverseTransfer(t.id, 400, { deliver: false });
    const dispute = await emu.openDispute(charge, { amount: 1000, deliver: false });
    const failed = await emu.failRefund(refund.result.id, { deliver: false });
    assert.equal(emu.deliveries.length, sent, "nothing was sent");
    const silent = [...refund.events, ...reversal.events, ...dispute.events, ...failed.events];
    assert.deepEqual(types(silent), [
      "charge.refunded",
      "refund.created",
      "transfer.reversed",
      "charge.dispute.created",
      "charge.dispute.funds_withdrawn",
      "refund.updated",
      "refund.failed",
    ]);
    const listed = await stripe.events.list({ limit: 100 });
    for (const e of silent) {
      const found = listed.data.find((x) => x.id === e.id);
      assert.ok(found, `${e.type} is listed`);
      assert.deepEqual([found.pending_webhooks, found.request, found.livemode], [1, {
        id: null,
        idempotency_key: null,
      }, false]);
    }
    const created = (await stripe.events.retrieve(refund.events[1].id)).data.object as Stripe.Refund;
    assert.deepEqual(
      [created.id, created.status, "failure_reason" in created, refund.result.status],
      [refund.result.id, "succeeded", false, "failed"],
      "data.object is the object as it was after that change",
    );
    assert.equal(emu.takeEvents().length, 0, "and they are not waiting to be sent either");
  },
  { fundsDelaySeconds: 0, initialBalance: { usd: 10_000 } },
);

emulatorTest(
  "a session paid by a delayed method: completed unpaid, then async_payment_succeeded or async_payment_failed",
  async (emu, stripe) => {
    const ok = await stripe.checkout.sessions.create(session());
    const pending = await emu.paySession(ok.id, { async: true });
    assert.deepEqual([pending.event.type, pending.session.status, pending.session.payment_status], [
      "checkout.session.completed",
      "complete",
      "unpaid",
    ]);
    const pi = await stripe.paymentIntents.retrieve(pending.session.payment_intent as string);
    assert.equal(pi.status, "processing");
    await assert.rejects(
      stripe.refunds.create({ payment_intent: pi.id }),
      stripeError("charge_not_refundable"),
    );
    assert.deepEqual(await usd(stripe), { available: 0, pending: 0 });
    const succeeded = await emu.finishAsyncPayment(ok.id, "succeeded");
    assert.deepEqual([succeeded.event.type, succeeded.session.payment_status], [
      "checkout.session.async_payment_succeeded",
      "paid",
    ]);
    assert.equal((await stripe.paymentIntents.retrieve(pi.id)).status, "succeeded");
    assert.equal((await usd(stripe)).pending, 5000 - 175);

    const bad = await stripe.checkout.sessions.create(session());
    await emu.paySession(bad.id, { async: true });
    const failed = await emu.finishAsyncPayment(bad.id, "failed");
    assert.deepEqual([failed.event.type, failed.session.payment_status], [
      "checkout.session.async_payment_failed",
      "unpaid",
    ]);
    const badPi = await stripe.paymentIntents.retrieve(failed.session.payment_intent as string);
    assert.equal(badPi.status, "requires_payment_method");
    await assert.rejects(emu.finishAsyncPayment(bad.id, "succeeded"), /no payment in processing/);
    assert.deepEqual(emu.deliveries.map((d) => d.status), [200, 200, 200, 200]);
  },
);

emulatorTest(
  "a thin event (v2.core.event) is signed, refused by constructEvent, parsed as a notification whose object is fetched",
  async (emu, stripe, hook) => {
    const s = await stripe.checkout.sessions.create(session());
    const { event } = await emu.paySession(s.id, { deliver: false });
    const [delivery] = await emu.sendThinEvent(event.id);
    assert.equal(delivery.status, 200);
    const { payload, signature } = hook.at(-1)!;
    const thin = JSON.parse(payload);
    assert.deepEqual(
      [thin.object, thin.type, thin.snapshot_event, thin.related_object],
      ["v2.core.event", "v1.checkout.session.completed", event.id, {
        id: s.id,
        type: "checkout.session",
        url: `/v1/checkout/sessions/${s.id}`,
      }],
    );
    const crypto = Stripe.createSubtleCryptoProvider();
    await assert.rejects(
      stripe.webhooks.constructEventAsync(payload, signature, WEBHOOK_SECRET, 300, crypto),
      /thin event notification/,
    );
    const notification = await stripe.parseEventNotificationAsync(
      payload,
      signature,
      WEBHOOK_SECRET,
      300,
      crypto,
    );
    const related =
      await (notification as unknown as { fetchRelatedObject(): Promise<Stripe.Checkout.Session> })
        .fetchRelatedObject();
    assert.deepEqual([related.id, related.payment_status], [s.id, "paid"]);
  },
);

emulatorTest(
  "the control API over HTTP: dispute, payout, balance, options, thin event",
  async (emu, stripe) => {
    const control = async (method: string, path: string, body?: unknown) => {
      const res = await fetch(`${emu.url}/_emulator${path}`, {
        method,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      return { status: res.status, body: await res.json() };
    };
    assert.equal((await control("POST", "/options", { funds_delay_seconds: 0 })).body.funds_delay_seconds, 0);
    const { pi } = await paid(emu, stripe, 5000);
    const dispute = await control("POST", "/disputes", { payment: pi, deliver: false });
    assert.deepEqual([dispute.status, dispute.body.result.status, dispute.body.deliveries], [
      200,
      "needs_response",
      [],
    ]);
    const closed = await control("POST", `/disputes/${dispute.body.result.id}/close`, { outcome: "won" });
    assert.deepEqual(closed.body.deliveries.map((d: { type: string }) => d.type), [
      "charge.dispute.funds_reinstated",
      "charge.dispute.closed",
    ]);
    await stripe.transfers.create({ amount: 800, currency: "usd", destination: "acct_x" });
    assert.deepEqual((await control("GET", "/accounts/acct_x/balance")).body.available, [{
      amount: 800,
      currency: "usd",
    }]);
    assert.deepEqual((await control("POST", "/accounts/acct_x/payouts")).body, { paid: { usd: 800 } });
    const thin = await control("POST", `/events/${dispute.body.events[0].id}/thin`);
    assert.deepEqual(thin.body.deliveries.map((d: { type: string; status: number }) => [d.type, d.status]), [
      ["v1.charge.dispute.created", 200],
    ]);
    assert.equal((await control("POST", "/refunds/re_nope/fail")).status, 404);
  },
);

emulatorTest(
  "a client gone mid-request (a function worker killed while it sent) ends that request, not the emulator",
  async (emu, stripe) => {
    const url = new URL(emu.url);
    const conn = await Deno.connect({ hostname: url.hostname, port: Number(url.port) });
    await conn.write(new TextEncoder().encode(
      "POST /v1/refunds HTTP/1.1\r\nhost: emulator\r\nauthorization: Bearer sk_test_emulator\r\n" +
        "content-type: application/x-www-form-urlencoded\r\ncontent-length: 100\r\n\r\npayment_intent=pi_",
    ));
    conn.close(); // the body is cut off: the request is aborted while the emulator reads it
    await new Promise((r) => setTimeout(r, 100));
    const created = await stripe.checkout.sessions.create(session());
    assert.equal(created.object, "checkout.session");
    assert.equal(emu.state.refunds.size, 0, "the cut-off request did nothing");
  },
);
