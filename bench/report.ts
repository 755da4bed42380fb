/**
 * The benchmark's outputs: a table on stdout, bench/results/latest.json, docs/benchmarks.md and the
 * chart docs/benchmark.svg.
 * @module
 */
import type { Result } from "./main.ts";

/** Everything one run measured. */
export interface Report {
  date: string;
  machine: Record<string, unknown>;
  results: Result[];
  claimScaling: { rowsSmall: number; rowsBig: number; p50Small: number; p50Big: number; ratio: number };
  purge: { rows: number; seconds: number; concurrentClaims: number; longestClaimMs: number };
}

const ms = (n: number) => n.toFixed(2);
const per = (n: number | null) => (n === null ? "-" : n.toFixed(2));

function table(results: Result[]): string[] {
  const rows = results.map((r) => [
    r.name,
    String(r.concurrency),
    String(r.ops),
    r.opsPerSecond.toFixed(0),
    ms(r.p50),
    ms(r.p99),
    per(r.roundTrips),
    per(r.stripeCalls),
  ]);
  const head = [
    "scenario",
    "conc.",
    "ops",
    "ops/s",
    "p50 ms",
    "p99 ms",
    "DB round trips/op",
    "Stripe calls/op",
  ];
  return [
    `| ${head.join(" | ")} |`,
    `| ${head.map((_h, i) => (i === 0 ? "---" : "---:")).join(" | ")} |`,
    ...rows.map((r) => `| ${r.join(" | ")} |`),
  ];
}

function find(results: Result[], name: string, concurrency = 1): Result {
  return results.find((r) => r.name === name && r.concurrency === concurrency)!;
}

/** Prints and writes the report. */
export async function writeReport(report: Report): Promise<void> {
  const { results, claimScaling: c, purge } = report;
  const [bare, floor, wrapped] = ["bare", "floor", "wrapped"].map((n) => find(results, n));
  const checkout1 = find(results, "checkout");
  const replay16 = find(results, "checkout replay", 16);
  const overhead = wrapped.p50 / floor.p50;
  const coreOverhead = (wrapped.p50 - bare.p50) / floor.p50;
  const targets = [
    `- wrapped / floor (p50): **${overhead.toFixed(2)}x** (${ms(wrapped.p50)} ms vs ${
      ms(floor.p50)
    } ms); without the Stripe call itself ` +
    `(wrapped - bare) / floor: **${
      coreOverhead.toFixed(2)
    }x**: what supabase-js, the REST gateway and one transaction per RPC add to the raw SQL.`,
    `- first checkout: **${per(checkout1.roundTrips)}** database round trips (target 2); replay: **${
      per(replay16.roundTrips)
    }** (target 1) and ${per(replay16.stripeCalls)} Stripe calls.`,
    `- claim p50 with ${c.rowsBig.toLocaleString("en")} rows: ${ms(c.p50Big)} ms vs ${
      ms(c.p50Small)
    } ms with ${c.rowsSmall.toLocaleString("en")}: ` +
    `**${c.ratio.toFixed(2)}x** (target within 1.3x) - ${c.ratio <= 1.3 ? "met" : "NOT met"}.`,
    `- purging ${purge.rows.toLocaleString("en")} expired rows took ${
      purge.seconds.toFixed(1)
    } s; ${purge.concurrentClaims} claims ran meanwhile, ` +
    `the longest took **${ms(purge.longestClaimMs)} ms** (target under 100 ms) - ${
      purge.longestClaimMs < 100 ? "met" : "NOT met"
    }.`,
  ];
  const lines = table(results);
  console.log(lines.join("\n"));
  console.log(targets.join("\n").replaceAll("**", ""));

  await Deno.mkdir(new URL("./results/", import.meta.url), { recursive: true });
  await Deno.writeTextFile(
    new URL("./results/latest.json", import.meta.url),
    JSON.stringify(report, null, 2),
  );
  const docs = new URL("../docs/", import.meta.url);
  await Deno.mkdir(docs, { recursive: true });
  await Deno.writeTextFile(new URL("benchmark.svg", docs), chart(results));
  const m = report.machine;
  await Deno.writeTextFile(
    new URL("benchmarks.md", docs),
    `# Benchmarks

Written by \`npm run bench\` (bench/main.ts) on ${report.date}; run it again to refresh this page.

Machine: ${m.cpu}, ${m.cores} cores, ${m.memoryGiB} GiB; PostgreSQL ${m.postgres}; Deno ${m.deno}; ${m.os}.
Everything runs on this one machine: the local stack (REST gateway, functions, Stripe emulator) in the
benchmark's own process, PostgreSQL beside it. Latencies are per operation as a client sees them.

${lines.join("\n")}

- **bare**: a PaymentIntent created in the emulator with the official SDK; no database.
- **floor**: \`claim_stripe_operation\` + \`complete_stripe_operation\` as SQL over one direct connection: the
  database's share of the work, and nothing else.
- **wrapped**: \`withStripeIdempotency\` around the same Stripe call: claim and complete through supabase-js and
  the REST gateway (one transaction each), the Stripe call in between.
- **replay**: the same operations again: one RPC answers from the store, no Stripe call.
- **checkout**: \`enhanced-checkout\` end to end (JWT, validation, Idempotency-Key, order and holds, Checkout
  Session, answer stored); **checkout replay**: the same keys again.

Targets:

${targets.join("\n")}

![operations per second and latency by scenario](benchmark.svg)
`,
  );
}

/** A bar chart: operations per second, with p50 and p99 latency written beside each bar. */
function chart(results: Result[]): string {
  const width = 840;
  const barHeight = 26;
  const left = 190;
  const top = 40;
  const max = Math.max(...results.map((r) => r.opsPerSecond));
  const scale = (width - left - 270) / max;
  const bars = results.map((r, i) => {
    const y = top + i * (barHeight + 10);
    const w = Math.max(2, r.opsPerSecond * scale);
    const label = `${r.name}${r.concurrency > 1 ? ` (x${r.concurrency})` : ""}`;
    return `<text x="${left - 8}" y="${y + 17}" text-anchor="end">${label}</text>
  <rect x="${left}" y="${y}" width="${w.toFixed(1)}" height="${barHeight}" fill="#4a7bd0"/>
  <text x="${left + w + 6}" y="${y + 17}">${r.opsPerSecond.toFixed(0)}/s · p50 ${r.p50.toFixed(1)} ms · p99 ${
      r.p99.toFixed(1)
    } ms</text>`;
  });
  const height = top + results.length * (barHeight + 10) + 20;
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="13">
  <rect width="100%" height="100%" fill="white"/>
  <text x="${left}" y="22" font-weight="bold">Operations per second (latency per operation)</text>
  ${bars.join("\n  ")}
</svg>
`;
}
