/**
 * `npm run bench`: what exactly-once costs, and whether it holds its targets, measured on this machine in
 * one run. Every scenario is repeated (BENCH_REPEAT, default 3) and reported as the median of its runs
 * with their range; compared scenarios run interleaved, so that load from elsewhere falls on both.
 *
 * - bare, floor, wrapped, replay, checkout (x1, x16), checkout replay: the cost of exactly-once;
 * - checkout floor: start_checkout + finish_checkout called directly (the database's share of a checkout);
 * - ticket drop: 2,000 buyers for 200 seats of one tier at concurrency 64, against the same over 20 tiers;
 * - growth: the claim's p50 with 1,000,000 rows against 10,000 (two databases, claims alternating);
 * - purge: 1,000,000 expired rows purged in batches beside a claimer;
 * - functions: CPU per request of each function and cold start of each bundle.
 *
 * Needs a PostgreSQL server (DATABASE_URL, default the local one); works in databases of its own and drops
 * them. Prints a table and the targets, writes bench/results/latest.json, docs/benchmarks.md and
 * docs/benchmark.svg. Exits 1 if the ticket drop sells anything but exactly its seats.
 * @module
 */
import Stripe from "npm:stripe@23.1.0";
import { withStripeIdempotency } from "../supabase/functions/_shared/idempotency.ts";
import { stripeOperationStore } from "../supabase/functions/_shared/idempotency_store.ts";
import { stripeClient } from "../supabase/functions/_shared/stripe.ts";
import { connectPostgres, prepareDatabase } from "../tools/local/db.ts";
import { EMULATOR_SECRET_KEY, type Stack, startStack } from "../tools/local/stack.ts";
import { drop, type DropRun, makeBuyers } from "./drop.ts";
import { type FunctionCost, functionCosts, type Requests } from "./functions.ts";
import { connect, databaseUrl, fill, growth, purge, type PurgeRun } from "./growth.ts";
import { log, measure, type Run, type Spread, spread } from "./lib.ts";
import { writeReport } from "./report.ts";

const adminUrl = Deno.env.get("DATABASE_URL") || "postgresql://postgres@127.0.0.1:5432/postgres";
const N = Number(Deno.env.get("BENCH_OPS") ?? 300);
const REPEAT = Number(Deno.env.get("BENCH_REPEAT") ?? 3);
const BIG = Number(Deno.env.get("BENCH_ROWS") ?? 1_000_000);
const SMALL = 10_000;
const BUYERS = 2_000;
const SEATS = 200;
const DROP_CONCURRENCY = 64;
const ONLY = new Set((Deno.env.get("BENCH_ONLY") ?? "table,drop,floor,growth,purge,functions").split(","));
const EVENT = "33333333-3333-4333-8333-333333333333";
const GA = "44444444-4444-4444-8444-444444444444";
const BUYER = "22222222-2222-4222-8222-222222222222";
const ORGANISER = "11111111-1111-4111-8111-111111111111";

/** One scenario's figures: medians of the repetitions, and the range of p50. */
export interface Result {
  name: string;
  concurrency: number;
  ops: number;
  repeats: number;
  opsPerSecond: number;
  p50: number;
  p99: number;
  p50Range: [number, number];
  roundTrips: number | null;
  stripeCalls: number | null;
}

const name = `bench_${Date.now().toString(36)}`;
const names = { main: name, small: `${name}_small`, big: `${name}_big` };
const admin = connect(adminUrl);
const urlOf = (db: string) => databaseUrl(adminUrl, db);
Deno.env.set("LOG_LEVEL", "warn");

// The schema once, in the main database; the growth databases are copies of it made before anyone connects.
await admin.unsafe(`create database "${name}"`);
const created = [name];
{
  const db = connectPostgres(urlOf(name), 2);
  await prepareDatabase(db, { databaseUrl: urlOf(name) });
  await db.close();
}
await admin.unsafe(`create database "${names.small}" template "${name}" strategy file_copy`);
created.push(names.small);

