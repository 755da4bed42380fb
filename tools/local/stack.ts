/**
 * The local stack: the functions host, the REST gateway, the JWKS, a database and, unless a Stripe is
 * configured, the Stripe emulator, behind one port. `npm run dev` starts it; tests start it too.
 * @module
 */
import { join } from "node:path";
import type { JWK } from "npm:jose@6.2.18";
import { connectPostgres, type Database, isPgError, openPglite, prepareDatabase, PROJECT_DIR } from "./db.ts";
import {
  createFunctionsHost,
  type FunctionLimits,
  type FunctionsHost,
  readConfig,
} from "./functions_host.ts";
import { CORS_HEADERS, newRequestId, problem } from "./http.ts";
import {
  DEFAULT_JWT_SECRET,
  issuerOf,
  loadSigningKey,
  type ProjectKeys,
  projectKeys,
  userToken,
} from "./jwt.ts";
import { createRestGateway } from "./rest_gateway.ts";
import { startStripeEmulator, type StripeEmulator } from "./stripe_emulator/mod.ts";
import { localSignIn, WEB_DIST, webApp } from "./web.ts";

/** Everything configurable; each option falls back to its environment variable, then a default. */
export interface StackOptions {
  /** Port of the gateway (`PORT`, default 54321; 0 picks a free one). */
  port?: number;
  /** PostgreSQL URL (`DATABASE_URL`); an embedded PGlite when absent, or when null. */
  databaseUrl?: string | null;
  /** The legacy HS256 secret (`JWT_SECRET`, default Supabase's local one); the API keys derive from it. */
  jwtSecret?: string;
  /** The ES256 key that signs user tokens (default: `<supabaseDir>/signing_keys.json`, made on first use). */
  signingKey?: JWK;
  /**
   * Accept the legacy keys and HS256 tokens, and give them to the functions (`LEGACY_API_KEYS`, default
   * on). Off, the gateway refuses them and the functions get `LEGACY_API_KEYS=off`.
   */
  legacyKeys?: boolean;
  /**
   * With `legacyKeys` off, give the functions the legacy variables all the same (`JWT_SECRET`,
   * `SUPABASE_ANON_KEY`, `SUPABASE_SERVICE_ROLE_KEY`), as on a project whose secrets outlive the switch
   * (`JWT_SECRET` is one the project set itself): the functions must refuse the legacy keys by
   * `LEGACY_API_KEYS=off` alone.
   */
  keepLegacyFunctionEnv?: boolean;
  /** A Stripe API to use instead of the emulator (`STRIPE_API_BASE`). */
  stripeApiBase?: string;
  /** `STRIPE_SECRET_KEY`: set, the functions call Stripe (or `STRIPE_API_BASE`) with it and no emulator starts. */
  stripeSecretKey?: string;
  /** `STRIPE_WEBHOOK_SECRET`, default `whsec_local`. */
  webhookSecret?: string;
  /** Port of the emulator (`STRIPE_EMULATOR_PORT`, default 12111; 0 picks a free one). */
  emulatorPort?: number;
  /** The emulator's settlement delay of card funds (`STRIPE_EMULATOR_FUNDS_DELAY_SECONDS`, default 2 days). */
  fundsDelaySeconds?: number;
  /**
   * The emulated platform's available balance at start, per currency (`STRIPE_EMULATOR_INITIAL_BALANCE`,
   * JSON such as `{"usd": 100000}`; default none, as a new platform).
   */
  initialBalance?: Record<string, number>;
  /** Connections in the database pool (`DB_POOL_SIZE`, default 10). */
  poolSize?: number;
  /** `process` (default): each function in a process of its own; `in-process` (`FUNCTIONS_ISOLATION`). */
  functionsIsolation?: "process" | "in-process";
  /** The functions' limits (default: the platform's). */
  functionLimits?: Partial<FunctionLimits>;
  /**
   * `CLIENT_IP_HEADER`: the header the functions read the client's address from, which callers may then
   * set (tests acting as many clients behind a proxy). Default none: the platform documents none.
   */
  clientIpHeader?: string;
  /** Changes to the functions' environment (null removes a variable), e.g. to test a misconfiguration. */
  functionEnv?: Record<string, string | null>;
  /** The `supabase` folder to serve (`SUPABASE_DIR`, default the project's): config.toml, migrations, seed.sql, functions/. */
  supabaseDir?: string;
  /** The built web app served at `/` (default `web/dist`, which `npm run dev` builds). */
  webDir?: string;
  /**
   * The local sign-in (`POST /auth/v1/local/token`, which mints any user's token, admins' too): `LOCAL_SIGN_IN`
   * `on` or `off`; default on with the emulator only, off against real Stripe (`STRIPE_SECRET_KEY` or
   * `STRIPE_API_BASE` set).
   */
  localSignIn?: boolean;
}

