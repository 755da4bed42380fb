/**
 * `npm run mutate [-- --subset ci | --only id,id | --jobs 2 | --check]`: mutation testing of the guards that matter.
 * Each mutation in mutation/catalogue.ts replaces one exact snippet (found exactly once) in one file of a
 * copy of the project, then runs only the test files that cover it: killed (a test failed), survived (all
 * passed) or timed out. A SQL mutation must hit a function's newest definition (no later migration
 * redefines it), so that it is the code that runs. Mutations listed as equivalent (with the reason) are
 * expected to survive. Exits non-zero when a mutation that is not equivalent survives, or a snippet is
 * not found. Writes docs/mutation.md (the full run) or prints the table (a subset).
 * @module
 */
import { join } from "node:path";
import { CATALOGUE, type Mutation } from "../mutation/catalogue.ts";
import { PROJECT_DIR } from "./local/db.ts";

const args = Deno.args;
const flag = (name: string) => {
  const at = args.indexOf(name);
  return at >= 0 ? args[at + 1] : undefined;
};
const subset = flag("--subset");
const only = flag("--only")?.split(",");
const jobs = Number(flag("--jobs") ?? 1);
const timeoutMs = Number(flag("--timeout") ?? 300_000);

const selected = CATALOGUE.filter((m) =>
  only ? only.includes(m.id) : subset ? m.subsets?.includes(subset) : true
);
if (selected.length === 0) {
  console.error("mutate: no mutation selected");
  Deno.exit(2);
}

/** A copy of the project at HEAD plus the working tree's changes, with node_modules linked. */
async function makeCopy(index: number): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: `mutate-${index}-` });
  const files = new TextDecoder().decode(
    (await new Deno.Command("git", {
      args: ["ls-files", "-co", "--exclude-standard"],
      cwd: PROJECT_DIR,
      stdout: "piped",
    })
      .output()).stdout,
  ).split("\n").filter(Boolean);
  for (const f of files) {
    await Deno.mkdir(join(dir, f, ".."), { recursive: true });
    await Deno.copyFile(join(PROJECT_DIR, f), join(dir, f));
  }
  await Deno.symlink(join(PROJECT_DIR, "node_modules"), join(dir, "node_modules"));
  return dir;
}

/** Checks a mutation against the project: its snippet once in its file, and (SQL) the newest definition. */
async function check(m: Mutation): Promise<string | null> {
  const text = await Deno.readTextFile(join(PROJECT_DIR, m.file));
  const count = text.split(m.find).length - 1;
  if (count !== 1) return `snippet found ${count} times in ${m.file}`;
  if (m.fn) {
    const dir = join(PROJECT_DIR, "supabase/migrations");
    const later = [...Deno.readDirSync(dir)].map((e) => e.name).filter((n) => n > m.file.split("/").at(-1)!);
    for (const name of later) {
      const body = await Deno.readTextFile(join(dir, name));
      if (new RegExp(`function\\s+${m.fn.replace(".", "\\.")}\\s*\\(`, "i").test(body)) {
        return `${m.fn} is redefined later, in ${name}`;
      }
    }
  }
  return null;
}

type Outcome = "killed" | "survived" | "timed out" | "invalid";

async function run(m: Mutation, dir: string): Promise<{ outcome: Outcome; seconds: number; detail: string }> {
  const problem = await check(m);
  if (problem) return { outcome: "invalid", seconds: 0, detail: problem };
  const path = join(dir, m.file);
  const original = await Deno.readTextFile(path);
  await Deno.writeTextFile(path, original.replace(m.find, m.replace));
  const started = performance.now();
  try {
    const child = new Deno.Command(join(dir, "node_modules/.bin/deno"), {
      args: ["run", "-A", "tools/test.ts", ...(m.filter ? ["--filter", m.filter] : []), ...m.tests],
      cwd: dir,
      env: { LOG_LEVEL: "error", TEST_RUN_TIMEOUT_MS: String(timeoutMs) },
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs + 10_000);
    const { code, stdout, stderr } = await child.output();
    clearTimeout(timer);
    const out = new TextDecoder().decode(stdout) + new TextDecoder().decode(stderr);
    const seconds = Math.round((performance.now() - started) / 1000);
    if (/exceeded .* ms and was stopped/.test(out) || code === 137) {
      return { outcome: "timed out", seconds, detail: "" };
    }
    // deno-lint-ignore no-control-regex -- the terminal's colour codes, removed
    const failed = out.match(/^(.+?) \.\.\. .*FAILED/m)?.[1]?.replace(/\x1b\[[0-9;]*m/g, "") ?? "";
    return { outcome: code === 0 ? "survived" : "killed", seconds, detail: failed };
  } finally {
    await Deno.writeTextFile(path, original);
  }
}

if (args.includes("--check")) {
  const problems = (await Promise.all(selected.map(async (m) => [m.id, await check(m)] as const)))
    .filter(([, p]) => p !== null);
  for (const [id, p] of problems) console.log(`${id}: ${p}`);
  console.log(`${selected.length} mutations, ${problems.length} invalid`);
  Deno.exit(problems.length ? 1 : 0);
}

const copies = await Promise.all(
  Array.from({ length: Math.min(jobs, selected.length) }, (_, i) => makeCopy(i)),
);
const results: { m: Mutation; outcome: Outcome; seconds: number; detail: string }[] = [];
let next = 0;
await Promise.all(copies.map(async (dir) => {
  while (next < selected.length) {
    const m = selected[next++];
    const r = await run(m, dir);
    results.push({ m, ...r });
    console.log(`${r.outcome.padEnd(9)} ${String(r.seconds).padStart(4)}s  ${m.id}  ${m.file}  ${r.detail}`);
  }
}));
for (const dir of copies) await Deno.remove(dir, { recursive: true });

results.sort((a, b) => CATALOGUE.indexOf(a.m) - CATALOGUE.indexOf(b.m));
const bad = results.filter((r) =>
  r.outcome === "invalid" || r.outcome === "timed out" || (r.outcome === "survived" && !r.m.equivalent)
);
const count = (o: Outcome) => results.filter((r) => r.outcome === o).length;
const summary = `${results.length} mutations: ${count("killed")} killed, ${count("survived")} survived (${
  results.filter((r) => r.outcome === "survived" && r.m.equivalent).length
} of them equivalent), ${count("timed out")} timed out, ${count("invalid")} invalid`;
console.log(`\n${summary}`);
for (const r of bad) console.log(`NOT OK  ${r.m.id}: ${r.outcome} ${r.detail}`);

if (!subset && !only) {
  const rows = results.map((r) =>
    `| ${r.m.id} | ${r.m.area} | \`${r.m.file.replace("supabase/", "")}\` | ${r.m.what} | ${r.outcome} | ${
      r.m.equivalent ?? r.detail.replaceAll("|", "\\|")
    } |`
  );
  await Deno.writeTextFile(
    join(PROJECT_DIR, "docs/mutation.md"),
    `# Mutation testing\n\nWritten by \`npm run mutate\` on ${
      new Date().toISOString().slice(0, 10)
    }: ${summary}.\n\n` +
      "Each mutation changes one guard in a copy of the project and runs only the tests that cover it " +
      "(mutation/catalogue.ts); a surviving mutation is either killed by a new test or listed as equivalent " +
      "with its reason. CI runs the subset tagged `ci` (`npm run mutate -- --subset ci`).\n\n" +
      "| id | area | file | mutation | outcome | killed by / why equivalent |\n| --- | --- | --- | --- | --- | --- |\n" +
      rows.join("\n") + "\n",
  );
}
Deno.exit(bad.length ? 1 : 0);
