/**
 * `npm run --silent key -- publishable|secret|anon|service_role`: prints that key of the local stack
 * (the same `npm run dev` prints: derived from `JWT_SECRET`, default Supabase's local secret), for
 * scripts and the README's examples.
 * @module
 */
import { join } from "node:path";
import { PROJECT_DIR } from "./local/db.ts";
import { DEFAULT_JWT_SECRET, loadSigningKey, projectKeys } from "./local/jwt.ts";

const names = {
  publishable: "publishableKey",
  secret: "secretKey",
  anon: "anonKey",
  service_role: "serviceRoleKey",
} as const;
const [name] = Deno.args;
if (!(name in names)) {
  console.error(`usage: npm run --silent key -- ${Object.keys(names).join("|")}`);
  Deno.exit(2);
}
const supabaseDir = Deno.env.get("SUPABASE_DIR") || join(PROJECT_DIR, "supabase");
const keys = await projectKeys(
  Deno.env.get("JWT_SECRET") || DEFAULT_JWT_SECRET,
  await loadSigningKey(supabaseDir),
);
console.log(keys[names[name as keyof typeof names]]);
