/**
 * What every answer of the local stack's own (gateway, functions host, router) carries: CORS headers,
 * an `X-Request-Id`, and for errors an `application/problem+json` body (RFC 9457) with `type`, `title`,
 * `status`, `detail` and `request_id`, plus the members the platform's clients read (`code`,
 * `message`, `details`, `hint` for PostgREST; `code`, `message` for the functions' relay).
 * @module
 */
import { STATUS_CODES } from "node:http";

/** CORS on every answer: any origin, the headers supabase-js and the functions' clients send. */
export const CORS_HEADERS: Readonly<Record<string, string>> = {
  "access-control-allow-origin": "*",
  "access-control-allow-methods": "GET, POST, HEAD, OPTIONS",
  "access-control-allow-headers":
    "authorization, apikey, content-type, content-profile, accept-profile, prefer, x-client-info, " +
    "x-request-id, idempotency-key",
  "access-control-expose-headers": "content-range, x-request-id, idempotent-replayed, retry-after",
  "access-control-max-age": "86400",
};

/** A new request id: the stack, like the platform, never takes one from the caller. */
export function newRequestId(): string {
  return crypto.randomUUID();
}

/** A problem's fields: a short `type` code (answered as `/problems/<type>`) and what it says. */
export interface Problem {
  status: number;
  type: string;
  detail: string;
  requestId: string;
  /** Extra members (e.g. PostgREST's `code`, `message`, `details`, `hint`). */
  members?: Record<string, unknown>;
  headers?: Record<string, string>;
}

/** An `application/problem+json` answer with CORS and `X-Request-Id`. */
export function problem(p: Problem): Response {
  const body = {
    type: `/problems/${p.type}`,
    title: STATUS_CODES[p.status] ?? "Error",
    status: p.status,
    detail: p.detail,
    request_id: p.requestId,
    ...p.members,
  };
  return new Response(JSON.stringify(body), {
    status: p.status,
    headers: {
      "content-type": "application/problem+json",
      ...CORS_HEADERS,
      "x-request-id": p.requestId,
      ...p.headers,
    },
  });
}

/** `res` with CORS headers (unless it has its own) and `X-Request-Id` set. */
export function withCors(res: Response, requestId: string): Response {
  const headers = new Headers(res.headers);
  for (const [name, value] of Object.entries(CORS_HEADERS)) if (!headers.has(name)) headers.set(name, value);
  if (!headers.has("x-request-id")) headers.set("x-request-id", requestId);
  return new Response(res.body, { status: res.status, statusText: res.statusText, headers });
}
