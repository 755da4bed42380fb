/**
 * The operator's page (platform admins; the database checks the token's `app_metadata.role`): what needs
 * attention with its evidence and a resolve action, Stripe operations by state, stale leases, webhook
 * events failed or parked, what the reconciler has to do, and duplicates absorbed and faults survived.
 * @module
 */
import type { ResolveRequest } from "../../../client/mod.ts";
import type { App } from "../app.ts";
import { barChart } from "../chart.ts";
import { alertBox, h, live, render, rpcError, shortId, status, table, when } from "../ui.ts";

interface Operation {
  operation_type: string;
  operation_id: string;
  status: string;
  stripe_resource_id: string | null;
  attempts: number;
  locked_until: string | null;
  last_error: string | null;
  evidence: unknown;
  created_at: string;
  updated_at: string;
  no_object_allowed: boolean;
  no_object_allowed_at: string;
}

interface Overview {
  generated_at: string;
  operations_by_state: { operation_type: string; status: string; count: number }[];
  stale_leases: Operation[];
  needs_attention: Operation[];
  webhook_events: {
    event_id: string;
    type: string;
    status: string;
    attempts: number;
    error: string | null;
    parked_on: string | null;
    updated_at: string;
  }[];
  reconcile: Record<string, number>;
  activity: { hour: string; duplicates: number; faults: number }[];
}

const COLOURS = ["#1d4ed8", "#b45309"];

export async function operatorPage(app: App): Promise<void> {
  document.title = "Operator · Tickets";
  if (!app.session) {
    render(
      h("h1", {}, "Operator"),
      h("p", {}, h("a", { href: "/signin" }, "Sign in"), " as a platform admin."),
    );
    return;
  }
  const { data, error } = await app.supabase.rpc("operator_overview");
  if (error) {
    render(h("h1", {}, "Operator"), alertBox(rpcError(error)));
    return;
  }
  const o = data as Overview;
  const notice = live(sessionStorage.getItem("operator-notice") ?? "");
  sessionStorage.removeItem("operator-notice");
  const totals = o.activity.reduce((t, a) => [t[0] + a.duplicates, t[1] + a.faults], [0, 0]);

  render(
    h("h1", {}, "Operations"),
    notice,
    h("p", { class: "muted" }, `As of ${when(o.generated_at)}`),
    h("h2", {}, `Needs attention (${o.needs_attention.length})`),
    o.needs_attention.length
      ? o.needs_attention.map((op) => attentionCard(app, op))
      : h("p", { class: "muted" }, "Nothing needs attention."),
    h("h2", {}, "Operations by state"),
    table(
      "Operations by state",
      ["Operation", "State", "Count"],
      o.operations_by_state.map((s) => [s.operation_type, status(s.status), String(s.count)]),
      [2],
    ),
    h("h2", {}, "Stale leases"),
    table(
      "Stale leases",
      ["Operation", "Id", "Attempts", "Lease ran out", "Last error"],
      o.stale_leases.map((
        s,
      ) => [
        s.operation_type,
        shortId(s.operation_id),
        String(s.attempts),
        when(s.locked_until),
        s.last_error ?? "—",
      ]),
      [2],
    ),
    h("h2", {}, "Webhook events failed or parked"),
    table(
      "Webhook events failed or parked",
      ["Event", "Type", "State", "Attempts", "Why"],
      o.webhook_events.map((w) => [
        h("code", {}, w.event_id),
        w.type,
        status(w.status),
        String(w.attempts),
        w.error ?? (w.parked_on ? `waiting for payment ${w.parked_on}` : "—"),
      ]),
      [3],
    ),
    h("h2", {}, "Reconciliation"),
    h(
      "p",
      { class: "muted" },
      'What the next stripe-reconcile run has to do (its report is in its log line, "reconcile report").',
    ),
    h(
      "dl",
      { class: "figures" },
      Object.entries(o.reconcile).map(([k, v]) =>
        h("div", {}, h("dt", {}, k.replaceAll("_", " ")), h("dd", { "data-field": k }, String(v)))
      ),
    ),
    h("h2", {}, "Duplicates absorbed and faults survived (24 hours)"),
    h(
      "p",
      { class: "legend" },
      h("span", {}, h("span", { class: "swatch", style: `background:${COLOURS[0]}` }), "duplicates absorbed"),
      h("span", {}, h("span", { class: "swatch", style: `background:${COLOURS[1]}` }), "faults survived"),
    ),
    barChart(
      o.activity.map((a) => [a.duplicates, a.faults]),
      COLOURS,
      `Per hour over 24 hours: ${totals[0]} duplicates absorbed, ${totals[1]} faults survived`,
    ),
    h(
      "details",
      {},
      h("summary", {}, "Per hour"),
      table(
        "Duplicates and faults per hour",
        ["Hour", "Duplicates", "Faults"],
        o.activity.filter((a) => a.duplicates || a.faults).map((
          a,
        ) => [when(a.hour), String(a.duplicates), String(a.faults)]),
        [1, 2],
      ),
    ),
  );
}

