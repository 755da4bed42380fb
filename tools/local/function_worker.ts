/**
 * A function as the edge runtime loads it: a module that registers its handler with `Deno.serve(handler)`
 * (or exports `default { fetch }`). `loadHandler` captures that handler in this process (the test
 * suite's shared stack, whose tests reach into the functions' modules); run as a program
 * (`deno run function_worker.ts <index.ts>`), this file serves one function in a process of its own on a
 * loopback port, which it announces on stdout as `{"local_worker_port": <port>}`.
 * @module
 */
import { pathToFileURL } from "node:url";

/** A function's request handler, as `Deno.serve` receives it. */
export type Handler = (req: Request, info: Deno.ServeHandlerInfo) => Response | Promise<Response>;

type ServeArgs = [Handler] | [Deno.ServeOptions, Handler] | [Deno.ServeOptions & { handler: Handler }];

/** The line a worker prints once it listens. */
export const PORT_ANNOUNCEMENT = "local_worker_port";

function handlerOf(args: ServeArgs): Handler {
  const last = args[args.length - 1];
  return typeof last === "function" ? last : (last as { handler: Handler }).handler;
}

/**
 * Imports the module at `path` with `Deno.serve` replaced by `serve`, and returns the handler it
 * registered (or its `default.fetch`). Throws when it registers none.
 */
async function importFunction(path: string, serve: (handler: Handler) => void): Promise<Handler> {
  const denoNs = Deno as unknown as { serve: unknown };
  const original = denoNs.serve;
  let captured: Handler | undefined;
  denoNs.serve = (...args: ServeArgs) => {
    captured = handlerOf(args);
    serve(captured);
    return { finished: new Promise(() => {}), shutdown: async () => {}, ref() {}, unref() {}, addr: null };
  };
  try {
    const mod = await import(pathToFileURL(path).href);
    const exported = mod.default as { fetch?: Handler } | undefined;
    const handler = captured ?? exported?.fetch?.bind(exported);
    if (!handler) {
      throw new Error(`Function module ${path} neither calls Deno.serve nor exports default { fetch }`);
    }
    if (!captured) serve(handler);
    return handler;
  } finally {
    denoNs.serve = original;
  }
}

// A module evaluates once per process, so its handler is captured once and kept for every host.
const handlers = new Map<string, Promise<Handler>>();
let loading: Promise<unknown> = Promise.resolve();

/** The handler of the function module at `path`, loaded into this process once. */
export function loadHandler(path: string): Promise<Handler> {
  let handler = handlers.get(path);
  if (!handler) {
    // One module at a time: Deno.serve is swapped while a module evaluates.
    handler = loading.then(() => importFunction(path, () => {}));
    loading = handler.catch(() => {});
    handlers.set(path, handler);
    handler.catch(() => handlers.delete(path));
  }
  return handler;
}

if (import.meta.main) {
  // The host holds our stdin open and never writes: when it ends, however it ends, so do we.
  (async () => {
    for await (const _ of Deno.stdin.readable) { /* nothing is sent */ }
    Deno.exit(0);
  })();
  const [path] = Deno.args;
  const realServe = Deno.serve.bind(Deno);
  await importFunction(path, (handler) => {
    realServe({
      hostname: "127.0.0.1",
      port: 0,
      onListen: ({ port }) => console.log(JSON.stringify({ [PORT_ANNOUNCEMENT]: port })),
    }, handler);
  });
}