/** Whether the local sign-in is on: as `LOCAL_SIGN_IN` says (`on`/`off`), else only with the emulator. */
export function localSignInEnabled(setting: boolean | string | undefined, withEmulator: boolean): boolean {
  if (setting === true || setting === "on") return true;
  if (setting === false || setting === "off") return false;
  if (setting !== undefined) throw new StackError(`LOCAL_SIGN_IN must be 'on' or 'off', got '${setting}'`);
  return withEmulator;
}

/** A running stack. */
export interface Stack {
  url: string;
  keys: ProjectKeys;
  /** `sb_publishable_...` (the anon role), for `apikey`. */
  publishableKey: string;
  /** `sb_secret_...` (the service_role), for `apikey`. */
  secretKey: string;
  /** The legacy anon key (a JWT). */
  anonKey: string;
  /** The legacy service_role key (a JWT). */
  serviceRoleKey: string;
  jwtSecret: string;
  db: Database;
  /** The PostgreSQL URL, or null for the embedded PGlite. */
  databaseUrl: string | null;
  /** The emulator, when the stack runs one. */
  stripe: StripeEmulator | null;
  /** Where the functions send Stripe calls (null: api.stripe.com). */
  stripeApiBase: string | null;
  functions: FunctionsHost;
  /** RPCs served by the gateway so far, by function name. */
  rpcCalls: Map<string, number>;
  /** A signed-in user's access token (ES256; HS256 with `legacy`), issued by this stack's Auth (`iss`). */
  userToken(
    userId: string,
    claims?: Record<string, unknown>,
    options?: { legacy?: boolean },
  ): Promise<string>;
  close(): Promise<void>;
}

/** The placeholder secret key the functions use against the emulator. */
export const EMULATOR_SECRET_KEY = "sk_test_local_emulator";

/** A configuration problem, told in one line (`npm run dev` prints its message alone). */
export class StackError extends Error {
  override name = "StackError";
}

