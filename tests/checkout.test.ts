// enhanced-checkout and guest-checkout through the local stack (plain fetch and supabase-js), with the
// Stripe emulator: one Checkout Session per order under concurrent retries and lost answers, capacity
// under concurrent buyers, prices from the database only, bad input refused without writes, guests.
import assert from "node:assert/strict";
import { createClient } from "npm:@supabase/supabase-js@2.109.0";
import { testHooks } from "../supabase/functions/_shared/idempotency.ts";
import type { Stack } from "../tools/local/stack.ts";
import { type Answer, BUYER, call, footprint, newOrganiser, ORGANISER, STRANGER, uid } from "./_flows.ts";
import { sharedStack, stackTest } from "./_helpers.ts";

const EVENT = "33333333-3333-4333-8333-333333333333";
const GA = "44444444-4444-4444-8444-444444444444";
const VIP = "55555555-5555-4555-8555-555555555555";

/** A client that retries with its key while the answer is 409 in progress or 503, as advised. */
async function untilDone(attempt: () => Promise<Answer>): Promise<{ answer: Answer; tries: number }> {
  for (let tries = 1;; tries++) {
    const answer = await attempt();
    const transient = answer.status === 503 ||
      (answer.status === 409 && /in-progress|in-use/.test(String(answer.body.type)));
    if (!transient || tries >= 50) return { answer, tries };
    await new Promise((r) => setTimeout(r, 50));
  }
}

function sessionsOf(stack: Stack, orderId: string) {
  return [...stack.stripe!.state.sessions.values()].filter((s) =>
    (s.metadata as Record<string, string>).order_id === orderId
  );
}

async function count(stack: Stack, sql: string, params: unknown[] = []): Promise<number> {
  const [row] = await stack.db.query<{ n: number }>(`select count(*)::int as n from (${sql}) as q`, params);
  return row.n;
}

const gaOrder = (quantity = 2) => ({ event_id: EVENT, items: [{ tier_id: GA, quantity }] });

stackTest("20 keys x 8 concurrent identical requests: 20 Checkout Sessions, one per key", async () => {
  const stack = await sharedStack();
  const token = await stack.userToken(BUYER);
  const keys = Array.from({ length: 20 }, uid);
  const runs = keys.flatMap((key) =>
    Array.from(
      { length: 8 },
      () => untilDone(() => call(stack, "enhanced-checkout", gaOrder(1), { key, token })),
    )
  );
  const results = await Promise.all(runs);
  assert.ok(
    results.every((r) => r.answer.status === 201),
    JSON.stringify(results.find((r) => r.answer.status !== 201)),
  );
  for (const [i, key] of keys.entries()) {
    const answers = results.slice(i * 8, i * 8 + 8).map((r) => r.answer.body);
    assert.equal(new Set(answers.map((a) => a.checkout_session_id)).size, 1, `key ${key}: one session id`);
    assert.equal(new Set(answers.map((a) => a.order_id)).size, 1, `key ${key}: one order`);
    assert.equal(
      sessionsOf(stack, answers[0].order_id as string).length,
      1,
      `key ${key}: one session at Stripe`,
    );
  }
  const orders = await count(stack, "select from events.orders where idempotency_key = any($1)", [keys]);
  assert.equal(orders, 20);
  const replays = results.filter((r) => r.answer.headers.get("idempotent-replayed") === "true").length;
  assert.ok(replays > 0, "later answers are replays");
});

stackTest(
  "connection resets after Stripe committed: the client's retries end with one session per key",
  async () => {
    const stack = await sharedStack();
    const token = await stack.userToken(BUYER);
    for (let k = 0; k < 5; k++) {
      const key = uid();
      // each Stripe attempt of this checkout loses its answer, more times than the SDK retries
      stack.stripe!.addFault({ kind: "reset_after", path: "/v1/checkout/sessions", times: 6 });
      const { answer, tries } = await untilDone(() =>
        call(stack, "enhanced-checkout", gaOrder(1), { key, token })
      );
      stack.stripe!.clearFaults();
      assert.equal(answer.status, 201, answer.text);
      assert.ok(tries >= 2, "the first answer was a 503 and the client retried");
      const sessions = sessionsOf(stack, answer.body.order_id as string);
      assert.deepEqual(sessions.map((s) => s.id), [answer.body.checkout_session_id]);
      const again = await call(stack, "enhanced-checkout", gaOrder(1), { key, token });
      assert.equal(again.body.checkout_session_id, answer.body.checkout_session_id);
    }
  },
);

