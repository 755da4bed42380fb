/**
 * `npm run chaos -- --ops N [--seed S] [--restart-db] [--concurrency C] [--report PATH]`: N operations
 * across every function while things break, then the reconciler and the audit, then the invariants.
 *
 * - A PostgreSQL database of its own on the server at `DATABASE_URL` (default
 *   `postgresql://postgres@127.0.0.1:5432/postgres`), migrated by the Supabase CLI, dropped at the end.
 * - The local stack (gateway, Stripe emulator) in this process and each function in a Deno process of
 *   its own, as in production (`FUNCTIONS_ISOLATION=process`): workers are killed with SIGKILL at random
 *   moments and the host starts new ones; the stack's database connections are ended at random with
 *   `pg_terminate_backend`; with `--restart-db` the PostgreSQL server is restarted once, mid-run.
 * - The emulator injects every fault it has (latency, error_before, rate_limit, error_after with and
 *   without the object made, reset_after, in_flight); people refund and dispute in the dashboard; Stripe's
 *   events arrive late, shuffled and repeated, and failed deliveries are retried as Stripe retries.
 * - Clients are `client/`'s `callIdempotent` (one key per intent, backoff with jitter, `Retry-After`, a
 *   deadline), sometimes twice at once (a double click), and press again after a 500 or a deadline.
 * - At the end: events delivered, leases run out, `stripe-reconcile` and `stripe-audit`, and the
 *   invariants of tools/chaos/invariants.ts. Prints the seed and a report, writes it to `--report`
 *   (default docs/chaos.md; `--report -` writes none), exits 1 on any violation.
 * @module
 */
import postgres from "npm:postgres@3.4.9";
import { createClient } from "npm:@supabase/supabase-js@2.109.0";
import { join } from "node:path";
import {
  callIdempotent,
  DeadlineError,
  fetchTransport,
  memoryStorage,
  ProblemError,
} from "../../client/mod.ts";
import type { Transport } from "../../client/transport.ts";
import { PROJECT_DIR } from "../local/db.ts";
import { generateSigningKey } from "../local/jwt.ts";
import { EMULATOR_SECRET_KEY, type Stack, startStack } from "../local/stack.ts";
import { type Fault, mulberry32, type StripeEvent } from "../local/stripe_emulator/mod.ts";
import { type Checked, checkInvariants, type SuccessAnswer } from "./invariants.ts";

// ---------------------------------------------------------------------------------------------- options

interface Options {
  ops: number;
  seed: number;
  restartDb: boolean;
  concurrency: number;
  report: string | null;
  /** Test only (tests/chaos_runner.test.ts): a Stripe object no operation made, which must fail the run. */
  injectStrayObject: boolean;
}

function parseOptions(args: string[]): Options {
  const options: Options = {
    ops: 1000,
    seed: Date.now() % 1_000_000,
    restartDb: false,
    concurrency: 48,
    report: join(PROJECT_DIR, "docs", "chaos.md"),
    injectStrayObject: false,
  };
  for (let i = 0; i < args.length; i++) {
    const [name, inline] = args[i].split("=", 2);
    const value = () => inline ?? args[++i];
    const int = (what: string) => {
      const n = Number(value());
      if (!Number.isInteger(n) || n < 0) usage(`${what} takes a whole number`);
      return n;
    };
    if (name === "--ops") options.ops = int("--ops");
    else if (name === "--seed") options.seed = int("--seed");
    else if (name === "--concurrency") options.concurrency = Math.max(1, int("--concurrency"));
    else if (name === "--restart-db") options.restartDb = true;
    else if (name === "--report") options.report = value() === "-" ? null : value();
    else if (name === "--inject-stray-object") options.injectStrayObject = true;
    else usage(`unknown argument ${args[i]}`);
  }
  return options;
}

function usage(problem: string): never {
  console.error(`npm run chaos: ${problem}
usage: npm run chaos -- --ops N [--seed S] [--restart-db] [--concurrency C] [--report PATH|-]`);
  Deno.exit(2);
}

// ------------------------------------------------------------------------------------------- randomness

