/**
 * A Stripe API emulator for the official SDK: Stripe's wire format (form-encoded bodies, JSON objects,
 * `{error: {...}}` errors) and Stripe's idempotency semantics:
 * - the same `Idempotency-Key` with the same parameters replays the stored response with
 *   `Idempotent-Replayed: true`; other parameters or another endpoint get 400 `idempotency_error`;
 * - a key whose first request is still executing gets 409 `idempotency_key_in_use`;
 * - results are stored once the endpoint starts executing (errors included); validation failures are
 *   not stored; keys expire after 24 hours (emulator clock).
 *
 * A control API under `/_emulator/` injects faults, moves the clock and marks sessions paid, which
 * delivers signed events to the webhook URL.
 * @module
 */
import http from "node:http";
import type { AddressInfo } from "node:net";
import { canonical, decodeForm, type Params } from "./form.ts";
import * as R from "./resources.ts";

export type { StripeEvent, StripeObject } from "./resources.ts";

/** A fault injected into matching API requests (`times` requests, default 1). */
export interface Fault {
  /** API path prefix to match, e.g. `/v1/refunds`; every API request when omitted. */
  path?: string;
  method?: string;
  /**
   * - `latency`: wait `ms` while the request executes (a same-key request meanwhile gets 409);
   * - `error_before`: 500 before the endpoint executes (nothing done, nothing stored);
   * - `reset_after`: execute and store, then drop the connection without a response;
   * - `in_flight`: 409 `idempotency_key_in_use`, as if a concurrent request held the key;
   * - `error`: execute as a Stripe error `error` with `status` (stored and replayed, like a decline).
   */
  kind: "latency" | "error_before" | "reset_after" | "in_flight" | "error";
  times?: number;
  ms?: number;
  status?: number;
  error?: { type: string; code?: string; message: string };
}

/** Random faults: each API request gets one of `kinds` with `probability` (drawn from `random`). */
export interface Chaos {
  probability: number;
  kinds: Fault["kind"][];
  /** Latency spikes last up to this long. */
  maxLatencyMs?: number;
  random?: () => number;
}

/** One API request as the emulator saw it. */
export interface RequestRecord {
  method: string;
  path: string;
  idempotencyKey: string | null;
  status: number;
  replayed: boolean;
  fault: Fault["kind"] | null;
}

/** One attempt to deliver an event to the webhook. */
export interface Delivery {
  eventId: string;
  type: string;
  status: number;
  body: string;
}

/** How to deliver events: several times, all at once, in reverse order, or not now (`hold`). */
export interface DeliveryOptions {
  times?: number;
  concurrently?: boolean;
  reverse?: boolean;
  /** Keep the events for `takeEvents()`: deliver them later, in any order, with `deliver()`. */
  hold?: boolean;
}

/** Where the emulator listens and sends webhooks. */
export interface EmulatorOptions {
  hostname?: string;
  port?: number;
  /** The `stripe-webhook` URL; events are only recorded when absent. */
  webhookUrl?: string;
  webhookSecret: string;
  /** Deliver the events that API calls cause (refunds, transfers) as they happen. Default true. */
  autoDeliver?: boolean;
}

/** An answer to send, or (reset) a connection to drop. */
interface Reply {
  status: number;
  body: string;
  headers?: Record<string, string>;
  reset?: boolean;
}

interface Entry {
  endpoint: string;
  fingerprint: string;
  createdAt: number;
  done?: { status: number; body: string; requestId: string };
}

const DAY = 86_400;

/** A running emulator; its state is public for tests that count objects and requests. */
export class StripeEmulator {
  readonly state: R.State;
  readonly requests: RequestRecord[] = [];
  readonly deliveries: Delivery[] = [];
  url = "";
  #faults: (Fault & { left: number })[] = [];
  #chaos: Chaos | null = null;
  #keys = new Map<string, Entry>();
  #outbox: R.StripeEvent[] = [];
  #offset = 0;
  #server?: http.Server;
  #inflightDeliveries = new Set<Promise<unknown>>();

  constructor(readonly options: EmulatorOptions) {
    this.state = R.createState(
      "",
      () => Math.floor(Date.now() / 1000) + this.#offset,
      (e) => this.#outbox.push(e),
    );
  }

