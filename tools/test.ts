/**
 * `npm test`: runs the Deno test suite against a real PostgreSQL server (`DATABASE_URL`, default
 * `postgresql://postgres@127.0.0.1:5432/postgres`). Each run works in databases of its own, named
 * after the run, and drops them at the end. Extra arguments go to `deno test` (e.g. a file).
 * @module
 */
import postgres from "npm:postgres@3.4.9";

const adminUrl = Deno.env.get("DATABASE_URL") || "postgresql://postgres@127.0.0.1:5432/postgres";
const admin = postgres(adminUrl, { max: 1, onnotice: () => {}, connect_timeout: 5 });
try {
  await admin`select 1`;
} catch (e) {
  const where = new URL(adminUrl);
  console.error(
    `Cannot reach PostgreSQL at ${where.host} (${
      (e as Error).message
    }): start it or set DATABASE_URL. The suite needs a real server.`,
  );
  Deno.exit(1);
}

const prefix = `test_${Date.now().toString(36)}_${Deno.pid}`;
const args = Deno.args.length ? Deno.args : ["tests/"];
const child = new Deno.Command(Deno.execPath(), {
  args: ["test", "-A", "--no-check", ...args],
  env: { TEST_ADMIN_URL: adminUrl, TEST_DB_PREFIX: prefix, LOG_LEVEL: Deno.env.get("LOG_LEVEL") ?? "error" },
  stdin: "null",
}).spawn();
// A whole run that outlives this is stuck somewhere: it fails instead of stalling CI.
const RUN_TIMEOUT_MS = Number(Deno.env.get("TEST_RUN_TIMEOUT_MS") || 14 * 60_000);
const watchdog = setTimeout(() => {
  console.error(`npm test: the run exceeded ${RUN_TIMEOUT_MS} ms and was stopped`);
  child.kill("SIGKILL");
}, RUN_TIMEOUT_MS);
const { code } = await child.status;
clearTimeout(watchdog);

const leftovers = await admin<{ datname: string }[]>`
  select datname from pg_database where datname like ${prefix + "%"}`;
for (const { datname } of leftovers) {
  await admin.unsafe(`drop database if exists "${datname}" with (force)`);
}
await admin.end();
Deno.exit(code);
