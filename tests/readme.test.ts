// The README's examples work as written: every ```sh block (and ```sql block) of README.md is either run
// here, in order, in one bash session with `set -euo pipefail`, against the stack `npm run dev` starts, or
// named in NOT_HERE with the reason it cannot run on this machine; a new block that is neither fails. Where
// a block shows the answer (`# 201 {"status":"pending", …}`), the status and every field shown must match;
// a call whose answer is not shown must succeed (2xx).
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { isDeepStrictEqual } from "node:util";
import { withTimeout } from "./_helpers.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const README = fileURLToPath(new URL("../README.md", import.meta.url));

/** The README's hosts: the stack's default port and the emulator's, which the examples hard-code. */
const README_API = "http://127.0.0.1:54321";
const README_EMULATOR = "http://127.0.0.1:12111";

/** Blocks that cannot run here, each found by a distinctive substring, with the reason. */
const NOT_HERE: { marker: string; reason: string }[] = [
  {
    marker: "npm ci && npm run dev",
    reason: "the two commands: this test starts `npm run dev` itself (below); `npm ci` and `npm test` are " +
      "CI's steps on a clean clone (.ci/run), and `npm test` would run this test again",
  },
  {
    marker: "npx supabase link",
    reason: "deploys to a hosted Supabase project (login, project ref, secrets)",
  },
  { marker: "stripe webhook_endpoints create", reason: "creates an endpoint in a real Stripe account" },
  {
    marker: "stripe listen",
    reason: "needs the Stripe CLI logged in to a Stripe account and a real sk_test_ key",
  },
  {
    marker: "vault.create_secret",
    reason: "a hosted project's Vault, pg_cron and pg_net; the local stack's PGlite has no SQL port",
  },
  {
    marker: "VITE_SUPABASE_URL=https://<ref>.supabase.co",
    reason: "builds the web app for a hosted project and sets that project's SITE_URL secret",
  },
  {
    marker: "npm run chaos -- --ops 10000",
    reason: "minutes of load, and --restart-db restarts the shared PostgreSQL server: CI runs " +
      "`npm run chaos -- --ops 1000` itself (.ci/run), tests/chaos_runner.test.ts a small run and a failing one",
  },
  {
    marker: "public.resolve_stripe_operation(",
    reason: "an operator's template (`<payout id>`) for an operation in needs_attention",
  },
];

/** Fenced languages that are not commands: an excerpt of code, diagrams, the layout. */
const NOT_COMMANDS = new Set(["ts", "mermaid", ""]);

interface Block {
  lang: string;
  code: string;
  /** The fence's line in README.md. */
  line: number;
}

/** Every fenced block of `markdown` (indented ones in lists too), its indentation removed. */
function fencedBlocks(markdown: string): Block[] {
  const lines = markdown.split("\n");
  const blocks: Block[] = [];
  for (let i = 0; i < lines.length; i++) {
    const open = lines[i].match(/^( *)```([\w-]*)\s*$/);
    if (!open) continue;
    const indent = open[1].length;
    const body: string[] = [];
    let j = i + 1;
    for (; j < lines.length && !/^ *```\s*$/.test(lines[j]); j++) body.push(lines[j].slice(indent));
    assert.ok(j < lines.length, `README.md:${i + 1}: the block is never closed`);
    blocks.push({ lang: open[2], code: body.join("\n"), line: i + 1 });
    i = j;
  }
  return blocks;
}

/** The blocks to run, in order; asserts every command block is run or listed in NOT_HERE. */
function classify(blocks: Block[]): Block[] {
  const run: Block[] = [];
  for (const { marker } of NOT_HERE) {
    const found = blocks.filter((b) => b.code.includes(marker));
    assert.equal(found.length, 1, `NOT_HERE's '${marker}' must name exactly one README block`);
  }
  for (const block of blocks) {
    const where = `README.md:${block.line} (\`\`\`${block.lang})`;
    if (NOT_COMMANDS.has(block.lang)) continue;
    assert.ok(
      block.lang === "sh" || block.lang === "sql",
      `${where}: write commands as \`\`\`sh or \`\`\`sql`,
    );
    if (NOT_HERE.some(({ marker }) => block.code.includes(marker))) continue;
    assert.ok(
      block.lang === "sh" && /127\.0\.0\.1:(54321|12111)|\bnpm run\b|\bdeno task\b/.test(block.code),
      `${where} is neither an example for the local stack nor listed in NOT_HERE (tests/readme.test.ts) ` +
        `with the reason it cannot run here:\n${block.code}`,
    );
    run.push(block);
  }
  return run;
}

