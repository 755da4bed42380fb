// The migrations of this phase upgrade a database that holds real rows made by the schema as it stood
// before them (the 20261127* migrations): an organiser's event, orders in every state, refunds that
// succeeded, are pending, failed or were lost in flight, a wallet, payouts, Stripe operations in every
// state, inbound idempotency keys and webhook events, all made by the old SQL functions. After the upgrade
// (the Supabase CLI, as a real project runs it; twice, the second a no-op) no row is lost, every surviving
// value is unchanged, the money is the same to the cent, and the new functions work on the old rows.
import assert from "node:assert/strict";
import { dirname, join } from "node:path";
import {
  connectPostgres,
  type Database,
  prepareDatabase,
  PROJECT_DIR,
  type Queryable,
} from "../tools/local/db.ts";
import { createDatabase, withTimeout } from "./_helpers.ts";
import { assertSecurityMatrix } from "./_security.ts";

const SUPABASE_DIR = join(PROJECT_DIR, "supabase");
const MIGRATIONS_DIR = join(SUPABASE_DIR, "migrations");
/** The schema as it stood at the start of this phase; every later migration was written since. */
const PHASE_START = "20261127";
const migrationFiles = [...Deno.readDirSync(MIGRATIONS_DIR)].map((e) => e.name)
  .filter((n) => /^\d+_.+\.sql$/.test(n)).sort();
const oldFiles = migrationFiles.filter((n) => n.startsWith(PHASE_START));
const newFiles = migrationFiles.filter((n) => !n.startsWith(PHASE_START));

const DEMO_ORGANISER = "11111111-1111-4111-8111-111111111111";
const BUYER = "22222222-2222-4222-8222-222222222222";
const DEMO_EVENT = "33333333-3333-4333-8333-333333333333";
const DEMO_VIP = "55555555-5555-4555-8555-555555555555";
/** The schemas whose tables the upgrade must keep. */
const SCHEMAS = ["public", "private", "events", "wallet", "auth"];

const uid = (): string => crypto.randomUUID();
const hex = (): string => uid().replaceAll("-", "");
const nowSeconds = (): number => Math.floor(Date.now() / 1000);
/** The rule: the organiser keeps the sale less floor(refunded x subtotal / total). */
const expectedNet = (o: { subtotal: number; total: number }, refunded: number): number =>
  o.subtotal - Math.floor(refunded * o.subtotal / o.total);