/** Starts the stack; resolves when it serves. Throws `StackError` for what the user must change. */
export async function startStack(options: StackOptions = {}): Promise<Stack> {
  const env = (name: string) => Deno.env.get(name) || undefined;
  const supabaseDir = options.supabaseDir ?? env("SUPABASE_DIR") ?? join(PROJECT_DIR, "supabase");
  const jwtSecret = options.jwtSecret ?? env("JWT_SECRET") ?? DEFAULT_JWT_SECRET;
  const legacyKeys = options.legacyKeys ?? env("LEGACY_API_KEYS") !== "off";
  const databaseUrl = options.databaseUrl === null ? undefined : options.databaseUrl ?? env("DATABASE_URL");
  const webhookSecret = options.webhookSecret ?? env("STRIPE_WEBHOOK_SECRET") ?? "whsec_local";
  const stripeKey = options.stripeSecretKey ?? env("STRIPE_SECRET_KEY");
  let stripeApiBase = options.stripeApiBase ?? env("STRIPE_API_BASE") ?? null;
  const port = options.port ?? Number(env("PORT") ?? 54321);
  const emulatorPort = options.emulatorPort ?? Number(env("STRIPE_EMULATOR_PORT") ?? 12111);
  const isolation = options.functionsIsolation ??
    (env("FUNCTIONS_ISOLATION") === "in-process" ? "in-process" : "process");
  const clientIpHeader = (options.clientIpHeader ?? env("CLIENT_IP_HEADER"))?.toLowerCase();
  if (stripeKey && !/^(sk|rk)_test_/.test(stripeKey)) {
    throw new StackError(
      "STRIPE_SECRET_KEY is not a test-mode key: the local stack takes sk_test_... or rk_test_... keys only",
    );
  }
  const withEmulator = !stripeApiBase && !stripeKey;
  const signInOn = localSignInEnabled(options.localSignIn ?? env("LOCAL_SIGN_IN"), withEmulator);
  ensurePortFree(port, "PORT");
  if (withEmulator) ensurePortFree(emulatorPort, "STRIPE_EMULATOR_PORT");

  const keys = await projectKeys(jwtSecret, options.signingKey ?? await loadSigningKey(supabaseDir));
  const db = databaseUrl
    ? connectPostgres(databaseUrl, options.poolSize ?? Number(env("DB_POOL_SIZE") ?? 10))
    : await openPglite();
  const closers: (() => Promise<unknown>)[] = [() => db.close()];
  const closeAll = async () => {
    for (const close of closers.reverse()) await close().catch(() => {});
  };
  try {
    await prepareDatabase(db, { databaseUrl, supabaseDir }).catch((e) => {
      throw databaseUrl ? databaseProblem(databaseUrl, e) : e;
    });

    let stripe: StripeEmulator | null = null;
    if (withEmulator) {
      const delay = options.fundsDelaySeconds ?? env("STRIPE_EMULATOR_FUNDS_DELAY_SECONDS");
      if (delay !== undefined && !(Number.isInteger(Number(delay)) && Number(delay) >= 0)) {
        throw new StackError(
          `STRIPE_EMULATOR_FUNDS_DELAY_SECONDS must be a number of seconds, got '${delay}'`,
        );
      }
      const balance = options.initialBalance ?? env("STRIPE_EMULATOR_INITIAL_BALANCE");
      stripe = await startStripeEmulator({
        webhookSecret,
        port: emulatorPort,
        fundsDelaySeconds: delay === undefined ? undefined : Number(delay),
        initialBalance: typeof balance === "string" ? JSON.parse(balance) : balance,
      });
      closers.push(() => stripe!.close());
      stripeApiBase = stripe.url;
    }

    const config = await readConfig(supabaseDir);
    const rpcCalls = new Map<string, number>();
    const rest = createRestGateway({
      db,
      keys,
      legacyKeys,
      schemas: config.api?.schemas ?? ["public"],
      onRpc: (name) => rpcCalls.set(name, (rpcCalls.get(name) ?? 0) + 1),
    });
    let url = "";
    const legacyEnv = legacyKeys || options.keepLegacyFunctionEnv === true;
    const functionEnv = () => ({
      // What the edge runtime provides (supabase.com/docs/guides/functions/secrets)...
      SUPABASE_URL: url,
      SUPABASE_PUBLISHABLE_KEYS: JSON.stringify({ default: keys.publishableKey }),
      SUPABASE_SECRET_KEYS: JSON.stringify({ default: keys.secretKey }),
      SUPABASE_JWKS: JSON.stringify(keys.jwks),
      SUPABASE_ANON_KEY: legacyEnv ? keys.anonKey : null,
      SUPABASE_SERVICE_ROLE_KEY: legacyEnv ? keys.serviceRoleKey : null,
      // ...and the project's secrets (`supabase secrets set`).
      JWT_SECRET: legacyEnv ? jwtSecret : null,
      LEGACY_API_KEYS: legacyKeys ? null : "off",
      STRIPE_SECRET_KEY: stripeKey ?? EMULATOR_SECRET_KEY,
      STRIPE_WEBHOOK_SECRET: webhookSecret,
      STRIPE_API_BASE: stripeApiBase,
      // where Checkout sends buyers back: the web app at the stack's root, unless set
      SITE_URL: env("SITE_URL") ?? url,
      ...optional("LOG_LEVEL", env("LOG_LEVEL")),
      ...optional("CLIENT_IP_HEADER", clientIpHeader),
      ...options.functionEnv,
    });

    // the issuer is the address the server listens on, known once it does
    const signIn = localSignIn(db, keys, { issuer: () => issuerOf(url), origin: () => url });
    const web = webApp(options.webDir ?? WEB_DIST, () => ({
      supabaseUrl: url,
      publishableKey: keys.publishableKey,
      localSignIn: signInOn,
    }));
    // made once the server listens: the functions' SUPABASE_URL is its address
    const hosted: { functions?: FunctionsHost } = {};
    let server: Deno.HttpServer<Deno.NetAddr>;
    try {
      server = Deno.serve({ port, hostname: "127.0.0.1", onListen: () => {} }, (req, info) => {
        const path = new URL(req.url).pathname;
        if (path.startsWith("/functions/v1/")) return hosted.functions!.handle(req, info);
        if (path.startsWith("/rest/v1/")) return rest(req);
        if (path === "/auth/v1/.well-known/jwks.json" || path === "/auth/v1/jwks") {
          return Response.json(keys.jwks, {
            headers: { ...CORS_HEADERS, "cache-control": "public, max-age=600" },
          });
        }
        if (path === "/auth/v1/local/token" && signInOn) return signIn(req);
        if (path.startsWith("/auth/v1/")) {
          return problem({
            status: 404,
            type: "not-found",
            detail: signInOn
              ? "No route: the local stack serves /auth/v1/.well-known/jwks.json and /auth/v1/local/token"
              : "No route: the local stack serves /auth/v1/.well-known/jwks.json (the local sign-in is off " +
                "against real Stripe: LOCAL_SIGN_IN=on turns it on)",
            requestId: newRequestId(),
          });
        }
        return web(req);
      });
    } catch (e) {
      throw e instanceof Deno.errors.AddrInUse ? portInUse(port, "PORT") : e;
    }
    // a graceful shutdown waits for every connection's answer; one left unfinished (a worker killed while
    // it streamed) would hold `close()` for ever, so it is given 5 s
    closers.push(async () => {
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([server.shutdown(), new Promise<void>((r) => timer = setTimeout(r, 5_000))]);
      clearTimeout(timer);
    });
    url = `http://127.0.0.1:${server.addr.port}`;
    if (stripe) stripe.options.webhookUrl = `${url}/functions/v1/stripe-webhook`;
    const functions = hosted.functions = await createFunctionsHost({
      supabaseDir,
      keys,
      legacyKeys,
      isolation,
      env: functionEnv(),
      limits: options.functionLimits,
      trustedClientHeader: clientIpHeader,
      onError: (name, e) =>
        console.error(
          JSON.stringify({ level: "error", msg: "function failed", function: name, error: String(e) }),
        ),
    });
    closers.push(() => functions.close());

    return {
      url,
      keys,
      publishableKey: keys.publishableKey,
      secretKey: keys.secretKey,
      anonKey: keys.anonKey,
      serviceRoleKey: keys.serviceRoleKey,
      jwtSecret,
      db,
      databaseUrl: databaseUrl ?? null,
      stripe,
      stripeApiBase,
      functions,
      rpcCalls,
      userToken: (userId, claims, opts) =>
        userToken(keys, userId, { issuer: issuerOf(url), claims, legacy: opts?.legacy }),
      close: closeAll,
    };
  } catch (e) {
    await closeAll();
    throw e;
  }
}

