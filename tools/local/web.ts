/**
 * The web app (`web/`) on the local stack: built by Vite into `web/dist` (`npm run dev` builds it first),
 * served at the stack's root with its configuration (`/config.json`: the URL and publishable key, which are
 * public by design), and a local sign-in (`POST /auth/v1/local/token`) that stands in for Supabase Auth,
 * which the local stack does not have.
 * @module
 */
import { extname, join, normalize } from "node:path";
import type { Queryable } from "./db.ts";
import { PROJECT_DIR } from "./db.ts";
import { CORS_HEADERS, newRequestId, problem, withCors } from "./http.ts";
import { type ProjectKeys, userToken } from "./jwt.ts";

/** Where `buildWeb` writes the app. */
export const WEB_DIST = join(PROJECT_DIR, "web", "dist");

/** Builds `web/` with the project's Vite (on Node); throws with Vite's output when it fails. */
export async function buildWeb(options: { outDir?: string } = {}): Promise<void> {
  const args = [
    join(PROJECT_DIR, "node_modules", "vite", "bin", "vite.js"),
    "build",
    join(PROJECT_DIR, "web"),
  ];
  if (options.outDir) args.push("--outDir", options.outDir, "--emptyOutDir");
  const { code, stdout, stderr } = await new Deno.Command("node", {
    args: [...args, "--logLevel", "warn"],
    cwd: PROJECT_DIR,
    stdin: "null",
  }).output();
  if (code !== 0) {
    const out = new TextDecoder().decode(stderr) || new TextDecoder().decode(stdout);
    throw new Error(`Building the web app failed (vite build web):\n${out}`);
  }
}

const TYPES: Record<string, string> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".svg": "image/svg+xml",
  ".png": "image/png",
  ".ico": "image/x-icon",
  ".json": "application/json",
  ".webmanifest": "application/manifest+json",
};

/** The app's pages (web/src/main.ts routes them); `/orders/<id>` is where Checkout sends buyers back. */
export const WEB_PAGES = /^\/(?:events\/[0-9a-f-]{36}|orders\/[0-9a-f-]{36}|organiser|operator|signin)?\/?$/;

/**
 * Never shown in a frame of another site (clickjacking): CSP `frame-ancestors 'none'`, and `X-Frame-Options:
 * DENY` (RFC 7034, datatracker.ietf.org/doc/rfc7034) for browsers without CSP level 2. A host of `web/dist`
 * for a real project must send them too (README, "The web app").
 */
export const FRAME_HEADERS: Readonly<Record<string, string>> = {
  "content-security-policy": "frame-ancestors 'none'",
  "x-frame-options": "DENY",
};

/**
 * Serves the built app from `dir`: its files, and `index.html` for its pages (`WEB_PAGES`); anything else is
 * the stack's 404, and a path that is not valid percent-encoding 400. Hashed assets are cached for good,
 * pages never; CORS, `X-Request-Id` and `FRAME_HEADERS` on every answer.
 */
export function webApp(
  dir: string,
  config: () => Record<string, unknown>,
): (req: Request) => Promise<Response> {
  return async (req) => {
    const res = withCors(await serve(req), newRequestId());
    for (const [name, value] of Object.entries(FRAME_HEADERS)) res.headers.set(name, value);
    return res;
  };

  async function serve(req: Request): Promise<Response> {
    let path: string;
    try {
      path = decodeURIComponent(new URL(req.url).pathname);
    } catch {
      return problem({
        status: 400,
        type: "bad-path",
        detail: `The path '${new URL(req.url).pathname}' is not valid percent-encoding`,
        requestId: newRequestId(),
      });
    }
    if (req.method !== "GET" && req.method !== "HEAD") {
      return problem({
        status: 405,
        type: "method-not-allowed",
        detail: `The web app answers GET, not ${req.method}`,
        requestId: newRequestId(),
        headers: { allow: "GET, HEAD" },
      });
    }
    if (path === "/config.json") {
      return Response.json(config(), { headers: { "cache-control": "no-store" } });
    }
    const file = normalize(join(dir, path));
    const page = WEB_PAGES.test(path);
    for (const candidate of page ? [join(dir, "index.html")] : file.startsWith(dir + "/") ? [file] : []) {
      try {
        const body = await Deno.readFile(candidate);
        const immutable = candidate.includes(`${dir}/assets/`);
        return new Response(req.method === "HEAD" ? null : body, {
          headers: {
            "content-type": TYPES[extname(candidate)] ?? "application/octet-stream",
            "cache-control": immutable ? "public, max-age=31536000, immutable" : "no-cache",
            "x-content-type-options": "nosniff",
          },
        });
      } catch (e) {
        // a directory (`/assets/`) is no file to serve: 404 like any path without one
        if (!(e instanceof Deno.errors.NotFound || e instanceof Deno.errors.IsADirectory)) throw e;
      }
    }
    return problem({
      status: 404,
      type: "not-found",
      detail: page
        ? "The web app is not built: `npm run dev` builds it (web/dist)"
        : "No route: try /, /functions/v1/<name>, /rest/v1/rpc/<fn> or /auth/v1/.well-known/jwks.json",
      requestId: newRequestId(),
    });
  }
}

