// The local REST gateway keeps PostgREST's RPC contract: argument binding, result shapes, error
// bodies and statuses, and grants/RLS enforced by PostgreSQL under the JWT's role.
import assert from "node:assert/strict";
import { createClient } from "npm:@supabase/supabase-js@2.109.0";
import { sharedStack, stackTest } from "./_helpers.ts";

const FIXTURE_SQL = `
create table if not exists public.gw_notes (
  id bigint generated always as identity primary key,
  owner uuid not null default auth.uid(),
  body text not null unique
);
alter table public.gw_notes enable row level security;
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
  assert.deepEqual(plain.body, {
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
});