stackTest("capacity: 60 concurrent buyers for 50 seats, 50 held, the rest sold out", async () => {
  const stack = await sharedStack();
  const organiser = await newOrganiser(stack, { capacity: 50 });
  const [event, tier] = [{ id: organiser.eventId }, organiser.tierId];
  const buyers = Array.from({ length: 60 }, uid);
  await stack.db.query("insert into auth.users (id) select unnest($1::uuid[])", [buyers]);
  const answers = await Promise.all(
    buyers.map(async (buyer) =>
      call(stack, "enhanced-checkout", { event_id: event.id, items: [{ tier_id: tier, quantity: 1 }] }, {
        token: await stack.userToken(buyer),
      })
    ),
  );
  const created = answers.filter((a) => a.status === 201).length;
  const soldOut = answers.filter((a) => a.status === 409 && a.body.type === "/problems/sold-out");
  assert.equal(created, 50);
  assert.equal(soldOut.length, 10);
  assert.equal(soldOut[0].body.available, 0);
  const [t] = await stack.db.query<{ held: number; sold: number; active: number }>(
    `select t.held, t.sold, (select coalesce(sum(h.quantity), 0)::int from events.holds h
       where h.tier_id = t.id and h.status = 'active') as active from events.ticket_tiers t where t.id = $1`,
    [tier],
  );
  assert.deepEqual(t, { held: 50, sold: 0, active: 50 });
});

stackTest("prices come from the database: the session charges tier prices plus the fee", async () => {
  const stack = await sharedStack();
  const answer = await call(stack, "guest-checkout", {
    ...gaOrder(2),
    items: [{ tier_id: GA, quantity: 2 }, { tier_id: VIP, quantity: 1 }],
    email: `prices-${uid()}@example.com`,
  });
  assert.equal(answer.status, 201, answer.text);
  const subtotal = 2 * 2500 + 10_000;
  const fee = Math.round(subtotal * 0.037) + 179; // 555 + 179
  assert.equal(answer.body.amount_total, subtotal + fee);
  const [session] = sessionsOf(stack, answer.body.order_id as string);
  const lines = (stack.stripe!.state.lineItems.get(session.id) as unknown as {
    quantity: number;
    price: { unit_amount: number };
    description: string;
  }[]).map((l) => [l.description, l.quantity, l.price.unit_amount]);
  assert.deepEqual(lines, [["Demo Night - GA", 2, 2500], ["Demo Night - VIP", 1, 10_000], [
    "Service fee",
    1,
    fee,
  ]]);
  assert.equal(session.amount_total, subtotal + fee);
  assert.equal(session.expires_at, Math.floor(Date.parse(answer.body.expires_at as string) / 1000));

  const before = await footprint(stack);
  const tampered = await call(stack, "guest-checkout", {
    event_id: EVENT,
    items: [{ tier_id: GA, quantity: 2, unit_price_cents: 1 }],
    email: "cheap@example.com",
    amount_total: 100,
  });
  assert.equal(tampered.status, 400);
  assert.deepEqual(
    (tampered.body.errors as { field: string }[]).map((e) => e.field).sort(),
    ["amount_total", "items[0].unit_price_cents"],
  );
  assert.deepEqual(await footprint(stack), before);
});

