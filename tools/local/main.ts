/**
 * `npm run dev`: starts the local stack and prints how to reach it.
 * @module
 */
import { startStack } from "./stack.ts";

const stack = await startStack();
const database = Deno.env.get("DATABASE_URL")
  ? "DATABASE_URL (migrations applied by the Supabase CLI)"
  : "embedded PGlite (in memory)";
console.log(`
Local stack ready
  API URL           ${stack.url}
  Functions         ${stack.url}/functions/v1/<name>
  REST (RPC only)   ${stack.url}/rest/v1/rpc/<fn>
  Database          ${database}
  Stripe            ${
  stack.stripe
    ? `emulator at ${stack.stripeApiBase} (control API: /_emulator/...)`
    : stack.stripeApiBase ?? "api.stripe.com (STRIPE_SECRET_KEY)"
}
  anon key          ${stack.anonKey}
  service_role key  ${stack.serviceRoleKey}
  user token        deno task token <user-id>   (or: npm run token -- <user-id>)
`);

for (const signal of ["SIGINT", "SIGTERM"] as const) {
  Deno.addSignalListener(signal, async () => {
    await stack.close();
    Deno.exit(0);
  });
}
