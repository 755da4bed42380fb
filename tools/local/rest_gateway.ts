/**
 * `/rest/v1/rpc/<fn>`: the platform's API gateway and PostgREST's RPC contract over the local database.
 *
 * The gateway (supabase.com/docs/guides/api/api-keys): every request carries an API key in `apikey`;
 * `sb_publishable_...` is the anon role, `sb_secret_...` the service_role; a user's JWT in
 * `Authorization` (ES256 against the JWKS, or HS256 with the legacy secret) takes its own role; the
 * legacy anon/service_role JWT keys work until legacy keys are disabled ("Legacy API keys are
 * disabled").
 *
 * PostgREST (docs.postgrest.org, src/library/PostgREST/Error.hs for the status mapping): the role
 * becomes `set local role` and the claims `request.jwt.claims`, so grants and RLS are PostgreSQL's; the
 * impersonated role's settings (and `authenticator`'s) apply per transaction, so the platform's
 * statement timeouts hold (anon 3 s, authenticated 8 s, service_role the authenticator's 8 s:
 * supabase.com/docs/guides/database/postgres/timeouts); named JSON arguments pick the overload, or a
 * single unnamed json/jsonb parameter takes the whole body; `POST` runs read-write, `GET`/`HEAD`
 * (arguments in the query string, as supabase-js sends them with `{ get: true }` / `{ head: true }`)
 * read-only; one call is one transaction; results are a scalar, an object, an array or 204 (void);
 * a request that waits longer than the pool's acquisition timeout is 504 `PGRST003` and never runs.
 *
 * Every error is `application/problem+json` with PostgREST's members (`code`, `message`, `details`,
 * `hint`) so supabase-js reads it as it reads PostgREST's; every answer has CORS and `X-Request-Id`.
 * Only RPCs are served here.
 * @module
 */
import { type Database, isPgError, PoolTimeoutError } from "./db.ts";
import { CORS_HEADERS, newRequestId, problem } from "./http.ts";
import { type ProjectKeys, verifyJwt } from "./jwt.ts";

/** How the gateway reaches the database and checks keys and tokens. */
export interface RestGatewayOptions {
  db: Database;
  keys: ProjectKeys;
  /** Accept the legacy anon/service_role keys and HS256 tokens (default true). */
  legacyKeys?: boolean;
  /** Schemas the Data API exposes (config.toml `[api] schemas`). */
  schemas: string[];
  /** How long a request may wait for a pooled connection (PostgREST's default: 10 s). */
  poolTimeoutMs?: number;
  /** Called once per RPC that reaches the database (the benchmark counts round trips with it). */
  onRpc?: (name: string) => void;
}

interface Routine {
  schema: string;
  name: string;
  args: { name: string; type: string }[];
  required: number;
  /** A single unnamed json/jsonb parameter: the whole body is the argument. */
  wholeBody: boolean;
  returns: "void" | "scalar" | "object" | "array";
}

interface Caller {
  role: string;
  claims: Record<string, unknown>;
}

const JSON_HEADERS = { "content-type": "application/json; charset=utf-8" };

const CATALOG_SQL = `
  select n.nspname as schema, p.proname as name, p.pronargs as nargs, p.pronargdefaults as ndefaults,
    coalesce(p.proargnames, '{}') as argnames, coalesce(p.proargmodes::text[], '{}') as argmodes,
    array(select format_type(t, null) from unnest(p.proargtypes) as t) as argtypes,
    p.proretset as retset, format_type(p.prorettype, null) as rettype, t.typtype as rettypkind,
    exists (select from unnest(p.proargmodes) m where m::text in ('o', 't')) as has_out
  from pg_catalog.pg_proc p
  join pg_catalog.pg_namespace n on n.oid = p.pronamespace
  join pg_catalog.pg_type t on t.oid = p.prorettype
  where n.nspname = any($1) and p.prokind = 'f'`;

