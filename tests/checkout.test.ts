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

stackTest("guests are rate-limited per email: at least 10 a minute, then 429 with Retry-After", async () => {
  const stack = await sharedStack();
  const email = `busy-${uid()}@example.com`;
  let accepted = 0;
  let limited: Answer | undefined;
  for (let i = 0; i < 25 && !limited; i++) {
    const answer = await call(stack, "guest-checkout", { ...gaOrder(1), email }, {
      headers: { "cf-connecting-ip": `10.1.${i}.1` },
    });
    if (answer.status === 201) accepted++;
    else limited = answer;
  }
  assert.ok(limited, "the limit triggered");
  assert.equal(limited.status, 429);
  assert.equal(limited.body.type, "/problems/rate-limited");
  assert.ok(Number(limited.headers.get("retry-after")) >= 1);
  assert.ok(accepted >= 10, `accepted ${accepted} before the limit`);
  const replay = await call(stack, "guest-checkout", { ...gaOrder(1), email }, { key: "never-counted" });
  assert.equal(replay.status, 429, "a new checkout is still limited");
});

stackTest(
  "guests are rate-limited per client address: an office behind one address gets at least 20 a minute",
  async () => {
    const stack = await sharedStack();
    const address = `192.0.2.${Math.floor(Math.random() * 200) + 1}`;
    let accepted = 0;
    let limited: Answer | undefined;
    const key = uid();
    let replayed = 0;
    for (let i = 0; i < 80 && !limited; i++) {
      const answer = await call(stack, "guest-checkout", {
        ...gaOrder(1),
        email: `office-${i}-${uid()}@example.com`,
      }, {
        headers: { "cf-connecting-ip": address },
      });
      if (answer.status === 201) accepted++;
      else limited = answer;
      if (i === 0) {
        // replays of a key never count against the limit
        for (let r = 0; r < 5; r++) {
          const again = await call(stack, "guest-checkout", {
            ...gaOrder(1),
            email: "office-replay@example.com",
          }, {
            key,
            headers: { "cf-connecting-ip": address },
          });
          if (r > 0) replayed += again.headers.get("idempotent-replayed") === "true" ? 1 : 0;
        }
      }
    }
    assert.equal(replayed, 4);
    assert.ok(limited, "the limit triggered");
    assert.equal(limited.status, 429);
    assert.ok(accepted >= 20, `accepted ${accepted} before the limit`);
  },
);

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