/** A stream of its own for each purpose and each operation, so that interleaving does not change draws. */
function stream(seed: number, label: string, index = 0): () => number {
  let h = 2166136261 ^ seed;
  for (const c of `${label}:${index}`) h = Math.imul(h ^ c.charCodeAt(0), 16777619);
  return mulberry32(h);
}

const pick = <T>(random: () => number, items: T[]): T => items[Math.floor(random() * items.length)];
const between = (random: () => number, lo: number, hi: number) => lo + Math.floor(random() * (hi - lo + 1));
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** An exponential wait with mean `ms`, from `random`. */
const expWait = (random: () => number, ms: number) => Math.min(ms * 5, -Math.log(1 - random()) * ms);

function shuffle<T>(random: () => number, items: T[]): T[] {
  for (let i = items.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [items[i], items[j]] = [items[j], items[i]];
  }
  return items;
}

// -------------------------------------------------------------------------------------------- the output

const print = console.log.bind(console);
const logLines: string[] = [];
const logPath = join(Deno.env.get("TMPDIR") ?? "/tmp", `chaos-${Deno.pid}.log`);

/** The stack's and the workers' log lines go to a file: the terminal gets the runner's own lines. */
function captureLogs(): void {
  const keep = (...args: unknown[]) => {
    logLines.push(args.map((a) => typeof a === "string" ? a : Deno.inspect(a)).join(" "));
  };
  console.log = keep;
  console.error = keep;
  console.warn = keep;
}

async function flushLogs(): Promise<void> {
  if (logLines.length) {
    await Deno.writeTextFile(logPath, logLines.splice(0).join("\n") + "\n", { append: true });
  }
}

// ------------------------------------------------------------------------------------------------ the run

interface Organiser {
  id: string;
  token: string;
  account: string;
  eventId: string;
  tierId: string;
  capacity: number;
}

interface PaidOrder {
  orderId: string;
  organiser: Organiser;
  paymentIntent: string;
  total: number;
}

const FUNCTIONS = ["enhanced-checkout", "guest-checkout", "refunds", "payouts"] as const;
type ClientFunction = typeof FUNCTIONS[number];

/** Counters for the report. */
class Tally {
  answers: Record<string, number> = {};
  outcomes: Record<string, Record<string, number>> = {};
  ops: Record<string, number> = {};
  kills: Record<string, number> = {};
  terminated = 0;
  dbRestarts = 0;
  dbRestart = "";
  deliveries = 0;
  deliveriesRepeated = 0;
  deliveriesFailed = 0;
  paid = 0;
  dashboardRefunds = 0;
  /** The ids of the refunds made in the dashboard (the only refunds without an operation of ours). */
  dashboardRefundIds = new Set<string>();
  disputes = 0;
  disputesClosed = 0;
  doubleClicks = 0;
  pressedAgain = 0;
  errorAfter = { created: 0, notCreated: 0 };
  count(map: Record<string, number>, key: string, n = 1) {
    map[key] = (map[key] ?? 0) + n;
  }
}

const options = parseOptions(Deno.args);
const started = performance.now();
const adminUrl = Deno.env.get("DATABASE_URL") || "postgresql://postgres@127.0.0.1:5432/postgres";
const dbName = `chaos_${options.seed}_${Deno.pid}`;
print(
  `chaos: ${options.ops} operations, seed ${options.seed} (npm run chaos -- --ops ${options.ops} --seed ${options.seed}${
    options.restartDb ? " --restart-db" : ""
  } repeats its draws); the stack's log: ${logPath}`,
);

const admin = postgres(adminUrl, { max: 1, onnotice: () => {}, connect_timeout: 5 });
try {
  await admin`select 1`;
} catch (e) {
  console.error(
    `npm run chaos: cannot reach PostgreSQL at ${new URL(adminUrl).host}: ${(e as Error).message}`,
  );
  Deno.exit(1);
}
await admin.unsafe(`create database "${dbName}"`);
const databaseUrl = Object.assign(new URL(adminUrl), { pathname: `/${dbName}` }).toString();

