// The local REST gateway is the platform's API gateway and PostgREST's RPC contract: API keys
// (sb_publishable_, sb_secret_, legacy JWTs) and user tokens, argument binding, GET/HEAD, result shapes,
// error statuses (PostgREST's src/library/PostgREST/Error.hs) as problem+json with PostgREST's members,
// per-role statement timeouts, the pool's acquisition timeout, and grants/RLS enforced by PostgreSQL.
import assert from "node:assert/strict";
import postgres from "npm:postgres@3.4.9";
import { createClient } from "npm:@supabase/supabase-js@2.109.0";
import { connectPostgres } from "../tools/local/db.ts";
import { createRestGateway } from "../tools/local/rest_gateway.ts";
import { sharedStack, stackTest } from "./_helpers.ts";

const FIXTURE_SQL = `
create table if not exists public.gw_notes (
  id bigint generated always as identity primary key,
  owner uuid not null default auth.uid(),
  body text not null unique
);
alter table public.gw_notes enable row level security;
-- no default privileges on new tables any more (supabase.com/changelog/45329): grant what the API may do
grant select, insert on public.gw_notes to authenticated;
grant select on public.gw_notes to anon;
drop policy if exists gw_notes_own on public.gw_notes;
create policy gw_notes_own on public.gw_notes for all to authenticated
  using (owner = (select auth.uid())) with check (owner = (select auth.uid()));
create type public.gw_pair as (x int, y text);

create or replace function public.gw_add(a int, b int default 2) returns int language sql as $$ select a + b $$;
create or replace function public.gw_text() returns text language sql as $$ select 'hi' $$;
create or replace function public.gw_json(tags text[]) returns jsonb language sql as $$
  select jsonb_build_object('tags', tags, 'n', cardinality(tags)) $$;
create or replace function public.gw_object(x int) returns public.gw_pair language sql as $$ select x, 'v' $$;
create or replace function public.gw_series(n int) returns setof int language sql as $$ select generate_series(1, n) $$;
create or replace function public.gw_table(n int) returns table (i int, sq int) language sql as $$
  select i, i * i from generate_series(1, n) as i $$;
create or replace function public.gw_note(body text) returns void language sql as $$
  insert into public.gw_notes (body) values (body) $$;
create or replace function public.gw_my_notes() returns setof public.gw_notes language sql stable as $$
  select * from public.gw_notes order by id $$;
create or replace function public.gw_claims() returns jsonb language sql stable as $$
  select jsonb_build_object('uid', auth.uid(), 'role', auth.role(), 'current_user', current_user) $$;
create or replace function public.gw_fail(kind text) returns void
language plpgsql security definer set search_path = '' as $$
begin
  insert into public.gw_notes (owner, body) values ('00000000-0000-4000-8000-000000000000', 'before ' || kind);
  if kind = 'plain' then
    raise exception 'plain failure' using detail = 'the detail', hint = 'the hint';
  elsif kind = 'sold_out' then
    raise exception 'sold out' using errcode = 'PT409';
  elsif kind = 'unique' then
    insert into public.gw_notes (owner, body) values ('00000000-0000-4000-8000-000000000000', 'before ' || kind);
  end if;
end $$;
create or replace function public.gw_service_only() returns text
language sql security definer set search_path = '' as $$ select 'secret'::text $$;
revoke execute on function public.gw_service_only() from public, anon, authenticated;
grant execute on function public.gw_service_only() to service_role;
create or replace function public.gw_amb(a int) returns int language sql as $$ select a $$;
create or replace function public.gw_amb(a text) returns text language sql as $$ select a $$;
create or replace function public.gw_whole(jsonb) returns jsonb language sql as $$ select $1 $$;
create or replace function public.gw_timeout() returns text language sql as $$ select current_setting('statement_timeout') $$;
create or replace function public.gw_sleep(s float8) returns text language sql as $$ select pg_sleep(s)::text $$;
create or replace function public.gw_two_rows() returns int language sql as $$
  select (select x from generate_series(1, 2) as x) $$;
create table if not exists public.gw_marks (label text primary key);
alter table public.gw_marks enable row level security;
create or replace function public.gw_mark(label text) returns void
language sql security definer set search_path = '' as $$ insert into public.gw_marks values (label) $$;
`;