// The million-row table is the same for the same schema: it is filled once into a database kept between runs
// (bench_cache_<hash of the migrations and of the fill>), of which each run makes copies; BENCH_FRESH=1
// fills it again. Caches of other schemas are dropped.
const cache = `bench_cache_${await fingerprint()}`;
if (ONLY.has("growth") || ONLY.has("purge")) {
  for (
    const { datname }
      of await admin`select datname from pg_catalog.pg_database where datname like 'bench_cache_%'`
  ) {
    if (datname !== cache || Deno.env.get("BENCH_FRESH") === "1") {
      await admin.unsafe(`drop database "${datname}" with (force)`);
    }
  }
  const [{ n }] = await admin`select count(*)::int as n from pg_catalog.pg_database where datname = ${cache}`;
  if (n === 0) {
    log(`filling ${cache} with ${BIG.toLocaleString("en")} finished, expired rows (kept for the next runs)`);
    await admin.unsafe(`create database "${cache}_new" template "${name}" strategy file_copy`);
    const sql = connect(urlOf(`${cache}_new`));
    try {
      await fill(sql, BIG);
    } finally {
      await sql.end();
    }
    await admin`checkpoint`;
    await admin.unsafe(`alter database "${cache}_new" rename to "${cache}"`);
  }
  await admin.unsafe(`create database "${names.big}" template "${cache}" strategy file_copy`);
  created.push(names.big);
}

// the functions in this process, as the figures in docs/benchmarks.md were measured (npm run dev runs each
// function in a process of its own since issue 12); the functions' costs are measured in a second stack
// with process isolation
const stack = await startStack({
  databaseUrl: urlOf(name),
  port: 0,
  emulatorPort: 0,
  poolSize: 20,
  functionsIsolation: "in-process",
});
const direct = connect(urlOf(name));
const rpcTotal = () => [...stack.rpcCalls.values()].reduce((a, b) => a + b, 0);
const stripeTotal = () => stack.stripe!.requests.length;

interface Scenario {
  name: string;
  concurrency: number;
  ops: number;
  op: (i: number, rep: number) => Promise<unknown>;
  counted: boolean;
}

/** Runs the scenarios `REPEAT` times, interleaved (a, b, c, a, b, c, ...); the median of each. */
async function interleaved(scenarios: Scenario[]): Promise<Result[]> {
  const runs = scenarios.map(() => [] as (Run & { rt: number; sc: number })[]);
  for (let rep = 0; rep < REPEAT; rep++) {
    for (const [k, s] of scenarios.entries()) {
      log(`${s.name} x${s.concurrency}, ${s.ops} operations, run ${rep + 1}/${REPEAT}`);
      await measure(Math.min(20, s.ops), s.concurrency, (i) => s.op(1_000_000 + rep * 1000 + i, rep)); // warm-up
      const [rpc0, stripe0] = [rpcTotal(), stripeTotal()];
      const m = await measure(s.ops, s.concurrency, (i) => s.op(i, rep));
      runs[k].push({ ...m, rt: (rpcTotal() - rpc0) / s.ops, sc: (stripeTotal() - stripe0) / s.ops });
    }
  }
  return scenarios.map((s, k) => {
    const p50 = spread(runs[k].map((r) => r.p50));
    return {
      name: s.name,
      concurrency: s.concurrency,
      ops: s.ops,
      repeats: REPEAT,
      opsPerSecond: spread(runs[k].map((r) => r.opsPerSecond)).median,
      p50: p50.median,
      p99: spread(runs[k].map((r) => r.p99)).median,
      p50Range: [p50.min, p50.max],
      roundTrips: s.counted ? spread(runs[k].map((r) => r.rt)).median : null,
      stripeCalls: spread(runs[k].map((r) => r.sc)).median,
    };
  });
}

const checkoutRequest = (token: string, key: string, eventId = EVENT, tierId = GA) =>
  fetch(`${stack.url}/functions/v1/enhanced-checkout`, {
    method: "POST",
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json", "idempotency-key": key },
    body: JSON.stringify({ event_id: eventId, items: [{ tier_id: tierId, quantity: 1 }] }),
  });

