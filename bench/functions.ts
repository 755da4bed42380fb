/**
 * What each function costs the platform: CPU time per request (the platform allows 2 s), measured by the
 * local functions host from `/proc` with each function in a process of its own and one request at a time
 * (so a request's CPU is its own), and the cold start of each function's bundle (`deno bundle
 * --no-config`, as `deno task bundle` and a deploy make it): a new process started on the bundle, timed
 * to its first answer. CPU time, unlike latency, hardly depends on what else the machine runs.
 * @module
 */
import { join } from "node:path";
import { PROJECT_DIR } from "../tools/local/db.ts";
import { PORT_ANNOUNCEMENT } from "../tools/local/function_worker.ts";
import type { Stack } from "../tools/local/stack.ts";
import { log, median, type Spread, spread } from "./lib.ts";

/** One function's costs. */
export interface FunctionCost {
  name: string;
  request: string;
  statuses: Record<string, number>;
  cpuMs: Spread;
  bundleMb: number;
  coldStartMs: Spread;
}

/** A representative request for each function. */
export type Requests = Record<string, { what: string; send: (i: number) => Promise<Response> }>;

/** CPU per request: `count` requests of each function, one at a time, after one to start the worker. */
async function cpu(stack: Stack, name: string, send: (i: number) => Promise<Response>, count: number) {
  const statuses: Record<string, number> = {};
  await (await send(count)).body?.cancel(); // the worker's start is the cold start's business
  const before = stack.functions.metrics.length;
  for (let i = 0; i < count; i++) {
    const res = await send(i);
    await res.body?.cancel();
    statuses[res.status] = (statuses[res.status] ?? 0) + 1;
  }
  const cpus = stack.functions.metrics.slice(before).filter((m) => m.function === name && m.cpuMs !== null)
    .map((m) => m.cpuMs!);
  return { statuses, cpus };
}

/** Bundles one function as a deploy does; the bundle's path. */
async function bundle(name: string, dir: string): Promise<string> {
  const file = join(dir, `${name}.js`);
  const { code, stderr } = await new Deno.Command(Deno.execPath(), {
    args: [
      "bundle",
      "--no-config",
      "--quiet",
      "--platform=deno",
      "-o",
      file,
      join(PROJECT_DIR, "supabase", "functions", name, "index.ts"),
    ],
    cwd: dir,
    stdout: "null",
    stderr: "piped",
  }).output();
  if (code !== 0) throw new Error(`${name} does not bundle: ${new TextDecoder().decode(stderr).trim()}`);
  return file;
}

/** Starts a process on the bundle (the local host's worker, as the platform starts an isolate) and times its first answer. */
async function coldStart(file: string, env: Record<string, string>): Promise<number> {
  const started = performance.now();
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--quiet",
      "--no-prompt",
      "--no-config",
      "--allow-net",
      "--allow-env",
      "--allow-read",
      "--allow-sys",
      join(PROJECT_DIR, "tools", "local", "function_worker.ts"),
      file,
    ],
    env,
    stdin: "piped",
    stdout: "piped",
    stderr: "null",
  }).spawn();
  try {
    const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    let buffered = "";
    let port: number | undefined;
    while (port === undefined) {
      const { value, done } = await reader.read();
      if (done) throw new Error(`The worker on ${file} ended before it listened`);
      buffered += value;
      for (const line of buffered.split("\n")) {
        if (line.startsWith("{") && line.includes(PORT_ANNOUNCEMENT)) {
          port = JSON.parse(line)[PORT_ANNOUNCEMENT];
        }
      }
    }
    reader.releaseLock();
    child.stdout.cancel().catch(() => {});
    const res = await fetch(`http://127.0.0.1:${port}/`, { method: "OPTIONS" });
    await res.body?.cancel();
    return performance.now() - started;
  } finally {
    child.kill("SIGKILL");
    await child.status;
  }
}

/** Measures every function: CPU per request (in `stack`, process isolation) and cold start of its bundle. */
export async function functionCosts(
  stack: Stack,
  requests: Requests,
  env: Record<string, string>,
  count: number,
  starts: number,
): Promise<FunctionCost[]> {
  const dir = await Deno.makeTempDir({ prefix: "bench-bundles-" });
  const out: FunctionCost[] = [];
  try {
    for (const [name, { what, send }] of Object.entries(requests)) {
      const { statuses, cpus } = await cpu(stack, name, send, count);
      const file = await bundle(name, dir);
      const { size } = await Deno.stat(file);
      const colds: number[] = [];
      for (let i = 0; i < starts; i++) colds.push(await coldStart(file, env));
      log(`${name}: CPU ${median(cpus)} ms per request, cold start ${median(colds).toFixed(0)} ms`);
      out.push({
        name,
        request: what,
        statuses,
        cpuMs: spread(cpus),
        bundleMb: size / 1024 / 1024,
        coldStartMs: spread(colds),
      });
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  return out;
}
