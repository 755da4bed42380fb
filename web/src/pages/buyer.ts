/**
 * The buyer's page: an event with its tiers, prices, fee and seats left; buy as a guest (email) or as the
 * signed-in user, through client/ (one Idempotency-Key per purchase), then off to the payment page.
 * @module
 */
import type { CheckoutRequest } from "../../../client/mod.ts";
import { ProblemError } from "../../../client/mod.ts";
import { type App, DEMO_EVENT } from "../app.ts";
import { alertBox, h, live, money, render, rpcError, when } from "../ui.ts";

interface EventView {
  event_id: string;
  title: string;
  currency: string;
  starts_at: string;
  fee: { percent: number; flat: number };
  tiers: { tier_id: string; name: string; price_cents: number; max_per_order: number; remaining: number }[];
}

export async function buyerPage(app: App, [eventId = DEMO_EVENT]: string[]): Promise<void> {
  const { data, error } = await app.supabase.rpc("get_event", { p_event_id: eventId });
  if (error) throw rpcError(error);
  const event = data as EventView;
  document.title = `${event.title} · Tickets`;

  const quantities = new Map<string, HTMLInputElement>();
  const summary = h("p", { "aria-live": "polite" });
  const message = h("div");
  const progress = live();
  const buy = h("button", { type: "submit" }, "Buy");
  const email = app.session ? null : h("input", {
    id: "email",
    name: "email",
    type: "email",
    autocomplete: "email",
    required: true,
    "aria-describedby": "email-help",
  });

  const rows = event.tiers.map((t) => {
    const input = h("input", {
      id: `qty-${t.tier_id}`,
      type: "number",
      inputmode: "numeric",
      min: 0,
      max: Math.min(t.max_per_order, Math.max(t.remaining, 0)),
      value: 0,
      disabled: t.remaining === 0,
      oninput: () => update(),
    });
    quantities.set(t.tier_id, input);
    return h(
      "div",
      { class: "card" },
      h("h3", {}, t.name, " · ", money(t.price_cents, event.currency)),
      h("p", { class: "muted" }, t.remaining > 0 ? `${t.remaining} seats left` : "Sold out"),
      h("label", { for: input.id }, `${t.name} tickets (at most ${t.max_per_order})`),
      input,
    );
  });

  function items(): CheckoutRequest["items"] {
    return [...quantities].map(([tier_id, input]) => ({ tier_id, quantity: Number(input.value) || 0 }))
      .filter((i) => i.quantity > 0);
  }

  // What the checkout will charge (the database decides; this only shows it ahead)
  function update(): void {
    const subtotal = items().reduce(
      (sum, i) => sum + i.quantity * event.tiers.find((t) => t.tier_id === i.tier_id)!.price_cents,
      0,
    );
    const fee = subtotal ? Math.round((subtotal * event.fee.percent) / 100) + event.fee.flat : 0;
    summary.textContent = subtotal
      ? `Tickets ${money(subtotal, event.currency)} + service fee ${money(fee, event.currency)} = ${
        money(subtotal + fee, event.currency)
      }`
      : "Choose your tickets.";
  }
  update();

  async function submit(e: Event): Promise<void> {
    e.preventDefault();
    message.replaceChildren();
    const chosen = items();
    if (!chosen.length) {
      message.replaceChildren(alertBox(new Error("Choose at least one ticket")));
      return;
    }
    buy.disabled = true;
    buy.setAttribute("aria-busy", "true");
    progress.textContent = "Creating your order…";
    const onRetry = ({ reason }: { reason: string }) =>
      progress.textContent = `Still working on it (${reason}); your order is not made twice…`;
    try {
      const body = { event_id: event.event_id, items: chosen };
      const { data } = email
        ? await app.tickets.guestCheckout({ ...body, email: email.value }, { onRetry })
        : await app.tickets.checkout(body, { onRetry });
      progress.textContent = "Taking you to the payment page…";
      location.assign(data.url!);
      return;
    } catch (err) {
      progress.textContent = "";
      message.replaceChildren(alertBox(err));
      if (err instanceof ProblemError && err.code === "sold-out") {
        message.append(h("p", {}, h("a", { href: location.pathname }, "See the seats left")));
      }
    }
    buy.disabled = false;
    buy.removeAttribute("aria-busy");
  }

  render(
    h("h1", {}, event.title),
    h("p", { class: "muted" }, `Starts ${when(event.starts_at)}`),
    h(
      "form",
      { onsubmit: submit, novalidate: true, "aria-label": "Buy tickets" },
      rows,
      email && h(
        "div",
        { class: "field" },
        h("label", { for: "email" }, "Email"),
        h("p", { id: "email-help", class: "muted" }, "Your tickets are sent here. No account needed."),
        email,
      ),
      app.session && h("p", {}, `Buying as ${app.session.email ?? app.session.userId}`),
      summary,
      buy,
      progress,
      message,
    ),
  );
}
