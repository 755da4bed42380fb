// Supabase as it really is (issue 12), through the stack and the real functions: ES256 user tokens and
// the new API keys reach the functions that take them and no others; a project with only the new keys
// works end to end, each function in a process of its own; with legacy keys disabled a function left
// with the legacy key answers a plain 500 that says what to set, never "store unavailable"; database
// connections killed under a storm of checkouts, or the database gone and back, leave the stack serving
// and every client with its one Checkout Session.
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import postgres from "npm:postgres@3.4.9";
import { readConfig } from "../tools/local/functions_host.ts";
import { generateSigningKey, projectKeys } from "../tools/local/jwt.ts";
import { type Stack, type StackOptions, startStack } from "../tools/local/stack.ts";
import { type Answer, assertLedger, BUYER, call, footprint, newOrganiser, paidOrder, uid } from "./_flows.ts";
import { createDatabase, forgetPreviousStack, withTimeout } from "./_helpers.ts";

const SUPABASE_DIR = fileURLToPath(new URL("../supabase", import.meta.url));

/** A stack of its own with each function in its own process (its environment is its own too). */
async function isolatedStack(label: string, options: StackOptions = {}): Promise<Stack> {
  forgetPreviousStack();
  return startStack({
    databaseUrl: options.databaseUrl ?? await createDatabase(label),
    port: 0,
    emulatorPort: 0,
    signingKey: await generateSigningKey(),
    functionsIsolation: "process",
    // a platform with funds (card funds available at once): these tests are about keys and processes
    fundsDelaySeconds: 0,
    initialBalance: { usd: 1_000_000_000 },
    ...options,
  });
}

/** Retries with the same key while the answer says to (any 5xx, 409 in progress), up to `deadlineMs`. */
async function untilDone(attempt: () => Promise<Answer>, deadlineMs = 150_000): Promise<Answer[]> {
  const answers: Answer[] = [];
  const deadline = Date.now() + deadlineMs;
  for (;;) {
    const answer = await attempt().catch((e): Answer => ({
      status: 0,
      body: {},
      text: String(e),
      headers: new Headers(),
    }));
    answers.push(answer);
    const retry = answer.status === 0 || answer.status >= 500 ||
      (answer.status === 409 && /in-progress|in-use/.test(String(answer.body.type)));
    if (!retry || Date.now() > deadline) return answers;
    const after = Number(answer.headers.get("retry-after") ?? 0);
    await new Promise((r) => setTimeout(r, Math.min(1_000, after * 1_000) || 200));
  }
}

const guestOrder = (event: string, tier: string, email: string) => ({
  event_id: event,
  items: [{ tier_id: tier, quantity: 1 }],
  email,
});