/**
 * `POST /auth/v1/local/token {"user_id": "<uuid>"}`: an access token for a user of `auth.users`, as Supabase
 * Auth would issue it (ES256, `email`, `app_metadata` from `raw_app_meta_data`, so a platform admin's token
 * says so). Local only: a dev stack's stand-in for signing in, for its demo users, on with the emulator only
 * unless `LOCAL_SIGN_IN=on` (stack.ts). It mints admin tokens, so it answers the stack's own pages only: a
 * POST whose `Origin` is the stack's (`origin()`, or the same with `localhost`) and whose body is JSON, and
 * its answers carry no CORS headers, so no other site's script can read a token (a cross-site form post
 * cannot send JSON, and a cross-site fetch of JSON needs a preflight that is refused).
 */
export function localSignIn(
  db: Queryable,
  keys: ProjectKeys,
  options: { issuer: () => string; origin: () => string },
): (req: Request) => Promise<Response> {
  return async (req) => {
    const requestId = newRequestId();
    const refuse = (status: number, type: string, detail: string, headers?: Record<string, string>) =>
      withoutCors(problem({ status, type, detail, requestId, headers }));
    if (req.method !== "POST") {
      return refuse(405, "method-not-allowed", `The local sign-in answers POST, not ${req.method}`, {
        allow: "POST",
      });
    }
    const own = new URL(options.origin());
    const allowed = [own.origin, `${own.protocol}//localhost:${own.port}`];
    const origin = req.headers.get("origin");
    if (!origin || !allowed.includes(origin)) {
      return refuse(
        403,
        "origin-refused",
        `The local sign-in answers the stack's own pages only (Origin ${own.origin}), not ${
          origin ? `'${origin}'` : "a request without Origin"
        }`,
      );
    }
    const mediaType = req.headers.get("content-type")?.split(";")[0].trim().toLowerCase();
    if (mediaType !== "application/json") {
      return refuse(415, "unsupported-media-type", "Send the body as Content-Type: application/json");
    }
    const body = await req.json().catch(() => null) as { user_id?: unknown } | null;
    const id = typeof body?.user_id === "string" ? body.user_id.toLowerCase() : "";
    if (!/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/.test(id)) {
      return refuse(400, "validation", 'POST {"user_id": "<uuid>"}');
    }
    const [user] = await db.query<{ email: string | null; app: Record<string, unknown> }>(
      "select email, raw_app_meta_data as app from auth.users where id = $1",
      [id],
    );
    if (!user) return refuse(404, "user-not-found", `No user ${id}`);
    const claims = {
      app_metadata: user.app,
      user_metadata: {},
      ...(user.email ? { email: user.email } : {}),
    };
    const token = await userToken(keys, id, { issuer: options.issuer(), claims, expiresIn: "8h" });
    return Response.json(
      {
        access_token: token,
        token_type: "bearer",
        expires_in: 8 * 3600,
        local: true,
        user: { id, ...claims },
      },
      { headers: { "cache-control": "no-store", "x-request-id": requestId } },
    );
  };
}

/** `res` without the stack's CORS headers: the sign-in is for the stack's own pages only. */
function withoutCors(res: Response): Response {
  for (const name of Object.keys(CORS_HEADERS)) res.headers.delete(name);
  return res;
}
