/**
 * `/functions/v1/<name>`: every `supabase/functions/<name>/index.ts`, routed like Supabase's edge runtime.
 *
 * - `verify_jwt` (config.toml, default true) is the platform's check before the function runs: it
 *   accepts only a JWT signed with the legacy HS256 secret and answers anything else, including the
 *   new asymmetric user tokens, 401 `{"code": 401, "message": "Invalid JWT"}`
 *   (supabase.com/docs/guides/troubleshooting/edge-function-401-error-response). OPTIONS is never checked.
 * - Isolation `process` (the default): each function runs in a Deno process of its own, started on its
 *   first request and reused while warm (`policy = "per_worker"`), with only its own environment, the
 *   platform's file-system rights (read, and write to the temporary folder), and its limits
 *   (supabase.com/docs/guides/functions/limits): a V8 heap of 256 MB (beyond it the worker dies: 546),
 *   2 s of CPU per request (measured from `/proc` and shared between the requests in flight; beyond
 *   it the worker is killed: 546), a worker lifetime of 150 s (then new requests go to a new worker),
 *   and 150 s for an answer (504). A crashed worker answers 500 and the next request starts a new one.
 *   Isolation `in-process` loads the functions into this process instead (the test suite's shared
 *   stack, whose tests reach into the functions' modules).
 * - The platform documents no header with the client's address, so none is passed on: the address
 *   headers a caller sends are removed, except the one `trustedClientHeader` names (tests acting as
 *   many clients behind a proxy).
 * - The host's own answers are `application/problem+json` with the platform's `code` and `message`,
 *   CORS and `X-Request-Id`: a new id per request (never the caller's), also passed to the function as
 *   the platform's `sb-request-id`.
 * @module
 */
import { join } from "node:path";
import { parse as parseToml } from "npm:smol-toml@1.9.1";
import { PROJECT_DIR } from "./db.ts";
import { type Handler, loadHandler, PORT_ANNOUNCEMENT } from "./function_worker.ts";
import { newRequestId, problem, withCors } from "./http.ts";
import { type ProjectKeys, verifyJwt } from "./jwt.ts";

/** The platform's limits for one function. */
export interface FunctionLimits {
  /** V8 heap of a worker, in MB. */
  memoryMb: number;
  /** CPU time one request may use, in ms. */
  cpuMs: number;
  /** How long a worker serves before it is retired, in ms. */
  wallClockMs: number;
  /** How long a request may wait for its answer, in ms (then 504). */
  requestIdleMs: number;
}

/** The hosted platform's limits (free plan). */
export const PLATFORM_LIMITS: Readonly<FunctionLimits> = {
  memoryMb: 256,
  cpuMs: 2_000,
  wallClockMs: 150_000,
  requestIdleMs: 150_000,
};

/** How a request fared, as the host measured it. */
export interface RequestMetric {
  function: string;
  requestId: string;
  status: number;
  wallMs: number;
  /** CPU time attributed to the request (process isolation on Linux; null elsewhere). */
  cpuMs: number | null;
  /** The worker's resident memory when the request ended, in MB (process isolation on Linux). */
  rssMb: number | null;
  /** Why the worker did not answer, if it did not. */
  failure?: "cpu-limit" | "memory-limit" | "crashed" | "timeout" | "boot";
}

/** Where the functions are, how they run and how callers are checked. */
export interface FunctionsHostOptions {
  /** The project's `supabase` folder (holding `config.toml` and `functions/`). */
  supabaseDir: string;
  keys: ProjectKeys;
  /** Accept legacy HS256 JWTs in verify_jwt (default true); without them verify_jwt refuses everything. */
  legacyKeys?: boolean;
  /** `process` (default): a process per function; `in-process`: loaded into this process. */
  isolation?: "process" | "in-process";
  /** The functions' environment (null removes a variable). */
  env: Record<string, string | null>;
  limits?: Partial<FunctionLimits>;
  /** The one client-address header callers may set (lower case); all others are removed. */
  trustedClientHeader?: string;
  /** Receives what a function threw or how a worker died (the caller gets a 5xx without it). */
  onError?: (name: string, error: unknown) => void;
}