// The roles a JWT may switch to (those granted to authenticator, as with PostgREST), with their
// settings and authenticator's: global ones first, then this database's.
const ROLES_SQL = `
  select r.rolname as role, r.rolname = 'authenticator' or exists (
      select from pg_catalog.pg_auth_members m join pg_catalog.pg_roles a on a.oid = m.member
      where m.roleid = r.oid and a.rolname = 'authenticator') as api,
    coalesce((select array_agg(c order by s.setdatabase, c) from pg_catalog.pg_db_role_setting s, unnest(s.setconfig) c
      where s.setrole = r.oid and s.setdatabase in (0, (select oid from pg_catalog.pg_database
        where datname = current_database()))), '{}') as settings
  from pg_catalog.pg_roles r`;

/** Builds the request handler for `/rest/v1/...`. */
export function createRestGateway(options: RestGatewayOptions): (req: Request) => Promise<Response> {
  const legacy = options.legacyKeys ?? true;
  let catalog: Promise<Map<string, Routine[]>> | undefined;
  let roles: Promise<Map<string, string[][]>> | undefined;
  const loadCatalog = (reload = false) => {
    if (!catalog || reload) {
      catalog = readCatalog(options.db, options.schemas).catch((e) => {
        catalog = undefined;
        throw e;
      });
    }
    return catalog;
  };
  const loadRoles = () =>
    roles ??= readRoles(options.db).catch((e) => {
      roles = undefined;
      throw e;
    });

  return async (req) => {
    const requestId = newRequestId();
    const fail = (
      status: number,
      code: string | null,
      message: string,
      more: { details?: string | null; hint?: string | null; headers?: Record<string, string> } = {},
    ) =>
      problem({
        status,
        type: status === 401 ? "unauthorized" : code ? `postgrest-${code.toLowerCase()}` : "gateway",
        detail: message,
        requestId,
        members: {
          ...(code ? { code } : {}),
          message,
          details: more.details ?? null,
          hint: more.hint ?? null,
        },
        headers: more.headers,
      });

    if (req.method === "OPTIONS") {
      return new Response(null, { status: 204, headers: { ...CORS_HEADERS, "x-request-id": requestId } });
    }
    const url = new URL(req.url);
    const match = url.pathname.match(/^\/rest\/v1\/rpc\/([^/]+)$/);
    if (!match) {
      return fail(404, "PGRST125", "Invalid path specified in request URL", {
        hint: "The local stack serves RPCs only: /rest/v1/rpc/<function>",
      });
    }
    if (!["GET", "HEAD", "POST"].includes(req.method)) {
      return fail(405, "PGRST101", "For functions, only GET and POST verbs are allowed");
    }

    const caller = await resolveCaller(req, options.keys, legacy);
    if ("failure" in caller) return fail(401, caller.failure.code, caller.failure.message, caller.failure);

    let apiRoles;
    try {
      apiRoles = await loadRoles();
    } catch (e) {
      return unavailable(fail, e);
    }
    if (!apiRoles.has(caller.role) || caller.role === "authenticator") {
      return fail(401, "PGRST301", `JWT role "${caller.role}" cannot be used`);
    }

    const readOnly = req.method !== "POST";
    const profile = req.headers.get(readOnly ? "accept-profile" : "content-profile");
    const schema = profile ?? options.schemas[0];
    if (!options.schemas.includes(schema)) {
      return fail(406, "PGRST106", "Invalid schema: " + schema, {
        hint: `Only the following schemas are exposed: ${options.schemas.join(", ")}`,
      });
    }
    const name = decodeURIComponent(match[1]);
    let body: unknown;
    if (readOnly) {
      body = Object.fromEntries(url.searchParams);
    } else {
      try {
        const text = await req.text();
        body = text.trim() === "" ? {} : JSON.parse(text);
      } catch {
        return fail(400, "PGRST102", "Empty or invalid json");
      }
    }

    let routine;
    try {
      routine = pick(await loadCatalog(), schema, name, body);
      if (routine === undefined) routine = pick(await loadCatalog(true), schema, name, body);
    } catch (e) {
      return unavailable(fail, e);
    }
    if (routine === null) {
      return fail(
        300,
        "PGRST203",
        `Could not choose the best candidate function between overloads of ${schema}.${name}`,
      );
    }
    if (!routine) {
      if (body === null || typeof body !== "object" || Array.isArray(body)) {
        return fail(400, "PGRST102", "Arguments must be a JSON object");
      }
      const list = Object.keys(body).sort().join(", ");
      return fail(
        404,
        "PGRST202",
        `Could not find the function ${schema}.${name}(${list}) in the schema cache`,
        {
          hint: `Searched for the function ${schema}.${name} with parameters ${
            list || "(none)"
          } or with a single unnamed json/jsonb parameter, but no matches were found in the schema cache.`,
        },
      );
    }

    const settings = [...(apiRoles.get("authenticator") ?? []), ...(apiRoles.get(caller.role) ?? [])];
    const context = { ...caller, settings, readOnly, headers: req.headers, path: url.pathname };
    let result: string | null;
    try {
      options.onRpc?.(name);
      const rows = await options.db.script<{ body: string | null }>(rpcScript(routine, context, body), {
        acquireTimeoutMs: options.poolTimeoutMs ?? 10_000,
      });
      result = routine.returns === "void" ? null : rows[0]?.body ?? "null";
    } catch (e) {
      if (e instanceof PoolTimeoutError) {
        return fail(504, "PGRST003", "Timed out acquiring connection from connection pool.");
      }
      if (!isPgError(e)) return unavailable(fail, e);
      return fail(httpStatus(e.code, caller.role, e.message), e.code, e.message, {
        details: e.detail ?? null,
        hint: e.hint ?? null,
      });
    }
    const headers: Record<string, string> = { ...CORS_HEADERS, "x-request-id": requestId };
    if (routine.returns === "void") return new Response(null, { status: 204, headers });
    if (routine.returns === "array") {
      // PostgREST's Content-Range for a set: the rows served, and their total with `Prefer: count=...`
      const rows = (JSON.parse(result ?? "[]") as unknown[]).length;
      const counted = /count=(exact|planned|estimated)/.test(req.headers.get("prefer") ?? "");
      headers["content-range"] = `${rows ? `0-${rows - 1}` : "*"}/${counted ? rows : "*"}`;
    }
    return new Response(req.method === "HEAD" ? null : result, {
      status: 200,
      headers: { ...JSON_HEADERS, ...headers },
    });
  };
}

