// `npm run chaos` itself: a small run passes (exit 0, every invariant holds), and a run with a Stripe
// object no operation made (the hidden --inject-stray-object) fails (exit 1, the violation named), so
// that its checks have teeth. Each run has a database of its own on the test server, which it drops.
import assert from "node:assert/strict";
import { withTimeout } from "./_helpers.ts";

const adminUrl = Deno.env.get("TEST_ADMIN_URL")!;

async function chaos(...args: string[]): Promise<{ code: number; output: string }> {
  const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "tools/chaos/main.ts", "--report", "-", ...args],
    // its own environment: the suite's in-process stacks set Stripe's variables (STRIPE_SECRET_KEY, ...) in
    // this process, and the runner must start the emulator of its own
    clearEnv: true,
    env: Object.fromEntries(
      [["DATABASE_URL", adminUrl], ...["PATH", "HOME", "TMPDIR", "DENO_DIR"].map((n) => [n, Deno.env.get(n)])]
        .filter((e): e is [string, string] => e[1] !== undefined),
    ),
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  return { code, output: new TextDecoder().decode(stdout) + new TextDecoder().decode(stderr) };
}

Deno.test({
  name: "npm run chaos -- --ops 60: every invariant holds, exit 0, the seed and the report printed",
  sanitizeResources: false,
  fn: withTimeout("chaos --ops 60", async () => {
    const { code, output } = await chaos("--ops", "60", "--seed", "14");
    assert.equal(code, 0, output);
    assert.match(output, /seed 14\b/);
    assert.match(output, /chaos: passed \(seed 14\)/);
    for (const line of ["answers by status", "faults injected", "function workers killed", "throughput"]) {
      assert.match(output, new RegExp(line), output);
    }
    assert.doesNotMatch(output, /VIOLATED/, output);
  }),
});

Deno.test({
  name: "npm run chaos with a stray Stripe object: the violation is reported and the run fails",
  sanitizeResources: false,
  fn: withTimeout("chaos --inject-stray-object", async () => {
    const { code, output } = await chaos("--ops", "10", "--seed", "15", "--inject-stray-object");
    assert.equal(code, 1, output);
    assert.match(
      output,
      /VIOLATED \(1\)\s+no Stripe object without its operation\n\s+tr_\w+: its operation payout:create\/[0-9a-f-]+ does not exist/,
      output,
    );
    assert.match(output, /VIOLATED \(1\)\s+the ledger equals Stripe per organiser/, output);
    assert.match(output, /chaos: FAILED, 2 invariant\(s\) violated \(seed 15\)/, output);
  }),
});
