/**
 * Browser tests in Debian's Chromium (`/usr/bin/chromium`, which .ci/run installs when missing) driven by
 * playwright-core: the web app built once per run (Vite), served by the test file's stack; a phone-sized
 * page per test; an accessibility pass with axe-core; screenshots into docs/screenshots (UPDATE_SCREENSHOTS=1).
 * @module
 */
import assert from "node:assert/strict";
import { type Browser, chromium, type Page } from "npm:playwright-core@1.65.1";
import { buildWeb } from "../tools/local/web.ts";
import type { Stack } from "../tools/local/stack.ts";
import { ledgerTest } from "./_flows.ts";

/** Chromium's flags on this kind of machine (no sandbox as root, no network beyond loopback). */
const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
];

const AXE = new URL("../node_modules/axe-core/axe.min.js", import.meta.url);
const SCREENSHOTS = new URL("../docs/screenshots/", import.meta.url);

let built: Promise<void> | undefined;

/** What a browser test gets. */
export interface BrowserContext {
  stack: Stack;
  page: Page;
  /** Console errors and uncaught exceptions so far (the test fails on any it does not expect). */
  errors: string[];
}

/**
 * A test with a fresh browser and a phone-sized page on the shared stack (which serves the app at its root),
 * failing on any console error or uncaught exception except those matching `allowErrors`; the ledger's
 * invariants are checked afterwards (ledgerTest).
 */
export function browserTest(
  name: string,
  fn: (t: BrowserContext) => Promise<void>,
  options: { allowErrors?: RegExp } = {},
): void {
  ledgerTest(name, async (stack) => {
    await (built ??= buildWeb());
    const browser: Browser = await chromium.launch({
      executablePath: "/usr/bin/chromium",
      args: CHROMIUM_ARGS,
    });
    try {
      const context = await browser.newContext({ viewport: { width: 390, height: 844 }, baseURL: stack.url });
      const page = await context.newPage();
      const errors: string[] = [];
      page.on("console", (m) => m.type() === "error" && errors.push(`console: ${m.text()}`));
      page.on("pageerror", (e) => errors.push(`page: ${e.message}`));
      await fn({ stack, page, errors });
      const unexpected = errors.filter((e) => !options.allowErrors?.test(e));
      assert.deepEqual(unexpected, [], "no console errors");
    } finally {
      await browser.close();
    }
  });
}

/** Runs axe-core on the page as it is: no serious or critical violation of any rule. */
export async function assertAccessible(page: Page, label: string): Promise<void> {
  await page.addScriptTag({ path: AXE.pathname });
  const violations = await page.evaluate(`axe.run(document, { resultTypes: ["violations"] }).then((r) =>
    r.violations.filter((v) => v.impact === "serious" || v.impact === "critical")
      .map((v) => ({ rule: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map((n) => n.target.join(" ")) })))`);
  assert.deepEqual(violations, [], `${label}: serious accessibility violations`);
}

/**
 * Checks the page with axe; with `UPDATE_SCREENSHOTS=1`, also writes its screenshot to
 * docs/screenshots/<name>.png (for the README), so that a plain `npm test` leaves the tree as it was.
 */
export async function checkPage(page: Page, name: string): Promise<void> {
  await assertAccessible(page, name);
  if (Deno.env.get("UPDATE_SCREENSHOTS") !== "1") return;
  await Deno.mkdir(SCREENSHOTS, { recursive: true });
  await page.screenshot({ path: new URL(`${name}.png`, SCREENSHOTS).pathname, fullPage: true });
}
