/**
 * The local stack's database: a PostgreSQL server at `DATABASE_URL` (through postgres.js), or an
 * embedded PGlite when no URL is given. Both sit behind one small interface, and `prepareDatabase`
 * gives either the same schema: the Supabase base, the migrations, then the seed.
 * @module
 */
import postgres from "npm:postgres@3.4.9";
import { PGlite } from "npm:@electric-sql/pglite@0.5.16";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

/** A row as the driver returns it. */
export type Row = Record<string, unknown>;

/** Anything that runs one SQL statement with positional parameters. */
export interface Queryable {
  query<T = Row>(text: string, params?: unknown[]): Promise<T[]>;
}

/** A database: statements, transactions, scripts. */
export interface Database extends Queryable {
  readonly kind: "postgres" | "pglite";
  /** Runs `fn` in one transaction: committed when it resolves, rolled back when it throws. */
  transaction<T>(fn: (tx: Queryable) => Promise<T>): Promise<T>;
  /** Runs a script of several statements (no parameters). */
  exec(script: string): Promise<void>;
  close(): Promise<void>;
}

/** The fields of a PostgreSQL error that PostgREST reports. */
export interface PgError {
  code: string;
  message: string;
  detail?: string;
  hint?: string;
}

/** True for an error that PostgreSQL raised (it carries a five-character SQLSTATE). */
export function isPgError(error: unknown): error is PgError {
  const code = (error as { code?: unknown })?.code;
  return typeof code === "string" && /^[0-9A-Z]{5}$/.test(code) && !code.startsWith("E");
}

/** Connects to a PostgreSQL server with a pool of `max` connections. */
export function connectPostgres(url: string, max = 10): Database {
  const sql = postgres(url, { max, onnotice: () => {}, connection: { application_name: "local-stack" } });
  const queryable = (q: typeof sql): Queryable => ({
    query: <T>(text: string, params: unknown[] = []) =>
      q.unsafe(text, params as never[]) as unknown as Promise<T[]>,
  });
  return {
    kind: "postgres",
    ...queryable(sql),
    transaction: <T>(fn: (tx: Queryable) => Promise<T>) =>
      sql.begin((tx) => fn(queryable(tx as unknown as typeof sql))) as Promise<T>,
    exec: async (script) => {
      await sql.unsafe(script).simple();
    },
    close: () => sql.end({ timeout: 5 }),
  };
}

/** Starts an in-memory PGlite (PostgreSQL compiled to WebAssembly; one connection). */
export async function openPglite(): Promise<Database> {
  const db = await PGlite.create();
  return {
    kind: "pglite",
    query: async <T>(text: string, params?: unknown[]) => (await db.query<T>(text, params)).rows,
    transaction: <T>(fn: (tx: Queryable) => Promise<T>) =>
      db.transaction((tx) =>
        fn({ query: async <R>(text: string, params?: unknown[]) => (await tx.query<R>(text, params)).rows })
      ),
    exec: async (script) => {
      await db.exec(script);
    },
    close: () => db.close(),
  };
}

/** The project's root folder (two levels above this file). */
export const PROJECT_DIR = fileURLToPath(new URL("../../", import.meta.url));

/**
 * Makes `db` ready to serve: creates the Supabase base where missing, applies the migrations
 * (with the Supabase CLI when `databaseUrl` is given, otherwise file by file, recorded in the
 * CLI's own `supabase_migrations.schema_migrations`), then runs `supabase/seed.sql`.
 */
export async function prepareDatabase(
  db: Database,
  options: { databaseUrl?: string; supabaseDir?: string } = {},
): Promise<void> {
  const supabaseDir = options.supabaseDir ?? join(PROJECT_DIR, "supabase");
  await db.exec(await Deno.readTextFile(new URL("./supabase_base.sql", import.meta.url)));
  if (options.databaseUrl) await migrateWithCli(options.databaseUrl, supabaseDir);
  else await migrateFileByFile(db, supabaseDir);
  await db.exec(await Deno.readTextFile(join(supabaseDir, "seed.sql")));
}

/** Adds `sslmode=disable` to a URL for a server on this machine, which speaks no TLS. */
export function cliDatabaseUrl(url: string): string {
  const parsed = new URL(url);
  const local = ["127.0.0.1", "localhost", "[::1]", ""].includes(parsed.hostname);
  if (local && !parsed.searchParams.has("sslmode")) parsed.searchParams.set("sslmode", "disable");
  return parsed.toString();
}

/** Applies the migrations of `supabaseDir` with the project's pinned Supabase CLI. */
export async function migrateWithCli(databaseUrl: string, supabaseDir: string): Promise<void> {
  const cli = join(PROJECT_DIR, "node_modules", ".bin", "supabase");
  const { code, stdout, stderr } = await new Deno.Command(cli, {
    args: ["migration", "up", "--db-url", cliDatabaseUrl(databaseUrl), "--workdir", dirname(supabaseDir)],
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (code !== 0) {
    const output = new TextDecoder().decode(stderr) + new TextDecoder().decode(stdout);
    throw new Error(`supabase migration up failed (exit ${code}): ${output.trim()}`);
  }
}

async function migrateFileByFile(db: Database, supabaseDir: string): Promise<void> {
  await db.exec(`
    create schema if not exists supabase_migrations;
    create table if not exists supabase_migrations.schema_migrations (
      version text primary key, statements text[], name text);`);
  const applied = new Set(
    (await db.query<{ version: string }>("select version from supabase_migrations.schema_migrations"))
      .map((r) => r.version),
  );
  const dir = join(supabaseDir, "migrations");
  const files = [...Deno.readDirSync(dir)].map((e) => e.name).filter((n) => /^\d+_.+\.sql$/.test(n)).sort();
  for (const file of files) {
    const [version, name] = [file.slice(0, file.indexOf("_")), file.slice(file.indexOf("_") + 1, -4)];
    if (applied.has(version)) continue;
    const script = await Deno.readTextFile(join(dir, file));
    // One simple-protocol script runs as one implicit transaction: the file and its record, or nothing.
    await db.exec(`${script}\n;insert into supabase_migrations.schema_migrations (version, name)
      values ('${version}', '${name.replaceAll("'", "''")}');`);
  }
}