captureLogs();
Deno.env.set("LOG_LEVEL", Deno.env.get("CHAOS_LOG_LEVEL") ?? "warn");
const logFlusher = setInterval(() => void flushLogs(), 1000);
let stack: Stack | undefined;
let exitCode = 1;
try {
  stack = await startStack({
    databaseUrl,
    port: 0,
    emulatorPort: 0,
    poolSize: 10,
    signingKey: await generateSigningKey(),
    functionsIsolation: "process",
    clientIpHeader: "cf-connecting-ip",
    fundsDelaySeconds: 0,
    initialBalance: { usd: 1_000_000_000 },
  });
  exitCode = await run(stack);
} catch (e) {
  print(`chaos: the run failed: ${(e as Error)?.stack ?? e}`);
} finally {
  clearInterval(logFlusher);
  await stack?.close().catch(() => {});
  if (Deno.env.get("CHAOS_KEEP_DB")) print(`chaos: the database is kept: ${databaseUrl}`);
  else await admin.unsafe(`drop database if exists "${dbName}" with (force)`).catch(() => {});
  await admin.end({ timeout: 5 }).catch(() => {});
  await flushLogs();
}
Deno.exit(exitCode);

async function run(stack: Stack): Promise<number> {
  const emulator = stack.stripe!;
  const tally = new Tally();
  const setupRandom = stream(options.seed, "setup");

  // Setup, calm: organisers with payout accounts and one event each, some small enough to sell out.
  const organisers: Organiser[] = [];
  const organiserCount = Math.min(40, Math.max(4, Math.round(options.ops / 250)));
  for (let i = 0; i < organiserCount; i++) {
    const id = crypto.randomUUID();
    await stack.db.query("insert into auth.users (id, email) values ($1, $2)", [id, `org-${id}@example.com`]);
    const account = `acct_chaos_${id.replaceAll("-", "").slice(0, 16)}`;
    await stack.db.query(
      "insert into events.payout_accounts (organiser_id, stripe_account_id, payouts_enabled) values ($1, $2, true)",
      [id, account],
    );
    const token = await stack.userToken(id);
    const client = createClient(stack.url, stack.publishableKey, {
      auth: { persistSession: false },
      global: { headers: { Authorization: `Bearer ${token}` } },
    });
    const capacity = i % 4 === 0 ? between(setupRandom, 10, 40) : 5000;
    const { data: event, error } = await client.rpc("create_event", {
      p_title: `Chaos event ${i}`,
      p_starts_at: new Date(Date.now() + 30 * 86_400_000).toISOString(),
      p_tiers: [{ name: "GA", price_cents: between(setupRandom, 10, 60) * 100, capacity }],
    });
    if (error) throw new Error(`create_event: ${JSON.stringify(error)}`);
    organisers.push({ id, token, account, eventId: event.id, tierId: event.tiers[0].id, capacity });
  }
  const buyers: string[] = [];
  for (let i = 0; i < 20; i++) {
    const id = crypto.randomUUID();
    await stack.db.query("insert into auth.users (id, email) values ($1, $2)", [
      id,
      `buyer-${id}@example.com`,
    ]);
    buyers.push(await stack.userToken(id));
  }
  const setupSeconds = (performance.now() - started) / 1000;

  // Faults from now on.
  const faultRandom = stream(options.seed, "faults");
  emulator.setChaos({
    probability: 0.3,
    kinds: ["latency", "error_before", "rate_limit", "reset_after", "in_flight"],
    maxLatencyMs: 400,
    // per request from (seed, key, attempt); the product's Stripe keys are random, so a run repeats its
    // draws but not each request's fault (process and database timing vary too)
    seed: options.seed,
  });
  // error_after is armed one at a time (as an explicit fault, taken by the next POST), alternately with and
  // without the object made, so that the report can tell the two apart.
  const errorAfterArmed: boolean[] = [];
  let errorAfterTaken = 0;
  let requestsSeen = 0;
  const armErrorAfter = () => {
    for (; requestsSeen < emulator.requests.length; requestsSeen++) {
      if (emulator.requests[requestsSeen].fault === "error_after") errorAfterTaken++;
    }
    if (errorAfterTaken < errorAfterArmed.length || faultRandom() > 0.3) return;
    const created = errorAfterArmed.length % 2 === 0;
    errorAfterArmed.push(created);
    emulator.addFault({ kind: "error_after", method: "POST", created } satisfies Fault);
  };
  emulator.options.autoDeliver = false;
  const held: StripeEvent[] = [];
  /** Orders paid at Stripe, by session; those whose payment the webhook recorded (organisers see them paid). */
  const paidAtStripe = new Map<string, PaidOrder>();
  const paidOrders: PaidOrder[] = [];
  const paidSessions = new Set<string>();
  const openDisputes: string[] = [];
  const successes: SuccessAnswer[] = [];
  let running = true;

  /** Delivers some of the held events (all with `all`), shuffled, some twice; failures stay held. */
  const deliverSome = async (random: () => number, all: boolean) => {
    held.push(...emulator.takeEvents());
    const batch: StripeEvent[] = [];
    for (let i = held.length - 1; i >= 0; i--) {
      if (all || random() < 0.5) batch.push(...held.splice(i, 1));
    }
    shuffle(random, batch);
    const repeated = batch.filter(() => random() < 0.25);
    tally.deliveriesRepeated += repeated.length;
    const deliveries = await emulator.deliver([...batch, ...repeated], { concurrently: random() < 0.3 });
    tally.deliveries += deliveries.length;
    const delivered = new Set(
      deliveries.filter((d) => d.status >= 200 && d.status < 300).map((d) => d.eventId),
    );
    for (const e of batch) {
      if (!delivered.has(e.id)) {
        tally.deliveriesFailed++;
        held.push(e); // Stripe retries an event until the endpoint takes it
        continue;
      }
      const order = e.type === "checkout.session.completed"
        ? paidAtStripe.get(e.data.object.id as string)
        : null;
      if (order) { // the organiser now sees the order paid
        paidAtStripe.delete(e.data.object.id as string);
        paidOrders.push(order);
      }
    }
  };

  /** One client intent, as client/ sends it; the user presses again after a 500 or a deadline. */
  const intent = async (
    random: () => number,
    fn: ClientFunction,
    body: Record<string, unknown>,
    token: string | null,
    headers: Record<string, string> = {},
  ): Promise<Record<string, unknown> | null> => {
    const base = fetchTransport({ url: stack.url, apikey: stack.publishableKey, accessToken: () => token });
    const transport: Transport = async (endpoint, b, h, signal) => {
      try {
        const answer = await base(endpoint, b, { ...h, ...headers }, signal);
        tally.count(tally.answers, String(answer.status));
        return answer;
      } catch (e) {
        tally.count(tally.answers, "no answer");
        throw e;
      }
    };
    const storage = memoryStorage(); // one user's session: every press of one intent sends one key
    const send = () =>
      callIdempotent<Record<string, unknown>>(transport, fn, body, {
        storage,
        retry: { deadlineMs: 12_000, random },
      });
    const outcome = (o: string) => tally.count(tally.outcomes[fn] ??= {}, o);
    for (let press = 1;; press++) {
      try {
        const doubleClick = random() < 0.08;
        if (doubleClick) tally.doubleClicks++;
        const results = await Promise.allSettled(doubleClick ? [send(), send()] : [send()]);
        const ok = results.find((r) => r.status === "fulfilled");
        for (const r of results) {
          if (r.status === "fulfilled") successes.push({ fn, key: r.value.key, body: r.value.data });
        }
        if (ok) {
          outcome(`${ok.value.status}`);
          return ok.value.data;
        }
        throw (results[0] as PromiseRejectedResult).reason;
      } catch (e) {
        const definite = e instanceof ProblemError && e.status < 500 && e.code !== "operation-in-progress";
        if (definite || press >= 2 || !running) {
          outcome(
            e instanceof ProblemError
              ? `${e.status} ${e.code}`
              : e instanceof DeadlineError
              ? "deadline"
              : "no answer",
          );
          return null;
        }
        tally.pressedAgain++;
        await sleep(between(random, 200, 1500));
      }
    }
  };

  const organiserOf = new Map(organisers.map((o) => [o.eventId, o]));
  const pay = async (random: () => number, answer: Record<string, unknown> | null, eventId: string) => {
    const session = answer?.checkout_session_id as string | undefined;
    if (!session || paidSessions.has(session) || random() < 0.25) return;
    paidSessions.add(session);
    try {
      const { session: paid, event } = await emulator.paySession(session, { deliver: false });
      held.push(event);
      tally.paid++;
      paidAtStripe.set(session, {
        orderId: answer!.order_id as string,
        organiser: organiserOf.get(eventId)!,
        paymentIntent: paid.payment_intent as string,
        total: paid.amount_total as number,
      });
    } catch { /* expired or already paid */ }
  };

  const operation = async (i: number) => {
    const random = stream(options.seed, "op", i);
    armErrorAfter();
    const r = random();
    const organiser = pick(random, organisers);
    const order = paidOrders.length ? pick(random, paidOrders) : null;
    let kind: string;
    if (r < 0.28 || (r >= 0.45 && !order && r < 0.73)) {
      kind = "enhanced-checkout";
      const body = {
        event_id: organiser.eventId,
        items: [{ tier_id: organiser.tierId, quantity: between(random, 1, 3) }],
      };
      await pay(
        random,
        await intent(random, "enhanced-checkout", body, pick(random, buyers)),
        organiser.eventId,
      );
    } else if (r < 0.45) {
      kind = "guest-checkout";
      const body = {
        event_id: organiser.eventId,
        items: [{ tier_id: organiser.tierId, quantity: between(random, 1, 2) }],
        email: `guest-${i % 997}@example.com`,
      };
      const ip = `198.51.${between(random, 0, 255)}.${between(random, 1, 254)}`;
      await pay(
        random,
        await intent(random, "guest-checkout", body, null, { "cf-connecting-ip": ip }),
        organiser.eventId,
      );
    } else if (r < 0.62) {
      kind = "refunds";
      const amount = between(random, 100, Math.max(100, Math.floor(order!.total / 2)));
      await intent(
        random,
        "refunds",
        { order_id: order!.orderId, amount_cents: amount },
        order!.organiser.token,
      );
    } else if (r < 0.73) {
      kind = "payouts";
      await intent(random, "payouts", { amount_cents: between(random, 5, 40) * 100 }, organiser.token);
    } else if (r < 0.76 && order) {
      kind = "dashboard refund";
      try {
        const { result, events } = await emulator.refundFromDashboard(
          order.paymentIntent,
          between(random, 100, 1500),
          {
            deliver: false,
          },
        );
        held.push(...events);
        tally.dashboardRefunds++;
        tally.dashboardRefundIds.add(result.id as string);
      } catch { /* nothing left to refund */ }
    } else if (r < 0.78 && order) {
      kind = "dispute";
      try {
        const { result, events } = await emulator.openDispute(order.paymentIntent, { deliver: false });
        held.push(...events);
        tally.disputes++;
        openDisputes.push(result.id as string);
      } catch { /* disputed already, or refunded in full */ }
      if (openDisputes.length > 1 && random() < 0.5) {
        const id = openDisputes.splice(Math.floor(random() * openDisputes.length), 1)[0];
        try {
          held.push(
            ...(await emulator.closeDispute(id, random() < 0.5 ? "won" : "lost", { deliver: false })).events,
          );
          tally.disputesClosed++;
        } catch { /* closed already */ }
      }
    } else {
      kind = "webhook";
      await deliverSome(random, false);
    }
    tally.count(tally.ops, kind);
  };

  // The killers: function workers (SIGKILL), database connections, and once the database server.
  const killRandom = stream(options.seed, "kills");
  const killer = (async () => {
    while (running) {
      await sleep(expWait(killRandom, 6_000));
      const workers = Object.entries(stack.functions.workers()).filter(([, pids]) => pids.length);
      if (!running || !workers.length) continue;
      const [fn, pids] = pick(killRandom, workers);
      try {
        Deno.kill(pick(killRandom, pids), "SIGKILL");
        tally.count(tally.kills, fn);
      } catch { /* gone already */ }
    }
  })();
  const terminateRandom = stream(options.seed, "terminate");
  const terminator = (async () => {
    while (running) {
      await sleep(expWait(terminateRandom, 2_000));
      if (!running) break;
      try {
        const rows = await admin.unsafe<{ ok: boolean }[]>(
          `select pg_terminate_backend(pid) as ok from pg_stat_activity
           where datname = $1 and pid <> pg_backend_pid() and backend_type = 'client backend'
           order by random() limit 1`,
          [dbName],
        );
        tally.terminated += rows.filter((r) => r.ok).length;
      } catch { /* the server is restarting */ }
    }
  })();
  let done = 0;
  const restartAt = options.restartDb
    ? Math.floor(options.ops * (0.3 + 0.4 * stream(options.seed, "restart")()))
    : -1;
  let restart: Promise<void> | null = null;
  const restartDatabase = async () => {
    // the Debian cluster that serves DATABASE_URL's port (on this machine: 15 main, port 5432)
    const port = new URL(adminUrl).port || "5432";
    const listed = new TextDecoder().decode(
      (await new Deno.Command("pg_lsclusters", { args: ["--no-header"], stdout: "piped" }).output()).stdout,
    );
    const [version, cluster] = listed.split("\n").map((l) => l.trim().split(/\s+/))
      .find((f) => f[2] === port) ?? ["15", "main"];
    const started = performance.now();
    const out = await new Deno.Command("pg_ctlcluster", {
      args: ["--skip-systemctl-redirect", version, cluster, "restart"],
      stdout: "piped",
      stderr: "piped",
    }).output();
    if (!out.success) throw new Error(`pg_ctlcluster restart: ${new TextDecoder().decode(out.stderr)}`);
    tally.dbRestarts++;
    tally.dbRestart =
      `pg_ctlcluster --skip-systemctl-redirect ${version} ${cluster} restart at operation ${done}, ${
        ((performance.now() - started) / 1000).toFixed(1)
      } s`;
  };
  const progressEvery = Math.max(100, Math.round(options.ops / 10));

  // The operations, `concurrency` at a time.
  const chaosStarted = performance.now();
  let next = 0;
  await Promise.all(Array.from({ length: options.concurrency }, async () => {
    while (next < options.ops) {
      const i = next++;
      await operation(i);
      done++;
      if (done === restartAt) restart = restartDatabase();
      if (done % progressEvery === 0) {
        const s = (performance.now() - chaosStarted) / 1000;
        print(`  ${done}/${options.ops} operations, ${s.toFixed(0)} s, ${(done / s).toFixed(1)} ops/s`);
      }
    }
  }));
  const chaosSeconds = (performance.now() - chaosStarted) / 1000;
  running = false;
  await Promise.all([killer, terminator, restart]);
  emulator.clearFaults();
  const faults: Record<string, number> = {};
  for (const r of emulator.requests) if (r.fault) tally.count(faults, r.fault);
  const taken = errorAfterArmed.slice(0, faults.error_after ?? 0);
  tally.errorAfter.created = taken.filter((c) => c).length;
  tally.errorAfter.notCreated = taken.length - tally.errorAfter.created;

  // The end, calm: every event delivered, every lease run out, the reconciler, the audit.
  const endRandom = stream(options.seed, "end");
  for (let round = 0; round < 10 && (round === 0 || held.length); round++) await deliverSome(endRandom, true);
  const service = async (fn: string) => {
    const res = await fetch(`${stack.url}/functions/v1/${fn}`, {
      method: "POST",
      headers: { apikey: stack.secretKey, "content-type": "application/json" },
      body: "{}",
    });
    const text = await res.text();
    if (res.status !== 200) throw new Error(`${fn} answered ${res.status}: ${text}`);
    return JSON.parse(text);
  };
  const settled: Record<string, number> = {};
  let reconcilerRuns = 0;
  const open = async () =>
    (await stack.db.query<{ n: number }>(
      "select count(*)::int as n from public.stripe_idempotency_keys where status = 'in_progress'",
    ))[0].n;
  // The reconciler takes 25 operations a run, as its schedule would: it runs until none is left open (at
  // least 3 times, at most 200).
  while (reconcilerRuns < 3 || (reconcilerRuns < 200 && await open() > 0)) {
    // Time passes: 16 minutes for every operation still open (leases run out, a burned key's grace ends,
    // a parked operation is due), as the SQL tests move them; then the reconciler runs. A refund held back
    // for its recovery (leased until 'infinity') stays held: time does not release it, its reversals do.
    await stack.db.query(
      `update public.stripe_idempotency_keys
         set locked_until = case when locked_until = 'infinity' then locked_until else now() - interval '1 second' end,
         created_at = created_at - interval '16 minutes', updated_at = updated_at - interval '16 minutes',
         key_burned_at = key_burned_at - interval '16 minutes'
       where status = 'in_progress'`,
    );
    // and for Stripe: its objects and keys age alike (open sessions past expires_at expire)
    await emulator.advanceClock(16 * 60, { hold: true }); // its events wait in the outbox for the webhook
    const report = await service("stripe-reconcile");
    reconcilerRuns++;
    for (const [k, v] of Object.entries(report.settled as Record<string, number>)) tally.count(settled, k, v);
  }
  for (let round = 0; round < 10 && (round === 0 || held.length); round++) await deliverSome(endRandom, true);
  const audit = await service("stripe-audit");

  if (options.injectStrayObject) {
    // Test only: a transfer no payout asked for; the invariants must catch it.
    const res = await fetch(`${emulator.url}/v1/transfers`, {
      method: "POST",
      headers: {
        authorization: `Bearer ${EMULATOR_SECRET_KEY}`,
        "content-type": "application/x-www-form-urlencoded",
      },
      body: new URLSearchParams({
        amount: "100",
        currency: "usd",
        destination: organisers[0].account,
        "metadata[payout_id]": crypto.randomUUID(),
      }),
    });
    await res.body?.cancel();
  }

  const checks: Checked[] = await checkInvariants(stack.db, emulator.state, {
    eventIds: organisers.map((o) => o.eventId),
    organisers,
    answers: successes,
    dashboardRefunds: tally.dashboardRefundIds,
  });
  checks.push({
    name: "every Stripe event accepted by the webhook in the end",
    violations: held.map((e) => `${e.id} (${e.type}) never accepted`),
  });
  checks.push({
    name: "the audit finds nothing it cannot repair",
    violations: (audit.discrepancies as unknown[]).map((d) => JSON.stringify(d)),
  });
  const totalSeconds = (performance.now() - started) / 1000;
  const failed = checks.filter((c) => c.violations.length);

  const report = render({
    tally,
    faults,
    settled,
    reconcilerRuns,
    audit,
    checks,
    setupSeconds,
    chaosSeconds,
    totalSeconds,
    organisers: organisers.length,
    stripeRequests: emulator.requests.length,
    counts: emulator.counts(),
  });
  print(report.terminal);
  if (options.report) {
    await Deno.writeTextFile(options.report, report.markdown);
    print(`report written to ${options.report}`);
  }
  print(
    failed.length
      ? `chaos: FAILED, ${failed.length} invariant(s) violated (seed ${options.seed})`
      : `chaos: passed (seed ${options.seed})`,
  );
  return failed.length ? 1 : 0;
}