const USER_A = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa";
const USER_B = "bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb";

let fixture: Promise<void> | undefined;

async function setup() {
  const stack = await sharedStack();
  await (fixture ??= stack.db.exec(FIXTURE_SQL));
  const rpc = async (fn: string, body: unknown, token = stack.anonKey) => {
    const res = await fetch(`${stack.url}/rest/v1/rpc/${fn}`, {
      method: "POST",
      headers: {
        apikey: stack.anonKey,
        authorization: `Bearer ${token}`,
        "content-type": "application/json",
      },
      body: typeof body === "string" ? body : JSON.stringify(body),
    });
    const text = await res.text();
    return {
      status: res.status,
      type: res.headers.get("content-type"),
      text,
      body: text ? JSON.parse(text) : null,
    };
  };
  return { stack, rpc };
}

stackTest("rpc binds named arguments, fills defaults and returns a scalar", async () => {
  const { rpc } = await setup();
  assert.deepEqual(await rpc("gw_add", { a: 40 }).then((r) => [r.status, r.body]), [200, 42]);
  assert.deepEqual(await rpc("gw_add", { a: 1, b: 1 }).then((r) => r.body), 2);
  assert.deepEqual(await rpc("gw_text", {}).then((r) => r.body), "hi");
  assert.deepEqual(await rpc("gw_json", { tags: ["a", "b"] }).then((r) => r.body), {
    tags: ["a", "b"],
    n: 2,
  });
  const r = await rpc("gw_add", { a: 1 });
  assert.equal(r.type, "application/json; charset=utf-8");
});

stackTest("rpc returns an object for one composite, an array for setof, 204 for void", async () => {
  const { rpc } = await setup();
  assert.deepEqual((await rpc("gw_object", { x: 7 })).body, { x: 7, y: "v" });
  assert.deepEqual((await rpc("gw_series", { n: 3 })).body, [1, 2, 3]);
  assert.deepEqual((await rpc("gw_series", { n: 0 })).body, []);
  assert.deepEqual((await rpc("gw_table", { n: 2 })).body, [{ i: 1, sq: 1 }, { i: 2, sq: 4 }]);
  const noted = await rpc("gw_note", { body: "void-call" }, await (await sharedStack()).userToken(USER_A));
  assert.equal(noted.status, 204);
  assert.equal(noted.text, "");
});

stackTest("rpc maps PostgreSQL errors to PostgREST's statuses and bodies", async () => {
  const { rpc } = await setup();
  const plain = await rpc("gw_fail", { kind: "plain" });
  assert.equal(plain.status, 400);
  assert.equal(plain.type, "application/problem+json");
  const { request_id, ...members } = plain.body;
  assert.match(request_id, /^[0-9a-f-]{36}$/);
  assert.deepEqual(members, {
    type: "/problems/postgrest-p0001",
    title: "Bad Request",
    status: 400,
    detail: "plain failure",
    code: "P0001",
    details: "the detail",
    hint: "the hint",
    message: "plain failure",
  });
  const soldOut = await rpc("gw_fail", { kind: "sold_out" });
  assert.equal(soldOut.status, 409);
  assert.equal(soldOut.body.code, "PT409");
  const unique = await rpc("gw_fail", { kind: "unique" });
  assert.equal(unique.status, 409);
  assert.equal(unique.body.code, "23505");
  const badType = await rpc("gw_add", { a: "not a number" });
  assert.equal(badType.status, 400);
  assert.equal(badType.body.code, "22P02");
  // PostgREST's exceptions to the classes: a subquery's second row is the function's fault, not the caller's
  const twoRows = await rpc("gw_two_rows", {});
  assert.deepEqual([twoRows.status, twoRows.body.code], [500, "21000"]);
});

