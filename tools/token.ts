/**
 * `npm run --silent token -- <user-id> [--expires-in 1h] [--legacy]`: prints an access token for that
 * user as the local stack's Auth would issue it: signed ES256 with the stack's signing key
 * (`<SUPABASE_DIR>/signing_keys.json`, the same file `npm run dev` uses), or with `--legacy` HS256 with
 * `JWT_SECRET` (default Supabase's local secret). Its issuer is the stack's Auth,
 * `http://127.0.0.1:<PORT>/auth/v1` (`PORT` default 54321), as the functions check.
 * @module
 */
import { join } from "node:path";
import { PROJECT_DIR } from "./local/db.ts";
import { DEFAULT_JWT_SECRET, issuerOf, loadSigningKey, userToken } from "./local/jwt.ts";

const usage = "usage: npm run --silent token -- <user-id (uuid)> [--expires-in 1h] [--legacy]";
const uuid = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const [userId, ...flags] = Deno.args;
let expiresIn = "1h";
let legacy = false;
for (let i = 0; i < flags.length; i++) {
  if (flags[i] === "--legacy") legacy = true;
  else if (flags[i] === "--expires-in" && flags[i + 1]) expiresIn = flags[++i];
  else userIdError();
}
if (!userId || !uuid.test(userId)) userIdError();

function userIdError(): never {
  console.error(usage);
  Deno.exit(2);
}

const supabaseDir = Deno.env.get("SUPABASE_DIR") || join(PROJECT_DIR, "supabase");
const keys = {
  signingKey: legacy ? {} : await loadSigningKey(supabaseDir),
  jwtSecret: Deno.env.get("JWT_SECRET") || DEFAULT_JWT_SECRET,
};
const issuer = issuerOf(`http://127.0.0.1:${Deno.env.get("PORT") || 54321}`);
console.log(await userToken(keys, userId, { issuer, expiresIn, legacy }));