/** The functions host: a request handler, what it measured, and its workers to stop. */
export interface FunctionsHost {
  handle(req: Request, info: Deno.ServeHandlerInfo): Promise<Response>;
  /** The latest requests' metrics (at most 1000), oldest first. */
  metrics: RequestMetric[];
  /** The process ids of the running workers, by function. */
  workers(): Record<string, number[]>;
  close(): Promise<void>;
}

/** The parsed `config.toml` as far as the local stack reads it. */
export interface SupabaseConfig {
  api?: { schemas?: string[] };
  functions?: Record<string, { verify_jwt?: boolean }>;
}

/** Reads `supabase/config.toml`. */
export async function readConfig(supabaseDir: string): Promise<SupabaseConfig> {
  return parseToml(await Deno.readTextFile(join(supabaseDir, "config.toml"))) as SupabaseConfig;
}

const CLIENT_ADDRESS_HEADERS = [
  "x-forwarded-for",
  "x-real-ip",
  "forwarded",
  "cf-connecting-ip",
  "true-client-ip",
  "x-client-ip",
];

/** Builds the functions host. */
export async function createFunctionsHost(options: FunctionsHostOptions): Promise<FunctionsHost> {
  const config = await readConfig(options.supabaseDir);
  const dir = join(options.supabaseDir, "functions");
  const names = new Set(
    [...Deno.readDirSync(dir)]
      .filter((e) => e.isDirectory && !e.name.startsWith("_") && exists(join(dir, e.name, "index.ts")))
      .map((e) => e.name),
  );
  const limits = { ...PLATFORM_LIMITS, ...options.limits };
  const metrics: RequestMetric[] = [];
  // Each request's measure is kept, and logged: at warn when a limit or a crash ended the worker, at
  // debug otherwise (LOG_LEVEL=debug).
  const record = (m: RequestMetric) => {
    metrics.push(m);
    if (metrics.length > 1000) metrics.shift();
    if (!m.failure && Deno.env.get("LOG_LEVEL") !== "debug") return;
    const line = JSON.stringify({
      level: m.failure ? "warn" : "debug",
      msg: m.failure ? `function worker failed: ${m.failure}` : "function request measured",
      function: m.function,
      request_id: m.requestId,
      status: m.status,
      wall_ms: m.wallMs,
      cpu_ms: m.cpuMs,
      rss_mb: m.rssMb,
    });
    m.failure ? console.error(line) : console.log(line);
  };
  const runner = options.isolation === "in-process"
    ? inProcess(dir, options)
    : new ProcessRunner(dir, options.env, limits, options.onError);

  async function handle(req: Request, _info: Deno.ServeHandlerInfo): Promise<Response> {
    const requestId = newRequestId();
    const name = new URL(req.url).pathname.match(/^\/functions\/v1\/([^/]+)/)?.[1];
    if (!name || !names.has(name)) {
      return problem({
        status: 404,
        type: "function-not-found",
        detail: `No function named '${name ?? ""}'`,
        requestId,
        members: { code: "NOT_FOUND", message: "Requested function was not found" },
      });
    }
    if (req.method !== "OPTIONS" && (config.functions?.[name]?.verify_jwt ?? true)) {
      const refusal = await verifyLegacyJwt(req, options.keys, options.legacyKeys ?? true);
      if (refusal) {
        return problem({
          status: 401,
          type: "unauthorized",
          detail: `${refusal}: verify_jwt is on for '${name}'`,
          requestId,
          members: { code: 401, message: refusal },
        });
      }
    }
    const headers = new Headers(req.headers);
    for (const h of CLIENT_ADDRESS_HEADERS) if (h !== options.trustedClientHeader) headers.delete(h);
    headers.set("sb-request-id", requestId); // the platform's id for the request, whatever the caller sent
    const forwarded = new Request(req.url, {
      method: req.method,
      headers,
      body: req.body,
      // @ts-ignore: Deno's fetch needs it for a streamed body
      duplex: "half",
    });
    const started = performance.now();
    const outcome = await runner.run(name, forwarded, requestId, limits.requestIdleMs);
    const metric = {
      function: name,
      requestId,
      wallMs: Math.round(performance.now() - started),
      ...outcome.metric,
    };
    const res = outcome.response ?? failureAnswer(outcome.metric.failure!, name, requestId);
    record({ ...metric, status: res.status });
    return withCors(res, requestId);
  }

  return {
    handle,
    metrics,
    workers: () => runner.workers(),
    close: () => runner.close(),
  };
}

