/**
 * `deno task token <user-id> [--expires-in 1h]`: prints an access token for that user, signed with
 * `JWT_SECRET` (default Supabase's local secret), as the local stack expects.
 * @module
 */
import { DEFAULT_JWT_SECRET, userToken } from "./local/jwt.ts";

const [userId, flag, value] = Deno.args;
const uuid = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
if (!userId || !uuid.test(userId) || (flag && flag !== "--expires-in")) {
  console.error("usage: deno task token <user-id (uuid)> [--expires-in 1h]");
  Deno.exit(2);
}
const secret = Deno.env.get("JWT_SECRET") || DEFAULT_JWT_SECRET;
console.log(await userToken(secret, userId, { expiresIn: value ?? "1h" }));
