/**
 * What every function needs around its handler: CORS, `application/problem+json` errors (RFC 9457),
 * JSON bodies with a size limit, a request id, and a log line per request.
 * @module
 */
import { isIP } from "node:net";
import { HttpError } from "./errors.ts";
import { currentRequestId, log, withRequestId } from "./log.ts";

export { HttpError };

/** CORS headers on every response; `Idempotency-Key` may be sent, `Idempotent-Replayed` read. */
export const CORS_HEADERS: Readonly<Record<string, string>> = {
  "access-control-allow-origin": "*",
  "access-control-allow-methods": "POST, OPTIONS",
  "access-control-allow-headers": "authorization, x-client-info, apikey, content-type, idempotency-key",
  "access-control-expose-headers": "idempotent-replayed, retry-after, x-request-id",
  "access-control-max-age": "86400",
};

/** Largest request body accepted, in bytes. */
export const MAX_BODY_BYTES = 16 * 1024;

/** A problem+json response; `request_id` is the given one, else the id of the request being handled. */
export function problem(error: HttpError, requestId = currentRequestId()): Response {
  const { headers, ...members } = error.extra;
  const body = {
    type: `/problems/${error.type}`,
    title: error.title,
    status: error.status,
    ...(error.detail ? { detail: error.detail } : {}),
    ...members,
    ...(requestId ? { request_id: requestId } : {}),
  };
  return new Response(JSON.stringify(body), {
    status: error.status,
    headers: { "content-type": "application/problem+json", ...headers },
  });
}

/** A JSON response. */
export function json(status: number, body: unknown, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json", ...headers },
  });
}

/**
 * Reads the body as text, at most `maxBytes` (counted while streaming, whatever `Content-Length`
 * says): 413 beyond.
 */
export async function readText(req: Request, maxBytes = MAX_BODY_BYTES): Promise<string> {
  const tooLarge = new HttpError(
    413,
    "payload-too-large",
    "Payload too large",
    `The body must be at most ${maxBytes} bytes`,
  );
  if (Number(req.headers.get("content-length") ?? 0) > maxBytes) throw tooLarge;
  const chunks: Uint8Array[] = [];
  let size = 0;
  if (req.body) {
    for await (const chunk of req.body) {
      size += chunk.length;
      if (size > maxBytes) throw tooLarge;
      chunks.push(chunk);
    }
  }
  return new TextDecoder().decode(concat(chunks, size));
}

/**
 * Reads the body as JSON: 415 unless `Content-Type` is JSON, 413 over `maxBytes`, 400 when it does not
 * parse.
 */
export async function readJson(req: Request, maxBytes = MAX_BODY_BYTES): Promise<unknown> {
  const type = req.headers.get("content-type") ?? "";
  if (!/^application\/([a-z.+-]*\+)?json\b/i.test(type)) {
    throw new HttpError(
      415,
      "unsupported-media-type",
      "Unsupported media type",
      "Send the body as application/json",
    );
  }
  const text = await readText(req, maxBytes);
  try {
    return JSON.parse(text);
  } catch {
    throw new HttpError(400, "malformed-json", "Malformed JSON", "The body is not valid JSON");
  }
}

/**
 * The platform's id for the request (`sb-request-id`), to be logged next to ours, when it is a sane
 * token. Never our request id: whether the platform overwrites a client's `sb-request-id` is not
 * documented, and a client must not choose the id we log and answer.
 */
export function platformRequestIdOf(req: Request): string | undefined {
  const given = req.headers.get("sb-request-id");
  return given && /^[\w.:-]{1,128}$/.test(given) ? given : undefined;
}

/** The address of every request whose client-address header is present but holds no IP address. */
export const INVALID_CLIENT_ADDRESS = "invalid";