stackTest("one rpc is one transaction: a failure keeps nothing the call wrote", async () => {
  const { stack, rpc } = await setup();
  await rpc("gw_fail", { kind: "plain" });
  await rpc("gw_fail", { kind: "unique" });
  const rows = await stack.db.query(
    "select count(*)::int as n from public.gw_notes where body like 'before %'",
  );
  assert.equal(rows[0].n, 0);
});

stackTest("rpc answers unknown functions, bad arguments and bad JSON as PostgREST does", async () => {
  const { rpc } = await setup();
  const missing = await rpc("gw_nope", { a: 1 });
  assert.equal(missing.status, 404);
  assert.equal(missing.body.code, "PGRST202");
  assert.match(missing.body.message, /public\.gw_nope\(a\)/);
  const extra = await rpc("gw_add", { a: 1, zzz: 2 });
  assert.equal(extra.status, 404);
  assert.equal(extra.body.code, "PGRST202");
  const lacking = await rpc("gw_add", { b: 1 });
  assert.equal(lacking.status, 404);
  const ambiguous = await rpc("gw_amb", { a: 1 });
  assert.equal(ambiguous.status, 300);
  assert.equal(ambiguous.body.code, "PGRST203");
  const broken = await rpc("gw_add", "{not json");
  assert.equal(broken.status, 400);
  assert.equal(broken.body.code, "PGRST102");
});

stackTest(
  "anon is refused a service-role-only function with 401, a user with 403, service_role served",
  async () => {
    const { stack, rpc } = await setup();
    const anon = await rpc("gw_service_only", {});
    assert.equal(anon.status, 401);
    assert.equal(anon.body.code, "42501");
    assert.equal(anon.body.message, "permission denied for function gw_service_only");
    const user = await rpc("gw_service_only", {}, await stack.userToken(USER_A));
    assert.equal(user.status, 403);
    assert.equal(user.body.code, "42501");
    const service = await rpc("gw_service_only", {}, stack.serviceRoleKey);
    assert.deepEqual([service.status, service.body], [200, "secret"]);
  },
);

stackTest("the JWT sets the role and claims; forged, expired and missing tokens are refused", async () => {
  const { stack, rpc } = await setup();
  const claims = await rpc("gw_claims", {}, await stack.userToken(USER_A));
  assert.deepEqual(claims.body, { uid: USER_A, role: "authenticated", current_user: "authenticated" });
  assert.equal((await rpc("gw_claims", {})).body.current_user, "anon");

  const forged = stack.anonKey.slice(0, -4) + (stack.anonKey.endsWith("AAAA") ? "BBBB" : "AAAA");
  const bad = await rpc("gw_claims", {}, forged);
  assert.equal(bad.status, 401);
  assert.equal(bad.body.code, "PGRST301");
  const expired = await rpc("gw_claims", {}, await stack.userToken(USER_A, { exp: 1_000_000_000 }));
  assert.equal(expired.status, 401);
  assert.equal(expired.body.code, "PGRST303");
  const postgresRole = await rpc("gw_claims", {}, await stack.userToken(USER_A, { role: "postgres" }));
  assert.equal(postgresRole.status, 401);
  const none = await fetch(`${stack.url}/rest/v1/rpc/gw_claims`, { method: "POST", body: "{}" });
  assert.equal(none.status, 401);
  await none.body?.cancel();
});

stackTest("row level security applies under the caller's role", async () => {
  const { stack, rpc } = await setup();
  const [a, b] = [await stack.userToken(USER_A), await stack.userToken(USER_B)];
  await rpc("gw_note", { body: "a's note" }, a);
  await rpc("gw_note", { body: "b's note" }, b);
  const mine = (await rpc("gw_my_notes", {}, a)).body as { owner: string; body: string }[];
  assert.ok(mine.length >= 1);
  assert.ok(mine.every((n) => n.owner === USER_A));
  assert.ok(mine.some((n) => n.body === "a's note"));
  const anon = await rpc("gw_my_notes", {});
  assert.equal(anon.status, 200);
  assert.deepEqual(anon.body, []);
});