function optional(name: string, value: string | undefined): Record<string, string> {
  return value === undefined ? {} : { [name]: value };
}

function ensurePortFree(port: number, variable: string): void {
  if (port === 0) return;
  try {
    Deno.listen({ port, hostname: "127.0.0.1" }).close();
  } catch (e) {
    throw e instanceof Deno.errors.AddrInUse ? portInUse(port, variable) : e;
  }
}

function portInUse(port: number, variable: string): StackError {
  return new StackError(
    `Port ${port} is already in use: stop what listens there, or start with ${variable}=<another port>`,
  );
}

/** The database problem in one line, with what to do about it. */
function databaseProblem(databaseUrl: string, e: unknown): Error {
  if (e instanceof StackError) return e;
  const where = new URL(databaseUrl);
  const target = `${where.hostname}:${where.port || 5432}${where.pathname}`;
  const message = (e as Error)?.message ?? String(e);
  if (isPgError(e)) return new StackError(`DATABASE_URL (${target}) refused the setup: ${message}`);
  if (/supabase migration up failed/.test(message)) return new StackError(message.split("\n")[0]);
  return new StackError(
    `Cannot reach PostgreSQL at ${target} (${(e as { code?: string }).code ?? message}): ` +
      "start it, or unset DATABASE_URL to use the embedded database",
  );
}
