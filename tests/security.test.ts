// The security matrix (tests/_security.ts, read from the catalog) on the shared stack's database;
// forged, unsigned, expired and wrong-role JWTs refused; no secret or stack trace in any answer or log
// line.
import assert from "node:assert/strict";
import { testHooks } from "../supabase/functions/_shared/idempotency.ts";
import { DEFAULT_JWT_SECRET, signJwt } from "../tools/local/jwt.ts";
import { BUYER, call, newOrganiser, openOrder, uid } from "./_flows.ts";
import { sharedStack, stackTest } from "./_helpers.ts";
import { assertSecurityMatrix } from "./_security.ts";

stackTest(
  "the security matrix: who executes what, RLS and no table grants, security definer with an empty search_path",
  async () => {
    const stack = await sharedStack();
    await assertSecurityMatrix(stack.db, "the shared stack's database");
  },
);

stackTest(
  "JWTs with alg none, a wrong signature, an expiry in the past or a wrong role are refused",
  async () => {
    const stack = await sharedStack();
    const b64 = (o: unknown) =>
      btoa(JSON.stringify(o)).replace(/=+$/, "").replace(/\+/g, "-").replace(/\//g, "_");
    const now = Math.floor(Date.now() / 1000);
    const claims = { sub: BUYER, role: "authenticated", aud: "authenticated", exp: now + 3600 };
    const tokens: Record<string, string> = {
      "alg none": `${b64({ alg: "none", typ: "JWT" })}.${b64(claims)}.`,
      "wrong signature": await signJwt("a-different-secret-of-at-least-32-characters", claims),
      "expired": await signJwt(DEFAULT_JWT_SECRET, { ...claims, exp: now - 60 }),
      "role postgres": await signJwt(DEFAULT_JWT_SECRET, { ...claims, role: "postgres" }),
      "role supabase_admin": await signJwt(DEFAULT_JWT_SECRET, { ...claims, role: "supabase_admin" }),
    };
    for (const [what, token] of Object.entries(tokens)) {
      const rest = await fetch(`${stack.url}/rest/v1/rpc/get_order`, {
        method: "POST",
        headers: {
          apikey: stack.anonKey,
          authorization: `Bearer ${token}`,
          "content-type": "application/json",
        },
        body: JSON.stringify({ p_order_id: uid() }),
      });
      assert.equal(rest.status, 401, `rest, ${what}`);
      await rest.body?.cancel();
      for (const fn of ["enhanced-checkout", "refunds", "payouts", "stripe-reconcile"]) {
        const answer = await call(stack, fn, {}, { token });
        // a well-signed token of a role that is not a user's: refused as unauthenticated or as forbidden
        const expected = what.startsWith("role") && fn === "stripe-reconcile" ? [401, 403] : [401];
        assert.ok(expected.includes(answer.status), `${fn}, ${what}: ${answer.text}`);
      }
    }
    // a valid user token is still not the service role's
    const user = await call(stack, "stripe-reconcile", {}, {
      token: await stack.userToken(BUYER),
      key: null,
    });
    assert.equal(user.status, 403);
  },
);

stackTest("no answer and no log line carries a secret or a stack trace", async () => {
  const stack = await sharedStack();
  const secrets = [
    stack.secretKey,
    stack.serviceRoleKey,
    stack.jwtSecret,
    Deno.env.get("STRIPE_SECRET_KEY")!,
    Deno.env.get("STRIPE_WEBHOOK_SECRET")!,
  ];
  const lines: string[] = [];
  const [log, error] = [console.log, console.error];
  console.log = (...args: unknown[]) => lines.push(args.map(String).join(" "));
  console.error = (...args: unknown[]) => lines.push(args.map(String).join(" "));
  const answers: string[] = [];
  const previousLevel = Deno.env.get("LOG_LEVEL");
  Deno.env.set("LOG_LEVEL", "debug");
  try {
    const organiser = await newOrganiser(stack);
    const order = await openOrder(stack, organiser);
    answers.push(JSON.stringify(order));
    // failures on purpose: a handler dying with a secret in its error, a forged webhook, an unavailable Stripe
    testHooks.afterStripe = () => {
      throw new Error(
        `upstream said: key ${Deno.env.get("STRIPE_SECRET_KEY")} and token ${stack.serviceRoleKey}`,
      );
    };
    answers.push(
      (await call(stack, "enhanced-checkout", {
        event_id: organiser.eventId,
        items: [{ tier_id: organiser.tierId, quantity: 1 }],
      }, { token: await stack.userToken(BUYER) })).text,
    );
    delete testHooks.afterStripe;
    answers.push(
      (await call(stack, "stripe-webhook", { id: "evt_x", type: "x" }, {
        headers: { "stripe-signature": "t=1,v1=00" },
        key: null,
      })).text,
    );
    stack.stripe!.addFault({ kind: "error_before", path: "/v1/checkout/sessions", times: 10 });
    answers.push(
      (await call(stack, "guest-checkout", {
        event_id: organiser.eventId,
        items: [{ tier_id: organiser.tierId, quantity: 1 }],
        email: "secret-test@example.com",
      })).text,
    );
    stack.stripe!.clearFaults();
    answers.push(
      (await call(stack, "refunds", { order_id: order.orderId }, { token: organiser.token })).text,
    );
  } finally {
    delete testHooks.afterStripe;
    stack.stripe!.clearFaults();
    console.log = log;
    console.error = error;
    previousLevel === undefined ? Deno.env.delete("LOG_LEVEL") : Deno.env.set("LOG_LEVEL", previousLevel);
  }
  assert.ok(lines.some((l) => l.includes('"level":"error"')), "the failures were logged");
  assert.ok(lines.some((l) => l.includes("[redacted]")), "the secret in the error was redacted");
  for (const text of [...answers, ...lines]) {
    for (const secret of secrets) assert.ok(!text.includes(secret), `a secret leaked: ${text.slice(0, 200)}`);
    assert.doesNotMatch(text, /\bat .+\.(ts|js):\d+/, `a stack trace leaked: ${text.slice(0, 200)}`);
  }
});