stackTest("supabase-js rpc() works against the gateway", async () => {
  const { stack } = await setup();
  const anon = createClient(stack.url, stack.anonKey, { auth: { persistSession: false } });
  const ok = await anon.rpc("gw_add", { a: 2, b: 3 });
  assert.deepEqual([ok.status, ok.data, ok.error], [200, 5, null]);
  const refused = await anon.rpc("gw_service_only");
  assert.equal(refused.status, 401);
  assert.equal(refused.error?.code, "42501");
  const service = createClient(stack.url, stack.serviceRoleKey, { auth: { persistSession: false } });
  assert.equal((await service.rpc("gw_service_only")).data, "secret");
  const rows = await anon.rpc("gw_table", { n: 3 });
  assert.equal(rows.data?.length, 3);
  const counted = await anon.rpc("gw_series", { n: 4 }, { count: "exact" });
  assert.deepEqual([counted.data, counted.count], [[1, 2, 3, 4], 4], "Content-Range carries the count");
});

stackTest(
  "API keys as the platform's gateway translates them: publishable is anon, secret is service_role",
  async () => {
    const { stack, rpc } = await setup();
    const as = async (apikey: string, bearer?: string) => {
      const res = await fetch(`${stack.url}/rest/v1/rpc/gw_claims`, {
        method: "POST",
        headers: {
          apikey,
          ...(bearer ? { authorization: `Bearer ${bearer}` } : {}),
          "content-type": "application/json",
        },
        body: "{}",
      });
      return { status: res.status, body: await res.json() };
    };
    assert.equal((await as(stack.publishableKey)).body.current_user, "anon");
    // supabase-js sends its key in both headers
    assert.equal((await as(stack.publishableKey, stack.publishableKey)).body.current_user, "anon");
    assert.equal((await as(stack.secretKey, stack.secretKey)).body.current_user, "service_role");
    const user = await as(stack.publishableKey, await stack.userToken(USER_A));
    assert.deepEqual([user.body.current_user, user.body.uid], ["authenticated", USER_A]);
    const legacyUser = await as(stack.anonKey, await stack.userToken(USER_A, {}, { legacy: true }));
    assert.equal(legacyUser.body.uid, USER_A);
    const wrongKey = await as("sb_publishable_not_this_project");
    assert.deepEqual([wrongKey.status, wrongKey.body.message], [401, "Invalid API key"]);
    const keyAsBearer = await as(stack.publishableKey, stack.secretKey);
    assert.equal(keyAsBearer.status, 401, "a different API key as the bearer token is not a JWT");
    const secretClient = createClient(stack.url, stack.secretKey, { auth: { persistSession: false } });
    assert.equal((await secretClient.rpc("gw_service_only")).data, "secret");
    const refused = await createClient(stack.url, stack.publishableKey, { auth: { persistSession: false } })
      .rpc("gw_service_only");
    assert.deepEqual([refused.status, refused.error?.code], [401, "42501"]);
    await rpc("gw_add", { a: 1 }); // the legacy anon key still works while legacy keys are enabled
  },
);

stackTest(
  "with legacy keys disabled, the legacy keys and HS256 tokens are refused and the new ones work",
  async () => {
    const { stack } = await setup();
    const gateway = createRestGateway({
      db: stack.db,
      keys: stack.keys,
      legacyKeys: false,
      schemas: ["public"],
    });
    const call = (apikey: string, bearer?: string) =>
      gateway(
        new Request(`${stack.url}/rest/v1/rpc/gw_claims`, {
          method: "POST",
          headers: { apikey, ...(bearer ? { authorization: `Bearer ${bearer}` } : {}) },
          body: "{}",
        }),
      );
    for (
      const [apikey, bearer] of [[stack.anonKey], [stack.serviceRoleKey], [
        stack.publishableKey,
        stack.serviceRoleKey,
      ]]
    ) {
      const res = await call(apikey, bearer);
      assert.equal(res.status, 401);
      assert.equal((await res.json()).message, "Legacy API keys are disabled");
    }
    const hs256 = await call(stack.publishableKey, await stack.userToken(USER_A, {}, { legacy: true }));
    assert.deepEqual([hs256.status, (await hs256.json()).code], [401, "PGRST301"]);
    const es256 = await call(stack.publishableKey, await stack.userToken(USER_A));
    assert.equal((await es256.json()).uid, USER_A);
    assert.equal((await (await call(stack.secretKey)).json()).current_user, "service_role");
  },
);