/**
 * The client's address, from the one header named by `CLIENT_IP_HEADER` (e.g. `cf-connecting-ip` behind
 * Cloudflare, `x-forwarded-for` behind a proxy that appends the address it saw), or undefined when no
 * header is named or the request has none: Supabase documents no header with the client's address
 * (supabase.com/docs/guides/functions), and the connection's peer is the platform's proxy, shared by
 * every client. In a list (X-Forwarded-For) the last entry counts, the one the nearest proxy added;
 * earlier ones are whatever the client sent. A value that is not an IPv4 or IPv6 address (node:net
 * `isIP`) is `INVALID_CLIENT_ADDRESS`: all such requests share one bucket, limited like one address, so
 * that writing junk in the header never escapes the limit. An IPv6 address counts as its /64, which one
 * client usually holds whole.
 */
export function clientAddress(req: Request): string | undefined {
  const header = Deno.env.get("CLIENT_IP_HEADER")?.trim().toLowerCase();
  const value = header ? req.headers.get(header) : null;
  if (value === null) return undefined;
  const address = (value.split(",").map((s) => s.trim()).filter(Boolean).at(-1) ?? "").replace(
    /^\[(.*)\]$/,
    "$1",
  );
  switch (isIP(address)) {
    case 4:
      return address;
    case 6:
      return ipv6Prefix(address);
    default:
      return INVALID_CLIENT_ADDRESS;
  }
}

/** `2001:db8:1:2:3:4:5:6` -> `2001:db8:1:2::/64`; an IPv4-mapped address -> its IPv4 address. */
function ipv6Prefix(address: string): string {
  const bare = address.replace(/^\[|\]$/g, "").split("%")[0].toLowerCase();
  const mapped = bare.match(/^::ffff:(\d+\.\d+\.\d+\.\d+)$/);
  if (mapped) return mapped[1];
  const [head, tail] = bare.includes("::") ? bare.split("::") : [bare, undefined];
  const left = head ? head.split(":") : [];
  const right = tail ? tail.split(":") : [];
  const groups = [...left, ...Array(Math.max(0, 8 - left.length - right.length)).fill("0"), ...right];
  return `${groups.slice(0, 4).map((g) => (parseInt(g, 16) || 0).toString(16)).join(":")}::/64`;
}

/** What a handler receives besides the request. */
export interface Context {
  requestId: string;
  info?: Deno.ServeHandlerInfo;
}

/**
 * Wraps a POST handler for `Deno.serve`: answers OPTIONS, refuses other methods with 405, turns a
 * thrown `HttpError` into problem+json and anything else into a bare 500 (logged, never echoed),
 * and adds CORS and `X-Request-Id` (a new id per request) to every response.
 */
export function handler(
  name: string,
  fn: (req: Request, ctx: Context) => Promise<Response>,
): (req: Request, info?: Deno.ServeHandlerInfo) => Promise<Response> {
  return (req, info) => {
    const requestId = crypto.randomUUID();
    return withRequestId(requestId, () => handle(req, info, requestId), platformRequestIdOf(req));
  };

  async function handle(req: Request, info: Deno.ServeHandlerInfo | undefined, requestId: string) {
    const started = performance.now();
    let res: Response;
    if (req.method === "OPTIONS") {
      res = new Response(null, { status: 204 });
    } else if (req.method !== "POST") {
      res = problem(
        new HttpError(405, "method-not-allowed", "Method not allowed", `Use POST, not ${req.method}`, {
          headers: { allow: "POST, OPTIONS" },
        }),
        requestId,
      );
    } else {
      try {
        res = await fn(req, { requestId, info });
      } catch (e) {
        if (e instanceof HttpError) {
          res = problem(e, requestId);
        } else {
          log("error", "unhandled error", { function: name, error: e });
          res = problem(
            new HttpError(500, "internal", "Internal error", "The request failed; it is safe to retry"),
            requestId,
          );
        }
      }
    }
    const headers = new Headers(res.headers);
    for (const [k, v] of Object.entries(CORS_HEADERS)) headers.set(k, v);
    headers.set("x-request-id", requestId);
    log("info", "request", {
      function: name,
      method: req.method,
      status: res.status,
      ms: Math.round(performance.now() - started),
    });
    return new Response(res.body, { status: res.status, statusText: res.statusText, headers });
  }
}

function concat(chunks: Uint8Array[], size: number): Uint8Array {
  const out = new Uint8Array(size);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}
