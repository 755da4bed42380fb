/**
 * Signing in: on the local stack, a dev-only choice of demo user (a token minted by the stack, clearly
 * marked); on a real project, Supabase Auth with email and password.
 * @module
 */
import { type App, DEMO_USERS, localSignIn } from "../app.ts";
import { alertBox, h, render } from "../ui.ts";

export function signInPage(app: App): Promise<void> {
  document.title = "Sign in · Tickets";
  const out = h("div");
  const current = app.session &&
    h(
      "p",
      {},
      `Signed in as ${app.session.email ?? app.session.userId}${
        app.session.role ? ` (${app.session.role})` : ""
      }. `,
      h("button", {
        type: "button",
        class: "secondary",
        onclick: async () => {
          await app.signOut();
          location.reload();
        },
      }, "Sign out"),
    );

  if (app.config.localSignIn) {
    const userId = h("input", { id: "user-id", autocomplete: "off", spellcheck: "false", size: 36 });
    render(
      h("h1", {}, "Sign in"),
      h(
        "div",
        { class: "card local" },
        h("h2", {}, "Local stack only"),
        h(
          "p",
          {},
          "There is no Auth server here: each button asks the local stack for a demo user's token. " +
            "A real project signs in with Supabase Auth.",
        ),
      ),
      current,
      h(
        "ul",
        { class: "card" },
        DEMO_USERS.map((u) =>
          h(
            "li",
            {},
            h("button", {
              type: "button",
              onclick: async () => {
                try {
                  await localSignIn(app.config, u.id);
                  location.assign(u.home);
                } catch (e) {
                  out.replaceChildren(alertBox(e));
                }
              },
            }, `Sign in as ${u.label}`),
          )
        ),
      ),
      h(
        "form",
        {
          class: "card",
          "aria-label": "Sign in as another user",
          onsubmit: async (e: Event) => {
            e.preventDefault();
            try {
              await localSignIn(app.config, userId.value.trim());
              location.assign("/organiser");
            } catch (err) {
              out.replaceChildren(alertBox(err));
            }
          },
        },
        h("label", { for: userId.id }, "Another user of auth.users, by id"),
        h("div", { class: "row" }, userId, " ", h("button", { type: "submit" }, "Sign in")),
      ),
      out,
    );
    return Promise.resolve();
  }

  const email = h("input", { id: "signin-email", type: "email", autocomplete: "email", required: true });
  const password = h("input", {
    id: "signin-password",
    type: "password",
    autocomplete: "current-password",
    required: true,
  });
  render(
    h("h1", {}, "Sign in"),
    current,
    h(
      "form",
      {
        class: "card",
        onsubmit: async (e: Event) => {
          e.preventDefault();
          const { error } = await app.supabase.auth.signInWithPassword({
            email: email.value,
            password: password.value,
          });
          if (error) out.replaceChildren(alertBox(error));
          else location.assign("/");
        },
      },
      h("div", { class: "field" }, h("label", { for: email.id }, "Email"), email),
      h("div", { class: "field" }, h("label", { for: password.id }, "Password"), password),
      h("button", { type: "submit" }, "Sign in"),
      out,
    ),
  );
  return Promise.resolve();
}