/** The platform's answer when the worker gave none (its codes: `WORKER_ERROR`, `WORKER_LIMIT`, `BOOT_ERROR`). */
function failureAnswer(
  failure: NonNullable<RequestMetric["failure"]>,
  name: string,
  requestId: string,
): Response {
  const answers = {
    "cpu-limit": [
      546,
      "WORKER_LIMIT",
      "Function failed due to not having enough compute resources (CPU time)",
    ],
    "memory-limit": [
      546,
      "WORKER_LIMIT",
      "Function failed due to not having enough compute resources (memory)",
    ],
    crashed: [500, "WORKER_ERROR", "Function exited due to an error (please check logs)"],
    timeout: [504, "TIMEOUT", "The function did not answer in time"],
    boot: [503, "BOOT_ERROR", "Worker failed to boot (please check logs)"],
  } as const;
  const [status, code, message] = answers[failure];
  return problem({
    status,
    type: code.toLowerCase().replace("_", "-"),
    detail: `${message}: '${name}'`,
    requestId,
    members: { code, message },
  });
}

/** Why verify_jwt refuses the request, or null when its bearer token is a valid legacy JWT. */
async function verifyLegacyJwt(req: Request, keys: ProjectKeys, legacy: boolean): Promise<string | null> {
  const token = req.headers.get("authorization")?.match(/^Bearer\s+(\S+)$/i)?.[1];
  if (!token) return "Missing authorization header";
  try {
    const header = JSON.parse(atob(token.split(".")[0].replace(/-/g, "+").replace(/_/g, "/")));
    if (header.alg !== "HS256") return "Invalid JWT";
    await verifyJwt(keys, token, { legacy });
    return null;
  } catch {
    return "Invalid JWT";
  }
}

interface Outcome {
  response?: Response;
  metric: Pick<RequestMetric, "cpuMs" | "rssMb" | "failure">;
}

interface Runner {
  run(name: string, req: Request, requestId: string, timeoutMs: number): Promise<Outcome>;
  workers(): Record<string, number[]>;
  close(): Promise<void>;
}

/** Functions loaded into this process, with the environment set on it. */
function inProcess(dir: string, options: FunctionsHostOptions): Runner {
  for (const [k, v] of Object.entries(options.env)) v === null ? Deno.env.delete(k) : Deno.env.set(k, v);
  return {
    async run(name, req) {
      const info = {
        remoteAddr: { transport: "tcp", hostname: "127.0.0.1", port: 0 },
      } as Deno.ServeHandlerInfo;
      try {
        const handler: Handler = await loadHandler(join(dir, name, "index.ts"));
        return { response: await handler(req, info), metric: { cpuMs: null, rssMb: null } };
      } catch (e) {
        options.onError?.(name, e);
        return { metric: { cpuMs: null, rssMb: null, failure: "crashed" } };
      }
    },
    workers: () => ({}),
    close: () => Promise.resolve(),
  };
}

interface Worker {
  name: string;
  child: Deno.ChildProcess;
  url: Promise<string>;
  started: number;
  retired: boolean;
  inFlight: Set<{ cpuMs: number }>;
  /** CPU ticks of the process at the last sample. */
  ticks: number | null;
  /** Why the host killed it, or how it died. */
  death?: "cpu-limit" | "memory-limit" | "crashed";
  exited: boolean;
}

const CLK_TCK_MS = 10; // Linux's USER_HZ is 100

/** One process per function (see the module doc). */
class ProcessRunner implements Runner {
  #live = new Map<string, Worker>();
  #all = new Set<Worker>();
  #sampler: ReturnType<typeof setInterval> | undefined;

  constructor(
    readonly dir: string,
    readonly env: Record<string, string | null>,
    readonly limits: FunctionLimits,
    readonly onError?: (name: string, error: unknown) => void,
  ) {}

