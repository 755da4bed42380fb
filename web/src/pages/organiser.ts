/**
 * The organiser's page: the wallet (get_wallet) with a chart of its ledger, orders with refunds (full or
 * partial) and the entries each made, payouts. Reads through RPCs scoped to the signed-in organiser;
 * refunds and payouts through client/.
 * @module
 */
import type { App } from "../app.ts";
import { stepChart } from "../chart.ts";
import {
  alertBox,
  figures,
  h,
  live,
  money,
  render,
  rpcError,
  shortId,
  status,
  table,
  toMinor,
  when,
} from "../ui.ts";

interface Wallet {
  currency: string;
  balance_cents: number;
  available_cents: number;
  pending_funds_cents: number;
  pending_payout_cents: number;
}

interface Entry {
  entry_id: number;
  type: string;
  amount_cents: number;
  running_total_cents?: number;
  created_at: string;
}

interface Order {
  order_id: string;
  event_title: string;
  status: string;
  currency: string;
  total_cents: number;
  refunded_cents: number;
  refundable_cents: number;
  buyer: string | null;
  created_at: string;
  tickets: { status: string }[];
  refunds: { refund_id: string; amount_cents: number; status: string; created_at: string }[];
  entries: Entry[];
}

interface Payout {
  payout_id: string;
  amount_cents: number;
  currency: string;
  status: string;
  stripe_transfer_id: string | null;
  created_at: string;
}

const CURRENCY = "usd";

