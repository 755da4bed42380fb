/**
 * Small DOM helpers: elements built with text, never HTML strings; money and dates; how a page shows an
 * error (a problem's title and detail, never a stack).
 * @module
 */
import { DeadlineError, ProblemError } from "../../client/mod.ts";

type Child = Node | string | number | null | undefined | false;
type Attrs = Record<string, string | number | boolean | null | undefined | EventListener>;

/** An element: attributes (`on*` are listeners, `false`/null are left out) and children (text is text). */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Attrs = {},
  ...children: (Child | Child[])[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (typeof value === "function") el.addEventListener(name.slice(2), value);
    else if (value === true) el.setAttribute(name, "");
    else if (value !== false && value !== null && value !== undefined) el.setAttribute(name, String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

/** Replaces the page's content. */
export function render(...children: (Child | Child[])[]): void {
  const nodes = children.flat().filter((c): c is Node | string | number =>
    c !== null && c !== undefined && c !== false
  );
  document.getElementById("main")!.replaceChildren(
    ...nodes.map((c) => (typeof c === "number" ? String(c) : c)),
  );
}

/** An amount in minor units, in its currency (`2500, "usd"` → `$25.00`). */
export function money(cents: number, currency: string): string {
  const digits = new Intl.NumberFormat("en", { style: "currency", currency }).resolvedOptions()
    .maximumFractionDigits ?? 2;
  return new Intl.NumberFormat("en", { style: "currency", currency }).format(cents / 10 ** digits);
}

/** Major units typed by a person (`"12.50"`) to minor units, or null when it is not an amount. */
export function toMinor(value: string, currency: string): number | null {
  const digits = new Intl.NumberFormat("en", { style: "currency", currency }).resolvedOptions()
    .maximumFractionDigits ?? 2;
  if (!/^\d+(\.\d+)?$/.test(value.trim())) return null;
  return Math.round(Number(value) * 10 ** digits);
}

/** A date and time, short. */
export function when(iso: string | null | undefined): string {
  return iso ? new Date(iso).toLocaleString("en-GB", { dateStyle: "medium", timeStyle: "short" }) : "—";
}

/** The first 8 characters of an id, for people (the whole id in `title`). */
export function shortId(id: string): HTMLElement {
  return h("code", { title: id }, id.slice(0, 8));
}

/** A status word, styled by its value. */
export function status(value: string): HTMLElement {
  return h("span", { class: `status status-${value}` }, value.replaceAll("_", " "));
}

/** What an error says to a person: a problem's title and detail, a lost answer's advice; never a stack. */
export function describe(error: unknown): string {
  if (error instanceof ProblemError) return error.detail ? `${error.title}: ${error.detail}` : error.title;
  if (error instanceof DeadlineError) {
    return "We could not get an answer in time. Nothing is done twice: try again, and the same request is resumed.";
  }
  if (error && typeof error === "object" && "message" in error && typeof error.message === "string") {
    return error.message;
  }
  return "Something went wrong";
}

/** An alert box for `error` (announced by screen readers). */
export function alertBox(error: unknown): HTMLElement {
  const requestId = error instanceof ProblemError && error.requestId ? error.requestId : null;
  return h(
    "div",
    { class: "alert", role: "alert" },
    h("p", {}, describe(error)),
    requestId && h("p", { class: "muted" }, "Request id: ", h("code", {}, requestId)),
  );
}

/** A definition list of figures, each with its value in minor units in `data-cents` (tests read them). */
export function figures(
  items: [label: string, cents: number, currency: string, name: string][],
): HTMLElement {
  return h(
    "dl",
    { class: "figures" },
    items.map(([label, cents, currency, name]) =>
      h(
        "div",
        {},
        h("dt", {}, label),
        h("dd", { "data-field": name, "data-cents": cents }, money(cents, currency)),
      )
    ),
  );
}

/** A table in a scrolling region that keyboards can scroll. */
export function table(caption: string, head: string[], rows: Child[][], numeric: number[] = []): HTMLElement {
  return h(
    "div",
    { class: "scroll", role: "region", "aria-label": caption, tabindex: 0 },
    h(
      "table",
      {},
      h("caption", { class: "sr-only" }, caption),
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          head.map((t, i) => h("th", { scope: "col", class: numeric.includes(i) ? "num" : "" }, t)),
        ),
      ),
      h(
        "tbody",
        {},
        rows.length
          ? rows.map((r) =>
            h("tr", {}, r.map((c, i) => h("td", { class: numeric.includes(i) ? "num" : "" }, c)))
          )
          : h("tr", {}, h("td", { colspan: head.length, class: "muted" }, "None")),
      ),
    ),
  );
}

/** Text for a live region (status messages that do not move focus). */
export function live(text = ""): HTMLElement {
  return h("p", { role: "status", "aria-live": "polite", class: "muted" }, text);
}

/** The message of a PostgREST error (supabase.rpc), e.g. a SQL function's `raise exception`. */
export function rpcError(error: { message: string; hint?: string | null; code?: string }): Error {
  const e = new Error(error.message);
  e.name = error.hint ?? error.code ?? "Error";
  return e;
}
