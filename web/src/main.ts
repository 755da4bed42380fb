/**
 * The web app: one page per path, rendered by plain functions (no framework). Links are ordinary links, so
 * every page is a fresh load: nothing a page did leaks into the next.
 * @module
 */
import { type App, loadApp } from "./app.ts";
import { buyerPage } from "./pages/buyer.ts";
import { operatorPage } from "./pages/operator.ts";
import { orderPage } from "./pages/order.ts";
import { organiserPage } from "./pages/organiser.ts";
import { signInPage } from "./pages/signin.ts";
import { alertBox, h, render } from "./ui.ts";

type Page = (app: App, params: string[]) => Promise<void>;

const ROUTES: [RegExp, Page, string][] = [
  [/^\/$/, buyerPage, "/"],
  [/^\/events\/([0-9a-f-]{36})$/, buyerPage, "/"],
  [/^\/orders\/([0-9a-f-]{36})$/, orderPage, "/"],
  [/^\/organiser$/, organiserPage, "/organiser"],
  [/^\/operator$/, operatorPage, "/operator"],
  [/^\/signin$/, signInPage, "/signin"],
];

async function start(): Promise<void> {
  const path = location.pathname.replace(/\/+$/, "") || "/";
  const route = ROUTES.find(([re]) => re.test(path));
  let app: App;
  try {
    app = await loadApp();
  } catch (e) {
    render(h("h1", {}, "Cannot start"), alertBox(e));
    return;
  }
  const who = document.getElementById("who")!;
  who.textContent = app.session
    ? `Signed in: ${app.session.email ?? app.session.userId.slice(0, 8)}`
    : "Sign in";
  for (const a of document.querySelectorAll<HTMLAnchorElement>("nav a")) {
    if (route && a.getAttribute("href") === route[2]) a.setAttribute("aria-current", "page");
  }
  if (!route) {
    document.title = "Not found · Tickets";
    render(h("h1", {}, "Page not found"), h("p", {}, h("a", { href: "/" }, "Buy tickets")));
    return;
  }
  try {
    await route[1](app, path.match(route[0])!.slice(1));
  } catch (e) {
    render(h("h1", {}, "Something went wrong"), alertBox(e));
  }
}

start();
