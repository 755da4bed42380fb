// Property-based fuzzing (fast-check) of every function's body and headers: for invalid input the
// answer is a 4xx problem, never a 5xx, never a Stripe call, never a row written.
import assert from "node:assert/strict";
import fc from "npm:fast-check@4.11.0";
import type { Stack } from "../tools/local/stack.ts";
import { BUYER, footprint, newOrganiser, paidOrder } from "./_flows.ts";
import { sharedStack, stackTest } from "./_helpers.ts";

const RUNS = Number(Deno.env.get("FUZZ_RUNS") ?? 150);
const EVENT = "33333333-3333-4333-8333-333333333333";
const GA = "44444444-4444-4444-8444-444444444444";

/** A JSON value of any shape. */
const anyJson = fc.jsonValue({ maxDepth: 3 });

/**
 * Replaces one field of a valid body with a wrong value, drops a required one, adds an unknown field, or
 * sends something that is not an object at all.
 */
function broken(
  valid: Record<string, unknown>,
  fields: Record<string, fc.Arbitrary<unknown>>,
  required: string[],
) {
  const names = Object.keys(fields);
  return fc.oneof(
    fc.constantFrom(...names).chain((name) => fields[name].map((bad) => ({ ...valid, [name]: bad }))),
    fc.constantFrom(...required).map((name) => {
      const copy = { ...valid };
      delete copy[name];
      return copy;
    }),
    fc.tuple(
      fc.string({ minLength: 1, maxLength: 12 }).filter((k) => !(k in valid) && !(k in fields)),
      anyJson,
    )
      .map(([k, v]) => ({ ...valid, [k]: v })),
    anyJson.filter((v) => v === null || typeof v !== "object" || Array.isArray(v)),
  );
}

/** Values that are never a valid uuid, positive integer, enum member or email. */
const notUuid = fc.oneof(fc.string({ maxLength: 40 }), fc.integer(), fc.constant(null), fc.constant([]));
const notCount = fc.oneof(
  fc.integer({ max: 0 }),
  fc.double({ noInteger: true }),
  fc.string(),
  fc.constant(null),
);
const items = (tier: string) =>
  fc.oneof(
    fc.constant([]),
    notCount.map((q) => [{ tier_id: tier, quantity: q }]),
    notUuid.map((t) => [{ tier_id: t, quantity: 1 }]),
    fc.constant([{ tier_id: tier, quantity: 1, unit_price_cents: 1 }]),
    anyJson.filter((v) => !Array.isArray(v)),
  );

/** Header values a client may send: printable ASCII, spaces and tabs included. */
const headerValue = fc.string({
  unit: fc.integer({ min: 0x20, max: 0x7e }).map((c) => String.fromCharCode(c)),
  maxLength: 300,
})
  .map((s) => s.trim() === s ? s : s.trim() + "x");

