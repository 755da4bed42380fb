/**
 * The order page, where Checkout sends the buyer back (`/orders/<id>?session_id=<cs_...>`): follows the
 * order until the payment is recorded, then shows the tickets; refunds show as they happen.
 * @module
 */
import type { App } from "../app.ts";
import { h, live, money, render, rpcError, shortId, status, table, when } from "../ui.ts";

interface OrderView {
  order_id: string;
  event_title?: string;
  status: string;
  currency: string;
  subtotal_cents: number;
  fee_cents: number;
  total_cents: number;
  refunded_cents: number;
  ticket_count?: number;
  paid_at: string | null;
  tickets?: { ticket_id: string; tier: string; status: string }[];
  refunds?: { refund_id: string; amount_cents: number; status: string; created_at: string }[];
}

const POLL_MS = 1000;
const POLL_FOR_MS = 120_000;

export async function orderPage(app: App, [orderId]: string[]): Promise<void> {
  const sessionId = new URLSearchParams(location.search).get("session_id");
  document.title = "Your order · Tickets";
  const progress = live();
  const body = h("div");
  render(h("h1", {}, "Your order"), progress, body);

  const started = Date.now();
  for (;;) {
    const { data, error } = sessionId
      ? await app.supabase.rpc("get_checkout_order", { p_order_id: orderId, p_session_id: sessionId })
      : await app.supabase.rpc("get_order", { p_order_id: orderId });
    if (error) throw rpcError(error);
    const order = data as OrderView;
    body.replaceChildren(...view(order));
    if (order.status !== "pending") {
      progress.textContent = order.status === "paid" ? `Paid: ${ticketCount(order)} tickets` : "";
      return;
    }
    if (Date.now() - started > POLL_FOR_MS) {
      progress.textContent = "The payment is not confirmed yet. Reload this page in a moment.";
      return;
    }
    progress.textContent = "Waiting for the payment to be confirmed…";
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
}

function ticketCount(order: OrderView): number {
  return order.tickets?.filter((t) => t.status === "valid").length ?? order.ticket_count ?? 0;
}

function view(order: OrderView): Node[] {
  const c = order.currency;
  return [
    h(
      "div",
      { class: "card" },
      order.event_title && h("h2", {}, order.event_title),
      h(
        "p",
        {},
        "Order ",
        shortId(order.order_id),
        " · ",
        h("span", { "data-order-status": order.status }, status(order.status)),
      ),
      h(
        "p",
        {},
        `Tickets ${money(order.subtotal_cents, c)} + fee ${money(order.fee_cents, c)} = `,
        h("strong", {}, money(order.total_cents, c)),
        order.paid_at && ` · paid ${when(order.paid_at)}`,
      ),
      order.refunded_cents > 0 && h("p", {}, `Refunded ${money(order.refunded_cents, c)}`),
    ),
    h("h2", {}, "Tickets"),
    order.tickets
      ? order.tickets.length
        ? h(
          "ul",
          { "aria-label": "Tickets" },
          order.tickets.map((t) =>
            h(
              "li",
              { "data-ticket": t.status },
              `${t.tier} ticket `,
              shortId(t.ticket_id),
              " · ",
              status(t.status),
            )
          ),
        )
        : h("p", { class: "muted" }, "Your tickets appear here once the payment is confirmed.")
      : h("p", {}, `${order.ticket_count ?? 0} tickets`),
    order.refunds?.length
      ? [
        h("h2", {}, "Refunds"),
        table(
          "Refunds",
          ["Refund", "Amount", "Status", "Requested"],
          order.refunds.map((
            r,
          ) => [shortId(r.refund_id), money(r.amount_cents, c), status(r.status), when(r.created_at)]),
          [1],
        ),
      ]
      : [],
  ].flat().filter((n): n is HTMLElement => !!n);
}
