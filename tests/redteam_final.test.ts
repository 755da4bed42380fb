// Red team of the last two changes: a checkout taking its seats last (migration 20261130000400) and the
// operator-resolve function (migration 20261130000300). Real concurrency only: other connections' open
// transactions and many requests in flight, observed through pg_stat_activity, never sleeps.
import assert from "node:assert/strict";
import postgres from "npm:postgres@3.4.9";
import type { Stack } from "../tools/local/stack.ts";
import { sharedStack, stackTest, waitFor } from "./_helpers.ts";
import { BUYER, call, newOrganiser, uid } from "./_flows.ts";

function connect(stack: Stack, max = 1) {
  return postgres(stack.databaseUrl!, { max, onnotice: () => {} });
}

/** An on-sale event with two tiers; `tiers` in id order (the order checkouts lock them in). */
async function twoTierEvent(stack: Stack) {
  const organiser = await newOrganiser(stack);
  const { data: event, error } = await organiser.client.rpc("create_event", {
    p_title: "Two tiers",
    p_starts_at: new Date(Date.now() + 30 * 86_400_000).toISOString(),
    p_tiers: [{ name: "A", price_cents: 2500, capacity: 500 }, {
      name: "B",
      price_cents: 4000,
      capacity: 500,
    }],
  });
  assert.equal(error, null, JSON.stringify(error));
  return { eventId: event.id as string, tiers: (event.tiers as { id: string }[]).map((t) => t.id).sort() };
}

/** start_checkout as guest-checkout calls it, in `sql`'s transaction. */
function startCheckout(
  sql: postgres.Sql | postgres.TransactionSql,
  eventId: string,
  items: { tier_id: string; quantity: number }[],
  guest: string | null,
  buyer: string | null = null,
) {
  const key = uid();
  const orderId = uid();
  return sql`select public.start_checkout(
    ${guest ? `guest:${guest}` : `user:${buyer}`}, ${key}, 'guest-checkout', ${"fp-" + key}, ${orderId},
    ${"co-" + orderId}, ${eventId}, ${sql.json(items)}, 'hosted', 'http://localhost:3000', ${buyer}::uuid,
    ${guest}, ${"10.9." + Math.floor(Math.random() * 250) + "." + Math.floor(Math.random() * 250)}
  ) as started`;
}

/** Waits until a backend running a query that contains `text` waits for a lock. */
function lockWaiter(stack: Stack, text: string) {
  return waitFor(`a query with '${text}' waiting for a lock`, async () => {
    const rows = await stack.db.query(
      `select 1 from pg_stat_activity where wait_event_type = 'Lock' and query like $1 and pid <> pg_backend_pid()`,
      [`%${text}%`],
    );
    return rows.length > 0;
  }, 20_000);
}

// Finding 1: begin_checkout sums the prices it read without a lock, then inserts the items with the prices
// a later statement reads. A price changed in between (a guest waiting for the event's rate-limit bucket
// behind another guest's checkout is a wide window) makes an order whose total is not what Stripe charges:
// the session's line items come from order_items, the order's total from the earlier read.
stackTest("a price changed during a checkout: the order's total is what its session charges", async () => {
  const stack = await sharedStack();
  const { eventId, tiers: [a, b] } = await twoTierEvent(stack);
  const other = connect(stack);
  const admin = connect(stack);
  try {
    let release!: () => void;
    const released = new Promise<void>((r) => release = r);
    let holding!: () => void;
    const held = new Promise<void>((r) => holding = r);
    // Another guest's checkout of the same event, in flight: it holds the event's bucket to its commit.
    const otherCheckout = other.begin(async (tx) => {
      await startCheckout(tx, eventId, [{ tier_id: b, quantity: 1 }], `other-${uid()}@example.com`);
      holding();
      await released;
    });
    await held;
    const email = `price-${uid()}@example.com`;
    const answer = call(stack, "guest-checkout", {
      event_id: eventId,
      items: [{ tier_id: a, quantity: 2 }],
      email,
    }, { headers: { "cf-connecting-ip": "10.77.0.1" } });
    await lockWaiter(stack, "start_checkout");
    // The organiser's price change (an operator's SQL: no endpoint changes prices) commits meanwhile.
    await admin`update events.ticket_tiers set price_cents = 9900 where id = ${a}`;
    release();
    await otherCheckout;
    const done = await answer;
    const [order] = await stack.db.query<
      { subtotal_cents: number; total_cents: number; items_cents: number }
    >(
      `select o.subtotal_cents, o.total_cents,
              (select sum(i.quantity * i.unit_price_cents)::int from events.order_items i where i.order_id = o.id)
                as items_cents
       from events.orders o where o.guest_email = $1`,
      [email],
    );
    if (order) {
      assert.equal(order.items_cents, order.subtotal_cents, "the subtotal is the sum of the items' prices");
    }
    if (done.status === 201) {
      assert.equal(done.body.amount_total, order.total_cents, "the session charges the order's total");
    }
    assert.ok([201, 409].includes(done.status), done.text);
  } finally {
    await other.end();
    await admin.end();
  }
});

