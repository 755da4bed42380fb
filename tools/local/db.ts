/**
 * The local stack's database: a PostgreSQL server at `DATABASE_URL` (through postgres.js), or an
 * embedded PGlite when no URL is given. Both sit behind one small interface, and `prepareDatabase`
 * gives either the same schema: the Supabase base, the migrations, then the seed.
 * @module
 */
import postgres from "npm:postgres@3.4.9";
import { PGlite } from "npm:@electric-sql/pglite@0.5.16";
import net from "node:net";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

/** A row as the driver returns it. */
export type Row = Record<string, unknown>;

/** Anything that runs one SQL statement with positional parameters. */
export interface Queryable {
  query<T = Row>(text: string, params?: unknown[]): Promise<T[]>;
}

/** A database: statements and scripts; at most its pool's worth of scripts run at once. */
export interface Database extends Queryable {
  readonly kind: "postgres" | "pglite";
  /**
   * Runs a script of several statements as one transaction in one round trip (the simple query
   * protocol's implicit transaction: all of it or none of it) and resolves to the last statement's
   * rows. Waits for a free connection at most `acquireTimeoutMs` (default: as long as it takes), then
   * throws `PoolTimeoutError` without having sent anything.
   */
  script<T = Row>(text: string, options?: { acquireTimeoutMs?: number }): Promise<T[]>;
  /** Runs a script of several statements (no parameters, no result). */
  exec(script: string): Promise<void>;
  close(): Promise<void>;
}

/** No connection became free in time: the script was not sent. */
export class PoolTimeoutError extends Error {
  constructor(ms: number) {
    super(`No database connection became free within ${ms} ms`);
    this.name = "PoolTimeoutError";
  }
}

/** The server could not be reached in time: the statement was withdrawn, it will never run. */
export class DatabaseUnreachableError extends Error {
  constructor(ms: number) {
    super(`No connection to the database within ${ms} ms`);
    this.name = "DatabaseUnreachableError";
  }
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

/**
 * Connects to a PostgreSQL server with a pool of `max` connections. A connection that dies (a server
 * restart, `pg_terminate_backend`) fails the statement it ran and is replaced for the next one; the
 * process survives it (`survivePostgresJsConnectionLoss`).
 */
export function connectPostgres(url: string, max = 10, connectTimeoutMs = 5_000): Database {
  survivePostgresJsConnectionLoss();
  // `socket` (a factory of connected sockets) is postgres.js's, though its types omit it
  const options = {
    max,
    onnotice: () => {},
    connection: { application_name: "local-stack" },
    socket: driverSocket,
  };
  const sql = postgres(url, options);
  const slots = semaphore(max);
  return {
    kind: "postgres",
    query: <T>(text: string, params: unknown[] = []) =>
      reachable(sql.unsafe(text, params as never[]), connectTimeoutMs) as Promise<T[]>,
    script: async <T>(text: string, options: { acquireTimeoutMs?: number } = {}) => {
      const release = await slots.acquire(options.acquireTimeoutMs);
      try {
        const results = await reachable(sql.unsafe(text).simple(), connectTimeoutMs) as unknown[];
        return (Array.isArray(results[0]) ? results.at(-1) : results) as T[];
      } finally {
        release();
      }
    },
    exec: async (script) => {
      await sql.unsafe(script).simple();
    },
    close: () => sql.end({ timeout: 5 }),
  };
}

/**
 * `query`'s result, unless no connection took it within `ms` (the server is down or restarting; the
 * semaphore keeps it from waiting for a busy one): then it is withdrawn from postgres.js's queue, so it
 * can never run later, after its caller was told it failed, and `DatabaseUnreachableError` is thrown.
 * postgres.js hands a query to a connection by giving it a `state`; until then `cancel()` removes it.
 */
async function reachable(query: Promise<unknown> & { cancel(): unknown }, ms: number): Promise<unknown> {
  let withdrawn = false;
  const timer = setTimeout(() => {
    if ((query as unknown as { state?: unknown }).state) return;
    withdrawn = true;
    query.cancel();
  }, ms);
  try {
    return await query;
  } catch (e) {
    throw withdrawn ? new DatabaseUnreachableError(ms) : e;
  } finally {
    clearTimeout(timer);
  }
}

/** Starts an in-memory PGlite (PostgreSQL compiled to WebAssembly; one connection). */
export async function openPglite(): Promise<Database> {
  const db = await PGlite.create();
  const slots = semaphore(1);
  return {
    kind: "pglite",
    query: async <T>(text: string, params?: unknown[]) => (await db.query<T>(text, params)).rows,
    script: async <T>(text: string, options: { acquireTimeoutMs?: number } = {}) => {
      const release = await slots.acquire(options.acquireTimeoutMs);
      try {
        return ((await db.exec(text)).at(-1)?.rows ?? []) as T[];
      } finally {
        release();
      }
    },
    exec: async (script) => {
      await db.exec(script);
    },
    close: () => db.close(),
  };
}

/** At most `size` holders at once; `acquire` waits its turn, at most `timeoutMs`. */
function semaphore(size: number): { acquire(timeoutMs?: number): Promise<() => void> } {
  let free = size;
  const waiting: (() => void)[] = [];
  const release = () => {
    const next = waiting.shift();
    if (next) next();
    else free++;
  };
  return {
    acquire(timeoutMs) {
      if (free > 0) {
        free--;
        return Promise.resolve(release);
      }
      return new Promise((resolve, reject) => {
        const grant = () => {
          clearTimeout(timer);
          resolve(release);
        };
        const timer = timeoutMs === undefined ? undefined : setTimeout(() => {
          waiting.splice(waiting.indexOf(grant), 1);
          reject(new PoolTimeoutError(timeoutMs));
        }, timeoutMs);
        waiting.push(grant);
      });
    },
  };
}

/** Errors of the driver's sockets (a reset, a refused connection), recognised by identity. */
const socketErrors = new WeakSet<object>();

/** The driver's connection: a plain TCP socket whose errors are marked as the driver's. */
function driverSocket(options: { host: string[]; port: number[] }): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(options.port[0], options.host[0]);
    socket.on("error", (e) => socketErrors.add(e));
    socket.once("connect", () => {
      socket.off("error", reject);
      resolve(socket);
    });
    socket.once("error", reject);
  });
}