Deno.test({
  name: "a project with only the new keys (legacy keys disabled): each function takes the keys it should",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async (t) => {
    const stack = await isolatedStack("newkeys", { legacyKeys: false, functionEnv: { LOG_LEVEL: "info" } });
    try {
      await t.step(
        "an ES256 user token reaches enhanced-checkout, `apikey: sb_publishable_` guest-checkout",
        async () => {
          const organiser = await newOrganiser(stack);
          const token = await stack.userToken(BUYER);
          assert.equal(JSON.parse(atob(token.split(".")[0])).alg, "ES256");
          const signedIn = await call(stack, "enhanced-checkout", {
            event_id: organiser.eventId,
            items: [{ tier_id: organiser.tierId, quantity: 1 }],
          }, { token });
          assert.equal(signedIn.status, 201, signedIn.text);
          const guest = await call(
            stack,
            "guest-checkout",
            guestOrder(organiser.eventId, organiser.tierId, "pk@example.com"),
            {
              token: null,
              headers: { apikey: stack.publishableKey },
            },
          );
          assert.equal(guest.status, 201, guest.text);
          const before = await footprint(stack);
          for (
            const headers of [{}, { apikey: stack.anonKey }, {
              apikey: "sb_publishable_of_another_project",
            }] as Record<string, string>[]
          ) {
            const refused = await call(
              stack,
              "guest-checkout",
              guestOrder(organiser.eventId, organiser.tierId, "x@example.com"),
              {
                token: null,
                headers,
              },
            );
            assert.deepEqual(
              [refused.status, refused.body.type],
              [401, "/problems/unauthorized"],
              JSON.stringify(headers),
            );
          }
          assert.deepEqual(await footprint(stack), before, "refused: nothing written, no Stripe call");
        },
      );

      await t.step(
        "`apikey: sb_secret_` reaches stripe-reconcile (verify_jwt off); a user token, the publishable key do not",
        async () => {
          const config = await readConfig(SUPABASE_DIR);
          assert.equal(config.functions?.["stripe-reconcile"]?.verify_jwt, false);
          const secret = await call(stack, "stripe-reconcile", {}, {
            token: null,
            key: null,
            headers: { apikey: stack.secretKey },
          });
          assert.equal(secret.status, 200, secret.text);
          assert.ok("settled" in secret.body);
          const refusals = {
            "a user token": [{ token: await stack.userToken(BUYER) }, 403],
            "the publishable key": [{ token: null, headers: { apikey: stack.publishableKey } }, 403],
            "the publishable key as supabase-js sends it": [{
              token: stack.publishableKey,
              headers: { apikey: stack.publishableKey },
            }, 403],
            "a secret key as bearer": [{ token: stack.secretKey }, 401],
            "the disabled legacy service_role key": [{ token: stack.serviceRoleKey }, 401],
            "nothing": [{ token: null }, 401],
          } as const;
          for (const [what, [options, status]] of Object.entries(refusals)) {
            const answer = await call(stack, "stripe-reconcile", {}, { key: null, ...options });
            assert.equal(answer.status, status, `${what}: ${answer.text}`);
          }
        },
      );

      await t.step(
        "no client address (none is documented): the per-address guest limit is skipped and logged",
        async () => {
          const organiser = await newOrganiser(stack);
          const lines: string[] = [];
          const log = console.log;
          console.log = (line: string) => lines.push(line);
          let answers: Answer[];
          try {
            answers = await Promise.all(
              Array.from({ length: 35 }, (_, i) =>
                call(
                  stack,
                  "guest-checkout",
                  guestOrder(organiser.eventId, organiser.tierId, `office-${i}@example.com`),
                  {
                    token: null,
                    headers: { apikey: stack.publishableKey, "x-forwarded-for": "203.0.113.7" }, // not passed on
                  },
                )),
            );
          } finally {
            console.log = log;
          }
          // 35 guests from one office would pass the 30 a minute per address; with no address, none is refused
          assert.deepEqual(answers.map((a) => a.status), Array(35).fill(201));
          const buckets = await stack.db.query(
            "select bucket from private.rate_limits where bucket like 'ip:%'",
          );
          assert.deepEqual([...buckets], [], "no shared 'ip:unknown' bucket");
          const skipped = lines.filter((l) =>
            l.includes("no client address: the per-address rate limit is skipped")
          );
          assert.equal(skipped.length, 35);
          assert.ok(skipped.every((l) => JSON.parse(l).request_id));
        },
      );

      await t.step("every function works, each in a process of its own", async () => {
        const organiser = await newOrganiser(stack);
        const order = await paidOrder(stack, organiser, 2); // enhanced-checkout, then stripe-webhook
        const refund = await call(stack, "refunds", { order_id: order.orderId, amount_cents: 1000 }, {
          token: organiser.token,
        });
        assert.equal(refund.status, 201, refund.text);
        const payout = await call(stack, "payouts", { amount_cents: 2000 }, { token: organiser.token });
        assert.equal(payout.status, 201, payout.text);
        const reconcile = await call(stack, "stripe-reconcile", {}, {
          token: null,
          key: null,
          headers: { apikey: stack.secretKey },
        });
        assert.equal(reconcile.status, 200, reconcile.text);
        const workers = stack.functions.workers();
        const pids = [
          "guest-checkout",
          "enhanced-checkout",
          "stripe-webhook",
          "refunds",
          "payouts",
          "stripe-reconcile",
        ]
          .map((name) => workers[name]?.[0]);
        assert.ok(pids.every((p) => typeof p === "number" && p !== Deno.pid), JSON.stringify(workers));
        assert.equal(new Set(pids).size, pids.length, "one process per function");
        await assertLedger(stack);
      });
    } finally {
      await stack.close();
    }
  },
});

Deno.test({
  name:
    "legacy keys disabled, a function left with the legacy key: a plain 500 that says what to set, never 503",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: withTimeout(
    "legacy keys disabled, a function left with the legacy key: a plain 500 that says what to set, never 503",
    async () => {
      const signingKey = await generateSigningKey();
      const { serviceRoleKey } = await projectKeys(
        "super-secret-jwt-token-with-at-least-32-characters-long",
        signingKey,
      );
      const lines: string[] = [];
      const error = console.error;
      console.error = (...args: unknown[]) => lines.push(args.map(String).join(" "));
      const stack = await isolatedStack("legacyoff", {
        legacyKeys: false,
        signingKey,
        // an old deployment: the functions know only the legacy service_role key, and nobody set
        // LEGACY_API_KEYS=off for them
        functionEnv: {
          SUPABASE_SECRET_KEYS: null,
          SUPABASE_SERVICE_ROLE_KEY: serviceRoleKey,
          LEGACY_API_KEYS: null,
        },
      });
      try {
        const organiser = await newOrganiser(stack);
        const answers = [
          await call(stack, "enhanced-checkout", {
            event_id: organiser.eventId,
            items: [{ tier_id: organiser.tierId, quantity: 1 }],
          }, { token: await stack.userToken(BUYER) }),
          await call(stack, "payouts", { amount_cents: 500 }, { token: organiser.token }),
          await call(stack, "stripe-reconcile", {}, { token: serviceRoleKey, key: null }),
        ];
        for (const answer of answers) {
          assert.deepEqual([answer.status, answer.body.type], [500, "/problems/internal"], answer.text);
          assert.doesNotMatch(answer.text, /store-unavailable|Legacy/);
        }
        await new Promise((r) => setTimeout(r, 200)); // the workers' log lines reach this process
        const said = lines.filter((l) => l.includes("ConfigurationError"));
        assert.ok(said.length >= 2, lines.join("\n"));
        for (const line of said) {
          assert.match(
            line,
            /refused the functions' legacy service_role key \(401 Legacy API keys are disabled\)/,
          );
          assert.match(line, /set SUPABASE_SECRET_KEYS/);
          assert.ok(!line.includes(serviceRoleKey), "the key itself is never logged");
          assert.ok(JSON.parse(line).request_id, "with the request's id");
        }
      } finally {
        console.error = error;
        await stack.close();
      }
    },
  ),
});