// Finding 2: a checkout's order_items and holds inserts take FOR KEY SHARE on its tiers (their foreign
// keys) in the order the client listed them, before take_seats locks them in id order; expiring (or
// completing) an order locks its tiers FOR UPDATE in id order, which waits for KEY SHARE. Three real
// transactions: checkout D of tier B in flight; Stripe's session expiry of an order of A and B locks A and
// waits for D on B; checkout X listing [B, A] takes KEY SHARE on B, then waits for the expiry on A. D commits:
// the expiry now waits for X on B, X for the expiry on A, a deadlock (before, a checkout locked its tiers in
// id order first, so X waited on A holding nothing).
stackTest("a checkout beside the expiry of an order of the same tiers: no deadlock", async () => {
  const stack = await sharedStack();
  const { eventId, tiers: [a, b] } = await twoTierEvent(stack);
  const admin = connect(stack);
  const [pending] = await startCheckout(
    admin,
    eventId,
    [
      { tier_id: a, quantity: 1 },
      { tier_id: b, quantity: 1 },
    ],
    null,
    BUYER,
  );
  const orderId = (pending.started as { order: { order_id: string } }).order.order_id;
  // a later checkout of A alone: A's newest row version now lies after B's, as a seq scan meets them (the
  // items insert joins the tiers by a hash join over a seq scan: its rows, so its KEY SHARE locks, come in
  // the table's physical order, whatever order the client listed the tiers in)
  await startCheckout(admin, eventId, [{ tier_id: a, quantity: 1 }], null, BUYER);
  const d = connect(stack);
  const expiry = connect(stack);
  const x = connect(stack);
  try {
    let release!: () => void;
    const released = new Promise<void>((r) => release = r);
    let holding!: () => void;
    const held = new Promise<void>((r) => holding = r);
    const checkoutD = d.begin(async (tx) => {
      await startCheckout(tx, eventId, [{ tier_id: b, quantity: 1 }], null, BUYER);
      holding();
      await released;
    });
    await held;
    const expired = expiry`select private.expire_order(${orderId}) as expired`.then(
      ([row]) => `expired ${row.expired}`,
      (e) => `${e.code} ${e.message}`,
    );
    await lockWaiter(stack, "expire_order");
    const checkoutX = startCheckout(
      x,
      eventId,
      [{ tier_id: b, quantity: 1 }, { tier_id: a, quantity: 1 }],
      `x-${uid()}@example.com`,
    )
      .then(() => "checked out", (e) => `${e.code} ${e.message}`);
    await lockWaiter(stack, "start_checkout");
    release();
    await checkoutD;
    assert.deepEqual([await expired, await checkoutX], ["expired true", "checked out"]);
  } finally {
    await d.end();
    await expiry.end();
    await x.end();
    await admin.end();
  }
});

// The seat check that counts is the conditional update at the end (private.take_seats); begin_checkout's early
// check reads without a lock. Two buyers pass the early check while a third checkout of the last seats is
// still uncommitted, then wait (a guest for the event's bucket, a signed-in buyer for the tier's row): once it
// commits, exactly one of them gets the one seat left, the other 409 sold-out, whatever the order.
stackTest(
  "the seat check at the end refuses a buyer who passed the early one: never beyond capacity",
  async () => {
    const stack = await sharedStack();
    const organiser = await newOrganiser(stack);
    const { data: event, error } = await organiser.client.rpc("create_event", {
      p_title: "Two seats",
      p_starts_at: new Date(Date.now() + 30 * 86_400_000).toISOString(),
      p_tiers: [{ name: "Few", price_cents: 2500, capacity: 2 }],
    });
    assert.equal(error, null, JSON.stringify(error));
    const eventId = event.id as string;
    const tier = (event.tiers as { id: string }[])[0].id;
    const one = [{ tier_id: tier, quantity: 1 }];
    const first = connect(stack);
    const guest = connect(stack);
    const buyer = connect(stack);
    try {
      let release!: () => void;
      const released = new Promise<void>((r) => release = r);
      let holding!: () => void;
      const held = new Promise<void>((r) => holding = r);
      const firstCheckout = first.begin(async (tx) => {
        await startCheckout(tx, eventId, one, `first-${uid()}@example.com`);
        holding();
        await released;
      });
      await held;
      const outcome = (p: Promise<unknown>) => p.then(() => "held", (e: Error) => e.message);
      const later = [
        outcome(startCheckout(guest, eventId, one, `second-${uid()}@example.com`)),
        outcome(startCheckout(buyer, eventId, one, null, BUYER)),
      ];
      await waitFor("both later checkouts waiting for a lock", async () =>
        (await stack.db.query(
          `select 1 from pg_stat_activity where wait_event_type = 'Lock' and query like '%start_checkout%'
         and pid <> pg_backend_pid()`,
        )).length >= 2, 20_000);
      release();
      await firstCheckout;
      const outcomes = await Promise.all(later);
      assert.equal(outcomes.filter((o) => o === "held").length, 1, outcomes.join("; "));
      assert.match(outcomes.find((o) => o !== "held")!, /Only 0 tickets of Few are left/);
      const [t] = await stack.db.query<{ taken: number }>(
        "select (sold + held)::int as taken from events.ticket_tiers where id = $1",
        [tier],
      );
      assert.equal(t.taken, 2);
    } finally {
      await first.end();
      await guest.end();
      await buyer.end();
    }
  },
);