interface Expectation {
  /** Which call of the block it shows (0-based, in the block's text order). */
  call: number;
  status: number;
  /** The JSON shown, `…` standing for any text and for fields left out; null for a status alone. */
  body: string | null;
  line: number;
}

/** The answers a block shows in comments (`# 201 {…}`, continued on the next comment lines). */
function expectations(block: Block): Expectation[] {
  const lines = block.code.split("\n");
  const found: Expectation[] = [];
  let calls = 0;
  for (let i = 0; i < lines.length; i++) {
    const shown = lines[i].match(/^#\s+(\d{3})\b\s*(.*)$/);
    if (!shown) {
      if (!lines[i].trimStart().startsWith("#")) calls += commandsNamed("curl", lines[i]);
      continue;
    }
    const line = block.line + 1 + i;
    assert.ok(calls > 0, `README.md:${line}: an answer shown before any curl`);
    let body = shown[2].trim();
    while (depth(body) > 0 && lines[i + 1]?.startsWith("#")) body += " " + lines[++i].slice(1).trim();
    found.push({ call: calls - 1, status: Number(shown[1]), body: body || null, line });
  }
  return found;
}

/** How many times `command` is run in a line of shell (at a command's start, not inside a word). */
function commandsNamed(command: string, line: string): number {
  return line.replace(/\s#.*$/, "").match(new RegExp(`(^|\\$\\(|[|;&]|&&)\\s*${command}\\s`, "g"))?.length ??
    0;
}

function depth(json: string): number {
  return (json.match(/[{[]/g)?.length ?? 0) - (json.match(/[}\]]/g)?.length ?? 0);
}

/** What differs between the answer shown and the one received; empty when every field shown matches. */
function differences(shown: unknown, actual: unknown, path = "$"): string[] {
  if (typeof shown === "string" && shown.includes("…")) {
    const pattern = new RegExp(`^${shown.split("…").map(escapeRegExp).join(".+")}$`, "s");
    return typeof actual === "string" && pattern.test(actual)
      ? []
      : [`${path}: ${JSON.stringify(actual)} is not ${JSON.stringify(shown)}`];
  }
  if (shown && typeof shown === "object" && !Array.isArray(shown)) {
    if (!actual || typeof actual !== "object") return [`${path}: ${JSON.stringify(actual)} is not an object`];
    return Object.entries(shown).flatMap(([key, value]) =>
      key in actual
        ? differences(value, (actual as Record<string, unknown>)[key], `${path}.${key}`)
        : [`${path}.${key} is missing`]
    );
  }
  return isDeepStrictEqual(shown, actual)
    ? []
    : [`${path}: ${JSON.stringify(actual)} is not ${JSON.stringify(shown)}`];
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

/**
 * A fresh terminal's environment: none of the variables the stack reads (the README's `npm run dev` has
 * no DATABASE_URL, no Stripe key), nor those `npm test` and other test files set in this process.
 */
function freshEnv(): Record<string, string> {
  const env: Record<string, string> = {};
  for (const name of ["PATH", "HOME", "TMPDIR", "LANG", "DENO_DIR", "XDG_CACHE_HOME"]) {
    const value = Deno.env.get(name);
    if (value !== undefined) env[name] = value;
  }
  return env;
}

/** Text read from a stream, kept (the last 64 KiB) for failure messages. */
function collect(stream: ReadableStream<Uint8Array>): { text: () => string; done: Promise<void> } {
  let text = "";
  const done = (async () => {
    for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
      text = (text + chunk).slice(-65536);
    }
  })().catch(() => {});
  return { text: () => text, done };
}

async function waitUntil(what: string, condition: () => boolean, ms: number, exited: Promise<unknown>) {
  let stopped = false;
  exited.then(() => stopped = true);
  const deadline = Date.now() + ms;
  while (!condition()) {
    if (stopped) throw new Error(`${what}: the process exited`);
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

interface Dev {
  /** The stack's URL and its emulator's, from the banner. */
  api: string;
  emulator: string;
  /** What it wrote on stderr so far. */
  stderr: () => string;
  stop: () => Promise<void>;
}

/**
 * `npm run dev` as the README says, on ports the system picks (PORT=0) so that no other stack on this
 * machine is in the way, in its own session (setsid) so that ending its process group ends npm, deno and
 * the function workers together; resolves once its banner is printed.
 */
async function startDev(): Promise<Dev> {
  const dev = new Deno.Command("setsid", {
    args: ["npm", "run", "dev"],
    cwd: ROOT,
    clearEnv: true,
    env: { ...freshEnv(), PORT: "0", STRIPE_EMULATOR_PORT: "0" },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const out = collect(dev.stdout);
  const err = collect(dev.stderr);
  const stop = async () => {
    const signal = (name: Deno.Signal) => {
      try {
        Deno.kill(-dev.pid, name);
      } catch { /* gone */ }
    };
    signal("SIGTERM");
    const killer = setTimeout(() => signal("SIGKILL"), 10_000);
    await dev.status;
    clearTimeout(killer);
    await Promise.all([out.done, err.done]);
  };
  try {
    await waitUntil(
      "npm run dev's banner",
      () => /pay a session\s+\S.*\n/.test(out.text()),
      90_000,
      dev.status,
    )
      .catch((e) => {
        throw new Error(`${e.message}; it printed:\n${out.text()}\n${err.text()}`);
      });
    const banner = out.text();
    assert.match(banner, /Local stack ready/);
    assert.match(banner, /Database\s+embedded PGlite/, "no DATABASE_URL: the embedded database");
    const api = banner.match(/API URL\s+(http:\/\/127\.0\.0\.1:\d+)/)?.[1];
    const emulator = banner.match(/Stripe\s+emulator at (http:\/\/127\.0\.0\.1:\d+)/)?.[1];
    assert.ok(api && emulator, `no API or emulator URL in the banner:\n${banner}`);
    return { api, emulator, stderr: err.text, stop };
  } catch (e) {
    await stop();
    throw e;
  }
}

/**
 * The blocks pointed at `dev`: the examples hard-code the default ports, so those two hosts are rewritten
 * in the blocks' text (commands and answers shown alike). Any other local address is refused, so that no
 * example reaches a stack someone else runs on this machine.
 */
function pointedAt(blocks: Block[], dev: Dev): Block[] {
  return blocks.map((block) => {
    const code = block.code.replaceAll(README_API, dev.api).replaceAll(README_EMULATOR, dev.emulator);
    for (const [address] of code.matchAll(/(127\.0\.0\.1|localhost):\d+/g)) {
      assert.ok(
        dev.api.endsWith(address) || dev.emulator.endsWith(address),
        `README.md:${block.line}: ${address} is neither the stack (54321) nor its emulator (12111)`,
      );
    }
    return { ...block, code };
  });
}

interface Answer {
  /** The index of the block that made the call. */
  block: number;
  status: number;
  body: string;
}

/**
 * Runs `blocks` in order in one bash session (later ones use variables set by earlier ones), with PORT
 * exported for `npm run --silent token`, as "The local stack" says to do with another PORT. `curl` is
 * wrapped only to record each call (its block, its status line with -D, its body with tee); what it
 * prints is unchanged. Asserts that the session exits 0; returns every call's answer, in order.
 */
async function runBlocks(blocks: Block[], dev: Dev): Promise<Answer[]> {
  const work = await Deno.makeTempDir({ prefix: "readme_test_" });
  try {
    const script = [
      "set -euo pipefail",
      `export PORT=${new URL(dev.api).port}`,
      `README_TEST_DIR=${work}`,
      `: > "$README_TEST_DIR/calls"`,
      "curl() {",
      "  local n",
      `  n=$(( $(wc -l < "$README_TEST_DIR/calls") + 1 ))`,
      `  echo "$README_TEST_BLOCK" >> "$README_TEST_DIR/calls"`,
      `  command curl -D "$README_TEST_DIR/$n.head" "$@" | tee "$README_TEST_DIR/$n.body"`,
      "}",
      ...blocks.flatMap((
        block,
        i,
      ) => [`README_TEST_BLOCK=${i}`, `echo ${i} > "$README_TEST_DIR/block"`, block.code]),
      `echo done > "$README_TEST_DIR/block"`,
    ].join("\n");
    const shell = new Deno.Command("bash", {
      args: ["--noprofile", "--norc", "-c", script],
      cwd: ROOT,
      clearEnv: true,
      env: freshEnv(),
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const out = collect(shell.stdout);
    const err = collect(shell.stderr);
    const killer = setTimeout(() => shell.kill("SIGKILL"), 150_000);
    const { code } = await shell.status;
    clearTimeout(killer);
    await Promise.all([out.done, err.done]);
    const reached = (await Deno.readTextFile(`${work}/block`).catch(() => "")).trim();
    const failed = blocks[Number(reached)];
    assert.ok(
      code === 0 && reached === "done",
      `the example at README.md:${failed?.line} failed (exit ${code}; hosts as run):\n${failed?.code}\n` +
        `--- its output:\n${out.text()}\n--- stderr:\n${err.text()}\n--- npm run dev:\n${dev.stderr()}`,
    );
    const calls = (await Deno.readTextFile(`${work}/calls`)).trim().split("\n").filter(Boolean).map(Number);
    return await Promise.all(calls.map(async (block, i) => {
      const head = await Deno.readTextFile(`${work}/${i + 1}.head`);
      return {
        block,
        status: Number([...head.matchAll(/^HTTP\/[\d.]+ (\d{3})/gm)].at(-1)?.[1]),
        body: await Deno.readTextFile(`${work}/${i + 1}.body`),
      };
    }));
  } finally {
    await Deno.remove(work, { recursive: true });
  }
}

/** Where the answers differ from what the blocks show; a call whose answer is not shown must be 2xx. */
function answerProblems(blocks: Block[], answers: Answer[]): string[] {
  const problems: string[] = [];
  blocks.forEach((block, b) => {
    const calls = answers.filter((a) => a.block === b);
    const written = block.code.split("\n").filter((l) => !l.trimStart().startsWith("#"))
      .reduce((n, l) => n + commandsNamed("curl", l), 0);
    if (calls.length !== written) {
      problems.push(`README.md:${block.line}: ${written} curl commands written, ${calls.length} run`);
      return;
    }
    const shown = expectations(block);
    calls.forEach((answer, c) => {
      const expected = shown.find((e) => e.call === c);
      const where = `README.md:${expected?.line ?? block.line} (curl ${c + 1} of the block)`;
      if (!expected) {
        if (answer.status < 200 || answer.status > 299) {
          problems.push(`${where}: answered ${answer.status}, no answer shown: ${answer.body}`);
        }
        return;
      }
      if (answer.status !== expected.status) {
        problems.push(
          `${where}: answered ${answer.status}, the README shows ${expected.status}: ${answer.body}`,
        );
      }
      if (expected.body === null) return;
      let shownBody: unknown, body: unknown;
      try {
        shownBody = JSON.parse(expected.body.replace(/,\s*…\s*(?=[}\]])/g, ""));
      } catch (e) {
        problems.push(`${where}: the answer shown is not JSON with … (${(e as Error).message})`);
        return;
      }
      try {
        body = JSON.parse(answer.body);
      } catch {
        problems.push(`${where}: the answer is not JSON: ${answer.body}`);
        return;
      }
      for (const d of differences(shownBody, body)) problems.push(`${where}: ${d}\n  answer: ${answer.body}`);
    });
  });
  return problems;
}

Deno.test("every README command block is run by this test or listed with the reason it cannot run here", () => {
  const run = classify(fencedBlocks(Deno.readTextFileSync(README)));
  assert.ok(run.length >= 5, `only ${run.length} blocks to run: the README's examples were not found`);
  for (const block of run) expectations(block);
});

Deno.test({
  name: "the README's examples work as written against `npm run dev`",
  // the stack's processes are ended as a group, and their pipes drained, by dev.stop()
  sanitizeOps: false,
  sanitizeResources: false,
  fn: withTimeout("README examples", async () => {
    const blocks = classify(fencedBlocks(await Deno.readTextFile(README)));
    const started = Date.now();
    const dev = await startDev();
    try {
      const up = Date.now();
      const pointed = pointedAt(blocks, dev);
      const answers = await runBlocks(pointed, dev);
      const problems = answerProblems(pointed, answers);
      assert.deepEqual(problems, [], problems.join("\n"));
      console.log(
        `README: npm run dev up in ${(up - started) / 1000} s, ${blocks.length} blocks (${answers.length} ` +
          `curl calls) run in ${(Date.now() - up) / 1000} s`,
      );
    } finally {
      await dev.stop();
    }
  }),
});
