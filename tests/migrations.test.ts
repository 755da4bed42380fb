// The migrations apply with the pinned Supabase CLI on a fresh database, and preparing a database
// twice (a restarted `npm run dev` on the same DATABASE_URL) changes nothing and fails nothing.
import assert from "node:assert/strict";
import { connectPostgres, prepareDatabase, PROJECT_DIR } from "../tools/local/db.ts";
import { createDatabase } from "./_helpers.ts";

const migrationFiles = [...Deno.readDirSync(`${PROJECT_DIR}/supabase/migrations`)]
  .filter((e) => e.name.endsWith(".sql"));

async function appliedCount(db: ReturnType<typeof connectPostgres>): Promise<number> {
  const [{ exists }] = await db.query<{ exists: boolean }>(
    "select to_regclass('supabase_migrations.schema_migrations') is not null as exists",
  );
  if (!exists) return 0; // the CLI creates its table with the first migration
  const [{ n }] = await db.query<{ n: number }>(
    "select count(*)::int as n from supabase_migrations.schema_migrations",
  );
  return n;
}

Deno.test("migrations apply with the Supabase CLI on a fresh database, and again as a no-op", async () => {
  const url = await createDatabase("migrations");
  const db = connectPostgres(url, 2);
  try {
    await prepareDatabase(db, { databaseUrl: url });
    assert.equal(await appliedCount(db), migrationFiles.length);
    await prepareDatabase(db, { databaseUrl: url });
    assert.equal(await appliedCount(db), migrationFiles.length);
    const users = await db.query<{ n: number }>("select count(*)::int as n from auth.users");
    assert.equal(users[0].n, 3);
  } finally {
    await db.close();
  }
});
