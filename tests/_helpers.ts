/**
 * Shared by the tests: databases of this run (created on the server `npm test` found, dropped by it
 * at the end), the local stack on one of them, and small conveniences.
 * @module
 */
import postgres from "npm:postgres@3.4.9";
import { generateSigningKey } from "../tools/local/jwt.ts";
import { type Stack, startStack } from "../tools/local/stack.ts";

const adminUrl = Deno.env.get("TEST_ADMIN_URL");
const prefix = Deno.env.get("TEST_DB_PREFIX");
if (!adminUrl || !prefix) {
  throw new Error(
    "Run the tests with `npm test` (or `deno task test [file]`): it provides the database server",
  );
}

/** Creates an empty database for this run and returns its URL. */
export async function createDatabase(label: string): Promise<string> {
  // Each test file runs in a worker of its own, so names come from randomness rather than a counter.
  const suffix = crypto.randomUUID().slice(0, 8);
  const name = `${prefix}_${label}_${suffix}`.toLowerCase().replace(/[^a-z0-9_]/g, "_");
  const admin = postgres(adminUrl!, { max: 1, onnotice: () => {} });
  try {
    await admin.unsafe(`create database "${name}"`);
  } finally {
    await admin.end();
  }
  const url = new URL(adminUrl!);
  url.pathname = `/${name}`;
  return url.toString();
}

let shared: Promise<Stack> | undefined;

/**
 * The stack of this test file (each file runs in its own worker): a database of its own with the
 * migrations applied by the Supabase CLI, the gateway, the functions and the emulator, whose platform has
 * funds (a large available balance, card funds available at once) unless a test says otherwise. The
 * functions run in this process (tests reach into their modules, e.g. `testHooks`), and act as if behind
 * Cloudflare (`CF-Connecting-IP`), so that tests can be many clients.
 */
export function sharedStack(): Promise<Stack> {
  shared ??= createDatabase("stack").then(async (databaseUrl) => {
    forgetPreviousStack();
    return startStack({
      databaseUrl,
      port: 0,
      emulatorPort: 0,
      poolSize: 20,
      signingKey: await generateSigningKey(),
      functionsIsolation: "in-process",
      clientIpHeader: "cf-connecting-ip",
      fundsDelaySeconds: 0,
      initialBalance: { usd: 1_000_000_000 },
    });
  });
  return shared;
}

/**
 * Test files run one after another in workers of one process, and a stack whose functions run in-process
 * exports its settings to the process environment: clear what an earlier file's stack set, as a new
 * process would, before starting another stack.
 */
export function forgetPreviousStack(): void {
  for (const name of STACK_ENV) Deno.env.delete(name);
}

const STACK_ENV = [
  "SUPABASE_URL",
  "SUPABASE_PUBLISHABLE_KEYS",
  "SUPABASE_SECRET_KEYS",
  "SUPABASE_JWKS",
  "CLIENT_IP_HEADER",
  "SUPABASE_ANON_KEY",
  "SUPABASE_SERVICE_ROLE_KEY",
  "JWT_SECRET",
  "LEGACY_API_KEYS",
  "STRIPE_SECRET_KEY",
  "STRIPE_WEBHOOK_SECRET",
  "STRIPE_API_BASE",
  "SITE_URL",
];

/** `Deno.test` for tests that use the shared stack: its pooled connections outlive each test. */
export function stackTest(name: string, fn: () => Promise<void>): void {
  Deno.test({ name, fn: withTimeout(name, fn), sanitizeOps: false, sanitizeResources: false });
}

/** How long one test may run before it fails rather than stalls the suite (`TEST_TIMEOUT_MS`). */
const TEST_TIMEOUT_MS = Number(Deno.env.get("TEST_TIMEOUT_MS") || 240_000);

/** `fn`, failing with a clear error once it has run `TEST_TIMEOUT_MS`. */
export function withTimeout(name: string, fn: () => Promise<void>): () => Promise<void> {
  return async () => {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`'${name}' timed out after ${TEST_TIMEOUT_MS} ms`)),
        TEST_TIMEOUT_MS,
      );
    });
    try {
      await Promise.race([fn(), timeout]);
    } finally {
      clearTimeout(timer);
    }
  };
}

/** Waits until `condition` holds, checking every 10 ms; throws `what` after `ms`. */
export async function waitFor(
  what: string,
  condition: () => boolean | Promise<boolean>,
  ms = 5000,
): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`Timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}