let results: Result[] = [];
let checkoutFloor: Result[] = [];
let drops: { one: DropRun[]; spread: DropRun[] } | null = null;
let claimScaling: Awaited<ReturnType<typeof growth>> | null = null;
const purges: PurgeRun[] = [];
let functions: FunctionCost[] = [];
const stacks: Stack[] = [stack];
try {
  const stripe = stripeClient();
  const intent = (key: string) =>
    stripe.paymentIntents.create({ amount: 1000, currency: "usd" }, { idempotencyKey: key });
  const run = crypto.randomUUID().slice(0, 8);
  const token = await stack.userToken(BUYER);
  await direct`update events.ticket_tiers set capacity = 10000000 where id = ${GA}`;

  if (ONLY.has("table")) {
    const store = stripeOperationStore();
    const wrapped = (i: number, rep: number) =>
      withStripeIdempotency(
        {
          operationType: "bench:create",
          operationId: `wrapped-${run}-${rep}-${i}`,
          params: { amount: 1000, currency: "usd" },
        },
        intent,
        { store },
      );
    const checkout = (key: string) =>
      checkoutRequest(token, key).then(async (res) => {
        await res.body?.cancel();
        if (res.status !== 201) throw new Error(`checkout answered ${res.status}`);
      });
    results = await interleaved([
      {
        name: "bare",
        concurrency: 1,
        ops: N,
        op: (i, rep) => intent(`bare:${run}:${rep}:${i}`),
        counted: false,
      },
      {
        name: "floor",
        concurrency: 1,
        ops: N,
        counted: false,
        op: async (i, rep) => {
          const id = `floor-${run}-${rep}-${i}`;
          const [{ claim }] = await direct`select public.claim_stripe_operation('bench:create', ${id},
            ${`bench:create:${id}:k`}, '{"amount": 1000}') as claim`;
          await direct`select public.complete_stripe_operation('bench:create', ${id}, ${claim.fencing_token},
            ${`pi_${id}`}, '{}')`;
        },
      },
      { name: "wrapped", concurrency: 1, ops: N, op: wrapped, counted: true },
      { name: "replay", concurrency: 1, ops: N, op: wrapped, counted: true },
      {
        name: "checkout",
        concurrency: 1,
        ops: N,
        op: (i, rep) => checkout(`c1-${run}-${rep}-${i}`),
        counted: true,
      },
      {
        name: "checkout",
        concurrency: 16,
        ops: N * 2,
        op: (i, rep) => checkout(`c16-${run}-${rep}-${i}`),
        counted: true,
      },
      {
        name: "checkout replay",
        concurrency: 16,
        ops: N * 2,
        op: (i, rep) => checkout(`c16-${run}-${rep}-${i}`),
        counted: true,
      },
    ]);
  }

  if (ONLY.has("floor")) {
    // start_checkout + finish_checkout as the function calls them, over one direct connection, against
    // the full path at the same concurrency, interleaved
    const floorCheckout = async (i: number, rep: number) => {
      const key = `floor-${run}-${rep}-${i}`;
      const orderId = crypto.randomUUID();
      const [{ s }] =
        await direct`select public.start_checkout(${`user:${BUYER}`}, ${key}, 'enhanced-checkout',
        ${"f".repeat(64)}, ${orderId}, ${`checkout:create:${orderId}:${crypto.randomUUID()}`}, ${EVENT},
        ${direct.json([{ tier_id: GA, quantity: 1 }])}, 'hosted', 'http://localhost', ${BUYER}) as s`;
      if (s.request.outcome !== "acquired" || s.stripe.outcome !== "acquired") {
        throw new Error(JSON.stringify(s));
      }
      const session = {
        id: `cs_floor_${key}`,
        url: "https://checkout.stripe.com/c/pay/x",
        client_secret: null,
        expires_at: 2000000000,
        amount_total: s.order.total_cents,
        currency: "usd",
      };
      await direct`select public.finish_checkout(${`user:${BUYER}`}, ${key}, ${s.request.fencing_token}, 201,
        ${direct.json({ "content-type": "application/json" })}, ${JSON.stringify({ order_id: orderId })},
        ${orderId}, ${s.stripe.fencing_token}, ${direct.json(session)})`;
    };
    checkoutFloor = await interleaved([
      { name: "checkout floor (SQL)", concurrency: 1, ops: N, op: floorCheckout, counted: false },
      {
        name: "checkout (full path)",
        concurrency: 1,
        ops: N,
        counted: true,
        op: (i, rep) =>
          checkoutRequest(token, `full-${run}-${rep}-${i}`).then(async (res) => {
            await res.body?.cancel();
            if (res.status !== 201) throw new Error(`checkout answered ${res.status}`);
          }),
      },
    ]);
  }

  if (ONLY.has("drop")) {
    log(`making ${BUYERS} buyers`);
    const ids = await makeBuyers(direct, BUYERS);
    const tokens = await Promise.all(ids.map((id) => stack.userToken(id)));
    const ctx = { url: stack.url, direct, tokens };
    drops = { one: [], spread: [] };
    for (let rep = 0; rep < REPEAT; rep++) {
      // which goes first alternates
      const order = rep % 2 ? [20, 1] : [1, 20];
      for (const tiers of order) {
        const d = await drop(ctx, tiers, SEATS, DROP_CONCURRENCY);
        (tiers === 1 ? drops.one : drops.spread).push(d);
      }
    }
  }

  if (ONLY.has("growth") || ONLY.has("purge")) {
    const small = connect(urlOf(names.small));
    const big = connect(urlOf(names.big));
    await fill(small, SMALL);
    await admin`checkpoint`;
    if (ONLY.has("growth")) claimScaling = await growth(small, big, [SMALL, BIG], Math.max(REPEAT, 5), 400);
    await small.end();
    await big.end();
    if (ONLY.has("purge")) {
      for (let rep = 0; rep < REPEAT; rep++) {
        const copy = `${name}_purge${rep}`;
        await admin.unsafe(`create database "${copy}" template "${cache}" strategy file_copy`);
        created.push(copy);
        log(`purging ${BIG.toLocaleString("en")} expired rows beside a claimer, run ${rep + 1}/${REPEAT}`);
        const p = await purge(urlOf(copy), 1000, 2000);
        log(`purge: ${JSON.stringify(p)}`);
        purges.push(p);
        await admin.unsafe(`drop database "${copy}" with (force)`);
      }
    }
  }

  if (ONLY.has("functions")) {
    log("functions: CPU per request (process isolation) and cold start of each bundle");
    const isolated = await startStack({
      databaseUrl: urlOf(name),
      port: 0,
      emulatorPort: 0,
      poolSize: 4,
      functionsIsolation: "process",
    });
    stacks.push(isolated);
    const fn = (f: string) => `${isolated.url}/functions/v1/${f}`;
    const userToken = await isolated.userToken(BUYER);
    const organiserToken = await isolated.userToken(ORGANISER);
    const json = (t: string, key: string) => ({
      authorization: `Bearer ${t}`,
      "content-type": "application/json",
      "idempotency-key": key,
    });
    const secret = { authorization: `Bearer ${isolated.secretKey}`, apikey: isolated.secretKey };
    const webhooks = new Stripe(EMULATOR_SECRET_KEY).webhooks;
    const requests: Requests = {
      "enhanced-checkout": {
        what: "checkout, 201",
        send: (i) => checkoutRequest(userToken, `fn-${run}-${i}`).then((r) => r),
      },
      "guest-checkout": {
        what: "guest checkout, 201",
        send: (i) =>
          fetch(fn("guest-checkout"), {
            method: "POST",
            headers: { ...json(isolated.publishableKey, `g-${run}-${i}`), apikey: isolated.publishableKey },
            body: JSON.stringify({
              event_id: EVENT,
              items: [{ tier_id: GA, quantity: 1 }],
              email: `guest-${run}-${i}@example.com`,
            }),
          }),
      },
      refunds: {
        what: "refund of an unknown order, 404",
        send: (i) =>
          fetch(fn("refunds"), {
            method: "POST",
            headers: json(organiserToken, `r-${run}-${i}`),
            body: JSON.stringify({ order_id: crypto.randomUUID() }),
          }),
      },
      payouts: {
        what: "payout beyond the balance, refused",
        send: (i) =>
          fetch(fn("payouts"), {
            method: "POST",
            headers: json(organiserToken, `p-${run}-${i}`),
            body: JSON.stringify({ amount_cents: 100000 }),
          }),
      },
      "stripe-webhook": {
        what: "signed event, 200",
        send: async (i) => {
          const payload = JSON.stringify({
            id: `evt_bench_${run}_${i}`,
            object: "event",
            type: "customer.created",
            created: Math.floor(Date.now() / 1000),
            livemode: false,
            data: { object: { id: `cus_${i}`, object: "customer" } },
          });
          const signature = await webhooks.generateTestHeaderStringAsync({ payload, secret: "whsec_local" });
          return fetch(fn("stripe-webhook"), {
            method: "POST",
            headers: { "stripe-signature": signature, "content-type": "application/json" },
            body: payload,
          });
        },
      },
      "stripe-reconcile": {
        what: "reconciler run, 200",
        send: () => fetch(fn("stripe-reconcile"), { method: "POST", headers: secret }),
      },
      "stripe-audit": {
        what: "audit run, 200",
        send: () => fetch(fn("stripe-audit"), { method: "POST", headers: secret }),
      },
    };
    const env: Record<string, string> = {
      SUPABASE_URL: isolated.url,
      SUPABASE_PUBLISHABLE_KEYS: JSON.stringify({ default: isolated.publishableKey }),
      SUPABASE_SECRET_KEYS: JSON.stringify({ default: isolated.secretKey }),
      SUPABASE_JWKS: JSON.stringify(isolated.keys.jwks),
      STRIPE_SECRET_KEY: EMULATOR_SECRET_KEY,
      STRIPE_WEBHOOK_SECRET: "whsec_local",
      STRIPE_API_BASE: isolated.stripeApiBase ?? "",
      LOG_LEVEL: "warn",
    };
    for (const k of ["PATH", "HOME", "DENO_DIR", "TMPDIR"]) if (Deno.env.get(k)) env[k] = Deno.env.get(k)!;
    functions = await functionCosts(isolated, requests, env, 20, REPEAT);
  }

  await writeReport({
    date: new Date().toISOString(),
    machine: await machine(),
    repeats: REPEAT,
    results,
    checkoutFloor,
    drop: drops && {
      buyers: BUYERS,
      seats: SEATS,
      concurrency: DROP_CONCURRENCY,
      one: summary(drops.one),
      spread: summary(drops.spread),
    },
    claimScaling,
    purge: purges.length
      ? {
        rows: BIG,
        runs: purges,
        longestClaimMs: spread(purges.map((p) => p.longestMs)),
        baselineLongestMs: spread(purges.map((p) => p.baselineLongestMs)),
        seconds: spread(purges.map((p) => p.seconds)),
      }
      : null,
    functions,
  });
} finally {
  await direct.end();
  for (const s of stacks) await s.close();
  for (const db of created.reverse()) await admin.unsafe(`drop database if exists "${db}" with (force)`);
  await admin.end();
}