/** One operation that needs a person: what the look-up found, and the two ways to settle it. */
function attentionCard(app: App, op: Operation): HTMLElement {
  const id = `resolve-${op.operation_id}`;
  const objectId = h("input", {
    id,
    autocomplete: "off",
    "aria-describedby": `${id}-help`,
    spellcheck: "false",
  });
  const settle = h("button", { type: "submit" }, "Settle with this object");
  const none = h("button", {
    type: "button",
    class: "secondary",
    disabled: !op.no_object_allowed,
    "aria-describedby": `${id}-none-help`,
  }, "Stripe has no object");
  const out = h("div");

  // through the operator-resolve function (client/), which checks the object at Stripe before settling
  async function resolve(
    args: { stripe_object_id: string } | { no_object: true },
    button: HTMLButtonElement,
  ): Promise<void> {
    out.replaceChildren();
    button.disabled = true;
    let settled: unknown;
    try {
      ({ data: { settled } } = await app.tickets.resolve({
        operation_type: op.operation_type as ResolveRequest["operation_type"],
        operation_id: op.operation_id,
        ...args,
      }));
    } catch (e) {
      out.replaceChildren(alertBox(e));
      button.disabled = false;
      return;
    }
    sessionStorage.setItem(
      "operator-notice",
      `Resolved ${op.operation_type} ${op.operation_id.slice(0, 8)}: ${
        (settled as { status?: string } | null)?.status ?? "done"
      }`,
    );
    location.reload();
  }
  none.addEventListener("click", () => resolve({ no_object: true }, none));

  return h(
    "article",
    { class: "card", "data-operation": op.operation_id, "aria-labelledby": `${id}-title` },
    h("h3", { id: `${id}-title` }, op.operation_type, " ", shortId(op.operation_id)),
    h(
      "p",
      { class: "muted" },
      `Began ${when(op.created_at)} · ${op.attempts} attempts · last looked at ${when(op.updated_at)}`,
    ),
    h("p", {}, "What the look-up found:"),
    h("pre", {}, JSON.stringify(op.evidence ?? op.last_error, null, 2)),
    h(
      "form",
      {
        "aria-label": `Settle ${op.operation_type} ${op.operation_id.slice(0, 8)}`,
        onsubmit: (e: Event) => {
          e.preventDefault();
          const value = objectId.value.trim();
          if (!value) return void out.replaceChildren(alertBox(new Error("Enter the Stripe object's id")));
          resolve({ stripe_object_id: value }, settle);
        },
      },
      h("label", { for: id }, "Stripe object id"),
      h(
        "p",
        { id: `${id}-help`, class: "muted" },
        "The object you found in the Stripe dashboard by this id in its metadata; it is checked at Stripe.",
      ),
      h("div", { class: "row" }, objectId),
      h("div", { class: "row" }, settle, " ", none),
      h(
        "p",
        { id: `${id}-none-help`, class: "muted" },
        op.no_object_allowed
          ? "Stripe has forgotten this operation's key: no request can still create the object."
          : `"No object" can be declared from ${
            when(op.no_object_allowed_at)
          }, once Stripe has forgotten the key.`,
      ),
      out,
    ),
  );
}