  async run(name: string, req: Request, _requestId: string, timeoutMs: number): Promise<Outcome> {
    let worker = this.#live.get(name);
    if (
      worker && (worker.exited || worker.retired || Date.now() - worker.started > this.limits.wallClockMs)
    ) {
      this.#retire(worker);
      worker = undefined;
    }
    worker ??= this.#start(name);
    const meter = { cpuMs: 0 };
    let url: string;
    try {
      url = await worker.url;
    } catch (e) {
      this.onError?.(name, e);
      return { metric: { cpuMs: null, rssMb: null, failure: "boot" } };
    }
    const target = new URL(req.url);
    this.#sampleWorker(worker); // what ran before this request is not its own
    worker.inFlight.add(meter);
    this.#sample(); // starts the sampler
    try {
      const response = await fetch(`${url}${target.pathname}${target.search}`, {
        method: req.method,
        headers: req.headers,
        body: req.body,
        redirect: "manual",
        signal: AbortSignal.timeout(timeoutMs),
      });
      this.#sampleWorker(worker);
      return { response, metric: { cpuMs: this.#cpu(meter), rssMb: rssMb(worker.child.pid) } };
    } catch (e) {
      if ((e as Error).name === "TimeoutError") {
        return { metric: { cpuMs: this.#cpu(meter), rssMb: null, failure: "timeout" } };
      }
      await worker.child.status.catch(() => {});
      await new Promise((r) => setTimeout(r, 0)); // let the exit handler name the cause
      return { metric: { cpuMs: this.#cpu(meter), rssMb: null, failure: worker.death ?? "crashed" } };
    } finally {
      worker.inFlight.delete(meter);
      if (worker.retired && worker.inFlight.size === 0) this.#kill(worker);
    }
  }

  workers(): Record<string, number[]> {
    const out: Record<string, number[]> = {};
    for (const w of this.#all) if (!w.exited) (out[w.name] ??= []).push(w.child.pid);
    return out;
  }

  async close(): Promise<void> {
    clearInterval(this.#sampler);
    this.#sampler = undefined;
    const all = [...this.#all];
    for (const w of all) {
      w.retired = true; // stopped, not crashed
      this.#kill(w);
    }
    await Promise.all(all.map((w) => w.child.status.catch(() => {})));
  }

  #cpu(meter: { cpuMs: number }): number | null {
    return onLinux() ? Math.round(meter.cpuMs) : null;
  }

  #start(name: string): Worker {
    const keep = ["PATH", "HOME", "DENO_DIR", "TMPDIR", "NO_COLOR"];
    const env: Record<string, string> = {};
    for (const k of keep) if (Deno.env.get(k)) env[k] = Deno.env.get(k)!;
    for (const [k, v] of Object.entries(this.env)) if (v !== null) env[k] = v;
    const tmp = Deno.env.get("TMPDIR") ?? "/tmp";
    const child = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--quiet",
        "--no-prompt",
        `--config=${join(PROJECT_DIR, "deno.json")}`,
        "--allow-net",
        "--allow-env",
        "--allow-read",
        `--allow-write=${tmp}`,
        "--allow-sys",
        `--v8-flags=--max-old-space-size=${this.limits.memoryMb}`,
        new URL("./function_worker.ts", import.meta.url).pathname,
        join(this.dir, name, "index.ts"),
      ],
      cwd: PROJECT_DIR,
      clearEnv: true,
      env,
      stdin: "piped", // closed when this process ends: the worker then exits too
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    let announce: (url: string) => void;
    let fail: (e: Error) => void;
    const url = new Promise<string>((resolve, reject) => [announce, fail] = [resolve, reject]);
    url.catch(() => {});
    const worker: Worker = {
      name,
      child,
      url,
      started: Date.now(),
      retired: false,
      inFlight: new Set(),
      ticks: null,
      exited: false,
    };
    relay(child.stdout, (line) => console.log(line), (line) => {
      const port = line.startsWith("{") ? JSON.parse(line)[PORT_ANNOUNCEMENT] : undefined;
      if (typeof port !== "number") return false;
      announce(`http://127.0.0.1:${port}`);
      return true;
    });
    relay(child.stderr, (line) => console.error(line), (line) => {
      if (/out of memory/i.test(line)) worker.death = "memory-limit";
      return false;
    });
    const bootTimer = setTimeout(
      () => fail(new Error(`Function '${name}' did not start within 60 s`)),
      60_000,
    );
    url.finally(() => clearTimeout(bootTimer)).catch(() => {});
    child.status.then((status) => {
      worker.exited = true;
      clearTimeout(bootTimer);
      fail(new Error(`Function '${name}' exited before it listened (${status.signal ?? status.code})`));
      if (!worker.death && !worker.retired) {
        worker.death = status.signal === "SIGABRT" || status.signal === "SIGTRAP"
          ? "memory-limit"
          : "crashed";
      }
      if (worker.death) this.onError?.(name, new Error(`Worker of '${name}' ended: ${worker.death}`));
      if (this.#live.get(name) === worker) this.#live.delete(name);
      this.#all.delete(worker);
    });
    const lifetime = setTimeout(
      () => this.#kill(worker),
      this.limits.wallClockMs + this.limits.requestIdleMs,
    );
    child.status.finally(() => clearTimeout(lifetime));
    this.#live.set(name, worker);
    this.#all.add(worker);
    return worker;
  }

  #retire(worker: Worker): void {
    worker.retired = true;
    if (this.#live.get(worker.name) === worker) this.#live.delete(worker.name);
    if (worker.inFlight.size === 0) this.#kill(worker);
  }

  #kill(worker: Worker): void {
    if (worker.exited) return;
    try {
      worker.child.kill("SIGKILL");
    } catch { /* already gone */ }
  }

  /** Samples every busy worker's CPU every 50 ms; stops when none is busy. */
  #sample(): void {
    if (this.#sampler !== undefined || !onLinux()) return;
    this.#sampler = setInterval(() => {
      let busy = false;
      for (const w of this.#all) {
        if (w.inFlight.size === 0) {
          w.ticks = null;
          continue;
        }
        busy = true;
        this.#sampleWorker(w);
      }
      if (!busy) {
        clearInterval(this.#sampler);
        this.#sampler = undefined;
      }
    }, 50);
  }

  /** Shares the CPU the worker used since its last sample between its requests; kills it past the limit. */
  #sampleWorker(w: Worker): void {
    const ticks = cpuTicks(w.child.pid);
    if (ticks === null) return;
    if (w.ticks !== null && w.inFlight.size > 0) {
      const share = ((ticks - w.ticks) * CLK_TCK_MS) / w.inFlight.size;
      for (const meter of w.inFlight) meter.cpuMs += share;
      if ([...w.inFlight].some((m) => m.cpuMs > this.limits.cpuMs) && !w.death) {
        w.death = "cpu-limit";
        this.#kill(w);
      }
    }
    w.ticks = ticks;
  }
}

function onLinux(): boolean {
  return Deno.build.os === "linux";
}

/** utime + stime of a process, in clock ticks (`/proc/<pid>/stat`), or null. */
function cpuTicks(pid: number): number | null {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return Number(fields[11]) + Number(fields[12]);
  } catch {
    return null;
  }
}

/** Resident memory of a process in MB (`/proc/<pid>/status`), or null. */
function rssMb(pid: number): number | null {
  try {
    const kb = Deno.readTextFileSync(`/proc/${pid}/status`).match(/VmRSS:\s+(\d+)/)?.[1];
    return kb ? Math.round(Number(kb) / 1024) : null;
  } catch {
    return null;
  }
}

/** Passes a worker's output lines on, except those `consume` takes. */
async function relay(
  stream: ReadableStream<Uint8Array>,
  write: (line: string) => void,
  consume: (line: string) => boolean,
): Promise<void> {
  let rest = "";
  try {
    for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
      const lines = (rest + chunk).split("\n");
      rest = lines.pop()!;
      for (const line of lines) if (!consume(line)) write(line);
    }
  } catch { /* the worker is gone */ }
  if (rest && !consume(rest)) write(rest);
}

function exists(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}
