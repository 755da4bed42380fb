/**
 * Stripe's request encoding: `application/x-www-form-urlencoded` with bracketed paths
 * (`line_items[0][price_data][currency]=usd`), as the official SDKs send it.
 * @module
 */

/** A decoded parameter tree: strings at the leaves, objects and arrays above them. */
export type Params = { [key: string]: Param };
export type Param = string | Param[] | Params;

/**
 * Decodes a form body (or a query string) into a parameter tree; index keys (`expand[0]`, as the SDKs send
 * them, or `expand[]`, as curl examples do) become arrays.
 */
export function decodeForm(body: string): Params {
  const root: Params = {};
  for (const pair of body.split("&")) {
    if (!pair) continue;
    const eq = pair.indexOf("=");
    const rawKey = eq < 0 ? pair : pair.slice(0, eq);
    const value = eq < 0 ? "" : decode(pair.slice(eq + 1));
    const path = parsePath(decode(rawKey));
    let node: Params = root;
    path.forEach((name, i) => {
      const segment = name === "" ? String(Object.keys(node).length) : name;
      if (i === path.length - 1) {
        node[segment] = value;
        return;
      }
      const next = node[segment];
      if (typeof next !== "object" || next === null) node[segment] = {};
      node = node[segment] as Params;
    });
  }
  return arrayify(root) as Params;
}

function decode(s: string): string {
  return decodeURIComponent(s.replaceAll("+", " "));
}

function parsePath(key: string): string[] {
  const head = key.match(/^[^[]*/)![0];
  const rest = [...key.slice(head.length).matchAll(/\[([^\]]*)\]/g)].map((m) => m[1]);
  return [head, ...rest];
}

function arrayify(node: Param): Param {
  if (typeof node === "string" || Array.isArray(node)) return node;
  const keys = Object.keys(node);
  for (const k of keys) node[k] = arrayify(node[k]);
  const isList = keys.length > 0 && keys.every((k, i) => /^\d+$/.test(k) && keys.includes(String(i)));
  return isList ? keys.map((_, i) => node[String(i)]) : node;
}

/** A canonical text of a parameter tree (keys sorted), for comparing two requests' parameters. */
export function canonical(value: Param | undefined): string {
  if (value === undefined) return "null";
  if (typeof value === "string") return JSON.stringify(value);
  if (Array.isArray(value)) return `[${value.map(canonical).join(",")}]`;
  return `{${Object.keys(value).sort().map((k) => `${JSON.stringify(k)}:${canonical(value[k])}`).join(",")}}`;
}