async function checkRefused(stack: Stack, fn: string, body: unknown, headers: Record<string, string>) {
  const before = await footprint(stack);
  const res = await fetch(`${stack.url}/functions/v1/${fn}`, {
    method: "POST",
    headers,
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
  const text = await res.text();
  assert.ok(res.status >= 400 && res.status < 500, `${fn} answered ${res.status}: ${text}`);
  if (res.status !== 401 || !text.includes("Invalid JWT")) {
    assert.match(res.headers.get("content-type") ?? "", /json/, `${fn}: ${text}`);
  }
  assert.deepEqual(
    await footprint(stack),
    before,
    `${fn} wrote or called Stripe for ${JSON.stringify(body)}`,
  );
}

stackTest(
  "fuzz: enhanced-checkout and guest-checkout refuse invalid bodies and headers cleanly",
  async () => {
    const stack = await sharedStack();
    const token = await stack.userToken(BUYER);
    const valid = { event_id: EVENT, items: [{ tier_id: GA, quantity: 1 }] };
    const fields = { event_id: notUuid, items: items(GA), ui_mode: fc.oneof(fc.string(), fc.integer()) };
    await fc.assert(
      fc.asyncProperty(broken(valid, fields, ["event_id", "items"]), headerValue, async (body, key) => {
        await checkRefused(stack, "enhanced-checkout", body, {
          authorization: `Bearer ${token}`,
          "content-type": "application/json",
          "idempotency-key": key || "k",
        });
      }),
      { numRuns: RUNS },
    );
    const guestValid = { ...valid, email: "fuzz@example.com" };
    await fc.assert(
      fc.asyncProperty(
        broken(guestValid, {
          ...fields,
          email: fc.oneof(fc.string().filter((s) => !s.includes("@")), fc.integer()),
        }, ["event_id", "items", "email"]),
        async (body) => {
          await checkRefused(stack, "guest-checkout", body, {
            "content-type": "application/json",
            "idempotency-key": crypto.randomUUID(),
          });
        },
      ),
      { numRuns: RUNS },
    );
  },
);

stackTest("fuzz: a valid body with a bad Idempotency-Key, content type or token is refused", async () => {
  const stack = await sharedStack();
  const token = await stack.userToken(BUYER);
  const body = { event_id: EVENT, items: [{ tier_id: GA, quantity: 1 }] };
  const badKey = fc.oneof(
    fc.constant(""),
    fc.string({ minLength: 256, maxLength: 400 }).map((s) => s.replace(/\s/g, "x")),
    headerValue.filter((s) => /\s/.test(s)),
  );
  await fc.assert(
    fc.asyncProperty(badKey, async (key) => {
      const headers: Record<string, string> = {
        authorization: `Bearer ${token}`,
        "content-type": "application/json",
      };
      if (key) headers["idempotency-key"] = key;
      await checkRefused(stack, "enhanced-checkout", body, headers);
    }),
    { numRuns: RUNS },
  );
  await fc.assert(
    fc.asyncProperty(headerValue.filter((t) => !/json/i.test(t)), async (type) => {
      await checkRefused(stack, "guest-checkout", { ...body, email: "x@example.com" }, {
        "content-type": type || "text/plain",
        "idempotency-key": crypto.randomUUID(),
      });
    }),
    { numRuns: RUNS },
  );
  await fc.assert(
    fc.asyncProperty(headerValue, async (garbage) => {
      await checkRefused(stack, "enhanced-checkout", body, {
        authorization: `Bearer ${garbage}`,
        "content-type": "application/json",
        "idempotency-key": crypto.randomUUID(),
      });
    }),
    { numRuns: RUNS },
  );
});

stackTest("fuzz: refunds and payouts refuse invalid bodies cleanly", async () => {
  const stack = await sharedStack();
  const organiser = await newOrganiser(stack);
  const order = await paidOrder(stack, organiser);
  const headers = () => ({
    authorization: `Bearer ${organiser.token}`,
    "content-type": "application/json",
    "idempotency-key": crypto.randomUUID(),
  });
  await fc.assert(
    fc.asyncProperty(
      broken({ order_id: order.orderId, amount_cents: 100 }, {
        order_id: notUuid,
        amount_cents: notCount,
        reason: fc.string().filter((s) => !["duplicate", "fraudulent", "requested_by_customer"].includes(s)),
      }, ["order_id"]),
      async (body) => await checkRefused(stack, "refunds", body, headers()),
    ),
    { numRuns: RUNS },
  );
  await fc.assert(
    fc.asyncProperty(
      broken({ amount_cents: 100 }, {
        amount_cents: fc.oneof(notCount, fc.integer({ min: 1, max: 99 })),
        currency: fc.oneof(fc.string().filter((s) => !/^[A-Za-z]{3}$/.test(s)), fc.integer()),
      }, ["amount_cents"]),
      async (body) => await checkRefused(stack, "payouts", body, headers()),
    ),
    { numRuns: RUNS },
  );
});

stackTest(
  "fuzz: stripe-webhook refuses anything not signed by Stripe; stripe-reconcile anyone but the service role",
  async () => {
    const stack = await sharedStack();
    const signature = fc.oneof(
      headerValue,
      fc.tuple(
        fc.integer({ min: 0, max: 2 ** 31 }),
        fc.string({ unit: fc.constantFrom(..."0123456789abcdef"), minLength: 64, maxLength: 64 }),
      ).map((
        [t, v],
      ) => `t=${t},v1=${v}`),
    );
    await fc.assert(
      fc.asyncProperty(
        fc.oneof(anyJson.map((v) => JSON.stringify(v)), fc.string({ maxLength: 200 })),
        signature,
        async (body, sig) => {
          await checkRefused(stack, "stripe-webhook", body, {
            "content-type": "application/json",
            "stripe-signature": sig || "x",
          });
        },
      ),
      { numRuns: RUNS },
    );
    const user = await stack.userToken(BUYER);
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(stack.anonKey, user), anyJson, async (token, body) => {
        await checkRefused(stack, "stripe-reconcile", body, {
          authorization: `Bearer ${token}`,
          "content-type": "application/json",
        });
      }),
      { numRuns: Math.ceil(RUNS / 4) },
    );
  },
);
