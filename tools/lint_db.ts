/**
 * `deno task lint:db`: applies the migrations and seed to a scratch database on the PostgreSQL server
 * (`DATABASE_URL`, default the local one) and runs `supabase db lint --fail-on error` (plpgsql_check)
 * over every schema that holds a PL/pgSQL function. Exits non-zero on any error.
 * @module
 */
import postgres from "npm:postgres@3.4.9";
import { join } from "node:path";
import { cliDatabaseUrl, connectPostgres, prepareDatabase, PROJECT_DIR } from "./local/db.ts";

const adminUrl = Deno.env.get("DATABASE_URL") || "postgresql://postgres@127.0.0.1:5432/postgres";
const name = `lint_${Date.now().toString(36)}_${Deno.pid}`;
const admin = postgres(adminUrl, { max: 1, onnotice: () => {} });
await admin.unsafe(`create database "${name}"`);
const url = new URL(adminUrl);
url.pathname = `/${name}`;
let code = 1;
try {
  const db = connectPostgres(url.toString(), 1);
  try {
    await prepareDatabase(db, { databaseUrl: url.toString() });
    const rows = await db.query<{ nspname: string }>(`
      select distinct n.nspname from pg_catalog.pg_proc p
      join pg_catalog.pg_namespace n on n.oid = p.pronamespace
      join pg_catalog.pg_language l on l.oid = p.prolang
      where l.lanname = 'plpgsql' and n.nspname not in ('pg_catalog', 'information_schema')
      union select 'public'`);
    const schemas = rows.map((r) => r.nspname).sort();
    console.log(`supabase db lint over: ${schemas.join(", ")}`);
    const lint = await new Deno.Command(join(PROJECT_DIR, "node_modules", ".bin", "supabase"), {
      args: [
        "db",
        "lint",
        "--db-url",
        cliDatabaseUrl(url.toString()),
        "--fail-on",
        "error",
        "--schema",
        schemas.join(","),
      ],
    }).spawn().status;
    code = lint.code;
  } finally {
    await db.close();
  }
} finally {
  await admin.unsafe(`drop database if exists "${name}" with (force)`);
  await admin.end();
}
Deno.exit(code);
