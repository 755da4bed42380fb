/**
 * How a request reaches a function: plain `fetch`, or supabase-js's `functions.invoke`. Both hand back the
 * answer as it came (status, headers, parsed body) and throw `NetworkError` when none came, so that the
 * retry rules (call.ts) are the same for both.
 * @module
 */
import { type Answer, NetworkError } from "./problem.ts";

/** Sends `body` to function `endpoint` with `headers`; resolves with any answer, throws `NetworkError` without one. */
export type Transport = (
  endpoint: string,
  body: unknown,
  headers: Record<string, string>,
  signal?: AbortSignal,
) => Promise<Answer>;

/** Where and as whom `fetchTransport` calls. */
export interface FetchTransportOptions {
  /** The project's URL, e.g. `http://127.0.0.1:54321` or `https://<ref>.supabase.co`. */
  url: string;
  /** The project's publishable key (`sb_publishable_...`), sent as `apikey`. */
  apikey: string;
  /** The signed-in user's access token, sent as `Authorization: Bearer`; none for guests. */
  accessToken?: () => string | null | undefined | Promise<string | null | undefined>;
  /** The fetch to use (default the global one). */
  fetch?: typeof fetch;
}

/** A transport over `fetch`: `POST <url>/functions/v1/<endpoint>` with JSON, the key in `apikey`. */
export function fetchTransport(options: FetchTransportOptions): Transport {
  const base = options.url.replace(/\/+$/, "");
  return async (endpoint, body, headers, signal) => {
    const doFetch = options.fetch ?? globalThis.fetch;
    const token = await options.accessToken?.();
    let res: Response;
    try {
      res = await doFetch(`${base}/functions/v1/${endpoint}`, {
        method: "POST",
        headers: {
          "content-type": "application/json",
          apikey: options.apikey,
          ...(token ? { authorization: `Bearer ${token}` } : {}),
          ...headers,
        },
        body: JSON.stringify(body),
        signal,
      });
    } catch (e) {
      throw new NetworkError(`POST ${endpoint} got no answer`, { cause: e });
    }
    return { status: res.status, headers: res.headers, body: await readBody(res) };
  };
}

/** What `invokeTransport` needs of a supabase-js client: `functions.invoke`. */
export interface FunctionsInvoker {
  functions: {
    invoke(
      name: string,
      options: { body?: Record<string, unknown>; headers?: Record<string, string>; signal?: AbortSignal },
    ): Promise<{ data: unknown; error: unknown; response?: Response }>;
  };
}

/**
 * A transport over supabase-js: `supabase.functions.invoke(endpoint, { body, headers })`, which sends the
 * client's key and the signed-in user's token itself. Its `FunctionsHttpError` and `FunctionsRelayError`
 * are answers (read from their `response`); its `FunctionsFetchError` is a `NetworkError`.
 */
export function invokeTransport(supabase: FunctionsInvoker): Transport {
  return async (endpoint, body, headers, signal) => {
    let result: Awaited<ReturnType<FunctionsInvoker["functions"]["invoke"]>>;
    try {
      result = await supabase.functions.invoke(endpoint, {
        body: body as Record<string, unknown>,
        headers,
        signal,
      });
    } catch (e) {
      throw new NetworkError(`POST ${endpoint} got no answer`, { cause: e });
    }
    const { data, error, response } = result;
    if (!response) throw new NetworkError(`POST ${endpoint} got no answer`, { cause: error });
    if (!error) return { status: response.status, headers: response.headers, body: data };
    return { status: response.status, headers: response.headers, body: await readBody(response) };
  };
}

/** The body as JSON when it is JSON, else as text (an answer whose body is cut off is a lost answer). */
async function readBody(res: Response): Promise<unknown> {
  let text: string;
  try {
    text = await res.text();
  } catch (e) {
    throw new NetworkError("The answer was cut off", { cause: e });
  }
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}
