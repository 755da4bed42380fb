/**
 * `npm run dev`: builds the web app (Vite), starts the local stack and prints how to use it; a
 * configuration problem is one line on stderr and exit code 1.
 * @module
 */
import { type Stack, StackError, startStack } from "./stack.ts";
import { buildWeb } from "./web.ts";

let stack: Stack;
try {
  console.log("Building the web app (vite build web)...");
  await buildWeb();
  stack = await startStack();
} catch (e) {
  const message = e instanceof StackError
    ? e.message
    : `${(e as Error)?.name}: ${(e as Error)?.message ?? e}`;
  console.error(`npm run dev: ${message}`);
  Deno.exit(1);
}

const database = stack.databaseUrl
  ? "DATABASE_URL (migrations applied by the Supabase CLI)"
  : "embedded PGlite (in memory)";
const stripe = stack.stripe
  ? `emulator at ${stack.stripeApiBase} (control API: ${stack.stripeApiBase}/_emulator/...)`
  : stack.stripeApiBase ?? "api.stripe.com (STRIPE_SECRET_KEY)";
const legacy = Deno.env.get("LEGACY_API_KEYS") === "off" ? "  (disabled: LEGACY_API_KEYS=off)" : "";
// the token's issuer is the stack's Auth (http://127.0.0.1:<PORT>/auth/v1), which the functions check
const port = new URL(stack.url).port;
const token = `${port === "54321" ? "" : `PORT=${port} `}npm run --silent token --`;
const pay = stack.stripe
  ? `open the checkout's url, or: curl -X POST ${stack.stripeApiBase}/_emulator/checkout/sessions/<cs_test_...>/pay`
  : "in Stripe's hosted page (test card 4242 4242 4242 4242)";

console.log(`
Local stack ready
  Web app              ${stack.url}/  (sign in as a demo user at ${stack.url}/signin)
  API URL              ${stack.url}
  Functions            ${stack.url}/functions/v1/<name>
  REST (RPC only)      ${stack.url}/rest/v1/rpc/<fn>
  JWKS                 ${stack.url}/auth/v1/.well-known/jwks.json
  Database             ${database}
  Stripe               ${stripe}

  publishable key      ${stack.publishableKey}
  secret key           ${stack.secretKey}
  anon key (legacy)    ${stack.anonKey}${legacy}
  service_role key     ${stack.serviceRoleKey}${legacy}

  Demo (supabase/seed.sql)
  organiser            11111111-1111-4111-8111-111111111111
  buyer                22222222-2222-4222-8222-222222222222
  operator (admin)     77777777-7777-4777-8777-777777777777
  event "Demo Night"   33333333-3333-4333-8333-333333333333
  tier GA (2500)       44444444-4444-4444-8444-444444444444
  tier VIP (10000)     55555555-5555-4555-8555-555555555555

  a user's token       ${token} 22222222-2222-4222-8222-222222222222
  pay a session        ${pay}
`);

for (const signal of ["SIGINT", "SIGTERM"] as const) {
  Deno.addSignalListener(signal, async () => {
    await stack.close();
    Deno.exit(0);
  });
}