stackTest(
  "bad input is a 4xx problem+json that names the problem, never reaches Stripe, writes nothing",
  async () => {
    const stack = await sharedStack();
    const token = await stack.userToken(BUYER);
    const cases: [string, unknown, Record<string, unknown>, number, string][] = [
      ["event_id not a uuid", { event_id: "x", items: [{ tier_id: GA, quantity: 1 }] }, {}, 400, "event_id"],
      [
        "quantity a string",
        { event_id: EVENT, items: [{ tier_id: GA, quantity: "2" }] },
        {},
        400,
        "items[0].quantity",
      ],
      [
        "negative quantity",
        { event_id: EVENT, items: [{ tier_id: GA, quantity: -1 }] },
        {},
        400,
        "items[0].quantity",
      ],
      [
        "fractional quantity",
        { event_id: EVENT, items: [{ tier_id: GA, quantity: 1.5 }] },
        {},
        400,
        "items[0].quantity",
      ],
      [
        "zero quantity",
        { event_id: EVENT, items: [{ tier_id: GA, quantity: 0 }] },
        {},
        400,
        "items[0].quantity",
      ],
      ["empty items", { event_id: EVENT, items: [] }, {}, 400, "items"],
      ["items not an array", { event_id: EVENT, items: {} }, {}, 400, "items"],
      ["body an array", [1, 2], {}, 400, "(body)"],
      ["unknown ui_mode", { ...gaOrder(), ui_mode: "popup" }, {}, 400, "ui_mode"],
      ["bad email", { ...gaOrder(), email: "not-an-email" }, { guest: true }, 400, "email"],
      ["missing email", gaOrder(), { guest: true }, 400, "email"],
      [
        "too many of one tier",
        { event_id: EVENT, items: [{ tier_id: VIP, quantity: 5 }] },
        {},
        400,
        "items[0].quantity",
      ],
      [
        "same tier twice",
        { event_id: EVENT, items: [{ tier_id: GA, quantity: 1 }, { tier_id: GA, quantity: 1 }] },
        {},
        400,
        "items",
      ],
      [
        "unknown event",
        { event_id: uid(), items: [{ tier_id: GA, quantity: 1 }] },
        {},
        404,
        "event-not-found",
      ],
      [
        "unknown tier",
        { event_id: EVENT, items: [{ tier_id: uid(), quantity: 1 }] },
        {},
        404,
        "tier-not-found",
      ],
      ["huge body", { ...gaOrder(), pad: "x".repeat(20_000) }, {}, 413, "payload-too-large"],
      ["malformed JSON", "{not json", {}, 400, "malformed-json"],
      ["missing key", gaOrder(), { key: null }, 400, "idempotency-key-missing"],
      ["oversized key", gaOrder(), { key: "k".repeat(256) }, 400, "idempotency-key-invalid"],
    ];
    for (const [name, body, opts, status, names] of cases) {
      const before = await footprint(stack);
      const guest = opts.guest === true;
      const answer = await call(stack, guest ? "guest-checkout" : "enhanced-checkout", body, {
        token: guest ? stack.anonKey : token,
        ...(opts.key !== undefined ? { key: opts.key as string | null } : {}),
      });
      assert.equal(answer.status, status, `${name}: ${answer.text}`);
      assert.equal(answer.headers.get("content-type"), "application/problem+json", name);
      const fields = ((answer.body.errors ?? []) as { field: string }[]).map((e) => e.field);
      assert.ok(
        fields.includes(names) || String(answer.body.type).endsWith(`/${names}`),
        `${name}: the problem names ${names}: ${answer.text}`,
      );
      assert.deepEqual(await footprint(stack), before, `${name}: nothing written, no Stripe call`);
    }
  },
);

stackTest("a tier of another event is refused: 404 tier-not-found, nothing held, no session", async () => {
  const stack = await sharedStack();
  const other = await newOrganiser(stack);
  const before = await footprint(stack);
  for (
    const items of [[{ tier_id: other.tierId, quantity: 1 }], [
      { tier_id: GA, quantity: 1 },
      { tier_id: other.tierId, quantity: 1 },
    ]]
  ) {
    const answer = await call(stack, "enhanced-checkout", { event_id: EVENT, items }, {
      token: await stack.userToken(BUYER),
    });
    assert.deepEqual([answer.status, answer.body.type], [404, "/problems/tier-not-found"], answer.text);
  }
  assert.deepEqual(await footprint(stack), before, "no order, no hold, no Stripe call");
  const [tier] = await stack.db.query<{ held: number; sold: number }>(
    "select held, sold from events.ticket_tiers where id = $1",
    [other.tierId],
  );
  assert.deepEqual({ ...tier }, { held: 0, sold: 0 });
});

