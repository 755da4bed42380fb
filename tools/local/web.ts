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
 * Serves the built app from `dir`: its files, and `index.html` for its pages (`WEB_PAGES`); anything else is
 * the stack's 404. Hashed assets are cached for good, pages never; CORS and `X-Request-Id` as on every answer.
 */
export function webApp(
  dir: string,
  config: () => Record<string, unknown>,
): (req: Request) => Promise<Response> {
  return async (req) => withCors(await serve(req), newRequestId());

  async function serve(req: Request): Promise<Response> {
    const path = decodeURIComponent(new URL(req.url).pathname);
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
        if (!(e instanceof Deno.errors.NotFound)) throw e;
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
 * says so). Local only: a dev stack's stand-in for signing in, for its demo users.
 */
export function localSignIn(
  db: Queryable,
  keys: ProjectKeys,
  issuer: () => string,
): (req: Request) => Promise<Response> {
  return async (req) => {
    const requestId = newRequestId();
    if (req.method === "OPTIONS") return new Response(null, { status: 204, headers: CORS_HEADERS });
    const body = await req.json().catch(() => null) as { user_id?: unknown } | null;
    const id = typeof body?.user_id === "string" ? body.user_id.toLowerCase() : "";
    if (req.method !== "POST" || !/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/.test(id)) {
      return problem({
        status: 400,
        type: "validation",
        detail: 'POST {"user_id": "<uuid>"}',
        requestId,
      });
    }
    const [user] = await db.query<{ email: string | null; app: Record<string, unknown> }>(
      "select email, raw_app_meta_data as app from auth.users where id = $1",
      [id],
    );
    if (!user) return problem({ status: 404, type: "user-not-found", detail: `No user ${id}`, requestId });
    const claims = {
      app_metadata: user.app,
      user_metadata: {},
      ...(user.email ? { email: user.email } : {}),
    };
    const token = await userToken(keys, id, { issuer: issuer(), claims, expiresIn: "8h" });
    return Response.json(
      {
        access_token: token,
        token_type: "bearer",
        expires_in: 8 * 3600,
        local: true,
        user: { id, ...claims },
      },
      { headers: { ...CORS_HEADERS, "cache-control": "no-store", "x-request-id": requestId } },
    );
  };
}
