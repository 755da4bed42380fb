/**
 * Flows the tests share: calling a function like a client, a new organiser with an event, an order
 * paid through the emulator, the wallet, and the ledger's invariants.
 * @module
 */
import assert from "node:assert/strict";
import { createClient, type SupabaseClient } from "npm:@supabase/supabase-js@2.109.0";
import { testHooks } from "../supabase/functions/_shared/idempotency.ts";
import { ledgerViolations } from "../tools/chaos/invariants.ts";
import type { Stack } from "../tools/local/stack.ts";
import { sharedStack, stackTest } from "./_helpers.ts";

export const BUYER = "22222222-2222-4222-8222-222222222222";
export const ORGANISER = "11111111-1111-4111-8111-111111111111";
export const STRANGER = "66666666-6666-4666-8666-666666666666";
export const uid = (): string => crypto.randomUUID();

/** A function's answer. */
export interface Answer {
  status: number;
  headers: Headers;
  body: Record<string, unknown>;
  text: string;
}

/** POSTs `body` to function `fn` with a bearer token (default the anon key) and an Idempotency-Key. */
export async function call(
  stack: Stack,
  fn: string,
  body: unknown,
  options: { key?: string | null; token?: string | null; headers?: Record<string, string> } = {},
): Promise<Answer> {
  const headers: Record<string, string> = { "content-type": "application/json", ...options.headers };
  const token = options.token === undefined ? stack.anonKey : options.token;
  if (token) headers.authorization = `Bearer ${token}`;
  if (options.key !== null) headers["idempotency-key"] = options.key ?? uid();
  const res = await fetch(`${stack.url}/functions/v1/${fn}`, {
    method: "POST",
    headers,
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
  const text = await res.text();
  let parsed = {};
  try {
    parsed = JSON.parse(text);
  } catch { /* not JSON */ }
  return { status: res.status, headers: res.headers, body: parsed, text };
}

/** A supabase-js client with the publishable key, acting as `token`'s user. */
export function clientAs(stack: Stack, token: string): SupabaseClient {
  return createClient(stack.url, stack.publishableKey, {
    auth: { persistSession: false },
    global: { headers: { Authorization: `Bearer ${token}` } },
  });
}

/** An organiser with (unless `payouts: null`) a payout account, and an event with one GA tier. */
export interface Organiser {
  id: string;
  token: string;
  account: string;
  eventId: string;
  tierId: string;
  client: SupabaseClient;
}

export async function newOrganiser(
  stack: Stack,
  options: { payouts?: boolean | null; capacity?: number } = {},
): Promise<Organiser> {
  const id = uid();
  await stack.db.query("insert into auth.users (id, email) values ($1, $2)", [id, `org-${id}@example.com`]);
  const account = `acct_test_${id.replaceAll("-", "").slice(0, 16)}`;
  if (options.payouts !== null) {
    await stack.db.query(
      "insert into events.payout_accounts (organiser_id, stripe_account_id, payouts_enabled) values ($1, $2, $3)",
      [id, account, options.payouts ?? true],
    );
  }
  const token = await stack.userToken(id);
  const client = clientAs(stack, token);
  const { data: event, error } = await client.rpc("create_event", {
    p_title: "Test event",
    p_starts_at: new Date(Date.now() + 30 * 86_400_000).toISOString(),
    p_tiers: [{ name: "GA", price_cents: 2500, capacity: options.capacity ?? 500 }],
  });
  assert.equal(error, null, JSON.stringify(error));
  return { id, token, account, eventId: event.id, tierId: event.tiers[0].id, client };
}

/** A pending order (a Checkout Session, not paid) of `quantity` GA tickets by `buyer`. */
export async function openOrder(stack: Stack, organiser: Organiser, quantity = 2, buyer = BUYER) {
  const checkout = await call(stack, "enhanced-checkout", {
    event_id: organiser.eventId,
    items: [{ tier_id: organiser.tierId, quantity }],
  }, { token: await stack.userToken(buyer) });
  assert.equal(checkout.status, 201, checkout.text);
  return {
    orderId: checkout.body.order_id as string,
    sessionId: checkout.body.checkout_session_id as string,
    total: checkout.body.amount_total as number,
    subtotal: 2500 * quantity,
  };
}

/** A paid order: checkout, paid in the emulator, its completion delivered to stripe-webhook. */
export async function paidOrder(stack: Stack, organiser: Organiser, quantity = 2) {
  const order = await openOrder(stack, organiser, quantity);
  const { session, deliveries } = await stack.stripe!.paySession(order.sessionId);
  assert.deepEqual(deliveries.map((d) => d.status), [200], JSON.stringify(deliveries));
  return { ...order, paymentIntent: session.payment_intent as string };
}

/**
 * Everything a refused request must leave as it was: the row count of every table of the project's
 * schemas (read from the catalog, so a new table is counted without being listed here) and the requests
 * that change something at Stripe (POSTs; a payout reads Stripe's balance before deciding).
 */
export async function footprint(stack: Stack) {
  const tables = await stack.db.query<{ name: string }>(
    `select format('%I.%I', table_schema, table_name) as name from information_schema.tables
     where table_schema in ('public', 'private', 'events', 'wallet') and table_type = 'BASE TABLE'
     order by 1`,
  );
  const [row] = await stack.db.query<Record<string, number>>(
    `select ${tables.map((t, i) => `(select count(*)::int from ${t.name}) as "${i}"`).join(", ")}`,
  );
  return {
    ...Object.fromEntries(tables.map((t, i) => [t.name, row[String(i)]])),
    stripe_calls: stripeWrites(stack),
  };
}

/** Requests that change something at Stripe so far (a payout reads Stripe's balance first, a GET). */
export function stripeWrites(stack: Stack): number {
  return stack.stripe!.requests.filter((r) => r.method !== "GET").length;
}

/** The organiser's wallet, as get_wallet() answers it. */
export async function wallet(organiser: { client: SupabaseClient }, currency = "usd") {
  const { data, error } = await organiser.client.rpc("get_wallet", { p_currency: currency });
  assert.equal(error, null);
  return data as {
    currency: string;
    balance_cents: number;
    available_cents: number;
    pending_funds_cents: number;
    pending_payout_cents: number;
  };
}

/** The ledger's invariants over every wallet and order (tools/chaos/invariants.ts, shared with `npm run chaos`). */
export async function assertLedger(stack: Stack): Promise<void> {
  assert.deepEqual(await ledgerViolations(stack.db), [], "the ledger's invariants");
}

/**
 * A test on the shared stack that leaves it as it found it (no faults, no hooks, webhooks delivered as they
 * happen) and checks the ledger's invariants afterwards.
 */
export function ledgerTest(name: string, fn: (stack: Stack) => Promise<void>): void {
  stackTest(name, async () => {
    const stack = await sharedStack();
    try {
      await fn(stack);
    } finally {
      delete testHooks.afterStripe;
      stack.stripe!.takeEvents(); // what a test held back is not delivered to the next one
      stack.stripe!.options.autoDeliver = true;
      stack.stripe!.clearFaults();
    }
    await assertLedger(stack);
  });
}