stackTest("events not on sale or already started are refused with their own problem types", async () => {
  const stack = await sharedStack();
  const token = await stack.userToken(BUYER);
  const [offSale, started] = [uid(), uid()];
  await stack.db.query(
    `insert into events.events (id, organiser_id, title, starts_at, on_sale) values
       ($1, $3, 'Off sale', now() + interval '1 day', false), ($2, $3, 'Started', now() - interval '1 hour', true)`,
    [offSale, started, ORGANISER],
  );
  const tiers = await stack.db.query<{ id: string; event_id: string }>(
    `insert into events.ticket_tiers (event_id, name, price_cents, capacity) values ($1, 'GA', 1000, 10), ($2, 'GA', 1000, 10)
     returning id, event_id`,
    [offSale, started],
  );
  const tierOf = (e: string) => tiers.find((t) => t.event_id === e)!.id;
  const a = await call(stack, "enhanced-checkout", {
    event_id: offSale,
    items: [{ tier_id: tierOf(offSale), quantity: 1 }],
  }, { token });
  assert.deepEqual([a.status, a.body.type], [409, "/problems/event-not-on-sale"]);
  const b = await call(stack, "enhanced-checkout", {
    event_id: started,
    items: [{ tier_id: tierOf(started), quantity: 1 }],
  }, { token });
  assert.deepEqual([b.status, b.body.type], [410, "/problems/event-started"]);
});

stackTest(
  "enhanced-checkout needs a signed-in user; supabase-js functions.invoke works with one",
  async () => {
    const stack = await sharedStack();
    const anon = await call(stack, "enhanced-checkout", gaOrder(), { token: stack.anonKey });
    assert.equal(anon.status, 401);
    assert.equal(anon.body.type, "/problems/unauthorized");
    const none = await call(stack, "enhanced-checkout", gaOrder(), { token: null });
    assert.equal(none.status, 401, "the gateway's verify_jwt");

    const supabase = createClient(stack.url, stack.anonKey, {
      auth: { persistSession: false },
      global: { headers: { Authorization: `Bearer ${await stack.userToken(BUYER)}` } },
    });
    const key = uid();
    const { data, error } = await supabase.functions.invoke("enhanced-checkout", {
      body: { ...gaOrder(1), ui_mode: "embedded" },
      headers: { "Idempotency-Key": key },
    });
    assert.equal(error, null);
    assert.match(data.checkout_session_id, /^cs_test_/);
    assert.match(data.client_secret, /_secret_/);
    assert.equal(data.url, undefined);
    // the body's "embedded" is sent as the API's embedded_page (the emulator refuses "embedded")
    assert.equal(stack.stripe!.state.sessions.get(data.checkout_session_id)?.ui_mode, "embedded_page");
    const again = await supabase.functions.invoke("enhanced-checkout", {
      body: { ui_mode: "embedded", ...gaOrder(1) },
      headers: { "Idempotency-Key": key },
    });
    assert.deepEqual(again.data, data);
  },
);

stackTest(
  "guests: the same email and key replay; another email with the same key is another order",
  async () => {
    const stack = await sharedStack();
    const key = uid();
    const email = `guest-${uid()}@example.com`;
    const first = await call(stack, "guest-checkout", { ...gaOrder(1), email });
    assert.equal(first.status, 201);
    const keyed = await call(stack, "guest-checkout", { ...gaOrder(1), email }, { key });
    const replay = await call(
      stack,
      "guest-checkout",
      { ...gaOrder(1), email: `  ${email.toUpperCase()} ` },
      { key },
    );
    assert.equal(replay.headers.get("idempotent-replayed"), "true", "the normalised email is the same guest");
    assert.equal(replay.text, keyed.text);
    const other = await call(stack, "guest-checkout", { ...gaOrder(1), email: `other-${email}` }, { key });
    assert.equal(other.status, 201);
    assert.equal(other.headers.get("idempotent-replayed"), null);
    assert.notEqual(other.body.order_id, keyed.body.order_id);
    const [session] = sessionsOf(stack, keyed.body.order_id as string);
    assert.equal(session.customer_email, email);
  },
);

/** Waits, 15 s at most, until the database's minute has 15 s left: a run of checkouts then fits in one window. */
async function freshWindow(stack: Stack): Promise<void> {
  const [{ left }] = await stack.db.query<{ left: number }>(
    "select 60 - extract(second from now())::float8 as left",
  );
  if (left < 15) await new Promise((r) => setTimeout(r, (left + 0.2) * 1000));
}

