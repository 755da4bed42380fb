/**
 * `deno task bundle`: bundles every function alone, as a deploy does (`deno bundle --no-config`: no
 * project configuration, no node_modules, each `npm:` import resolved by its own pinned version), and
 * reports each bundle's size against the platform's 20 MB limit
 * (supabase.com/docs/guides/functions/limits). Exits 1 if a function does not bundle or is too large.
 * @module
 */
import { join } from "node:path";
import { PROJECT_DIR } from "./local/db.ts";

const LIMIT_BYTES = 20 * 1024 * 1024;
const functionsDir = join(PROJECT_DIR, "supabase", "functions");
const out = await Deno.makeTempDir({ prefix: "bundles-" });
const names = [...Deno.readDirSync(functionsDir)]
  .filter((e) => e.isDirectory && !e.name.startsWith("_"))
  .map((e) => e.name)
  .sort();

let failed = false;
console.log("function               bundle     of the 20 MB limit");
for (const name of names) {
  const file = join(out, `${name}.js`);
  const { code, stderr } = await new Deno.Command(Deno.execPath(), {
    args: [
      "bundle",
      "--no-config",
      "--quiet",
      "--platform=deno",
      "-o",
      file,
      join(functionsDir, name, "index.ts"),
    ],
    cwd: out, // no deno.json, no node_modules: what the function's own imports name, from the registry
    stdout: "null",
    stderr: "piped",
  }).output();
  if (code !== 0) {
    failed = true;
    console.log(`${name.padEnd(22)} FAILED: ${new TextDecoder().decode(stderr).trim().split("\n")[0]}`);
    continue;
  }
  const { size } = await Deno.stat(file);
  failed ||= size > LIMIT_BYTES;
  const mb = (size / 1024 / 1024).toFixed(2);
  const share = ((size / LIMIT_BYTES) * 100).toFixed(1);
  console.log(
    `${name.padEnd(22)} ${mb.padStart(6)} MB  ${share.padStart(5)} %${
      size > LIMIT_BYTES ? "  TOO LARGE" : ""
    }`,
  );
}
await Deno.remove(out, { recursive: true });
Deno.exit(failed ? 1 : 0);
