/**
 * `/rest/v1/rpc/<fn>`: PostgREST's RPC contract over the local database.
 *
 * As PostgREST does: the JWT (Authorization bearer, else the `apikey` header) is verified; its `role`
 * becomes `set local role` and its claims `request.jwt.claims`, so grants and RLS are enforced by
 * PostgreSQL itself; the named JSON arguments pick the overload; one call is one transaction; the
 * result is a scalar, an object (one composite), an array (setof) or 204 (void); errors are
 * `{code, message, details, hint}` with PostgREST's status mapping. Only RPCs are served here.
 * @module
 */
import { type Database, isPgError, type Queryable } from "./db.ts";
import { verifyJwt } from "./jwt.ts";

/** How the gateway reaches the database and checks tokens. */
export interface RestGatewayOptions {
  db: Database;
  jwtSecret: string;
  /** Schemas the Data API exposes (config.toml `[api] schemas`). */
  schemas: string[];
  /** Called once per RPC that reaches the database (the benchmark counts round trips with it). */
  onRpc?: (name: string) => void;
}

interface Routine {
  schema: string;
  name: string;
  args: { name: string; type: string }[];
  required: number;
  returns: "void" | "scalar" | "object" | "array";
}

const JSON_HEADERS = { "content-type": "application/json; charset=utf-8" };
const CORS = {
  "access-control-allow-origin": "*",
  "access-control-allow-methods": "POST, OPTIONS",
  "access-control-allow-headers":
    "authorization, apikey, content-type, content-profile, accept-profile, prefer, x-client-info",
};

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

/** Builds the request handler for `/rest/v1/...`. */
export function createRestGateway(options: RestGatewayOptions): (req: Request) => Promise<Response> {
  let catalog: Promise<Map<string, Routine[]>> | undefined;
  let roles: Promise<Set<string>> | undefined;
  const loadCatalog = (reload = false) => {
    if (!catalog || reload) catalog = readCatalog(options.db, options.schemas);
    return catalog;
  };

  return async (req) => {
    if (req.method === "OPTIONS") return new Response(null, { status: 204, headers: CORS });
    const url = new URL(req.url);
    const match = url.pathname.match(/^\/rest\/v1\/rpc\/([^/]+)$/);
    if (!match) {
      return error(404, "PGRST125", "Invalid path specified in request URL", null, "Only RPCs are served");
    }
    if (req.method !== "POST") return error(405, "PGRST117", `Unsupported HTTP method: ${req.method}`);

    const token = bearer(req.headers.get("authorization")) ?? req.headers.get("apikey");
    if (!token) {
      return respond(401, {
        message: "No API key found in request",
        hint: "No `apikey` request header was found.",
      });
    }
    let claims: Record<string, unknown>;
    try {
      claims = await verifyJwt(options.jwtSecret, token) as Record<string, unknown>;
    } catch (e) {
      const expired = (e as { code?: string }).code === "ERR_JWT_EXPIRED";
      return error(
        401,
        expired ? "PGRST303" : "PGRST301",
        expired ? "JWT expired" : "JWT could not be decoded",
        null,
        null,
        {
          "www-authenticate": `Bearer error="invalid_token"`,
        },
      );
    }
    const role = typeof claims.role === "string" ? claims.role : "anon";
    roles ??= readApiRoles(options.db);
    if (!(await roles).has(role)) return error(401, "PGRST301", `JWT role "${role}" cannot be used`);

    const schema = req.headers.get("content-profile") ?? options.schemas[0];
    if (!options.schemas.includes(schema)) {
      return error(
        406,
        "PGRST106",
        "Invalid schema: " + schema,
        null,
        `Only the following schemas are exposed: ${options.schemas.join(", ")}`,
      );
    }
    const name = decodeURIComponent(match[1]);
    let args: Record<string, unknown>;
    try {
      const text = await req.text();
      args = text.trim() === "" ? {} : JSON.parse(text);
    } catch {
      return error(400, "PGRST102", "Empty or invalid json");
    }
    if (args === null || typeof args !== "object" || Array.isArray(args)) {
      return error(400, "PGRST102", "Arguments must be a JSON object");
    }

    let routine = pick(await loadCatalog(), schema, name, args);
    if (routine === undefined) routine = pick(await loadCatalog(true), schema, name, args);
    if (routine === null) {
      return error(
        300,
        "PGRST203",
        `Could not choose the best candidate function between overloads of ${schema}.${name}`,
      );
    }
    if (!routine) {
      const list = Object.keys(args).sort().join(", ");
      return error(
        404,
        "PGRST202",
        `Could not find the function ${schema}.${name}(${list}) in the schema cache`,
        `Searched for the function ${schema}.${name} with parameters ${
          list || "(none)"
        } or with a single unnamed json/jsonb parameter, but no matches were found in the schema cache.`,
      );
    }

    try {
      options.onRpc?.(name);
      const body = await options.db.transaction((tx) => call(tx, routine, role, claims, args));
      if (routine.returns === "void") return new Response(null, { status: 204, headers: CORS });
      return new Response(body, { status: 200, headers: { ...JSON_HEADERS, ...CORS } });
    } catch (e) {
      if (!isPgError(e)) {
        return error(
          503,
          "PGRST000",
          "Database client error. Retrying the connection.",
          String((e as Error)?.message ?? e),
        );
      }
      return error(httpStatus(e.code, role), e.code, e.message, e.detail ?? null, e.hint ?? null);
    }
  };
}