export async function organiserPage(app: App): Promise<void> {
  document.title = "Organiser · Tickets";
  if (!app.session) {
    render(
      h("h1", {}, "Organiser"),
      h("p", {}, h("a", { href: "/signin" }, "Sign in"), " as an organiser to see your money."),
    );
    return;
  }
  const rpc = async <T>(fn: string, args: Record<string, unknown> = {}): Promise<T> => {
    const { data, error } = await app.supabase.rpc(fn, args);
    if (error) throw rpcError(error);
    return data as T;
  };
  const [wallet, history, orders, payouts] = await Promise.all([
    rpc<Wallet>("get_wallet", { p_currency: CURRENCY }),
    rpc<{ entries: Entry[] }>("get_wallet_history", { p_currency: CURRENCY }),
    rpc<Order[]>("list_organiser_orders"),
    rpc<Payout[]>("list_payouts"),
  ]);
  const c = wallet.currency;
  const notice = live(sessionStorage.getItem("organiser-notice") ?? "");
  sessionStorage.removeItem("organiser-notice");

  /** Runs an action through client/, then reloads the page's figures with a notice. */
  async function act(
    button: HTMLButtonElement,
    out: HTMLElement,
    action: () => Promise<string>,
  ): Promise<void> {
    out.replaceChildren();
    button.disabled = true;
    button.setAttribute("aria-busy", "true");
    try {
      sessionStorage.setItem("organiser-notice", await action());
      location.reload();
    } catch (e) {
      out.replaceChildren(alertBox(e));
      button.disabled = false;
      button.removeAttribute("aria-busy");
    }
  }

  const payoutAmount = h("input", {
    id: "payout-amount",
    inputmode: "decimal",
    autocomplete: "off",
    "aria-describedby": "payout-help",
  });
  const payoutButton = h("button", { type: "submit" }, "Pay out");
  const payoutOut = h("div");
  const payoutForm = h(
    "form",
    {
      class: "card",
      "aria-label": "Pay out",
      onsubmit: (e: Event) => {
        e.preventDefault();
        const cents = payoutAmount.value.trim() ? toMinor(payoutAmount.value, c) : wallet.available_cents;
        if (!cents) return void payoutOut.replaceChildren(alertBox(new Error("Enter an amount, e.g. 12.50")));
        act(payoutButton, payoutOut, async () => {
          const { data } = await app.tickets.payout({ amount_cents: cents, currency: c });
          return `Payout of ${money(data.amount_cents, c)}: ${data.status}`;
        });
      },
    },
    h("h3", {}, "Pay out to your bank account"),
    h("label", { for: "payout-amount" }, `Payout amount in ${c.toUpperCase()}`),
    h(
      "p",
      { id: "payout-help", class: "muted" },
      `Empty for all that is available (${money(wallet.available_cents, c)}).`,
    ),
    h("div", { class: "row" }, payoutAmount, " ", payoutButton),
    payoutOut,
  );

  const running = history.entries.map((e) => e.running_total_cents ?? 0);
  render(
    h("h1", {}, "Your money"),
    notice,
    h("h2", { id: "wallet" }, "Wallet"),
    figures([
      ["Balance", wallet.balance_cents, c, "balance_cents"],
      ["Available to pay out", wallet.available_cents, c, "available_cents"],
      ["Card funds pending", wallet.pending_funds_cents, c, "pending_funds_cents"],
      ["Payouts in flight", wallet.pending_payout_cents, c, "pending_payout_cents"],
    ]),
    h("h2", {}, "History"),
    stepChart(
      running,
      `Ledger total over ${running.length} entries, now ${money(running.at(-1) ?? 0, c)}`,
    ),
    h(
      "details",
      {},
      h("summary", {}, `Ledger entries (${history.entries.length})`),
      table(
        "Ledger entries",
        ["When", "Type", "Amount", "Total"],
        history.entries.map((
          e,
        ) => [when(e.created_at), e.type, money(e.amount_cents, c), money(e.running_total_cents ?? 0, c)]),
        [2, 3],
      ),
    ),
    h("h2", {}, "Payouts"),
    payoutForm,
    table(
      "Payouts",
      ["Payout", "Amount", "Status", "Transfer", "Requested"],
      payouts.map((p) => [
        shortId(p.payout_id),
        money(p.amount_cents, p.currency),
        status(p.status),
        p.stripe_transfer_id ? h("code", {}, p.stripe_transfer_id) : "—",
        when(p.created_at),
      ]),
      [1],
    ),
    h("h2", {}, "Orders"),
    orders.length ? orders.map((o) => orderCard(o)) : h("p", { class: "muted" }, "No orders yet."),
  );

  function orderCard(o: Order): HTMLElement {
    const oc = o.currency;
    const id = `refund-${o.order_id}`;
    const amount = h("input", {
      id,
      inputmode: "decimal",
      autocomplete: "off",
      "aria-describedby": `${id}-help`,
    });
    const button = h("button", { type: "submit", disabled: o.refundable_cents === 0 }, "Refund");
    const out = h("div");
    const valid = o.tickets.filter((t) => t.status === "valid").length;
    return h(
      "article",
      { class: "card", "data-order": o.order_id, "aria-labelledby": `${id}-title` },
      h("h3", { id: `${id}-title` }, "Order ", shortId(o.order_id), " · ", status(o.status)),
      h(
        "p",
        {},
        `${o.event_title} · ${o.buyer ?? "guest"} · ${valid} valid tickets · paid ${
          money(o.total_cents, oc)
        }`,
        o.refunded_cents ? ` · refunded ${money(o.refunded_cents, oc)}` : "",
        ` · ${when(o.created_at)}`,
      ),
      h(
        "form",
        {
          "aria-label": `Refund order ${o.order_id.slice(0, 8)}`,
          onsubmit: (e: Event) => {
            e.preventDefault();
            const cents = amount.value.trim() ? toMinor(amount.value, oc) : null;
            if (amount.value.trim() && !cents) {
              return void out.replaceChildren(alertBox(new Error("Enter an amount, e.g. 25.00")));
            }
            act(button, out, async () => {
              const { data } = await app.tickets.refund({
                order_id: o.order_id,
                ...(cents ? { amount_cents: cents } : {}),
                reason: "requested_by_customer",
              });
              return `Refund of ${money(data.amount_cents, oc)}: ${data.status} (order ${data.order_status})`;
            });
          },
        },
        h("label", { for: id }, `Refund amount in ${oc.toUpperCase()}`),
        h(
          "p",
          { id: `${id}-help`, class: "muted" },
          `Empty for a full refund of what is refundable (${money(o.refundable_cents, oc)}).`,
        ),
        h("div", { class: "row" }, amount, " ", button),
        out,
      ),
      h(
        "details",
        {},
        h("summary", {}, `Refunds (${o.refunds.length}) and ledger entries (${o.entries.length})`),
        table(
          `Refunds of order ${o.order_id.slice(0, 8)}`,
          ["Refund", "Amount", "Status", "Requested"],
          o.refunds.map((
            r,
          ) => [shortId(r.refund_id), money(r.amount_cents, oc), status(r.status), when(r.created_at)]),
          [1],
        ),
        table(
          `Ledger entries of order ${o.order_id.slice(0, 8)}`,
          ["When", "Type", "Amount"],
          o.entries.map((e) => [when(e.created_at), e.type, money(e.amount_cents, oc)]),
          [2],
        ),
      ),
    );
  }
}