/**
 * Guest checkouts of a new event with one varying part (`vary(i)`), until the first 429: how many were
 * accepted, the 429, and whether each of 5 replays of the first key (made right after it) was answered from
 * the store. `limit` is what the limit should allow.
 */
async function untilLimited(
  stack: Stack,
  limit: number,
  vary: (i: number) => { email: string; headers: Record<string, string> },
) {
  const organiser = await newOrganiser(stack, { capacity: 1000 });
  const order = { event_id: organiser.eventId, items: [{ tier_id: organiser.tierId, quantity: 1 }] };
  await freshWindow(stack);
  const firstKey = uid();
  let accepted = 0;
  let limited: Answer | undefined;
  const replays: string[] = [];
  const first = vary(0);
  for (let i = 0; i <= limit + 1 && !limited; i++) {
    const { email, headers } = i === 0 ? first : vary(i);
    const answer = await call(stack, "guest-checkout", { ...order, email }, {
      key: i === 0 ? firstKey : uid(),
      headers,
    });
    if (answer.status === 201) accepted++;
    else limited = answer;
    if (i === 0) {
      for (let r = 0; r < 5; r++) {
        const again = await call(stack, "guest-checkout", { ...order, email }, { key: firstKey, headers });
        replays.push(`${again.status}:${again.headers.get("idempotent-replayed")}`);
      }
    }
  }
  // once limited, the first key still replays its answer, and a new key is still refused
  const { email, headers } = first;
  const replayAfter = await call(stack, "guest-checkout", { ...order, email }, { key: firstKey, headers });
  const newAfter = await call(stack, "guest-checkout", { ...order, email }, { key: uid(), headers });
  return { accepted, limited, replays, replayAfter, newAfter };
}

async function setting(stack: Stack, name: string): Promise<number> {
  const [row] = await stack.db.query<{ n: number }>(`select ${name} as n from private.settings`);
  return row.n;
}

stackTest(
  "guests are rate-limited per email: exactly the limit a minute, then 429; replays never count",
  async () => {
    const stack = await sharedStack();
    const limit = await setting(stack, "guest_checkouts_per_email_per_minute");
    assert.equal(limit, 10, "the default");
    const email = `busy-${uid()}@example.com`;
    const run = await untilLimited(
      stack,
      limit,
      (i) => ({ email, headers: { "cf-connecting-ip": `10.1.${i}.1` } }),
    );
    assert.equal(run.accepted, limit, "accepted before the limit");
    assert.deepEqual(run.replays, Array(5).fill("201:true"), "replays answered from the store");
    assert.equal(run.limited?.status, 429);
    assert.equal(run.limited.body.type, "/problems/rate-limited");
    assert.ok(Number(run.limited.headers.get("retry-after")) >= 1);
    assert.deepEqual([run.replayAfter.status, run.replayAfter.headers.get("idempotent-replayed")], [
      201,
      "true",
    ]);
    assert.equal(run.newAfter.status, 429, "a new checkout is still limited");
  },
);

stackTest(
  "guests are rate-limited per client address: an office behind one address gets exactly 30 a minute",
  async () => {
    const stack = await sharedStack();
    const limit = await setting(stack, "guest_checkouts_per_ip_per_minute");
    assert.equal(limit, 30, "the default");
    const address = `192.0.2.${Math.floor(Math.random() * 200) + 1}`;
    const run = await untilLimited(stack, limit, (i) => ({
      email: `office-${i}-${uid()}@example.com`,
      headers: { "cf-connecting-ip": address },
    }));
    assert.equal(run.accepted, limit, "accepted before the limit");
    assert.deepEqual(run.replays, Array(5).fill("201:true"), "replays answered from the store");
    assert.equal(run.limited?.status, 429);
    assert.equal(run.limited.body.type, "/problems/rate-limited");
    assert.equal(run.replayAfter.status, 201);
    assert.equal(run.newAfter.status, 429);
  },
);

