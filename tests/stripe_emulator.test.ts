// The Stripe emulator, driven through the official SDK: Stripe's idempotency semantics, its error
// objects, the injected faults, and signed webhooks that the SDK itself verifies.
import assert from "node:assert/strict";
import { Stripe } from "../supabase/functions/_shared/stripe.ts";
import {
  type EmulatorOptions,
  startStripeEmulator,
  type StripeEmulator,
} from "../tools/local/stripe_emulator/mod.ts";

const WEBHOOK_SECRET = "whsec_emulator_test";

async function withEmulator(
  fn: (emu: StripeEmulator, stripe: Stripe) => Promise<void>,
  options: Partial<EmulatorOptions> = {},
): Promise<void> {
  const received: string[] = [];
  const hook = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen: () => {} }, async (req) => {
    received.push(await req.text());
    return new Response("ok");
  });
  const emu = await startStripeEmulator({
    webhookSecret: WEBHOOK_SECRET,
    webhookUrl: `http://127.0.0.1:${hook.addr.port}/`,
    autoDeliver: false,
    ...options,
  });
  const url = new URL(emu.url);
  // No SDK retries here: each test observes the emulator's raw answers.
  const stripe = new Stripe("sk_test_emulator", {
    httpClient: Stripe.createFetchHttpClient(),
    host: url.hostname,
    port: Number(url.port),
    protocol: "http",
    maxNetworkRetries: 0,
  });
  try {
    await fn(emu, stripe);
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

/** A response header of an SDK result (the fetch client exposes a `Headers`). */
function header(result: { lastResponse: { headers: unknown } }, name: string): string | null {
  const headers = result.lastResponse.headers;
  return headers instanceof Headers ? headers.get(name) : (headers as Record<string, string>)[name] ?? null;
}

function emulatorTest(
  name: string,
  fn: (emu: StripeEmulator, stripe: Stripe) => Promise<void>,
  options: Partial<EmulatorOptions> = {},
) {
  Deno.test(name, () => withEmulator(fn, options));
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
    emu.addFault({ kind: "latency", ms: 300, path: "/v1/checkout/sessions" });
    const first = stripe.checkout.sessions.create(session(), { idempotencyKey: "k-inflight" });
    await new Promise((r) => setTimeout(r, 50));
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