let guarded = false;

/**
 * postgres.js under Deno can let the death of a connection escape as an unhandled rejection (the
 * server's `57P01 terminating connection due to administrator command`, or its socket's `ECONNRESET`)
 * or as an uncaught `TypeError` from its write scheduler, any of which ends the process. The statement
 * that ran on the connection is failed through its own promise, and the pool opens a new connection for
 * the next one; so these escapes, and only errors raised inside `postgres/src/connection.js` or by the
 * driver's own sockets, are logged and absorbed.
 */
function survivePostgresJsConnectionLoss(): void {
  if (guarded) return;
  guarded = true;
  const absorb = (event: Event, e: unknown) => {
    const error = e as { name?: string; code?: string; stack?: string } | null;
    const fromDriver = /node_modules\/postgres\/src\/connection\.js/.test(error?.stack ?? "") ||
      (typeof e === "object" && e !== null && socketErrors.has(e));
    if (!fromDriver) return;
    const connectionLost = /^(08|57P0)/.test(error?.code ?? "") ||
      /^(CONNECTION_|CONNECT_TIMEOUT|ECONNRESET|EPIPE|ECONNREFUSED)/.test(error?.code ?? "");
    if (!connectionLost && error?.name !== "TypeError") return;
    event.preventDefault();
    console.error(JSON.stringify({
      level: "warn",
      msg: "database connection lost; the pool opens a new one",
      error: { name: error?.name, code: error?.code },
    }));
  };
  globalThis.addEventListener("unhandledrejection", (e) => absorb(e, e.reason));
  globalThis.addEventListener("error", (e) => absorb(e, e.error));
}

/** The project's root folder (two levels above this file). */
export const PROJECT_DIR = fileURLToPath(new URL("../../", import.meta.url));

/** How `prepareDatabase` prepares a database. */
export interface PrepareOptions {
  /** The database's URL: the migrations are then applied by the Supabase CLI; without it, file by file. */
  databaseUrl?: string;
  /** The URL the CLI connects with to apply the migrations (e.g. as a non-superuser owner); default `databaseUrl`. */
  migrateAs?: string;
  /** Also create the default privileges projects had before the Data API change (`supabase_old_defaults.sql`). */
  oldDefaults?: boolean;
  supabaseDir?: string;
}

/**
 * Makes `db` ready to serve: creates the Supabase base where missing (as on a project since the Data API
 * change, without default privileges for the API roles, unless `oldDefaults`), applies the migrations
 * (with the Supabase CLI when `databaseUrl` is given, otherwise file by file, recorded in the CLI's own
 * `supabase_migrations.schema_migrations`), then runs `supabase/seed.sql`.
 */
export async function prepareDatabase(db: Database, options: PrepareOptions = {}): Promise<void> {
  const supabaseDir = options.supabaseDir ?? join(PROJECT_DIR, "supabase");
  await db.exec(await Deno.readTextFile(new URL("./supabase_base.sql", import.meta.url)));
  if (options.oldDefaults) {
    await db.exec(await Deno.readTextFile(new URL("./supabase_old_defaults.sql", import.meta.url)));
  }
  if (options.databaseUrl) await migrateWithCli(options.migrateAs ?? options.databaseUrl, supabaseDir);
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