stackTest(
  "guests with a client-address header that is not an IP address share one bucket (ip:invalid), limited like one address",
  async () => {
    const stack = await sharedStack();
    const organiser = await newOrganiser(stack);
    await stack.db.query("update private.settings set guest_checkouts_per_ip_per_minute = 3");
    try {
      const statuses: string[] = [];
      for (const junk of ["not-an-ip-1", "cafe", "999.1.1.1", "1.2.3", "a"]) {
        const answer = await call(stack, "guest-checkout", {
          event_id: organiser.eventId,
          items: [{ tier_id: organiser.tierId, quantity: 1 }],
          email: `junk-${uid()}@example.com`,
        }, { headers: { "cf-connecting-ip": junk } });
        statuses.push(`${junk}:${answer.status}`);
      }
      assert.deepEqual(statuses, ["not-an-ip-1:201", "cafe:201", "999.1.1.1:201", "1.2.3:429", "a:429"]);
      assert.equal(await count(stack, "select from private.rate_limits where bucket = 'ip:invalid'"), 1);
    } finally {
      await stack.db.query("update private.settings set guest_checkouts_per_ip_per_minute = 30");
    }
  },
);

stackTest(
  "guests without any client address are limited per event (guest_checkouts_per_event_per_minute); signed-in buyers are not",
  async () => {
    const stack = await sharedStack();
    const [organiser, other] = [await newOrganiser(stack), await newOrganiser(stack)];
    const guest = (o: typeof organiser) =>
      call(stack, "guest-checkout", {
        event_id: o.eventId,
        items: [{ tier_id: o.tierId, quantity: 1 }],
        email: `rotating-${uid()}@example.com`, // a new email every time: the per-email limit never bites
      });
    const [{ limit }] = await stack.db.query<{ limit: number }>(
      "select guest_checkouts_per_event_per_minute as limit from private.settings",
    );
    assert.equal(limit, 60, "the default");
    await stack.db.query("update private.settings set guest_checkouts_per_event_per_minute = 3");
    try {
      const answers = [];
      for (let i = 0; i < 4; i++) answers.push(await guest(organiser));
      assert.deepEqual(answers.map((a) => a.status), [201, 201, 201, 429]);
      const limited = answers[3];
      assert.equal(limited.body.type, "/problems/rate-limited");
      assert.ok(Number(limited.headers.get("retry-after")) >= 1);
      const signedIn = await call(stack, "enhanced-checkout", {
        event_id: organiser.eventId,
        items: [{ tier_id: organiser.tierId, quantity: 1 }],
      }, { token: await stack.userToken(BUYER) });
      assert.equal(signedIn.status, 201, "signed-in buyers do not count");
      assert.equal((await guest(other)).status, 201, "another event has its own limit");
    } finally {
      await stack.db.query("update private.settings set guest_checkouts_per_event_per_minute = 60");
    }
  },
);

stackTest("the request id a function answers and logs is its own, never one the client sent", async () => {
  const stack = await sharedStack();
  const chosen = { "sb-request-id": "someone-elses-request-id", "x-request-id": "someone-elses-request-id" };
  const refused = await call(stack, "enhanced-checkout", gaOrder(1), { token: null, headers: chosen });
  const done = await call(stack, "enhanced-checkout", gaOrder(1), {
    token: await stack.userToken(BUYER),
    headers: chosen,
  });
  assert.deepEqual([refused.status, done.status], [401, 201]);
  for (const answer of [refused, done]) {
    assert.match(answer.headers.get("x-request-id") ?? "", /^[0-9a-f-]{36}$/);
  }
  assert.equal(refused.body.request_id, refused.headers.get("x-request-id"));
  assert.notEqual(refused.headers.get("x-request-id"), done.headers.get("x-request-id"));
});

stackTest(
  "get_order: the buyer and the event's organiser see the order, nobody else learns it exists",
  async () => {
    const stack = await sharedStack();
    const answer = await call(stack, "enhanced-checkout", gaOrder(2), {
      token: await stack.userToken(BUYER),
    });
    const orderId = answer.body.order_id as string;
    const as = async (user: string) => {
      const client = createClient(stack.url, stack.anonKey, {
        auth: { persistSession: false },
        global: { headers: { Authorization: `Bearer ${await stack.userToken(user)}` } },
      });
      return await client.rpc("get_order", { p_order_id: orderId });
    };
    const buyer = await as(BUYER);
    assert.equal(buyer.error, null);
    assert.deepEqual(
      [buyer.data.status, buyer.data.total_cents, buyer.data.refunded_cents, buyer.data.ticket_count],
      ["pending", 5364, 0, 0],
    );
    assert.equal((await as(ORGANISER)).data.order_id, orderId);
    const stranger = await as(STRANGER);
    assert.equal(stranger.status, 404);
    const anon = await createClient(stack.url, stack.anonKey, { auth: { persistSession: false } })
      .rpc("get_order", { p_order_id: orderId });
    assert.equal(anon.status, 401, "anon may not execute get_order");
  },
);