/** 503 for a database the gateway cannot reach (PostgREST's PGRST000/PGRST001). */
function unavailable(
  fail: (status: number, code: string, message: string, more?: { details?: string }) => Response,
  e: unknown,
): Response {
  return fail(503, "PGRST001", "Database client error. Retrying the connection.", {
    details: String((e as Error)?.message ?? e),
  });
}

/** Who calls, as the gateway and PostgREST decide it; a `failure` is answered 401. */
async function resolveCaller(
  req: Request,
  keys: ProjectKeys,
  legacy: boolean,
): Promise<
  Caller | {
    failure: { code: string | null; message: string; hint?: string; headers?: Record<string, string> };
  }
> {
  const apikey = req.headers.get("apikey");
  const bearer = req.headers.get("authorization")?.match(/^Bearer\s+(\S+)$/i)?.[1];
  if (!apikey) {
    return {
      failure: {
        code: null,
        message: "No API key found in request",
        hint: "No `apikey` request header was found.",
      },
    };
  }
  const keyRole = apiKeyRole(keys, apikey);
  if (keyRole === undefined) {
    return { failure: { code: null, message: "Invalid API key", hint: "Double check the `apikey` header." } };
  }
  if (!legacy && (keyRole.legacy || (bearer && apiKeyRole(keys, bearer)?.legacy))) {
    return {
      failure: {
        code: null,
        message: "Legacy API keys are disabled",
        hint: "Use the project's publishable or secret key (sb_publishable_..., sb_secret_...) instead.",
      },
    };
  }
  // supabase-js sends its key in both headers: then the key decides, as when no token is sent.
  if (!bearer || bearer === apikey) return { role: keyRole.role, claims: { role: keyRole.role } };
  if (bearer.startsWith("sb_")) {
    return {
      failure: {
        code: null,
        message: "Invalid API key",
        hint: "An API key belongs in `apikey`, not in Authorization.",
      },
    };
  }
  try {
    const claims = await verifyJwt(keys, bearer, { legacy }) as Record<string, unknown>;
    return { role: typeof claims.role === "string" ? claims.role : "anon", claims };
  } catch (e) {
    const expired = (e as { code?: string }).code === "ERR_JWT_EXPIRED";
    return {
      failure: {
        code: expired ? "PGRST303" : "PGRST301",
        message: expired ? "JWT expired" : "JWT could not be decoded",
        headers: { "www-authenticate": `Bearer error="invalid_token"` },
      },
    };
  }
}

