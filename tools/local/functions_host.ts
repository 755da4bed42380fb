/**
 * `/functions/v1/<name>`: runs every `supabase/functions/<name>/index.ts` in this process, routed like
 * Supabase's edge runtime. A function registers its handler with `Deno.serve(handler)` (or exports
 * `default { fetch }`), so the same file runs unchanged under `supabase functions serve` and on the
 * platform; here `Deno.serve` is captured while the module loads. The JWT is verified per
 * `config.toml` `[functions.<name>] verify_jwt` (default true); OPTIONS is never verified.
 * @module
 */
import { join } from "node:path";
import { parse as parseToml } from "npm:smol-toml@1.9.1";
import { verifyJwt } from "./jwt.ts";

/** A function's request handler, as `Deno.serve` receives it. */
export type Handler = (req: Request, info: Deno.ServeHandlerInfo) => Response | Promise<Response>;

/** Where the functions are and how tokens are checked. */
export interface FunctionsHostOptions {
  /** The project's `supabase` folder (holding `config.toml` and `functions/`). */
  supabaseDir: string;
  jwtSecret: string;
  /** Receives what a function threw (the caller gets a bare 500). */
  onError?: (name: string, error: unknown) => void;
  /**
   * Let callers set `CF-Connecting-IP` (tests, to act as many clients). By default it is removed, as
   * Cloudflare replaces it in front of the platform.
   */
  trustClientIpHeader?: boolean;
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

const JSON_HEADERS = { "content-type": "application/json" };

/** Builds the request handler for `/functions/v1/...`. */
export async function createFunctionsHost(
  options: FunctionsHostOptions,
): Promise<(req: Request, info: Deno.ServeHandlerInfo) => Promise<Response>> {
  const config = await readConfig(options.supabaseDir);
  const dir = join(options.supabaseDir, "functions");
  const names = new Set(
    [...Deno.readDirSync(dir)]
      .filter((e) => e.isDirectory && !e.name.startsWith("_") && exists(join(dir, e.name, "index.ts")))
      .map((e) => e.name),
  );
  const load = (name: string) => loadHandler(join(dir, name, "index.ts"));

  return async (req, info) => {
    const name = new URL(req.url).pathname.match(/^\/functions\/v1\/([^/]+)/)?.[1];
    if (!name || !names.has(name)) {
      return Response.json({ code: "NOT_FOUND", message: "Requested function was not found" }, {
        status: 404,
      });
    }
    if (req.method !== "OPTIONS" && (config.functions?.[name]?.verify_jwt ?? true)) {
      const token = req.headers.get("authorization")?.match(/^Bearer\s+(\S+)$/i)?.[1];
      if (!token) return unauthorized("Missing authorization header");
      try {
        await verifyJwt(options.jwtSecret, token);
      } catch {
        return unauthorized("Invalid JWT");
      }
    }
    // Like the edge in front of the platform: the caller's address is appended to X-Forwarded-For, and a
    // CF-Connecting-IP the caller made up is dropped.
    const headers = new Headers(req.headers);
    if (!options.trustClientIpHeader) headers.delete("cf-connecting-ip");
    const peer = (info.remoteAddr as Deno.NetAddr).hostname;
    const forwarded = req.headers.get("x-forwarded-for");
    headers.set("x-forwarded-for", forwarded ? `${forwarded}, ${peer}` : peer);
    req = new Request(req.url, { method: req.method, headers, body: req.body });
    try {
      const handler = await load(name);
      return await handler(req, info);
    } catch (e) {
      options.onError?.(name, e);
      return new Response(
        JSON.stringify({ code: "WORKER_ERROR", message: "Function exited due to an error" }),
        {
          status: 500,
          headers: JSON_HEADERS,
        },
      );
    }
  };
}

function unauthorized(message: string): Response {
  return new Response(JSON.stringify({ code: 401, message }), { status: 401, headers: JSON_HEADERS });
}

function exists(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

type ServeArgs = [Handler] | [Deno.ServeOptions, Handler] | [Deno.ServeOptions & { handler: Handler }];

// A module evaluates once per process, so its handler is captured once and kept here for every host.
const handlers = new Map<string, Promise<Handler>>();
let loading: Promise<unknown> = Promise.resolve();

function loadHandler(path: string): Promise<Handler> {
  let handler = handlers.get(path);
  if (!handler) {
    // One module at a time: Deno.serve is swapped while a module evaluates.
    handler = loading.then(() => captureHandler(path));
    loading = handler.catch(() => {});
    handlers.set(path, handler);
    handler.catch(() => handlers.delete(path));
  }
  return handler;
}

async function captureHandler(path: string): Promise<Handler> {
  const denoNs = Deno as unknown as { serve: unknown };
  const original = denoNs.serve;
  let captured: Handler | undefined;
  denoNs.serve = (...args: ServeArgs) => {
    const last = args[args.length - 1];
    captured = typeof last === "function" ? last : (last as { handler: Handler }).handler;
    return { finished: new Promise(() => {}), shutdown: async () => {}, ref() {}, unref() {}, addr: null };
  };
  try {
    const mod = await import(new URL(`file://${path}`).href);
    const exported = mod.default as { fetch?: Handler } | undefined;
    const handler = captured ?? exported?.fetch?.bind(exported);
    if (!handler) {
      throw new Error(`Function module ${path} neither calls Deno.serve nor exports default { fetch }`);
    }
    return handler;
  } finally {
    denoNs.serve = original;
  }
}