Deno.test({
  name:
    "legacy keys disabled, the legacy variables still set (JWT_SECRET outlives the switch): LEGACY_API_KEYS=off makes the functions refuse them too",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: withTimeout(
    "legacy keys disabled, the legacy variables still set (JWT_SECRET outlives the switch): LEGACY_API_KEYS=off makes the functions refuse them too",
    async () => {
      const stack = await isolatedStack("legacykept", { legacyKeys: false, keepLegacyFunctionEnv: true });
      try {
        // the gateway refuses the legacy key, as the platform does once legacy keys are disabled
        const gateway = await fetch(`${stack.url}/rest/v1/rpc/reconcile_housekeeping`, {
          method: "POST",
          headers: { apikey: stack.serviceRoleKey, "content-type": "application/json" },
          body: JSON.stringify({ p_batch_size: 1 }),
        });
        assert.equal(gateway.status, 401);
        assert.match(await gateway.text(), /Legacy API keys are disabled/);
        // the functions have the legacy variables, and refuse them all the same
        const organiser = await newOrganiser(stack);
        const forgedAdmin = await stack.userToken(uid(), { app_metadata: { role: "platform_admin" } }, {
          legacy: true,
        });
        const refusals: [string, string, Parameters<typeof call>[3]][] = [
          ["stripe-reconcile", "the legacy service_role key as bearer", {
            token: stack.serviceRoleKey,
            key: null,
          }],
          ["stripe-reconcile", "the legacy service_role key as apikey", {
            token: null,
            key: null,
            headers: { apikey: stack.serviceRoleKey },
          }],
          ["refunds", "a platform admin's HS256 token signed with the old secret", { token: forgedAdmin }],
          ["guest-checkout", "the legacy anon key", { token: stack.anonKey }],
        ];
        for (const [fn, what, options] of refusals) {
          const body = fn === "refunds"
            ? { order_id: uid() }
            : guestOrder(organiser.eventId, organiser.tierId, "legacy@example.com");
          const answer = await call(stack, fn, body, options);
          assert.deepEqual(
            [answer.status, answer.body.type],
            [401, "/problems/unauthorized"],
            `${what}: ${answer.text}`,
          );
        }
        // the new keys and ES256 tokens work
        const reconcile = await call(stack, "stripe-reconcile", {}, {
          token: null,
          key: null,
          headers: { apikey: stack.secretKey },
        });
        assert.equal(reconcile.status, 200, reconcile.text);
        const checkout = await call(stack, "enhanced-checkout", {
          event_id: organiser.eventId,
          items: [{ tier_id: organiser.tierId, quantity: 1 }],
        }, { token: await stack.userToken(BUYER) });
        assert.equal(checkout.status, 201, checkout.text);
      } finally {
        await stack.close();
      }
    },
  ),
});