/** The role of an API key, and whether it is a legacy one; undefined for an unknown key. */
function apiKeyRole(keys: ProjectKeys, key: string): { role: string; legacy: boolean } | undefined {
  const known: Record<string, { role: string; legacy: boolean }> = {
    [keys.publishableKey]: { role: "anon", legacy: false },
    [keys.secretKey]: { role: "service_role", legacy: false },
    [keys.anonKey]: { role: "anon", legacy: true },
    [keys.serviceRoleKey]: { role: "service_role", legacy: true },
  };
  return Object.hasOwn(known, key) ? known[key] : undefined;
}

/**
 * One RPC as one script (one round trip, one transaction): the settings, the role and the claims, then
 * the call. Values are inlined as dollar-quoted literals (the simple query protocol takes no
 * parameters); identifiers come from the catalog.
 */
function rpcScript(
  routine: Routine,
  context: Caller & { settings: string[][]; readOnly: boolean; headers: Headers; path: string },
  body: unknown,
): string {
  const gucs: [string, string][] = [
    ...(context.readOnly ? [["transaction_read_only", "on"] as [string, string]] : []),
    ...context.settings.map(([k, v]) => [k, v] as [string, string]),
    ["role", context.role],
    ["request.jwt.claims", JSON.stringify(context.claims)],
    ["request.method", context.readOnly ? "GET" : "POST"],
    ["request.path", context.path],
    ["request.headers", JSON.stringify(Object.fromEntries(context.headers))],
  ];
  const settings = `select ${
    gucs.map(([k, v]) => `set_config(${literal(k)}, ${literal(v)}, true)`).join(", ")
  }`;
  const args = routine.wholeBody ? {} : body as Record<string, unknown>;
  const given = routine.args.filter((a) => a.name in args);
  const fn = routine.wholeBody
    ? `${ident(routine.schema)}.${ident(routine.name)}(${literal(JSON.stringify(body))}::${
      routine.args[0].type
    })`
    : `${ident(routine.schema)}.${ident(routine.name)}(${
      given.map((a) => `${ident(a.name)} => _a.${ident(a.name)}`).join(", ")
    })`;
  const from = given.length
    ? ` from jsonb_to_record(${literal(JSON.stringify(body))}::jsonb) as _a(${
      given.map((a) => `${ident(a.name)} ${a.type}`).join(", ")
    })`
    : "";
  const sep = given.length ? "," : " from";
  const call = {
    void: `select ${fn}${from}`,
    scalar: `select to_jsonb(${fn})::text as body${from}`,
    object: `select to_jsonb(_r)::text as body${from}${sep} ${fn} as _r`,
    array: `select coalesce(jsonb_agg(_r), '[]'::jsonb)::text as body${from}${sep} ${fn} as _r`,
  }[routine.returns];
  return `${settings};\n${call}`;
}

/** The overload whose parameters fit `body`; null when several do, undefined when none does. */
function pick(
  catalog: Map<string, Routine[]>,
  schema: string,
  name: string,
  body: unknown,
): Routine | null | undefined {
  const routines = catalog.get(`${schema}.${name}`) ?? [];
  const isObject = body !== null && typeof body === "object" && !Array.isArray(body);
  const keys = isObject ? Object.keys(body) : [];
  const fits = isObject
    ? routines.filter((r) =>
      !r.wholeBody &&
      keys.every((k) => r.args.some((a) => a.name === k)) &&
      r.args.slice(0, r.required).every((a) => keys.includes(a.name))
    )
    : [];
  if (fits.length > 1) return null;
  return fits[0] ?? routines.find((r) => r.wholeBody);
}

