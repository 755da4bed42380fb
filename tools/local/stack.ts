/**
 * The local stack in one process: the functions host, the REST gateway, a database and, unless a
 * Stripe is configured, the Stripe emulator. `npm run dev` starts it; tests start it too.
 * @module
 */
import { join } from "node:path";
import { connectPostgres, type Database, openPglite, prepareDatabase, PROJECT_DIR } from "./db.ts";
import { createFunctionsHost, readConfig } from "./functions_host.ts";
import { apiKeys, DEFAULT_JWT_SECRET, userToken } from "./jwt.ts";
import { createRestGateway } from "./rest_gateway.ts";
import { startStripeEmulator, type StripeEmulator } from "./stripe_emulator/mod.ts";

/** Everything configurable; each option falls back to its environment variable, then a default. */
export interface StackOptions {
  /** Port of the gateway (`PORT`, default 54321; 0 picks a free one). */
  port?: number;
  /** PostgreSQL URL (`DATABASE_URL`); an embedded PGlite when absent, or when null. */
  databaseUrl?: string | null;
  /** HS256 secret for every JWT (`JWT_SECRET`, default Supabase's local one). */
  jwtSecret?: string;
  /** A Stripe API to use instead of the emulator (`STRIPE_API_BASE`). */
  stripeApiBase?: string;
  /** `STRIPE_SECRET_KEY`: a real `sk_test_` key means real Stripe; absent means the emulator. */
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
  /** Keep a caller's `CF-Connecting-IP` (tests acting as many clients); the edge's behaviour drops it. */
  trustClientIpHeader?: boolean;
  /** The `supabase` folder to serve (`SUPABASE_DIR`, default the project's): config.toml, migrations, seed.sql, functions/. */
  supabaseDir?: string;
}

/** A running stack. */
export interface Stack {
  url: string;
  anonKey: string;
  serviceRoleKey: string;
  jwtSecret: string;
  db: Database;
  /** The PostgreSQL URL, or null for the embedded PGlite. */
  databaseUrl: string | null;
  /** The emulator, when the stack runs one. */
  stripe: StripeEmulator | null;
  /** Where the functions send Stripe calls (null: api.stripe.com). */
  stripeApiBase: string | null;
  /** RPCs served by the gateway so far, by function name. */
  rpcCalls: Map<string, number>;
  /** A signed-in user's access token. */
  userToken(userId: string, claims?: Record<string, unknown>): Promise<string>;
  close(): Promise<void>;
}

/** The placeholder secret key the functions use against the emulator. */
export const EMULATOR_SECRET_KEY = "sk_test_local_emulator";

/** Starts the stack; resolves when it serves. */
export async function startStack(options: StackOptions = {}): Promise<Stack> {
  const env = (name: string) => Deno.env.get(name) || undefined;
  const supabaseDir = options.supabaseDir ?? env("SUPABASE_DIR") ?? join(PROJECT_DIR, "supabase");
  const jwtSecret = options.jwtSecret ?? env("JWT_SECRET") ?? DEFAULT_JWT_SECRET;
  const databaseUrl = options.databaseUrl === null ? undefined : options.databaseUrl ?? env("DATABASE_URL");
  const webhookSecret = options.webhookSecret ?? env("STRIPE_WEBHOOK_SECRET") ?? "whsec_local";
  const stripeKey = options.stripeSecretKey ?? env("STRIPE_SECRET_KEY");
  let stripeApiBase = options.stripeApiBase ?? env("STRIPE_API_BASE") ?? null;
  if (stripeKey && !/^(sk|rk)_test_/.test(stripeKey)) {
    throw new Error("STRIPE_SECRET_KEY must be a test-mode key (sk_test_...) for the local stack");
  }

  const db = databaseUrl
    ? connectPostgres(databaseUrl, options.poolSize ?? Number(env("DB_POOL_SIZE") ?? 10))
    : await openPglite();
  try {
    await prepareDatabase(db, { databaseUrl, supabaseDir });
  } catch (e) {
    await db.close();
    throw e;
  }

  let stripe: StripeEmulator | null = null;
  if (!stripeApiBase && !stripeKey) {
    const delay = options.fundsDelaySeconds ?? env("STRIPE_EMULATOR_FUNDS_DELAY_SECONDS");
    if (delay !== undefined && !(Number.isInteger(Number(delay)) && Number(delay) >= 0)) {
      throw new Error(`STRIPE_EMULATOR_FUNDS_DELAY_SECONDS must be a number of seconds, got '${delay}'`);
    }
    const balance = options.initialBalance ?? env("STRIPE_EMULATOR_INITIAL_BALANCE");
    stripe = await startStripeEmulator({
      webhookSecret,
      port: options.emulatorPort ?? Number(env("STRIPE_EMULATOR_PORT") ?? 12111),
      fundsDelaySeconds: delay === undefined ? undefined : Number(delay),
      initialBalance: typeof balance === "string" ? JSON.parse(balance) : balance,
    });
    stripeApiBase = stripe.url;
  }

  const { anonKey, serviceRoleKey } = await apiKeys(jwtSecret);
  const config = await readConfig(supabaseDir);
  const rpcCalls = new Map<string, number>();
  const rest = createRestGateway({
    db,
    jwtSecret,
    schemas: config.api?.schemas ?? ["public"],
    onRpc: (name) => rpcCalls.set(name, (rpcCalls.get(name) ?? 0) + 1),
  });
  const functions = await createFunctionsHost({
    supabaseDir,
    jwtSecret,
    trustClientIpHeader: options.trustClientIpHeader,
    onError: (name, e) =>
      console.error(
        JSON.stringify({ level: "error", msg: "function threw", function: name, error: String(e) }),
      ),
  });

  const server = Deno.serve({
    port: options.port ?? Number(env("PORT") ?? 54321),
    hostname: "127.0.0.1",
    onListen: () => {},
  }, (req, info) => {
    const path = new URL(req.url).pathname;
    if (path.startsWith("/functions/v1/")) return functions(req, info);
    if (path.startsWith("/rest/v1/")) return rest(req);
    return Response.json({
      code: "NOT_FOUND",
      message: "no route; try /functions/v1/<name> or /rest/v1/rpc/<fn>",
    }, {
      status: 404,
    });
  });
  const url = `http://127.0.0.1:${server.addr.port}`;
  if (stripe) stripe.options.webhookUrl = `${url}/functions/v1/stripe-webhook`;

  // What the functions read, as the edge runtime provides it (plus the Stripe settings as secrets).
  const functionEnv: Record<string, string | null> = {
    SUPABASE_URL: url,
    SUPABASE_ANON_KEY: anonKey,
    SUPABASE_SERVICE_ROLE_KEY: serviceRoleKey,
    JWT_SECRET: jwtSecret,
    STRIPE_SECRET_KEY: stripeKey ?? EMULATOR_SECRET_KEY,
    STRIPE_WEBHOOK_SECRET: webhookSecret,
    STRIPE_API_BASE: stripeApiBase,
  };
  for (const [k, v] of Object.entries(functionEnv)) v === null ? Deno.env.delete(k) : Deno.env.set(k, v);

  return {
    url,
    anonKey,
    serviceRoleKey,
    jwtSecret,
    db,
    databaseUrl: databaseUrl ?? null,
    stripe,
    stripeApiBase,
    rpcCalls,
    userToken: (userId, claims) => userToken(jwtSecret, userId, { claims }),
    close: async () => {
      await server.shutdown();
      await stripe?.close();
      await db.close();
    },
  };
}