stackTest(
  "GET and HEAD call a function with query-string arguments, read-only, as supabase-js sends them",
  async () => {
    const { stack } = await setup();
    const client = createClient(stack.url, stack.publishableKey, { auth: { persistSession: false } });
    const get = await client.rpc("gw_add", { a: 40, b: 2 }, { get: true });
    assert.deepEqual([get.status, get.data], [200, 42]);
    const array = await client.rpc("gw_json", { tags: ["x", "y"] }, { get: true });
    assert.deepEqual(array.data, { tags: ["x", "y"], n: 2 });
    const head = await fetch(`${stack.url}/rest/v1/rpc/gw_add?a=1`, {
      method: "HEAD",
      headers: { apikey: stack.publishableKey },
    });
    assert.equal(head.status, 200);
    assert.equal(await head.text(), "");
    const user = createClient(stack.url, stack.publishableKey, {
      auth: { persistSession: false },
      global: { headers: { Authorization: `Bearer ${await stack.userToken(USER_A)}` } },
    });
    const write = await user.rpc("gw_note", { body: "by GET" }, { get: true });
    assert.deepEqual([write.status, write.error?.code], [405, "25006"], "a GET runs read-only");
    const put = await fetch(`${stack.url}/rest/v1/rpc/gw_add`, {
      method: "PUT",
      headers: { apikey: stack.publishableKey },
    });
    assert.deepEqual([put.status, (await put.json()).code], [405, "PGRST101"]);
  },
);

stackTest("a function with one unnamed jsonb parameter takes the whole body", async () => {
  const { rpc } = await setup();
  const whole = await rpc("gw_whole", { anything: [1, 2], nested: { ok: true } });
  assert.deepEqual([whole.status, whole.body], [200, { anything: [1, 2], nested: { ok: true } }]);
});

stackTest(
  "each role gets the platform's statement timeout: anon 3 s, authenticated and service_role 8 s",
  async () => {
    const { stack, rpc } = await setup();
    assert.equal((await rpc("gw_timeout", {})).body, "3s");
    assert.equal((await rpc("gw_timeout", {}, await stack.userToken(USER_A))).body, "8s");
    assert.equal((await rpc("gw_timeout", {}, stack.serviceRoleKey)).body, "8s");
    const started = Date.now();
    const slow = await rpc("gw_sleep", { s: 3.5 });
    assert.deepEqual([slow.status, slow.body.code], [500, "57014"], "57* is 500 (PostgREST)");
    assert.ok(Date.now() - started < 3_400, "cancelled at 3 s");
  },
);

stackTest(
  "a request that waits longer than the pool's acquisition timeout is 504 PGRST003 and never runs",
  async () => {
    const { stack } = await setup();
    const db = connectPostgres(stack.databaseUrl!, 1);
    const gateway = createRestGateway({ db, keys: stack.keys, schemas: ["public"], poolTimeoutMs: 300 });
    const call = (fn: string, args: unknown) =>
      gateway(
        new Request(`${stack.url}/rest/v1/rpc/${fn}`, {
          method: "POST",
          headers: { apikey: stack.secretKey },
          body: JSON.stringify(args),
        }),
      );
    try {
      const label = crypto.randomUUID();
      const busy = call("gw_sleep", { s: 1 });
      await new Promise((r) => setTimeout(r, 100));
      const waited = await call("gw_mark", { label });
      assert.equal(waited.status, 504);
      assert.equal((await waited.json()).code, "PGRST003");
      assert.equal((await busy).status, 200);
      await new Promise((r) => setTimeout(r, 300));
      const rows = await stack.db.query("select 1 from public.gw_marks where label = $1", [label]);
      assert.equal(rows.length, 0, "the refused call did not run later");
    } finally {
      await db.close();
    }
  },
);