Deno.test({
  name:
    "connections killed under a storm of checkouts: the stack keeps serving, every client gets its one session",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: withTimeout(
    "connections killed under a storm of checkouts: the stack keeps serving, every client gets its one session",
    async () => {
      const stack = await isolatedStack("storm", { legacyKeys: false });
      const admin = postgres(stack.databaseUrl!, { max: 1, onnotice: () => {} });
      try {
        const organiser = await newOrganiser(stack, { capacity: 100 });
        const token = await stack.userToken(BUYER);
        const order = { event_id: organiser.eventId, items: [{ tier_id: organiser.tierId, quantity: 1 }] };
        const keys = Array.from({ length: 24 }, uid);
        let storming = true;
        let kills = 0;
        const killer = (async () => {
          while (storming) {
            await new Promise((r) => setTimeout(r, 120));
            const [{ n }] = await admin<{ n: number }[]>`
            select count(pg_terminate_backend(pid))::int as n from pg_stat_activity
            where datname = current_database() and application_name = 'local-stack'`;
            kills += n;
          }
        })();
        const clients = keys.map(async (key, i) => {
          await new Promise((r) => setTimeout(r, i * 60)); // arriving over the storm
          return untilDone(() => call(stack, "enhanced-checkout", order, { key, token }));
        });
        // the storm lasts 3 s and until it has killed 5 connections (a loaded machine kills fewer per second),
        // 60 s at most
        const began = Date.now();
        const stop = setInterval(() => {
          if ((Date.now() - began >= 3_000 && kills >= 5) || Date.now() - began >= 60_000) storming = false;
        }, 100);
        const results = await Promise.all(clients);
        await killer;
        clearInterval(stop);
        assert.ok(kills >= 5, `connections killed: ${kills}`);
        const failures = results.flat().filter((a) => a.status !== 201);
        assert.ok(failures.length > 0, "the storm reached the clients");
        for (const [i, answers] of results.entries()) {
          assert.equal(answers.at(-1)!.status, 201, `client ${i}: ${answers.at(-1)!.text}`);
        }
        // after the storm: each key answers with its one session, and Stripe holds one session per order
        const sessions = new Map<string, string>();
        for (const [i, key] of keys.entries()) {
          const again = await call(stack, "enhanced-checkout", order, { key, token });
          assert.equal(again.status, 201);
          assert.equal(again.body.checkout_session_id, results[i].at(-1)!.body.checkout_session_id);
          sessions.set(again.body.order_id as string, again.body.checkout_session_id as string);
        }
        assert.equal(sessions.size, keys.length, "one order per client");
        const atStripe = [...stack.stripe!.state.sessions.values()]
          .filter((s) => sessions.has((s.metadata as Record<string, string>).order_id));
        assert.equal(atStripe.length, keys.length, "one Checkout Session per order");
        const rows = await stack.db.query<{ n: number }>(
          "select count(*)::int as n from events.orders where idempotency_key = any($1::text[])",
          [keys],
        );
        assert.equal(rows[0].n, keys.length);
        assert.ok(Object.keys(stack.functions.workers()).length > 0, "the workers live on");
      } finally {
        await admin.end();
        await stack.close();
      }
    },
  ),
});

Deno.test({
  name: "the database gone and back (a restart): requests answer 503 meanwhile, then the stack reconnects",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: withTimeout(
    "the database gone and back (a restart): requests answer 503 meanwhile, then the stack reconnects",
    async () => {
      const proxy = tcpProxy(5432);
      const direct = new URL(await createDatabase("restart"));
      const viaProxy = new URL(direct);
      viaProxy.port = String(proxy.port);
      const stack = await isolatedStack("restart", { databaseUrl: viaProxy.toString(), legacyKeys: false });
      try {
        const guest = (email: string, key = uid()) =>
          call(
            stack,
            "guest-checkout",
            guestOrder("33333333-3333-4333-8333-333333333333", "44444444-4444-4444-8444-444444444444", email),
            {
              key,
              token: null,
              headers: { apikey: stack.publishableKey },
            },
          );
        assert.equal((await guest("before@example.com")).status, 201);
        proxy.down();
        const key = uid();
        const during = await guest("during@example.com", key);
        assert.deepEqual([during.status, during.body.type], [503, "/problems/store-unavailable"]);
        assert.equal(during.headers.get("retry-after"), "1");
        proxy.up();
        const after = await untilDone(() => guest("during@example.com", key), 20_000);
        assert.equal(after.at(-1)!.status, 201, after.at(-1)!.text);
      } finally {
        await stack.close();
        proxy.close();
      }
    },
  ),
});

/** A TCP proxy to PostgreSQL that can drop every connection and refuse new ones, like a restart. */
function tcpProxy(target: number) {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const open = new Set<Deno.Conn>();
  let accepting = true;
  (async () => {
    for await (const client of listener) {
      if (!accepting) {
        client.close();
        continue;
      }
      const server = await Deno.connect({ hostname: "127.0.0.1", port: target });
      open.add(client).add(server);
      const close = () => {
        for (const c of [client, server]) {
          open.delete(c);
          try {
            c.close();
          } catch { /* closed */ }
        }
      };
      client.readable.pipeTo(server.writable).catch(() => {}).finally(close);
      server.readable.pipeTo(client.writable).catch(() => {}).finally(close);
    }
  })().catch(() => {});
  return {
    port: (listener.addr as Deno.NetAddr).port,
    down() {
      accepting = false;
      for (const c of [...open]) {
        try {
          c.close();
        } catch { /* closed */ }
      }
      open.clear();
    },
    up() {
      accepting = true;
    },
    close() {
      this.down();
      listener.close();
    },
  };
}