  /** Starts listening; resolves once the port is bound. */
  async listen(): Promise<this> {
    this.#server = http.createServer((req, res) => void this.#handle(req, res));
    await new Promise<void>((resolve) =>
      this.#server!.listen(this.options.port ?? 0, this.options.hostname ?? "127.0.0.1", resolve)
    );
    const { address, port } = this.#server.address() as AddressInfo;
    this.url = `http://${address}:${port}`;
    this.state.baseUrl = this.url;
    return this;
  }

  /** Stops listening and waits for deliveries in flight. */
  async close(): Promise<void> {
    await Promise.allSettled([...this.#inflightDeliveries]);
    this.#server?.closeAllConnections();
    await new Promise((resolve) => this.#server?.close(resolve));
  }

  /** Adds a fault for the next `times` matching requests. */
  addFault(fault: Fault): void {
    this.#faults.push({ ...fault, left: fault.times ?? 1 });
  }

  /** Removes every fault still pending, and stops chaos. */
  clearFaults(): void {
    this.#faults = [];
    this.#chaos = null;
  }

  /** Injects random faults into API requests from now on (until `clearFaults`). */
  setChaos(chaos: Chaos): void {
    this.#chaos = chaos;
  }

  /** Moves the emulator's clock; open sessions whose `expires_at` passed expire (and emit events). */
  async advanceClock(seconds: number, delivery: DeliveryOptions = {}): Promise<Delivery[]> {
    this.#offset += seconds;
    for (const s of this.state.sessions.values()) {
      if (s.status === "open" && (s.expires_at as number) <= this.state.now()) {
        R.expireCheckoutSession(this.state, s.id);
      }
    }
    return await this.deliver(this.#drain(), delivery);
  }

  /** Marks an open Checkout Session paid and delivers `checkout.session.completed`. */
  async paySession(
    id: string,
    delivery: DeliveryOptions = {},
  ): Promise<{ session: R.StripeObject; event: R.StripeEvent; deliveries: Delivery[] }> {
    const { session, event } = R.payCheckoutSession(this.state, id);
    return { session, event, deliveries: await this.deliver(this.#drain(), delivery) };
  }

  /** Sets a refund's status as Stripe would later (e.g. a bank refusing it); emits `refund.updated`. */
  async updateRefund(
    id: string,
    status: "succeeded" | "pending" | "failed" | "canceled",
    delivery: DeliveryOptions = {},
  ): Promise<Delivery[]> {
    R.updateRefundStatus(this.state, id, status);
    return await this.deliver(this.#drain(), delivery);
  }

  /** The events emitted and not delivered yet (with `autoDeliver: false`, or held), oldest first. */
  takeEvents(): R.StripeEvent[] {
    return this.#drain();
  }

  /** Signs and posts `events` to the webhook URL as configured by `options`. */
  async deliver(events: R.StripeEvent[], options: DeliveryOptions = {}): Promise<Delivery[]> {
    const url = this.options.webhookUrl;
    if (options.hold) {
      this.#outbox.unshift(...events);
      return [];
    }
    if (!url || events.length === 0) return [];
    const ordered = options.reverse ? [...events].reverse() : events;
    const attempts = ordered.flatMap((e) => Array.from({ length: options.times ?? 1 }, () => e));
    const send = async (e: R.StripeEvent): Promise<Delivery> => {
      const payload = JSON.stringify(e, null, 2);
      let delivery: Delivery;
      try {
        const res = await fetch(url, {
          method: "POST",
          headers: { "content-type": "application/json", "stripe-signature": await this.signature(payload) },
          body: payload,
        });
        delivery = { eventId: e.id, type: e.type, status: res.status, body: await res.text() };
      } catch (err) {
        delivery = { eventId: e.id, type: e.type, status: 0, body: String(err) };
      }
      this.deliveries.push(delivery);
      return delivery;
    };
    if (options.concurrently) return await Promise.all(attempts.map(send));
    const results: Delivery[] = [];
    for (const e of attempts) results.push(await send(e));
    return results;
  }

  /** The `Stripe-Signature` header for `payload`, signed now with the webhook secret. */
  async signature(payload: string, timestamp = this.state.now()): Promise<string> {
    const key = await crypto.subtle.importKey(
      "raw",
      new TextEncoder().encode(this.options.webhookSecret),
      { name: "HMAC", hash: "SHA-256" },
      false,
      ["sign"],
    );
    const mac = await crypto.subtle.sign("HMAC", key, new TextEncoder().encode(`${timestamp}.${payload}`));
    const hex = [...new Uint8Array(mac)].map((b) => b.toString(16).padStart(2, "0")).join("");
    return `t=${timestamp},v1=${hex}`;
  }

  /** Counts of the objects the emulator holds. */
  counts(): Record<string, number> {
    const s = this.state;
    return {
      checkout_sessions: s.sessions.size,
      payment_intents: s.paymentIntents.size,
      refunds: s.refunds.size,
      transfers: s.transfers.size,
      events: s.events.size,
    };
  }

  #drain(): R.StripeEvent[] {
    return this.#outbox.splice(0);
  }

  async #handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const chunks: Uint8Array[] = [];
    for await (const chunk of req) chunks.push(chunk as Uint8Array);
    const body = new TextDecoder().decode(concat(chunks));
    const url = new URL(req.url ?? "/", "http://emulator");
    const method = req.method ?? "GET";
    let reply: Reply;
    try {
      reply = url.pathname.startsWith("/_emulator/")
        ? await this.#control(method, url.pathname, body)
        : await this.#api(method, url, body, req.headers);
    } catch (e) {
      reply = { status: 500, body: JSON.stringify({ error: { type: "api_error", message: String(e) } }) };
    }
    if (reply.reset) {
      req.socket.destroy();
      return;
    }
    res.writeHead(reply.status, { "content-type": "application/json", ...reply.headers });
    res.end(reply.body);
  }

  async #api(
    method: string,
    url: URL,
    body: string,
    headers: http.IncomingHttpHeaders,
  ): Promise<Reply> {
    const path = url.pathname;
    const requestId = R.newId("req");
    const idemKey = (headers["idempotency-key"] as string | undefined) ?? null;
    const record: RequestRecord = {
      method,
      path,
      idempotencyKey: idemKey,
      status: 0,
      replayed: false,
      fault: null,
    };
    this.requests.push(record);
    const out = (status: number, payload: unknown, extra: Record<string, string> = {}): Reply => {
      record.status = status;
      return {
        status,
        body: typeof payload === "string" ? payload : JSON.stringify(payload, null, 2),
        headers: { "request-id": requestId, "stripe-version": R.API_VERSION, ...extra },
      };
    };

    const apiKey = apiKeyOf(headers.authorization);
    if (!apiKey) {
      return out(401, {
        error: { type: "invalid_request_error", message: "You did not provide an API key." },
      });
    }
    if (!/^(sk|rk)_test_/.test(apiKey)) {
      return out(401, {
        error: {
          type: "invalid_request_error",
          message: `Invalid API Key provided: ${apiKey.slice(0, 8)}****`,
        },
      });
    }

    const fault = this.#takeFault(method, path);
    record.fault = fault?.kind ?? null;
    // Faults in front of the API (a 500 from a load balancer, a delay) come first; a reset drops the
    // connection after the answer was decided, whether it was executed or replayed.
    if (fault?.kind === "error_before") {
      return out(500, {
        error: { type: "api_error", message: "An unknown error occurred (emulator fault)" },
      });
    }
    const reply = await this.#idempotent(method, url, body, apiKey, idemKey, fault, record, requestId, out);
    if (fault?.kind === "reset_after") reply.reset = true;
    return reply;
  }

  async #idempotent(
    method: string,
    url: URL,
    body: string,
    apiKey: string,
    idemKey: string | null,
    fault: Fault | undefined,
    record: RequestRecord,
    requestId: string,
    out: (status: number, payload: unknown, extra?: Record<string, string>) => Reply,
  ): Promise<Reply> {
    const path = url.pathname;
    const params = decodeForm(method === "GET" ? url.search.slice(1) : body);
    const endpoint = `${method} ${path}`;
    const storeKey = idemKey && method === "POST" ? `${apiKey}\n${idemKey}` : null;
    const pause = () =>
      fault?.kind === "latency" ? new Promise((r) => setTimeout(r, fault.ms ?? 1000)) : null;

    if (storeKey) {
      const entry = this.#keys.get(storeKey);
      if (entry && entry.createdAt + DAY <= this.state.now()) this.#keys.delete(storeKey);
      const live = this.#keys.get(storeKey);
      if (live) {
        if (live.endpoint !== endpoint) {
          return out(
            400,
            idempotencyError(
              `Keys for idempotent requests can only be used for the same endpoint they were first used for ('${live.endpoint}' vs '${endpoint}'). Try using a key other than '${idemKey}' if you meant to execute a different request.`,
            ),
          );
        }
        if (live.fingerprint !== canonical(params)) {
          return out(
            400,
            idempotencyError(
              `Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '${idemKey}' if you meant to execute a different request.`,
            ),
          );
        }
        if (!live.done) return out(409, keyInUse());
        await pause();
        record.replayed = true;
        return out(live.done.status, live.done.body, {
          "idempotent-replayed": "true",
          "original-request": live.done.requestId,
          ...(live.done.status >= 500 ? { "stripe-should-retry": "false" } : {}),
        });
      }
      if (fault?.kind === "in_flight") return out(409, keyInUse());
      this.#keys.set(storeKey, { endpoint, fingerprint: canonical(params), createdAt: this.state.now() });
    } else if (fault?.kind === "in_flight") {
      return out(409, keyInUse());
    }

    await pause(); // while the key is held: a same-key request meanwhile gets 409
    let status = 200;
    let payload: unknown;
    let stored = true;
    try {
      if (fault?.kind === "error") {
        throw new R.StripeError(
          fault.status ?? 400,
          fault.error ?? { type: "invalid_request_error", message: "Injected error" },
        );
      }
      payload = this.#route(method, path, params);
    } catch (e) {
      if (!(e instanceof R.StripeError)) throw e;
      status = e.status;
      payload = { error: e.body };
      stored = e.stored;
    }
    const reply = out(status, payload);
    if (storeKey) {
      if (stored) this.#keys.get(storeKey)!.done = { status, body: reply.body, requestId };
      else this.#keys.delete(storeKey);
    }
    if (this.options.autoDeliver ?? true) this.#track(this.deliver(this.#drain()));
    return reply;
  }

  #route(method: string, path: string, p: Params): R.StripeObject {
    const s = this.state;
    const seg = path.split("/").filter(Boolean); // ["v1", ...]
    const at = (pattern: string) => {
      const parts = pattern.split("/").filter(Boolean);
      if (parts.length !== seg.length) return null;
      const ids: string[] = [];
      for (let i = 0; i < parts.length; i++) {
        if (parts[i] === ":id") ids.push(seg[i]);
        else if (parts[i] !== seg[i]) return null;
      }
      return ids;
    };
    let ids: string[] | null;
    if (method === "POST") {
      if (at("/v1/checkout/sessions")) return R.createCheckoutSession(s, p);
      if ((ids = at("/v1/checkout/sessions/:id/expire"))) return R.expireCheckoutSession(s, ids[0]);
      if (at("/v1/payment_intents")) return R.createPaymentIntent(s, p);
      if (at("/v1/refunds")) return R.createRefund(s, p);
      if (at("/v1/transfers")) return R.createTransfer(s, p);
      if ((ids = at("/v1/transfers/:id/reversals"))) return R.reverseTransfer(s, ids[0], p);
    }
    if (method === "GET") {
      // Lists with the filters a product looks its objects up by (docs.stripe.com/api/pagination).
      if (at("/v1/checkout/sessions")) {
        return R.list(s.sessions, path, p, ["created", "payment_intent", "status"]);
      }
      if (at("/v1/refunds")) return R.list(s.refunds, path, p, ["created", "payment_intent", "charge"]);
      if (at("/v1/transfers")) {
        return R.list(s.transfers, path, p, ["created", "transfer_group", "destination"]);
      }
      if ((ids = at("/v1/checkout/sessions/:id"))) return R.getCheckoutSession(s, ids[0]);
      if ((ids = at("/v1/payment_intents/:id"))) return R.getPaymentIntent(s, ids[0]);
      if ((ids = at("/v1/refunds/:id"))) return R.getRefund(s, ids[0]);
      if ((ids = at("/v1/transfers/:id"))) return R.getTransfer(s, ids[0]);
      if ((ids = at("/v1/events/:id"))) {
        const e = s.events.get(ids[0]);
        if (e) return e;
      }
    }
    throw new R.StripeError(404, {
      type: "invalid_request_error",
      message: `Unrecognized request URL (${method}: ${path}).`,
    }, false);
  }

  async #control(
    method: string,
    path: string,
    body: string,
  ): Promise<{ status: number; body: string; headers?: Record<string, string> }> {
    const json = (status: number, payload: unknown) => ({ status, body: JSON.stringify(payload, null, 2) });
    const input = parseJson(body);
    let m: RegExpMatchArray | null;
    try {
      if (method === "POST" && path === "/_emulator/faults") {
        this.addFault(input as unknown as Fault);
        return json(201, { faults: this.#faults.length });
      }
      if (method === "DELETE" && path === "/_emulator/faults") {
        this.clearFaults();
        return json(200, { faults: 0 });
      }
      if (method === "POST" && path === "/_emulator/clock") {
        const deliveries = await this.advanceClock(Number(input.advance_seconds ?? 0), input.delivery);
        return json(200, { now: this.state.now(), deliveries });
      }
      if (method === "POST" && (m = path.match(/^\/_emulator\/checkout\/sessions\/([^/]+)\/pay$/))) {
        return json(200, await this.paySession(m[1], input.delivery));
      }
      if (method === "GET" && (m = path.match(/^\/_emulator\/checkout\/([^/]+)$/))) {
        const session = R.getCheckoutSession(this.state, m[1]);
        return {
          status: 200,
          headers: { "content-type": "text/html; charset=utf-8" },
          body: `<!doctype html><title>Checkout ${session.id}</title><h1>Emulated Checkout</h1>
<p>${session.amount_total} ${session.currency} &middot; ${session.status}</p>
<form method="post" action="/_emulator/checkout/sessions/${session.id}/pay"><button>Pay</button></form>`,
        };
      }
      if (method === "GET" && path === "/_emulator/requests") return json(200, this.requests);
      if (method === "GET" && path === "/_emulator/counts") return json(200, this.counts());
    } catch (e) {
      if (e instanceof R.StripeError) return json(e.status, { error: e.body });
      throw e;
    }
    return json(404, {
      error: { type: "invalid_request_error", message: `Unknown control route ${method} ${path}` },
    });
  }

  #takeFault(method: string, path: string): Fault | undefined {
    const fault = this.#faults.find((f) =>
      f.left > 0 && (!f.method || f.method === method) && (!f.path || path.startsWith(f.path))
    );
    if (fault) {
      fault.left--;
      this.#faults = this.#faults.filter((f) => f.left > 0);
      return fault;
    }
    const chaos = this.#chaos;
    if (!chaos || method !== "POST") return undefined;
    const random = chaos.random ?? Math.random;
    if (random() >= chaos.probability) return undefined;
    const kind = chaos.kinds[Math.floor(random() * chaos.kinds.length)];
    return { kind, ms: Math.floor(random() * (chaos.maxLatencyMs ?? 300)) };
  }

  #track(p: Promise<unknown>): void {
    this.#inflightDeliveries.add(p);
    p.finally(() => this.#inflightDeliveries.delete(p));
  }
}

/** Starts an emulator and returns it once it listens. */
export function startStripeEmulator(options: EmulatorOptions): Promise<StripeEmulator> {
  return new StripeEmulator(options).listen();
}

function apiKeyOf(authorization: string | undefined): string | null {
  if (!authorization) return null;
  const [scheme, value] = authorization.split(/\s+/, 2);
  if (/^bearer$/i.test(scheme)) return value ?? null;
  if (/^basic$/i.test(scheme)) return atob(value ?? "").split(":")[0] || null;
  return null;
}

function parseJson(body: string): Record<string, never> {
  try {
    const value = JSON.parse(body);
    return value && typeof value === "object" ? value : {};
  } catch {
    return {}; // an HTML form post, or nothing
  }
}

function idempotencyError(message: string) {
  return { error: { type: "idempotency_error", message } };
}

function keyInUse() {
  return {
    error: {
      type: "invalid_request_error",
      code: "idempotency_key_in_use",
      message:
        "There is currently another in-progress request using this Idempotency-Key. Please try again later.",
    },
  };
}

function concat(chunks: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}
