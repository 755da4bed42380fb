/**
 * What every page needs: the project's configuration, the signed-in user, a supabase-js client acting as
 * them, and the functions' client (client/) over `supabase.functions.invoke`.
 *
 * Configuration: `VITE_SUPABASE_URL` and `VITE_SUPABASE_PUBLISHABLE_KEY` at build time (a real project),
 * else `/config.json` from the server (the local stack serves it, with `localSignIn: true`).
 * @module
 */
import { createClient, type SupabaseClient } from "@supabase/supabase-js";
import { invokeTransport, type TicketsClient, ticketsClient } from "../../client/mod.ts";

/** Where the project is. */
export interface Config {
  supabaseUrl: string;
  publishableKey: string;
  /** The local stack's dev-only sign-in (`POST /auth/v1/local/token`) instead of Supabase Auth. */
  localSignIn: boolean;
}

/** The signed-in user, as the pages need them. */
export interface Session {
  userId: string;
  email: string | null;
  /** `app_metadata.role`, e.g. `platform_admin` (display only: the database checks it from the token). */
  role: string | null;
  accessToken: string;
}

/** Everything a page gets. */
export interface App {
  config: Config;
  session: Session | null;
  supabase: SupabaseClient;
  tickets: TicketsClient;
  signOut(): Promise<void>;
}

const LOCAL_SESSION = "local-session";

/** The demo users of supabase/seed.sql, for the local sign-in. */
export const DEMO_USERS = [
  { id: "22222222-2222-4222-8222-222222222222", label: "the demo buyer", home: "/" },
  { id: "11111111-1111-4111-8111-111111111111", label: "the demo organiser", home: "/organiser" },
  {
    id: "77777777-7777-4777-8777-777777777777",
    label: "the demo operator (platform admin)",
    home: "/operator",
  },
] as const;

/** The demo event (supabase/seed.sql). */
export const DEMO_EVENT = "33333333-3333-4333-8333-333333333333";

/** Loads the configuration and the session, and builds the clients. */
export async function loadApp(): Promise<App> {
  const config = await loadConfig();
  if (config.localSignIn) {
    const stored = readLocalSession();
    const supabase = createClient(config.supabaseUrl, config.publishableKey, {
      // no Auth server locally: the token comes from the local sign-in
      ...(stored ? { accessToken: () => Promise.resolve(stored.accessToken) } : {}),
      auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false },
    });
    return {
      config,
      session: stored,
      supabase,
      tickets: ticketsClient(invokeTransport(supabase)),
      signOut: () => Promise.resolve(localStorage.removeItem(LOCAL_SESSION)),
    };
  }
  const supabase = createClient(config.supabaseUrl, config.publishableKey);
  const { data } = await supabase.auth.getSession();
  const user = data.session?.user;
  return {
    config,
    session: user && data.session
      ? {
        userId: user.id,
        email: user.email ?? null,
        role: (user.app_metadata?.role as string | undefined) ?? null,
        accessToken: data.session.access_token,
      }
      : null,
    supabase,
    tickets: ticketsClient(invokeTransport(supabase)),
    signOut: async () => void await supabase.auth.signOut(),
  };
}

/** Signs in as `userId` on the local stack (its dev-only token endpoint). */
export async function localSignIn(config: Config, userId: string): Promise<Session> {
  const res = await fetch(`${config.supabaseUrl}/auth/v1/local/token`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ user_id: userId }),
  });
  const body = await res.json();
  if (!res.ok) throw new Error(body.detail ?? `Sign-in failed (${res.status})`);
  const session: Session = {
    userId: body.user.id,
    email: body.user.email ?? null,
    role: body.user.app_metadata?.role ?? null,
    accessToken: body.access_token,
  };
  localStorage.setItem(LOCAL_SESSION, JSON.stringify(session));
  return session;
}

async function loadConfig(): Promise<Config> {
  const env = (import.meta as unknown as { env?: Record<string, string | undefined> }).env ?? {};
  if (env.VITE_SUPABASE_URL && env.VITE_SUPABASE_PUBLISHABLE_KEY) {
    return {
      supabaseUrl: env.VITE_SUPABASE_URL,
      publishableKey: env.VITE_SUPABASE_PUBLISHABLE_KEY,
      localSignIn: false,
    };
  }
  const res = await fetch("/config.json");
  if (!res.ok) throw new Error("No configuration: set VITE_SUPABASE_URL and VITE_SUPABASE_PUBLISHABLE_KEY");
  return await res.json();
}

function readLocalSession(): Session | null {
  try {
    const session = JSON.parse(localStorage.getItem(LOCAL_SESSION) ?? "null") as Session | null;
    if (!session) return null;
    // an expired token is no session
    const { exp } = JSON.parse(atob(session.accessToken.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")));
    return exp * 1000 > Date.now() ? session : null;
  } catch {
    return null;
  }
}