stackTest("a connection killed under a call is 503, and the gateway serves the next call", async () => {
  const { stack } = await setup();
  const admin = postgres(stack.databaseUrl!, { max: 1, onnotice: () => {} });
  try {
    const running = fetch(`${stack.url}/rest/v1/rpc/gw_sleep`, {
      method: "POST",
      headers: { apikey: stack.secretKey },
      body: JSON.stringify({ s: 2 }),
    });
    let killed = 0;
    for (let i = 0; i < 40 && !killed; i++) {
      await new Promise((r) => setTimeout(r, 50));
      [{ killed }] = await admin<{ killed: number }[]>`
        select count(pg_terminate_backend(pid))::int as killed from pg_stat_activity
        where datname = current_database() and application_name = 'local-stack' and query like '%gw_sleep%'`;
    }
    assert.equal(killed, 1);
    const res = await running;
    assert.equal(res.status, 503);
    await res.body?.cancel();
    const next = await fetch(`${stack.url}/rest/v1/rpc/gw_add`, {
      method: "POST",
      headers: { apikey: stack.publishableKey },
      body: JSON.stringify({ a: 1 }),
    });
    assert.deepEqual([next.status, await next.json()], [200, 3]);
  } finally {
    await admin.end();
  }
});

stackTest("every gateway answer has CORS and a request id; its own errors are problem+json", async () => {
  const { stack } = await setup();
  const answers = [
    await fetch(`${stack.url}/rest/v1/rpc/gw_add`, { method: "POST", body: "{}" }), // no apikey
    await fetch(`${stack.url}/rest/v1/rpc/gw_add`, {
      method: "POST",
      headers: { apikey: "nope" },
      body: "{}",
    }),
    await fetch(`${stack.url}/rest/v1/gw_notes`, { headers: { apikey: stack.publishableKey } }), // tables: not served
    await fetch(`${stack.url}/nowhere`),
  ];
  for (const res of answers) {
    assert.equal(res.headers.get("access-control-allow-origin"), "*");
    assert.ok(res.headers.get("x-request-id"));
    assert.equal(res.headers.get("content-type"), "application/problem+json");
    const body = await res.json();
    assert.deepEqual([typeof body.type, typeof body.title, body.status, typeof body.detail], [
      "string",
      "string",
      res.status,
      "string",
    ]);
    assert.equal(body.request_id, res.headers.get("x-request-id"));
  }
  assert.deepEqual(answers.map((r) => r.status), [401, 401, 404, 404]);
  const preflight = await fetch(`${stack.url}/rest/v1/rpc/gw_add`, { method: "OPTIONS" });
  assert.equal(preflight.status, 204);
  assert.match(preflight.headers.get("access-control-allow-headers")!, /apikey/);
  const ok = await fetch(`${stack.url}/rest/v1/rpc/gw_add`, {
    method: "POST",
    headers: { apikey: stack.publishableKey },
    body: '{"a":1}',
  });
  assert.equal(ok.headers.get("access-control-allow-origin"), "*");
  await ok.body?.cancel();
});

stackTest(
  "the JWKS is served where the platform serves it, and verifies the stack's user tokens",
  async () => {
    const { stack } = await setup();
    const res = await fetch(`${stack.url}/auth/v1/.well-known/jwks.json`);
    const jwks = await res.json();
    assert.equal(jwks.keys.length, 1);
    assert.deepEqual([jwks.keys[0].alg, jwks.keys[0].kty, jwks.keys[0].crv, "d" in jwks.keys[0]], [
      "ES256",
      "EC",
      "P-256",
      false,
    ]);
    const { createLocalJWKSet, jwtVerify } = await import("npm:jose@6.2.18");
    const { payload } = await jwtVerify(await stack.userToken(USER_A), createLocalJWKSet(jwks));
    assert.equal(payload.sub, USER_A);
  },
);