function summary(runs: DropRun[]) {
  return {
    runs,
    opsPerSecond: spread(runs.map((r) => r.opsPerSecond)),
    p50: spread(runs.map((r) => r.p50)),
    p99: spread(runs.map((r) => r.p99)),
  };
}

/** The drop's summary: medians and ranges over the repetitions. */
export type DropSummary = ReturnType<typeof summary>;
export type { Spread };

/** A hash of what the cached million-row database depends on: the migrations, the fill, the row count. */
async function fingerprint(): Promise<string> {
  const dir = new URL("../supabase/migrations/", import.meta.url);
  const files = [...Deno.readDirSync(dir)].map((e) => e.name).filter((f) => f.endsWith(".sql")).sort();
  const parts = await Promise.all(files.map((f) => Deno.readTextFile(new URL(f, dir))));
  parts.push(await Deno.readTextFile(new URL("./growth.ts", import.meta.url)), String(BIG));
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(parts.join("\0")));
  return [...new Uint8Array(digest)].slice(0, 6).map((b) => b.toString(16).padStart(2, "0")).join("");
}

async function machine() {
  const cpu = (await Deno.readTextFile("/proc/cpuinfo")).match(/model name\s*:\s*(.+)/)?.[1] ?? "unknown";
  const memory = (await Deno.readTextFile("/proc/meminfo")).match(/MemTotal:\s*(\d+)/)?.[1];
  const load = (await Deno.readTextFile("/proc/loadavg")).split(" ").slice(0, 3).join(" ");
  const [{ version }] = await admin`select current_setting('server_version') as version`;
  return {
    cpu,
    cores: navigator.hardwareConcurrency,
    memoryGiB: memory ? Math.round(Number(memory) / 1024 / 1024) : null,
    postgres: version,
    deno: Deno.version.deno,
    os: `${Deno.build.os} ${Deno.build.arch}`,
    loadAverage: load,
  };
}