async function sha256(text: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

// ---------------------------------------------------------------------------------------------------
// Calling the SQL functions
// ---------------------------------------------------------------------------------------------------

/** A jsonb argument. */
class Json {
  constructor(readonly value: unknown) {}
}
const json = (value: unknown): Json => new Json(value);

/** `select public.<fn>(name => value, ...)`: the function's jsonb (or other) result. */
async function rpc<T = Record<string, unknown>>(
  db: Queryable,
  fn: string,
  args: Record<string, unknown>,
): Promise<T> {
  const names = Object.keys(args);
  const list = names.map((n, i) => `${n} => $${i + 1}${args[n] instanceof Json ? "::jsonb" : ""}`);
  // postgres.js serializes a jsonb parameter itself (JSON.stringify), arrays included
  const values = names.map((n) => {
    const v = args[n];
    return v instanceof Json ? v.value : v;
  });
  const [row] = await db.query<{ r: T }>(`select public.${fn}(${list.join(", ")}) as r`, values);
  return row.r;
}

/** Runs `sql` as a signed-in user, as the REST gateway does (role and JWT claims for one transaction). */
async function asUser<T>(db: Database, userId: string, sql: string): Promise<T> {
  const claims = JSON.stringify({ sub: userId, role: "authenticated", aud: "authenticated" });
  const [row] = await db.script<{ r: T }>(
    `set local role authenticated;
     select set_config('request.jwt.claims', '${claims}', true);
     ${sql}`,
  );
  return row.r;
}

interface Claim {
  outcome: string;
  status: string;
  mode?: string;
  fencing_token: number;
  stripe_idempotency_key: string;
  request_params: Record<string, unknown> | null;
  operation_type?: string;
  operation_id?: string;
  response_body?: string;
  response_status?: number;
}

interface Order {
  orderId: string;
  sessionId: string;
  paymentIntent: string;
  subtotal: number;
  total: number;
}

/** A Stripe event as the webhook receives it. */
function stripeEvent(type: string, object: Record<string, unknown>, created = nowSeconds()) {
  return {
    id: `evt_${hex()}`,
    object: "event",
    api_version: "2026-10-28.endive",
    type,
    created,
    livemode: false,
    data: { object },
  };
}

function sessionObject(order: Order, paymentStatus: "paid" | "unpaid" = "paid") {
  return {
    id: order.sessionId,
    object: "checkout.session",
    status: paymentStatus === "paid" ? "complete" : "expired",
    payment_status: paymentStatus,
    amount_total: order.total,
    currency: "usd",
    payment_intent: paymentStatus === "paid" ? order.paymentIntent : null,
    metadata: { order_id: order.orderId },
  };
}

function refundObject(
  id: string,
  order: Order,
  amount: number,
  status: string,
  refundId?: string,
): Record<string, unknown> {
  return {
    id,
    object: "refund",
    amount,
    currency: "usd",
    payment_intent: order.paymentIntent,
    status,
    reason: null,
    created: nowSeconds(),
    metadata: refundId ? { refund_id: refundId, order_id: order.orderId } : {},
  };
}

/** An inbound request under its Idempotency-Key: claimed, run, its answer stored (null: the function died). */
async function request(
  db: Queryable,
  scope: string,
  endpoint: string,
  payload: unknown,
  act: (key: string) => Promise<{ status: number; body: unknown } | null>,
): Promise<string> {
  const key = `${endpoint}-${uid()}`;
  const claim = await rpc<Claim & { fencing_token: number }>(db, "claim_idempotency_key", {
    p_scope: scope,
    p_key: key,
    p_endpoint: endpoint,
    p_fingerprint: await sha256(endpoint + JSON.stringify(payload)),
  });
  assert.equal(claim.outcome, "acquired");
  const answer = await act(key);
  if (answer === null) {
    await rpc(db, "release_idempotency_key", {
      p_scope: scope,
      p_key: key,
      p_fencing_token: claim.fencing_token,
    });
  } else {
    await rpc(db, answer.status < 400 ? "complete_idempotency_key" : "fail_idempotency_key", {
      p_scope: scope,
      p_key: key,
      p_fencing_token: claim.fencing_token,
      p_response_status: answer.status,
      p_response_headers: json({ "content-type": "application/json" }),
      p_response_body: JSON.stringify(answer.body),
    });
  }
  return key;
}

// ---------------------------------------------------------------------------------------------------
// The old schema's flows, through its own functions
// ---------------------------------------------------------------------------------------------------

/** A checkout as the old enhanced-checkout / guest-checkout ran it: start_checkout, then finish_checkout. */
async function oldCheckout(
  db: Queryable,
  eventId: string,
  items: { tier_id: string; quantity: number }[],
  buyer: { id: string } | { email: string; ip: string },
): Promise<Order> {
  const orderId = uid();
  const guest = "email" in buyer;
  const scope = guest ? `guest:${await sha256(buyer.email.toLowerCase())}` : `user:${buyer.id}`;
  const key = `checkout-${orderId}`;
  const endpoint = guest ? "guest-checkout" : "enhanced-checkout";
  const started = await rpc<{ request: Claim; order: Record<string, number | string>; stripe: Claim }>(
    db,
    "start_checkout",
    {
      p_scope: scope,
      p_idempotency_key: key,
      p_endpoint: endpoint,
      p_fingerprint: await sha256(endpoint + JSON.stringify(items)),
      p_order_id: orderId,
      p_stripe_idempotency_key: `checkout:create:${orderId}:${uid()}`,
      p_event_id: eventId,
      p_items: json(items),
      p_ui_mode: "hosted",
      p_site_url: "http://localhost:3000",
      p_buyer_id: guest ? null : buyer.id,
      p_guest_email: guest ? buyer.email : null,
      p_client_ip: guest ? buyer.ip : null,
    },
  );
  assert.deepEqual([started.request.outcome, started.stripe.outcome], ["acquired", "acquired"]);
  const sessionId = `cs_test_${hex()}`;
  const order: Order = {
    orderId,
    sessionId,
    paymentIntent: `pi_${hex().slice(0, 24)}`,
    subtotal: started.order.subtotal_cents as number,
    total: started.order.total_cents as number,
  };
  const session = {
    id: sessionId,
    object: "checkout.session",
    url: `https://checkout.stripe.com/c/pay/${sessionId}`,
    amount_total: order.total,
    currency: "usd",
  };
  await rpc(db, "finish_checkout", {
    p_scope: scope,
    p_idempotency_key: key,
    p_request_token: started.request.fencing_token,
    p_response_status: 201,
    p_response_headers: json({ "content-type": "application/json" }),
    p_response_body: JSON.stringify({ order_id: orderId, checkout_session_id: sessionId, url: session.url }),
    p_order_id: orderId,
    p_stripe_token: started.stripe.fencing_token,
    p_session: json(session),
  });
  return order;
}

/** A webhook delivery: public.handle_stripe_event, as the stripe-webhook function calls it. */
async function deliver(
  db: Queryable,
  event: Record<string, unknown>,
  charge?: Record<string, unknown>,
): Promise<{ status: string; effect?: Record<string, unknown>; error?: string }> {
  return await rpc(db, "handle_stripe_event", {
    p_event: json(event),
    ...(charge ? { p_charge: json(charge) } : {}),
  });
}

async function oldPay(db: Queryable, order: Order): Promise<void> {
  const result = await deliver(db, stripeEvent("checkout.session.completed", sessionObject(order)));
  assert.equal(result.status, "processed", JSON.stringify(result));
  assert.equal(result.effect?.changed, true);
}

type RefundEnding = "succeeded" | "pending" | "rejected" | "lost";

/**
 * A refund as the old refunds function ran it: the inbound key, create_refund (the row, the organiser's
 * debit and the Stripe claim), then Stripe's answer: the refund (succeeded or pending), a refusal (4xx), or
 * none (the function died after claiming: the operation stays in progress, its lease given back).
 */
async function oldRefund(
  db: Queryable,
  organiser: string,
  order: Order,
  amount: number | null,
  ending: RefundEnding,
): Promise<{ refundId: string; stripeRefundId: string; key: string; amount: number; token: number }> {
  const refundId = uid();
  const stripeRefundId = `re_${hex().slice(0, 24)}`;
  const scope = `user:${organiser}`;
  let refunded = 0;
  let token = 0;
  const key = await request(
    db,
    scope,
    "refunds",
    { order_id: order.orderId, amount_cents: amount },
    async (key) => {
      const created = await rpc<{ refund: { amount_cents: number }; stripe: Claim }>(db, "create_refund", {
        p_scope: scope,
        p_idempotency_key: key,
        p_refund_id: refundId,
        p_stripe_idempotency_key: `refund:create:${refundId}:${uid()}`,
        p_order_id: order.orderId,
        p_requested_by: organiser,
        p_amount_cents: amount,
      });
      assert.equal(created.stripe.outcome, "acquired");
      refunded = created.refund.amount_cents;
      token = created.stripe.fencing_token;
      if (ending === "lost") {
        await rpc(db, "release_stripe_operation", {
          p_operation_type: "refund:create",
          p_operation_id: refundId,
          p_fencing_token: token,
          p_error: "network timeout: outcome unknown",
        });
        return null;
      }
      if (ending === "rejected") {
        await rpc(db, "fail_refund", {
          p_refund_id: refundId,
          p_fencing_token: token,
          p_error: json({
            type: "invalid_request_error",
            code: "amount_too_large",
            message: "Refund amount is greater than unrefunded amount on charge",
            status: 400,
          }),
        });
        return { status: 422, body: { type: "/problems/stripe-rejected", status: 422 } };
      }
      const recorded = await rpc<{ status: string }>(db, "complete_refund", {
        p_refund_id: refundId,
        p_fencing_token: token,
        p_result: json(refundObject(stripeRefundId, order, refunded, ending, refundId)),
      });
      assert.equal(recorded.status, ending);
      return { status: 201, body: { refund_id: refundId, stripe_refund_id: stripeRefundId, status: ending } };
    },
  );
  return { refundId, stripeRefundId, key, amount: refunded, token };
}

async function oldPayout(
  db: Queryable,
  organiser: string,
  amount: number,
  ending: "paid" | "failed",
): Promise<{ payoutId: string; transferId: string | null }> {
  const payoutId = uid();
  const transferId = ending === "paid" ? `tr_${hex().slice(0, 24)}` : null;
  const scope = `user:${organiser}`;
  await request(db, scope, "payouts", { amount_cents: amount }, async (key) => {
    const created = await rpc<{ payout: Record<string, unknown>; stripe: Claim }>(db, "create_payout", {
      p_scope: scope,
      p_idempotency_key: key,
      p_payout_id: payoutId,
      p_stripe_idempotency_key: `payout:create:${payoutId}:${uid()}`,
      p_organiser_id: organiser,
      p_amount_cents: amount,
    });
    assert.equal(created.stripe.outcome, "acquired");
    const token = created.stripe.fencing_token;
    if (ending === "failed") {
      await rpc(db, "fail_payout", {
        p_payout_id: payoutId,
        p_fencing_token: token,
        p_error: json({
          type: "invalid_request_error",
          code: "balance_insufficient",
          message: "Insufficient funds",
        }),
      });
      return { status: 409, body: { type: "/problems/stripe-rejected" } };
    }
    const paid = await rpc<{ status: string }>(db, "complete_payout", {
      p_payout_id: payoutId,
      p_fencing_token: token,
      p_result: json({
        id: transferId,
        object: "transfer",
        amount,
        currency: "usd",
        transfer_group: `payout_${payoutId}`,
        metadata: { payout_id: payoutId },
      }),
    });
    assert.equal(paid.status, "paid");
    return { status: 201, body: { payout_id: payoutId, stripe_transfer_id: transferId } };
  });
  return { payoutId, transferId };
}

// ---------------------------------------------------------------------------------------------------
// The old database
// ---------------------------------------------------------------------------------------------------

/** A supabase folder with the seed and only the migrations of the schema as it stood at the phase start. */
async function oldSupabaseDir(): Promise<string> {
  const dir = join(await Deno.makeTempDir({ prefix: "upgrade_" }), "supabase");
  await Deno.mkdir(join(dir, "migrations"), { recursive: true });
  // seed.sql is unchanged since before the phase (it only fills auth.users and the events schema)
  for (const file of ["config.toml", "seed.sql"]) {
    await Deno.copyFile(join(SUPABASE_DIR, file), join(dir, file));
  }
  for (const file of oldFiles) await Deno.copyFile(join(MIGRATIONS_DIR, file), join(dir, "migrations", file));
  return dir;
}

/** What the old rows are, by name. */
interface OldRows {
  organiser: string;
  eventId: string;
  gaTier: string;
  orders: Record<
    "guestPending" | "paid" | "partial" | "refunded" | "pendingRefunds" | "expired" | "late" | "vip" | "demo",
    Order
  >;
  lostRefund: { refundId: string; key: string; amount: number; token: number; stripeKey: string };
  pendingRefund: { refundId: string; amount: number };
  lateRefundEvent: string;
  paidPayout: { payoutId: string; transferId: string | null };
}

/** The old schema's rows, each made by the function the old schema had for it. */
async function makeOldRows(db: Database): Promise<OldRows> {
  // An older project's own configuration: a flat fee and a payout minimum of its choosing.
  await db.exec(
    "update private.settings set service_fee_flat_cents = 199, payout_minimum_cents = 500, hold_minutes = 45",
  );
  // Users and connected accounts have no function of ours: they come from Supabase Auth and onboarding.
  const organiser = uid();
  await db.query("insert into auth.users (id, email) values ($1, $2)", [
    organiser,
    `org-${organiser}@example.com`,
  ]);
  await db.query(
    "insert into events.payout_accounts (organiser_id, stripe_account_id, payouts_enabled) values ($1, $2, true)",
    [organiser, `acct_old_${hex().slice(0, 16)}`],
  );
  const event = await asUser<{ id: string; tiers: { id: string; name: string }[] }>(
    db,
    organiser,
    `select public.create_event('Old Night', now() + interval '60 days',
       '[{"name": "GA", "price_cents": 2500, "capacity": 200}, {"name": "VIP", "price_cents": 10000, "capacity": 20}]',
       'usd', true, 'old-event-1') as r`,
  );
  const ga = event.tiers.find((t) => t.name === "GA")!.id;
  const vip = event.tiers.find((t) => t.name === "VIP")!.id;
  const buyer = { id: BUYER };
  const gaOf = (quantity: number) => [{ tier_id: ga, quantity }];

  const guestPending = await oldCheckout(db, event.id, gaOf(1), {
    email: "Guest@Example.com",
    ip: "203.0.113.7",
  });
  const paid = await oldCheckout(db, event.id, gaOf(2), buyer);
  const partial = await oldCheckout(db, event.id, gaOf(4), buyer);
  const refunded = await oldCheckout(db, event.id, gaOf(1), buyer);
  const pendingRefunds = await oldCheckout(db, event.id, gaOf(2), buyer);
  const expired = await oldCheckout(db, event.id, gaOf(1), buyer);
  const late = await oldCheckout(db, event.id, gaOf(1), buyer);
  const vipOrder = await oldCheckout(db, event.id, [{ tier_id: vip, quantity: 1 }], buyer);
  const demo = await oldCheckout(db, DEMO_EVENT, [{ tier_id: DEMO_VIP, quantity: 1 }], buyer);
  for (const o of [paid, partial, refunded, pendingRefunds, vipOrder, demo]) await oldPay(db, o);

  // partial: two 1-cent refunds, one that succeeded, one refused by Stripe, then the first cent fails at
  // the bank: the old ledger kept each refund's own debit, so the organiser ends a cent over-debited
  const cent = await oldRefund(db, organiser, partial, 1, "succeeded");
  await oldRefund(db, organiser, partial, 1, "succeeded");
  await oldRefund(db, organiser, partial, 1500, "succeeded");
  await oldRefund(db, organiser, partial, 700, "rejected");
  const bankFailure = await deliver(
    db,
    stripeEvent("refund.failed", refundObject(cent.stripeRefundId, partial, 1, "failed", cent.refundId)),
  );
  assert.equal(bankFailure.status, "processed", JSON.stringify(bankFailure));

  // refunded: in full, Stripe answered pending, the refund.updated event said succeeded (delivered twice)
  const full = await oldRefund(db, organiser, refunded, null, "pending");
  const succeeded = stripeEvent(
    "refund.updated",
    refundObject(full.stripeRefundId, refunded, full.amount, "succeeded", full.refundId),
  );
  assert.equal((await deliver(db, succeeded)).status, "processed");
  assert.equal((await deliver(db, succeeded)).status, "duplicate");

  // pendingRefunds: one refund Stripe holds as pending, one whose function died before Stripe answered
  const pendingRefund = await oldRefund(db, organiser, pendingRefunds, 1000, "pending");
  const lost = await oldRefund(db, organiser, pendingRefunds, 2000, "lost");
  const [{ key: stripeKey }] = await db.query<{ key: string }>(
    `select stripe_idempotency_key as key from public.stripe_idempotency_keys
     where operation_type = 'refund:create' and operation_id = $1`,
    [lost.refundId],
  );

  // expired: its session expired
  const expiredResult = await deliver(
    db,
    stripeEvent("checkout.session.expired", sessionObject(expired, "unpaid")),
  );
  assert.deepEqual(expiredResult.effect, { order_id: expired.orderId, expired: true });

  // late: a dashboard refund's event arrived before its payment's: the old webhook failed it (Stripe
  // delivers it again), and the payment's own event has not come yet
  const lateRefund = stripeEvent(
    "refund.created",
    refundObject(`re_${hex().slice(0, 24)}`, late, 1000, "succeeded"),
  );
  const lateResult = await deliver(db, lateRefund);
  assert.equal(lateResult.status, "failed", JSON.stringify(lateResult));

  const paidPayout = await oldPayout(db, organiser, 5000, "paid");
  await oldPayout(db, organiser, 1000, "failed");

  // a caller of the old plan's function: an operation recorded as done
  await rpc(db, "record_stripe_idempotency", {
    p_operation_type: "legacy:charge",
    p_operation_id: "legacy-1",
    p_stripe_idempotency_key: `legacy:charge:legacy-1:${uid()}`,
    p_stripe_resource_id: "ch_legacy_1",
  });

  return {
    organiser,
    eventId: event.id,
    gaTier: ga,
    orders: { guestPending, paid, partial, refunded, pendingRefunds, expired, late, vip: vipOrder, demo },
    lostRefund: { refundId: lost.refundId, key: lost.key, amount: lost.amount, token: lost.token, stripeKey },
    pendingRefund: { refundId: pendingRefund.refundId, amount: pendingRefund.amount },
    lateRefundEvent: lateRefund.id,
    paidPayout,
  };
}

// ---------------------------------------------------------------------------------------------------
// Figures
// ---------------------------------------------------------------------------------------------------

/** Every base table of the project's schemas (and auth.users) with its columns. */
async function tableColumns(db: Queryable): Promise<Map<string, string[]>> {
  const rows = await db.query<{ name: string; columns: string[] }>(
    `select format('%I.%I', c.table_schema, c.table_name) as name,
       array_agg(c.column_name::text order by c.ordinal_position) as columns
     from information_schema.columns c
     join information_schema.tables t on t.table_schema = c.table_schema and t.table_name = c.table_name
     where c.table_schema = any($1) and t.table_type = 'BASE TABLE'
     group by 1 order by 1`,
    [SCHEMAS],
  );
  return new Map(rows.map((r) => [r.name, r.columns]));
}

type Rows = Record<string, Record<string, unknown>[]>;

/** Every row of every table in `tables`, as jsonb renders it. */
async function tableRows(db: Queryable, tables: Iterable<string>): Promise<Rows> {
  const result: Rows = {};
  for (const table of tables) {
    const rows = await db.query<{ r: Record<string, unknown> }>(`select to_jsonb(t) as r from ${table} as t`);
    result[table] = rows.map((row) => row.r);
  }
  return result;
}

/** The rows of each table over `columns` only, in a stable order. */
function project(rows: Rows, columns: Map<string, string[]>): Rows {
  return Object.fromEntries([...columns].map(([table, cols]) => [
    table,
    (rows[table] ?? []).map((r) => Object.fromEntries(cols.map((c) => [c, r[c]])))
      .sort((a, b) => JSON.stringify(a) < JSON.stringify(b) ? -1 : 1),
  ]));
}

interface Money {
  wallets: Record<string, { entries: number; pending_payouts: number; sum: number; count: number }>;
  orders: Record<string, {
    status: string;
    subtotal: number;
    fee: number;
    total: number;
    refunded: number;
    net: number;
    valid: number;
    void: number;
  }>;
  tiers: Record<string, { held: number; sold: number }>;
  payouts: Record<string, { status: string; amount: number; reversed: number; transfer: string | null }>;
  refunds: Record<string, { status: string; amount: number; stripe_refund_id: string | null }>;
}

/** The money, per organiser's wallet, order, tier, payout and refund. */
async function money(db: Queryable): Promise<Money> {
  const wallets = await db.query<
    { k: string; entries: number; pending_payouts: number; sum: number; count: number }
  >(
    `select w.organiser_id || '/' || w.currency as k, w.entries_total_cents::int as entries,
       w.pending_payout_cents::int as pending_payouts,
       (select coalesce(sum(t.amount_cents), 0)::int from wallet.wallet_transactions t where t.wallet_id = w.id) as sum,
       (select count(*)::int from wallet.wallet_transactions t where t.wallet_id = w.id) as count
     from wallet.wallets w`,
  );
  const orders = await db.query<{ k: string } & Money["orders"][string]>(
    `select o.id::text as k, o.status, o.subtotal_cents as subtotal, o.fee_cents as fee, o.total_cents as total,
       o.refunded_cents as refunded,
       (select coalesce(sum(t.amount_cents), 0)::int from wallet.wallet_transactions t where t.order_id = o.id) as net,
       (select count(*)::int from events.tickets k where k.order_id = o.id and k.status = 'valid') as valid,
       (select count(*)::int from events.tickets k where k.order_id = o.id and k.status = 'void') as void
     from events.orders o`,
  );
  const tiers = await db.query<{ k: string; held: number; sold: number }>(
    "select id::text as k, held, sold from events.ticket_tiers",
  );
  const payouts = await db.query<{ k: string } & Money["payouts"][string]>(
    `select id::text as k, status, amount_cents::int as amount, reversed_cents::int as reversed,
       stripe_transfer_id as transfer from wallet.payouts`,
  );
  const refunds = await db.query<{ k: string } & Money["refunds"][string]>(
    "select id::text as k, status, amount_cents as amount, stripe_refund_id from events.refunds",
  );
  const byKey = <T extends { k: string }>(rows: T[]) =>
    Object.fromEntries(rows.map(({ k, ...rest }) => [k, rest])) as Record<string, Omit<T, "k">>;
  return {
    wallets: byKey(wallets),
    orders: byKey(orders),
    tiers: byKey(tiers),
    payouts: byKey(payouts),
    refunds: byKey(refunds),
  };
}

/** The schema's functions, with their privileges, and the migrations applied: what a no-op leaves as it was. */
async function schemaState(db: Queryable): Promise<{ functions: string; migrations: string[] }> {
  const [{ functions }] = await db.query<{ functions: string }>(
    `select md5(string_agg(p.oid::regprocedure::text || coalesce(p.proacl::text, '') || pg_get_functiondef(p.oid),
       E'\\n' order by p.oid::regprocedure::text)) as functions
     from pg_catalog.pg_proc p join pg_catalog.pg_namespace n on n.oid = p.pronamespace
     where n.nspname in ('public', 'private', 'events', 'wallet') and p.prokind = 'f'`,
  );
  const migrations = await db.query<{ version: string }>(
    "select version from supabase_migrations.schema_migrations order by version",
  );
  return { functions, migrations: migrations.map((m) => m.version) };
}

/** The ledger's invariants over every wallet and order (as tests/_flows.ts assertLedger). */
async function assertLedger(db: Queryable): Promise<void> {
  const wrong = await db.query(`
    select w.id from wallet.wallets w
    where w.entries_total_cents <> (select coalesce(sum(t.amount_cents), 0) from wallet.wallet_transactions t
                                    where t.wallet_id = w.id)
       or w.pending_payout_cents <> (select coalesce(sum(p.amount_cents), 0) from wallet.payouts p
                                     where p.wallet_id = w.id and p.status = 'pending')`);
  assert.deepEqual([...wrong], [], "entries total = sum of entries; pending = payouts in flight");
  const overDebited = await db.query(`
    select o.id from events.orders o
    where (select coalesce(sum(-t.amount_cents), 0) from wallet.wallet_transactions t
           where t.order_id = o.id and t.type in ('refund', 'adjustment', 'dispute', 'dispute_reversal')) > o.subtotal_cents
       or o.refunded_cents > o.total_cents`);
  assert.deepEqual(
    [...overDebited],
    [],
    "refund debits never exceed the sale credit; refunds never exceed paid",
  );
}

// ---------------------------------------------------------------------------------------------------
// The upgrade, once per test file
// ---------------------------------------------------------------------------------------------------

interface Upgraded {
  db: Database;
  old: OldRows;
  columnsBefore: Map<string, string[]>;
  columnsAfter: Map<string, string[]>;
  rowsBefore: Rows;
  /** The migrations the CLI applied in the upgrade. */
  appliedByCli: string[];
  /** After the upgrade, and after applying every migration and the seed again. */
  rowsAfter: Rows;
  rowsAgain: Rows;
  schemaAfter: Awaited<ReturnType<typeof schemaState>>;
  schemaAgain: Awaited<ReturnType<typeof schemaState>>;
  moneyBefore: Money;
  moneyAfter: Money;
}

let upgraded: Promise<Upgraded> | undefined;

/** The old database, made and then upgraded, once per test file. */
function upgrade(): Promise<Upgraded> {
  upgraded ??= (async () => {
    const url = await createDatabase("upgrade_phase");
    // the old schema, from a folder that holds only its migrations: applied file by file and recorded in the
    // CLI's supabase_migrations.schema_migrations (the CLI applies only the rest), then the seed
    const oldDb = connectPostgres(url, 2);
    const oldDir = await oldSupabaseDir();
    let old: OldRows, columnsBefore: Map<string, string[]>, rowsBefore: Rows, moneyBefore: Money;
    try {
      await prepareDatabase(oldDb, { supabaseDir: oldDir });
      const applied = await schemaState(oldDb);
      assert.deepEqual(applied.migrations, oldFiles.map((f) => f.slice(0, f.indexOf("_"))));
      old = await makeOldRows(oldDb);
      columnsBefore = await tableColumns(oldDb);
      rowsBefore = await tableRows(oldDb, columnsBefore.keys());
      moneyBefore = await money(oldDb);
    } finally {
      await oldDb.close();
      await Deno.remove(dirname(oldDir), { recursive: true });
    }

    // the upgrade: every migration of the project applied by the CLI over it, then the seed
    const db = connectPostgres(url, 4);
    await prepareDatabase(db, { databaseUrl: url });
    // the CLI stores the statements of what it applied; the old schema's records have none
    const appliedByCli = (await db.query<{ version: string }>(
      "select version from supabase_migrations.schema_migrations where statements is not null order by version",
    )).map((r) => r.version);
    const columnsAfter = await tableColumns(db);
    const rowsAfter = await tableRows(db, columnsAfter.keys());
    const moneyAfter = await money(db);
    const schemaAfter = await schemaState(db);
    await prepareDatabase(db, { databaseUrl: url }); // and again, as a restarted `npm run dev` does
    const rowsAgain = await tableRows(db, columnsAfter.keys());
    const schemaAgain = await schemaState(db);
    return {
      db,
      old,
      columnsBefore,
      columnsAfter,
      appliedByCli,
      rowsBefore,
      rowsAfter,
      rowsAgain,
      schemaAfter,
      schemaAgain,
      moneyBefore,
      moneyAfter,
    };
  })();
  return upgraded;
}

/** A test on the upgraded database (its pooled connections outlive each test). */
function upgradeTest(name: string, fn: (u: Upgraded) => void | Promise<void>): void {
  Deno.test({
    name,
    fn: withTimeout(name, async () => await fn(await upgrade())),
    sanitizeOps: false,
    sanitizeResources: false,
  });
}

upgradeTest(
  "the phase's migrations upgrade a database of the old schema's rows: none lost, money unchanged to the cent but for the rule settling an old order, again a no-op",
  (u) => {
    assert.ok(oldFiles.length > 0 && newFiles.length > 0, `old ${oldFiles.length}, new ${newFiles.length}`);
    assert.ok(newFiles[0] > oldFiles.at(-1)!, "every migration of the phase sorts after the old schema's");
    const version = (file: string) => file.slice(0, file.indexOf("_"));
    assert.deepEqual(u.schemaAfter.migrations, migrationFiles.map(version));
    assert.deepEqual(
      u.appliedByCli,
      newFiles.map(version),
      "the CLI applied the phase's migrations, only them",
    );

    // the fixture is what it says: orders, refunds, Stripe operations, keys and events in every state
    const before = u.moneyBefore;
    const o = u.old.orders;
    const statusOf = (order: Order) => before.orders[order.orderId].status;
    assert.deepEqual(
      Object.fromEntries(Object.entries(o).map(([name, order]) => [name, statusOf(order)])),
      {
        guestPending: "pending",
        paid: "paid",
        partial: "partially_refunded",
        refunded: "refunded",
        pendingRefunds: "paid",
        expired: "expired",
        late: "pending",
        vip: "paid",
        demo: "paid",
      },
    );
    const count = (table: string, column: string) => {
      const counts: Record<string, number> = {};
      for (const row of u.rowsBefore[table]) {
        counts[String(row[column])] = (counts[String(row[column])] ?? 0) + 1;
      }
      return counts;
    };
    assert.deepEqual(count("events.refunds", "status"), { succeeded: 3, failed: 2, pending: 2 });
    assert.deepEqual(count("wallet.payouts", "status"), { paid: 1, failed: 1 });
    assert.deepEqual(count("public.stripe_idempotency_keys", "status"), {
      completed: 16, // 9 sessions, 5 refunds Stripe answered, 1 payout, 1 legacy record
      failed: 2,
      in_progress: 1,
    });
    const [inProgress] = u.rowsBefore["public.stripe_idempotency_keys"].filter((k) =>
      k.status === "in_progress"
    );
    assert.equal(inProgress.operation_id, u.old.lostRefund.refundId);
    assert.ok(Date.parse(inProgress.locked_until as string) <= Date.now(), "its lease has run out");
    assert.deepEqual(count("public.idempotency_keys", "status"), {
      completed: 15,
      failed: 2,
      in_progress: 1,
    });
    assert.deepEqual(count("public.stripe_webhook_events", "status"), { processed: 9, failed: 1 });
    assert.deepEqual(
      Object.keys(before.wallets).sort(),
      [`${u.old.organiser}/usd`, `${DEMO_ORGANISER}/usd`].sort(),
    );
    assert.equal(
      before.wallets[`${DEMO_ORGANISER}/usd`].entries,
      o.demo.subtotal,
      "the seed organiser's sale",
    );
    for (const [wallet, w] of Object.entries(before.wallets)) assert.equal(w.sum, w.entries, wallet);
    // the old ledger kept each refund's own debit: a cent refund that failed at the bank left the organiser
    // of `partial` a cent over-debited against the rule
    assert.equal(before.orders[o.partial.orderId].refunded, 1501);
    assert.equal(before.orders[o.partial.orderId].net, expectedNet(o.partial, 1501) - 1);

    // no table lost, and only these columns, whose information lives on elsewhere (checked below)
    const lostTables = [...u.columnsBefore.keys()].filter((t) => !u.columnsAfter.has(t));
    assert.deepEqual(lostTables, []);
    const droppedColumns = [...u.columnsBefore].flatMap(([t, cols]) =>
      cols.filter((c) => !u.columnsAfter.get(t)!.includes(c)).map((c) => `${t}.${c}`)
    ).sort();
    assert.deepEqual(droppedColumns, [
      "events.refunds.wallet_debit_cents",
      "private.settings.payout_minimum_cents",
      "private.settings.service_fee_flat_cents",
    ]);

    // every row of every table is still there, every surviving value unchanged
    const surviving = new Map(
      [...u.columnsBefore].map(([t, cols]) => [t, cols.filter((c) => u.columnsAfter.get(t)!.includes(c))]),
    );
    // but for the one entry that migration 20261128001100 posts: the cent back to the organiser of `partial`
    const settled = u.rowsAfter["wallet.wallet_transactions"].filter((t) =>
      t.source === "migration 20261128001100"
    );
    assert.deepEqual(
      settled.map((t) => [t.order_id, t.type, t.amount_cents]),
      [[o.partial.orderId, "adjustment", 1]],
      "the old order a cent off the rule is settled by it, and no other",
    );
    const rowsAfter = {
      ...u.rowsAfter,
      "wallet.wallet_transactions": u.rowsAfter["wallet.wallet_transactions"].filter((t) =>
        !settled.includes(t)
      ),
      "wallet.wallets": u.rowsAfter["wallet.wallets"].map((w) =>
        w.organiser_id === u.old.organiser
          ? { ...w, entries_total_cents: Number(w.entries_total_cents) - 1 }
          : w
      ),
    };
    const counts = (rows: Rows) => Object.fromEntries([...surviving.keys()].map((t) => [t, rows[t].length]));
    assert.deepEqual(counts(rowsAfter), counts(u.rowsBefore), "rows per table");
    const after = project(rowsAfter, surviving);
    for (const [table, rows] of Object.entries(project(u.rowsBefore, surviving))) {
      assert.deepEqual(after[table], rows, `${table}: the rows' surviving values`);
    }

    // the dropped columns' information: each refund's debit is its ledger entry; the settings moved to usd
    const entries = u.rowsAfter["wallet.wallet_transactions"];
    for (const refund of u.rowsBefore["events.refunds"]) {
      const entry = entries.find((t) => t.idempotency_key === `refund:${refund.id}`);
      assert.equal(
        0 - Number(entry?.amount_cents ?? 0),
        refund.wallet_debit_cents,
        `refund ${refund.id}'s debit`,
      );
    }
    const [settings] = u.rowsBefore["private.settings"];
    const usd = u.rowsAfter["private.currencies"].find((c) => c.code === "usd");
    assert.deepEqual(
      [usd?.service_fee_flat, usd?.payout_minimum],
      [settings.service_fee_flat_cents, settings.payout_minimum_cents],
    );
    assert.deepEqual([settings.service_fee_flat_cents, settings.payout_minimum_cents], [199, 500]);

    // the money, per wallet, order, tier, payout and refund, to the cent: as before, but `partial` now nets
    // exactly the rule (its organiser's wallet a cent more, in one more entry)
    assert.equal(u.moneyAfter.orders[o.partial.orderId].net, expectedNet(o.partial, 1501));
    const wallet = `${u.old.organiser}/usd`;
    const w = before.wallets[wallet];
    assert.deepEqual(u.moneyAfter, {
      ...before,
      wallets: {
        ...before.wallets,
        [wallet]: { ...w, entries: w.entries + 1, sum: w.sum + 1, count: w.count + 1 },
      },
      orders: {
        ...before.orders,
        [o.partial.orderId]: {
          ...before.orders[o.partial.orderId],
          net: before.orders[o.partial.orderId].net + 1,
        },
      },
    });

    // applying every migration and the seed again changes nothing
    assert.deepEqual(u.schemaAgain, u.schemaAfter);
    assert.deepEqual(u.rowsAgain, u.rowsAfter);
  },
);

upgradeTest(
  "the new functions work on the old rows: audit, reconciler, refunds to the cent, webhooks, checkout, payouts, security",
  async ({ db, old, moneyBefore }) => {
    const o = old.orders;
    const net = async (order: Order) =>
      (await db.query<{ n: number }>(
        "select coalesce(sum(amount_cents), 0)::int as n from wallet.wallet_transactions where order_id = $1",
        [order.orderId],
      ))[0].n;
    const orderRow = async (order: Order) =>
      (await db.query<{ status: string; refunded: number; valid: number }>(
        `select status, refunded_cents as refunded,
           (select count(*)::int from events.tickets k where k.order_id = o.id and k.status = 'valid') as valid
         from events.orders o where id = $1`,
        [order.orderId],
      ))[0];
    const entriesTotal = async () =>
      (await db.query<{ n: number }>(
        "select entries_total_cents::int as n from wallet.wallets where organiser_id = $1 and currency = 'usd'",
        [old.organiser],
      ))[0].n;

    // the audit's batch lists the old orders, as they are, and the old payout with its transfer
    const refunds = await db.query<{ order_id: string; stripe_refund_id: string; status: string }>(
      "select order_id::text, stripe_refund_id, status from events.refunds where stripe_refund_id is not null",
    );
    const audit = await rpc<{ orders: Record<string, unknown>[]; payouts: Record<string, unknown>[] }>(
      db,
      "audit_begin",
      { p_batch_size: 100 },
    );
    const expectedOrders = Object.values(o).map((order) => {
      const m = moneyBefore.orders[order.orderId];
      return {
        order_id: order.orderId,
        status: m.status,
        total_cents: order.total,
        refunded_cents: m.refunded,
        disputed_cents: 0,
        stripe_session_id: order.sessionId,
        stripe_payment_intent_id: ["pending", "expired"].includes(m.status) ? null : order.paymentIntent,
        stripe_charge_id: null,
        refunds: Object.fromEntries(
          refunds.filter((r) => r.order_id === order.orderId).map((r) => [r.stripe_refund_id, r.status]),
        ),
      };
    }).sort((a, b) => a.order_id < b.order_id ? -1 : 1);
    assert.deepEqual(audit.orders, expectedOrders);
    assert.ok(audit.orders.filter((a) => a.status === "paid").length >= 4, "the old paid orders are audited");
    assert.deepEqual(audit.payouts, [{
      payout_id: old.paidPayout.payoutId,
      status: "paid",
      amount_cents: 5000,
      reversed_cents: 0,
      stripe_transfer_id: old.paidPayout.transferId,
    }]);

    // the organiser's wallet as get_wallet answers now: the old sales carry no funds date, so they count
    // as available (create_payout still checks the platform's balance at Stripe); the cent that migration
    // 20261128001100 gave back is in it
    const before = moneyBefore.wallets[`${old.organiser}/usd`];
    const wallet = await asUser<Record<string, unknown>>(
      db,
      old.organiser,
      "select public.get_wallet('usd') as r",
    );
    assert.deepEqual(wallet, {
      currency: "usd",
      balance_cents: before.entries + 1,
      available_cents: before.entries + 1,
      pending_funds_cents: 0,
      pending_payout_cents: 0,
    });

    // the reconciler claims the old operation whose lease ran out: same Stripe key, same parameters, a new
    // fencing token; the old holder's token no longer settles it, the new one does
    const stale = await rpc<{ claimed: Claim[] }>(db, "claim_stale_stripe_operations", {
      p_limit: 25,
      p_lease_seconds: 300,
    });
    assert.equal(stale.claimed.length, 1, JSON.stringify(stale));
    const [claimed] = stale.claimed;
    const lost = old.lostRefund;
    assert.deepEqual(
      [
        claimed.operation_type,
        claimed.operation_id,
        claimed.outcome,
        claimed.mode,
        claimed.stripe_idempotency_key,
      ],
      ["refund:create", lost.refundId, "acquired", "send", lost.stripeKey],
    );
    assert.equal(claimed.fencing_token, lost.token + 1);
    assert.deepEqual(claimed.request_params, {
      amount: 2000,
      payment_intent: o.pendingRefunds.paymentIntent,
      metadata: { refund_id: lost.refundId, order_id: o.pendingRefunds.orderId },
    });
    const lostStripeId = `re_${hex().slice(0, 24)}`;
    const lostRefund = refundObject(lostStripeId, o.pendingRefunds, 2000, "succeeded", lost.refundId);
    await assert.rejects(
      rpc(db, "complete_refund", {
        p_refund_id: lost.refundId,
        p_fencing_token: lost.token,
        p_result: json(lostRefund),
      }),
      (e: { code: string }) => e.code === "PT409",
    );
    const settled = await rpc<{ status: string }>(db, "complete_refund", {
      p_refund_id: lost.refundId,
      p_fencing_token: claimed.fencing_token,
      p_result: json(lostRefund),
    });
    assert.equal(settled.status, "succeeded");
    // the pending 1000 stays reserved, the 2000 is refunded
    assert.deepEqual(await orderRow(o.pendingRefunds), {
      status: "partially_refunded",
      refunded: 2000,
      valid: 2,
    });
    assert.equal(await net(o.pendingRefunds), expectedNet(o.pendingRefunds, 2000 + old.pendingRefund.amount));
    // the buyer's retry of that old request, under its old key: the same refund, answered from Stripe's object
    const scope = `user:${old.organiser}`;
    const fingerprint = await sha256(
      "refunds" + JSON.stringify({ order_id: o.pendingRefunds.orderId, amount_cents: 2000 }),
    );
    const retry = await rpc<Claim>(db, "claim_idempotency_key", {
      p_scope: scope,
      p_key: lost.key,
      p_endpoint: "refunds",
      p_fingerprint: fingerprint,
    });
    assert.equal(retry.outcome, "acquired", "the old request's key was given back after the crash");
    const replayed = await rpc<
      { refund: Record<string, unknown>; stripe: Claim & { stripe_resource_id: string } }
    >(
      db,
      "create_refund",
      {
        p_scope: scope,
        p_idempotency_key: lost.key,
        p_refund_id: uid(),
        p_stripe_idempotency_key: `refund:create:${uid()}:${uid()}`,
        p_order_id: o.pendingRefunds.orderId,
        p_requested_by: old.organiser,
        p_amount_cents: 2000,
      },
    );
    assert.deepEqual(
      [replayed.refund.refund_id, replayed.stripe.outcome, replayed.stripe.stripe_resource_id],
      [lost.refundId, "replay", lostStripeId],
    );

    // a new refund of an old paid order, through create_refund and the refund's events: the organiser nets
    // the sale less floor(refunded x subtotal / total), and the wallet moves by exactly that share
    const walletBefore = await entriesTotal();
    const refundId = uid();
    const created = await rpc<{ refund: Record<string, unknown>; stripe: Claim; reversals: unknown[] }>(
      db,
      "create_refund",
      {
        p_scope: scope,
        p_idempotency_key: `refunds-${uid()}`,
        p_refund_id: refundId,
        p_stripe_idempotency_key: `refund:create:${refundId}:${uid()}`,
        p_order_id: o.paid.orderId,
        p_requested_by: old.organiser,
        p_amount_cents: 1000,
        p_reversal_ids: [uid()],
        p_reversal_keys: [`transfer_reversal:create:${uid()}:${uid()}`],
      },
    );
    assert.deepEqual([created.stripe.outcome, created.stripe.mode, created.reversals], [
      "acquired",
      "send",
      [],
    ]);
    assert.equal(created.stripe.request_params?.payment_intent, o.paid.paymentIntent);
    const stripeRefundId = `re_${hex().slice(0, 24)}`;
    const answered = await rpc<{ status: string }>(db, "complete_refund", {
      p_refund_id: refundId,
      p_fencing_token: created.stripe.fencing_token,
      p_result: json(refundObject(stripeRefundId, o.paid, 1000, "pending", refundId)),
    });
    assert.equal(answered.status, "pending");
    const updated = stripeEvent(
      "refund.updated",
      refundObject(stripeRefundId, o.paid, 1000, "succeeded", refundId),
    );
    assert.equal((await deliver(db, updated)).status, "processed");
    assert.equal((await deliver(db, updated)).status, "duplicate");
    const share = Math.floor(1000 * o.paid.subtotal / o.paid.total);
    assert.deepEqual(await orderRow(o.paid), { status: "partially_refunded", refunded: 1000, valid: 2 });
    assert.equal(await net(o.paid), expectedNet(o.paid, 1000));
    assert.equal(await entriesTotal(), walletBefore - share, "the wallet moves by exactly the share");

    // the rest of the old partially refunded order: the rule settles it whole, the old cent included
    const restId = uid();
    const rest = await rpc<{ refund: { amount_cents: number }; stripe: Claim }>(db, "create_refund", {
      p_scope: scope,
      p_idempotency_key: `refunds-${uid()}`,
      p_refund_id: restId,
      p_stripe_idempotency_key: `refund:create:${restId}:${uid()}`,
      p_order_id: o.partial.orderId,
      p_requested_by: old.organiser,
    });
    assert.equal(rest.refund.amount_cents, o.partial.total - 1501);
    await rpc(db, "complete_refund", {
      p_refund_id: restId,
      p_fencing_token: rest.stripe.fencing_token,
      p_result: json(
        refundObject(`re_${hex().slice(0, 24)}`, o.partial, rest.refund.amount_cents, "succeeded", restId),
      ),
    });
    assert.deepEqual(await orderRow(o.partial), { status: "refunded", refunded: o.partial.total, valid: 0 });
    assert.equal(await net(o.partial), 0, "refunded in full: the organiser nets exactly 0");

    // the old webhook event that failed is delivered again once its payment is recorded: applied once
    const paid = await deliver(
      db,
      stripeEvent("checkout.session.completed", sessionObject(o.late)),
      {
        id: `ch_${hex().slice(0, 24)}`,
        object: "charge",
        amount: o.late.total,
        payment_intent: o.late.paymentIntent,
        balance_transaction: { id: `txn_${hex().slice(0, 24)}`, available_on: nowSeconds() - 86_400 },
      },
    );
    assert.equal(paid.status, "processed", JSON.stringify(paid));
    const [{ payload }] = await db.query<{ payload: Record<string, unknown> }>(
      "select payload_snapshot as payload from public.stripe_webhook_events where stripe_event_id = $1",
      [old.lateRefundEvent],
    );
    const redelivered = await deliver(db, payload);
    assert.deepEqual([redelivered.status, (redelivered as { attempts?: number }).attempts], ["processed", 2]);
    assert.deepEqual(await orderRow(o.late), { status: "partially_refunded", refunded: 1000, valid: 1 });
    assert.equal(await net(o.late), expectedNet(o.late, 1000));

    // an old inbound key still replays its stored answer, byte for byte
    const replay = await rpc<Claim>(db, "claim_idempotency_key", {
      p_scope: `user:${BUYER}`,
      p_key: `checkout-${o.paid.orderId}`,
      p_endpoint: "enhanced-checkout",
      p_fingerprint: await sha256(
        "enhanced-checkout" + JSON.stringify([{ tier_id: old.gaTier, quantity: 2 }]),
      ),
    });
    assert.deepEqual([replay.outcome, replay.response_status], ["replay", 201]);
    assert.equal(JSON.parse(replay.response_body!).order_id, o.paid.orderId);
    const legacy = await rpc<Record<string, unknown>>(db, "check_stripe_idempotency", {
      p_operation_type: "legacy:charge",
      p_operation_id: "legacy-1",
    });
    assert.deepEqual([legacy.is_completed, legacy.stripe_resource_id], [true, "ch_legacy_1"]);

    // a new checkout on the old event: the old project's flat fee, now usd's, and the old tier's counters
    const tierRow = async () =>
      (await db.query<{ held: number; sold: number }>(
        "select held, sold from events.ticket_tiers where id = $1",
        [old.gaTier],
      ))[0];
    const tierBefore = await tierRow();
    const orderId = uid();
    const started = await rpc<{ request: Claim; order: Record<string, number>; stripe: Claim }>(
      db,
      "start_checkout",
      {
        p_scope: `user:${BUYER}`,
        p_idempotency_key: `checkout-${orderId}`,
        p_endpoint: "enhanced-checkout",
        p_fingerprint: `fp-${orderId}`,
        p_order_id: orderId,
        p_stripe_idempotency_key: `checkout:create:${orderId}:${uid()}`,
        p_event_id: old.eventId,
        p_items: json([{ tier_id: old.gaTier, quantity: 1 }]),
        p_ui_mode: "hosted",
        p_site_url: "http://localhost:3000",
        p_buyer_id: BUYER,
      },
    );
    assert.deepEqual([started.request.outcome, started.stripe.outcome], ["acquired", "acquired"]);
    assert.deepEqual([started.order.subtotal_cents, started.order.fee_cents], [
      2500,
      Math.round(2500 * 0.037) + 199,
    ]);
    assert.equal(started.stripe.request_params?.ui_mode, "hosted_page");
    assert.deepEqual(await tierRow(), { held: tierBefore.held + 1, sold: tierBefore.sold });

    // a payout from the old wallet: the old project's payout minimum holds, then one within it is paid
    const payout = (amount: number) => {
      const payoutId = uid();
      return rpc<{ payout: Record<string, unknown>; stripe: Claim }>(db, "create_payout", {
        p_scope: scope,
        p_idempotency_key: `payouts-${payoutId}`,
        p_payout_id: payoutId,
        p_stripe_idempotency_key: `payout:create:${payoutId}:${uid()}`,
        p_organiser_id: old.organiser,
        p_amount_cents: amount,
        p_platform_available: 1_000_000_000,
      });
    };
    await assert.rejects(payout(499), (e: { code: string }) => e.code === "PT400");
    const walletBeforePayout = await entriesTotal();
    const newPayout = await payout(500);
    assert.equal(newPayout.stripe.outcome, "acquired");
    const done = await rpc<{ status: string }>(db, "complete_payout", {
      p_payout_id: newPayout.payout.payout_id,
      p_fencing_token: newPayout.stripe.fencing_token,
      p_result: json({ id: `tr_${hex().slice(0, 24)}`, object: "transfer", amount: 500, currency: "usd" }),
    });
    assert.equal(done.status, "paid");
    assert.equal(await entriesTotal(), walletBeforePayout - 500);

    // housekeeping runs over the old rows (no hold has run out yet)
    const housekeeping = await rpc<Record<string, unknown>>(db, "reconcile_housekeeping", {
      p_batch_size: 1000,
    });
    assert.equal(housekeeping.holds_expired, 0);

    await assertLedger(db);
    await assertSecurityMatrix(db, "the upgraded database");
  },
);
