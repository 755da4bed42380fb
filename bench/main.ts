/**
 * `npm run bench`: what exactly-once costs, measured on this machine in one run.
 *
 * Scenarios, side by side:
 * - bare: the Stripe call alone against the emulator (no database);
 * - floor: the same state transitions (claim + complete) as raw SQL over one direct connection;
 * - wrapped: withStripeIdempotency (claim -> Stripe -> complete) through supabase-js and the REST gateway;
 * - replay: wrapped calls on completed operations;
 * - checkout: enhanced-checkout end to end through the local stack, at concurrency 1 and 16, and replays.
 * Then the claim's cost with 10,000 and with 1,000,000 rows in the table, and the longest a claim waits
 * while 1,000,000 expired rows are purged.
 *
 * Needs a PostgreSQL server (DATABASE_URL, default the local one); works in a database of its own and
 * drops it. Prints a table, writes bench/results/latest.json, docs/benchmarks.md and docs/benchmark.svg.
 * @module
 */
import postgres from "npm:postgres@3.4.9";
import { withStripeIdempotency } from "../supabase/functions/_shared/idempotency.ts";
import { stripeOperationStore } from "../supabase/functions/_shared/idempotency_store.ts";
import { stripeClient } from "../supabase/functions/_shared/stripe.ts";
import { startStack } from "../tools/local/stack.ts";
import { writeReport } from "./report.ts";

const adminUrl = Deno.env.get("DATABASE_URL") || "postgresql://postgres@127.0.0.1:5432/postgres";
const N = Number(Deno.env.get("BENCH_OPS") ?? 300);
const BIG = Number(Deno.env.get("BENCH_ROWS") ?? 1_000_000);
const EVENT = "33333333-3333-4333-8333-333333333333";
const GA = "44444444-4444-4444-8444-444444444444";
const BUYER = "22222222-2222-4222-8222-222222222222";

/** One scenario's figures. */
export interface Result {
  name: string;
  concurrency: number;
  ops: number;
  opsPerSecond: number;
  p50: number;
  p99: number;
  roundTrips: number | null;
  stripeCalls: number | null;
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))];
}

/** Runs `op(i)` `ops` times with `concurrency` in flight; latencies in milliseconds. */
async function measure(ops: number, concurrency: number, op: (i: number) => Promise<unknown>) {
  const latencies: number[] = [];
  let next = 0;
  const started = performance.now();
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (next < ops) {
      const i = next++;
      const t = performance.now();
      await op(i);
      latencies.push(performance.now() - t);
    }
  }));
  const seconds = (performance.now() - started) / 1000;
  latencies.sort((a, b) => a - b);
  return { opsPerSecond: ops / seconds, p50: percentile(latencies, 0.5), p99: percentile(latencies, 0.99) };
}

const log = (msg: string) => console.error(`[bench] ${msg}`);

const name = `bench_${Date.now().toString(36)}`;
const admin = postgres(adminUrl, { max: 1, onnotice: () => {} });
await admin.unsafe(`create database "${name}"`);
const url = new URL(adminUrl);
url.pathname = `/${name}`;
Deno.env.set("LOG_LEVEL", "warn");
// the functions in this process, as the figures in docs/benchmarks.md were measured (npm run dev runs each
// function in a process of its own since issue 12)
const stack = await startStack({
  databaseUrl: url.toString(),
  port: 0,
  emulatorPort: 0,
  poolSize: 20,
  functionsIsolation: "in-process",
});
const direct = postgres(url.toString(), { max: 1, onnotice: () => {} });
const results: Result[] = [];
const rpcTotal = () => [...stack.rpcCalls.values()].reduce((a, b) => a + b, 0);
const stripeTotal = () => stack.stripe!.requests.length;

async function scenario(
  name: string,
  concurrency: number,
  ops: number,
  op: (i: number) => Promise<unknown>,
  counted = true,
) {
  log(`${name} (concurrency ${concurrency}, ${ops} operations)`);
  await measure(Math.min(20, ops), concurrency, (i) => op(ops + i)); // warm-up
  const [rpc0, stripe0] = [rpcTotal(), stripeTotal()];
  const m = await measure(ops, concurrency, op);
  results.push({
    name,
    concurrency,
    ops,
    ...m,
    roundTrips: counted ? (rpcTotal() - rpc0) / ops : null,
    stripeCalls: (stripeTotal() - stripe0) / ops,
  });
}