async function call(
  tx: Queryable,
  routine: Routine,
  role: string,
  claims: Record<string, unknown>,
  args: Record<string, unknown>,
): Promise<string | null> {
  await tx.query(
    "select set_config('role', $1, true), set_config('request.jwt.claims', $2, true), set_config('request.method', 'POST', true)",
    [role, JSON.stringify(claims)],
  );
  const given = routine.args.filter((a) => a.name in args);
  const fn = `${ident(routine.schema)}.${ident(routine.name)}(${
    given.map((a) => `${ident(a.name)} => _a.${ident(a.name)}`).join(", ")
  })`;
  const from = given.length
    ? ` from jsonb_to_record($1::text::jsonb) as _a(${
      given.map((a) => `${ident(a.name)} ${a.type}`).join(", ")
    })`
    : "";
  const params = given.length ? [JSON.stringify(args)] : [];
  const sep = given.length ? "," : " from";
  const sql = {
    void: `select ${fn}${from}`,
    scalar: `select to_jsonb(${fn})::text as body${from}`,
    object: `select to_jsonb(_r)::text as body${from}${sep} ${fn} as _r`,
    array: `select coalesce(jsonb_agg(_r), '[]'::jsonb)::text as body${from}${sep} ${fn} as _r`,
  }[routine.returns];
  const rows = await tx.query<{ body: string | null }>(sql, params);
  return routine.returns === "void" ? null : rows[0]?.body ?? "null";
}

/** The overload whose parameters fit `args`; null when several do, undefined when none does. */
function pick(
  catalog: Map<string, Routine[]>,
  schema: string,
  name: string,
  args: object,
): Routine | null | undefined {
  const keys = Object.keys(args);
  const fits = (catalog.get(`${schema}.${name}`) ?? []).filter((r) =>
    keys.every((k) => r.args.some((a) => a.name === k)) &&
    r.args.slice(0, r.required).every((a) => keys.includes(a.name))
  );
  return fits.length > 1 ? null : fits[0];
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
    if (inputNames.length < r.nargs || inputNames.some((n) => !n)) continue; // unnamed parameters: not callable
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
      args: inputNames.map((n, i) => ({ name: n, type: r.argtypes[i] })),
      required: r.nargs - r.ndefaults,
      returns,
    };
    const key = `${r.schema}.${r.name}`;
    map.set(key, [...(map.get(key) ?? []), routine]);
  }
  return map;
}

/** The roles a JWT may switch to: those granted to `authenticator`, as with PostgREST. */
async function readApiRoles(db: Database): Promise<Set<string>> {
  const rows = await db.query<{ rolname: string }>(
    `select r.rolname from pg_catalog.pg_auth_members m
       join pg_catalog.pg_roles r on r.oid = m.roleid
       join pg_catalog.pg_roles a on a.oid = m.member
     where a.rolname = 'authenticator'`,
  );
  return new Set(rows.map((r) => r.rolname));
}

/** PostgREST's mapping of SQLSTATE to HTTP status. */
export function httpStatus(code: string, role: string): number {
  if (/^PT\d{3}$/.test(code)) return Number(code.slice(2));
  const exact: Record<string, number> = {
    "23503": 409,
    "23505": 409,
    "25006": 405,
    "53400": 500,
    P0001: 400,
    "42883": 404,
    "42P01": 404,
    "42P17": 500,
    "42501": role === "anon" ? 401 : 403,
  };
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

function bearer(header: string | null): string | null {
  const m = header?.match(/^Bearer\s+(\S+)$/i);
  return m ? m[1] : null;
}

function ident(name: string): string {
  return `"${name.replaceAll('"', '""')}"`;
}

function error(
  status: number,
  code: string,
  message: string,
  details: string | null = null,
  hint: string | null = null,
  headers: Record<string, string> = {},
): Response {
  return respond(status, { code, details, hint, message }, headers);
}

function respond(status: number, body: unknown, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), { status, headers: { ...JSON_HEADERS, ...CORS, ...headers } });
}