// ------------------------------------------------------------------------------------------------ report

function render(r: {
  tally: Tally;
  faults: Record<string, number>;
  settled: Record<string, number>;
  reconcilerRuns: number;
  audit: Record<string, unknown>;
  checks: Checked[];
  setupSeconds: number;
  chaosSeconds: number;
  totalSeconds: number;
  organisers: number;
  stripeRequests: number;
  counts: Record<string, number>;
}): { terminal: string; markdown: string } {
  const t = r.tally;
  const sorted = (m: Record<string, number>) => Object.entries(m).sort(([a], [b]) => a.localeCompare(b));
  const line = (m: Record<string, number>) => sorted(m).map(([k, v]) => `${k}: ${v}`).join(", ") || "none";
  const kills = Object.values(t.kills).reduce((a, b) => a + b, 0);
  const faultTotal = Object.values(r.faults).reduce((a, b) => a + b, 0);
  const faultKinds: Record<string, number> = {
    ...r.faults,
    ...(r.faults.error_after
      ? {
        "error_after (created)": t.errorAfter.created,
        "error_after (not created)": t.errorAfter.notCreated,
      }
      : {}),
  };
  delete faultKinds.error_after;
  const opsPerSecond = options.ops / r.chaosSeconds;
  const violated = r.checks.filter((c) => c.violations.length).length;
  const rows: [string, string][] = [
    ["result", violated ? `FAILED: ${violated} invariant(s) violated` : "passed: every invariant holds"],
    ["seed", String(options.seed)],
    [
      "command",
      `npm run chaos -- --ops ${options.ops} --seed ${options.seed}${
        options.restartDb ? " --restart-db" : ""
      }`,
    ],
    ["operations", `${options.ops} (${line(t.ops)})`],
    ["concurrency", `${options.concurrency} clients, ${r.organisers} organisers`],
    [
      "duration",
      `${r.totalSeconds.toFixed(1)} s in all: setup ${r.setupSeconds.toFixed(1)} s, operations ${
        r.chaosSeconds.toFixed(1)
      } s, end and checks ${(r.totalSeconds - r.setupSeconds - r.chaosSeconds).toFixed(1)} s`,
    ],
    ["throughput", `${opsPerSecond.toFixed(1)} ops/s`],
    ["answers by status (every attempt)", line(t.answers)],
    ...FUNCTIONS.map((fn): [string, string] => [`outcomes of ${fn}`, line(t.outcomes[fn] ?? {})]),
    ["Stripe API requests", String(r.stripeRequests)],
    ["faults injected", `${faultTotal} (${line(faultKinds)})`],
    ["function workers killed (SIGKILL)", `${kills} (${line(t.kills)})`],
    ["database connections terminated", String(t.terminated)],
    ["database server restarts", t.dbRestarts ? `${t.dbRestarts} (${t.dbRestart})` : "0"],
    ["sessions paid", String(t.paid)],
    [
      "dashboard refunds, disputes opened, closed",
      `${t.dashboardRefunds}, ${t.disputes}, ${t.disputesClosed}`,
    ],
    [
      "webhook deliveries",
      `${t.deliveries} (repeated ${t.deliveriesRepeated}, failed and redelivered ${t.deliveriesFailed})`,
    ],
    ["double clicks, presses again after a 500 or a deadline", `${t.doubleClicks}, ${t.pressedAgain}`],
    [`reconciler (${r.reconcilerRuns} runs)`, line(r.settled)],
    [
      "audit",
      `repaired ${(r.audit.repaired as unknown[])?.length ?? 0}, discrepancies ${
        (r.audit.discrepancies as unknown[])?.length ?? 0
      }`,
    ],
    ["Stripe objects", line(r.counts)],
  ];
  const verdict = (c: Checked) => c.violations.length ? `VIOLATED (${c.violations.length})` : "holds";
  const terminal = [
    "",
    ...rows.map(([k, v]) => `${k.padEnd(40)} ${v}`),
    "",
    "invariants:",
    ...r.checks.flatMap((c) => [
      `  ${verdict(c).padEnd(14)} ${c.name}`,
      ...c.violations.slice(0, 10).map((v) => `                 ${v}`),
      ...(c.violations.length > 10 ? [`                 ... and ${c.violations.length - 10} more`] : []),
    ]),
  ].join("\n");
  const markdown = `# Chaos

Written by \`npm run chaos\` (tools/chaos/main.ts) on ${
    new Date().toISOString()
  }; run it again to refresh this
page. Machine: ${Deno.build.os} ${Deno.build.arch}, ${navigator.hardwareConcurrency} cores; Deno ${Deno.version.deno}.

The functions run in Deno processes of their own and are killed with SIGKILL at random moments; the
stack's database connections are ended with \`pg_terminate_backend\`${
    options.restartDb ? ", and the PostgreSQL server is restarted once" : ""
  };
the Stripe emulator injects its faults; people refund and dispute in the dashboard; Stripe's events arrive
late, shuffled and repeated. Then the reconciler and the audit run and the invariants are checked against
the emulator and the database (README, "Chaos").

| | |
| --- | --- |
${rows.map(([k, v]) => `| ${k} | ${v.replaceAll("|", "\\|")} |`).join("\n")}

## Invariants

| invariant | result |
| --- | --- |
${r.checks.map((c) => `| ${c.name} | ${verdict(c)} |`).join("\n")}
${
    r.checks.some((c) => c.violations.length)
      ? `\n## Violations\n\n${
        r.checks.flatMap((c) => c.violations.slice(0, 20).map((v) => `- ${c.name}: ${v}`)).join("\n")
      }\n`
      : ""
  }`;
  return { terminal, markdown };
}