try {
  const stripe = stripeClient();
  const intent = (key: string) =>
    stripe.paymentIntents.create({ amount: 1000, currency: "usd" }, { idempotencyKey: key });
  const run = crypto.randomUUID().slice(0, 8);

  await scenario("bare", 1, N, (i) => intent(`bare:${run}:${i}`), false);

  await scenario("floor", 1, N, async (i) => {
    const [{ claim }] =
      await direct`select public.claim_stripe_operation('bench:create', ${`floor-${run}-${i}`},
      ${`bench:create:floor-${run}-${i}:k`}, '{"amount": 1000}') as claim`;
    await direct`select public.complete_stripe_operation('bench:create', ${`floor-${run}-${i}`},
      ${claim.fencing_token}, ${`pi_floor_${i}`}, '{}')`;
  }, false);

  const store = stripeOperationStore();
  const wrapped = (i: number) =>
    withStripeIdempotency(
      {
        operationType: "bench:create",
        operationId: `wrapped-${run}-${i}`,
        params: { amount: 1000, currency: "usd" },
      },
      intent,
      { store },
    );
  await scenario("wrapped", 1, N, wrapped);
  await scenario("replay", 1, N, wrapped);

  const token = await stack.userToken(BUYER);
  const checkout = (key: string) =>
    fetch(`${stack.url}/functions/v1/enhanced-checkout`, {
      method: "POST",
      headers: {
        authorization: `Bearer ${token}`,
        "content-type": "application/json",
        "idempotency-key": key,
      },
      body: JSON.stringify({ event_id: EVENT, items: [{ tier_id: GA, quantity: 1 }] }),
    }).then(async (res) => {
      await res.body?.cancel();
      if (res.status !== 201) throw new Error(`checkout answered ${res.status}`);
    });
  await direct`update events.ticket_tiers set capacity = 1000000 where id = ${GA}`;
  await scenario("checkout", 1, N, (i) => checkout(`c1-${run}-${i}`));
  await scenario("checkout", 16, N * 2, (i) => checkout(`c16-${run}-${i}`));
  await scenario("checkout replay", 16, N * 2, (i) => checkout(`c16-${run}-${i}`));

  // The claim as the table grows: p50 of new claims with 10,000 rows, then with BIG rows.
  const fill = async (upTo: number) => {
    const [{ n }] = await direct`select count(*)::int as n from public.stripe_idempotency_keys
      where operation_type = 'bench:fill'`;
    log(`adding ${upTo - n} completed, expired rows to stripe_idempotency_keys (${upTo} in all)`);
    await direct.unsafe(`
      insert into public.stripe_idempotency_keys (operation_type, operation_id, stripe_idempotency_key, status,
        stripe_resource_id, request_fingerprint, request_params, completed_at, expires_at)
      select 'bench:fill', 'fill-' || i, 'bench:fill:fill-' || i || ':' || md5(i::text), 'completed', 'pi_' || i,
        md5(i::text), '{"amount": 1000}', now() - interval '40 days', now() - interval '10 days'
      from generate_series(${n + 1}, ${upTo}) as i`);
    await direct`analyze public.stripe_idempotency_keys`;
  };
  const claimP50 = async (label: string) => {
    const m = await measure(2000, 1, async (i) => {
      await direct`select public.claim_stripe_operation('bench:claim', ${`${label}-${run}-${i}`},
        ${`bench:claim:${label}-${run}-${i}:k`}, '{"amount": 1}')`;
    });
    return m.p50;
  };
  await fill(10_000);
  const claimSmall = await claimP50("small");
  await fill(BIG);
  const claimBig = await claimP50("big");

  // Purging BIG expired rows while another connection claims: the longest claim.
  log(`purging ${BIG} expired rows while claiming`);
  const claimer = postgres(url.toString(), { max: 1, onnotice: () => {} });
  let purging = true;
  let longest = 0;
  let claims = 0;
  const claiming = (async () => {
    while (purging) {
      const t = performance.now();
      await claimer`select public.claim_stripe_operation('bench:during', ${`during-${run}-${claims}`},
        ${`bench:during:${claims}:k`}, '{"amount": 1}')`;
      longest = Math.max(longest, performance.now() - t);
      claims++;
    }
  })();
  const purgeStarted = performance.now();
  let purged = 0;
  for (;;) {
    const [{ r }] = await direct`select public.purge_expired_idempotency(1000) as r`;
    purged += r.stripe_operations;
    if (r.stripe_operations === 0) break;
  }
  const purgeSeconds = (performance.now() - purgeStarted) / 1000;
  purging = false;
  await claiming;
  await claimer.end();

  const report = {
    date: new Date().toISOString(),
    machine: await machine(),
    results,
    claimScaling: {
      rowsSmall: 10_000,
      rowsBig: BIG,
      p50Small: claimSmall,
      p50Big: claimBig,
      ratio: claimBig / claimSmall,
    },
    purge: { rows: purged, seconds: purgeSeconds, concurrentClaims: claims, longestClaimMs: longest },
  };
  await writeReport(report);
} finally {
  await direct.end();
  await stack.close();
  await admin.unsafe(`drop database if exists "${name}" with (force)`);
  await admin.end();
}

async function machine() {
  const cpu = (await Deno.readTextFile("/proc/cpuinfo")).match(/model name\s*:\s*(.+)/)?.[1] ?? "unknown";
  const memory = (await Deno.readTextFile("/proc/meminfo")).match(/MemTotal:\s*(\d+)/)?.[1];
  const [{ version }] = await admin`select current_setting('server_version') as version`;
  return {
    cpu,
    cores: navigator.hardwareConcurrency,
    memoryGiB: memory ? Math.round(Number(memory) / 1024 / 1024) : null,
    postgres: version,
    deno: Deno.version.deno,
    os: `${Deno.build.os} ${Deno.build.arch}`,
  };
}