stackTest("create_event is idempotent on the organiser's key and returns the same event", async () => {
  const stack = await sharedStack();
  const organiser = createClient(stack.url, stack.anonKey, {
    auth: { persistSession: false },
    global: { headers: { Authorization: `Bearer ${await stack.userToken(ORGANISER)}` } },
  });
  const args = {
    p_title: "Idempotent gig",
    p_starts_at: new Date(Date.now() + 7 * 86_400_000).toISOString(),
    p_tiers: [{ name: "GA", price_cents: 2000, capacity: 100 }],
    p_idempotency_key: uid(),
  };
  const results = await Promise.all(Array.from({ length: 5 }, () => organiser.rpc("create_event", args)));
  assert.ok(results.every((r) => r.error === null), JSON.stringify(results.find((r) => r.error)?.error));
  assert.equal(new Set(results.map((r) => r.data.id)).size, 1);
  assert.equal(results.filter((r) => r.data.replayed === false).length, 1);
  const reused = await organiser.rpc("create_event", { ...args, p_title: "Another gig" });
  assert.equal(reused.status, 422);
  const anon = await createClient(stack.url, stack.anonKey, { auth: { persistSession: false } }).rpc(
    "create_event",
    args,
  );
  assert.equal(anon.status, 401);
});

stackTest("a first checkout takes 2 database round trips and its replay 1", async () => {
  const stack = await sharedStack();
  const token = await stack.userToken(BUYER);
  const total = () => [...stack.rpcCalls.values()].reduce((a, b) => a + b, 0);
  const key = uid();
  const before = total();
  const first = await call(stack, "enhanced-checkout", gaOrder(1), { key, token });
  assert.equal(first.status, 201);
  const afterFirst = total();
  assert.deepEqual(
    [
      afterFirst - before,
      stack.rpcCalls.get("start_checkout") !== undefined,
      stack.rpcCalls.get("finish_checkout") !== undefined,
    ],
    [2, true, true],
  );
  const replay = await call(stack, "enhanced-checkout", gaOrder(1), { key, token });
  assert.equal(replay.headers.get("idempotent-replayed"), "true");
  assert.equal(total() - afterFirst, 1);
});

stackTest(
  "a checkout whose Stripe operation was taken over meanwhile answers 409, and its retry gets the one session",
  async () => {
    const stack = await sharedStack();
    const token = await stack.userToken(BUYER);
    const key = uid();
    // while this request waits on Stripe, another holder takes the operation over (its lease ran out)
    testHooks.afterStripe = async (op) => {
      await stack.db.query(
        "update public.stripe_idempotency_keys set fencing_token = fencing_token + 1 where operation_id = $1",
        [op.operationId],
      );
    };
    let first: Answer;
    try {
      first = await call(stack, "enhanced-checkout", gaOrder(1), { key, token });
    } finally {
      delete testHooks.afterStripe;
    }
    assert.deepEqual([first.status, first.body.type], [409, "/problems/operation-in-progress"], first.text);
    // time passes: both leases run out, and the client retries with its key
    await stack.db.query("update public.idempotency_keys set locked_until = now() where key = $1", [key]);
    const [order] = await stack.db.query<{ id: string }>(
      "select id from events.orders where idempotency_key = $1",
      [key],
    );
    await stack.db.query(
      "update public.stripe_idempotency_keys set locked_until = now() where operation_id = $1",
      [order.id],
    );
    const retry = await call(stack, "enhanced-checkout", gaOrder(1), { key, token });
    assert.equal(retry.status, 201, retry.text);
    assert.equal(sessionsOf(stack, order.id).length, 1);
    assert.deepEqual(sessionsOf(stack, order.id).map((s) => s.id), [retry.body.checkout_session_id]);
  },
);