async function readCatalog(db: Database, schemas: string[]): Promise<Map<string, Routine[]>> {
  type Raw = {
    schema: string;
    name: string;
    nargs: number;
    ndefaults: number;
    argnames: string[];
    argmodes: string[];
    argtypes: string[];
    retset: boolean;
    rettype: string;
    rettypkind: string;
    has_out: boolean;
  };
  const map = new Map<string, Routine[]>();
  for (const r of await db.query<Raw>(CATALOG_SQL, [schemas])) {
    const inputNames = r.argmodes.length
      ? r.argnames.filter((_, i) => ["i", "b", "v"].includes(r.argmodes[i]))
      : r.argnames;
    const wholeBody = r.nargs === 1 && !inputNames[0] && ["json", "jsonb"].includes(r.argtypes[0]);
    if (!wholeBody && (inputNames.length < r.nargs || inputNames.some((n) => !n))) continue; // not callable by name
    const returns = r.rettype === "void"
      ? "void"
      : r.retset
      ? "array"
      : r.rettypkind === "c" || (r.rettype === "record" && r.has_out)
      ? "object"
      : "scalar";
    const routine: Routine = {
      schema: r.schema,
      name: r.name,
      args: r.argtypes.map((type, i) => ({ name: inputNames[i] ?? "", type })),
      required: r.nargs - r.ndefaults,
      wholeBody,
      returns,
    };
    const key = `${r.schema}.${r.name}`;
    map.set(key, [...(map.get(key) ?? []), routine]);
  }
  return map;
}

/** The API roles (and authenticator) with their settings as `[name, value]` pairs. */
async function readRoles(db: Database): Promise<Map<string, string[][]>> {
  const rows = await db.query<{ role: string; api: boolean; settings: string[] }>(ROLES_SQL);
  return new Map(
    rows.filter((r) => r.api).map((
      r,
    ) => [r.role, r.settings.map((s) => [s.slice(0, s.indexOf("=")), s.slice(s.indexOf("=") + 1)])]),
  );
}

/**
 * PostgREST's mapping of SQLSTATE to HTTP status (src/library/PostgREST/Error.hs, `mapSQLtoHTTP`);
 * `42501` is 401 for anon and 403 for anyone signed in.
 */
export function httpStatus(code: string, role: string, message = ""): number {
  if (/^PT\d{3}$/.test(code)) return Number(code.slice(2));
  const exact: Record<string, number> = {
    "23503": 409,
    "23505": 409,
    "25006": 405,
    "53400": 500,
    "57P01": 503,
    P0001: 400,
    "42883": 404,
    "42P01": 404,
    "42P17": 500,
    "42501": role === "anon" ? 401 : 403,
  };
  if (code === "21000") return message.endsWith("requires a WHERE clause") ? 400 : 500;
  if (code === "22023" && /^role .* does not exist$/.test(message)) return 401;
  if (code in exact) return exact[code];
  const byClass: Record<string, number> = {
    "08": 503,
    "09": 500,
    "0L": 403,
    "0P": 403,
    "25": 500,
    "28": 403,
    "2D": 500,
    "38": 500,
    "39": 500,
    "3B": 500,
    "40": 500,
    "53": 503,
    "54": 500,
    "55": 500,
    "57": 500,
    "58": 500,
    F0: 500,
    HV: 500,
    P0: 500,
    XX: 500,
  };
  return byClass[code.slice(0, 2)] ?? 400;
}

function ident(name: string): string {
  return `"${name.replaceAll('"', '""')}"`;
}

/** `value` as a dollar-quoted SQL literal whose closing tag cannot occur any earlier. */
function literal(value: string): string {
  let tag = "v";
  while (`${value}$`.includes(`$${tag}$`)) tag += "v";
  return `$${tag}$${value}$${tag}$`;
}
