/**
 * A Stripe API emulator for the official SDK: Stripe's wire format (form-encoded bodies, JSON objects,
 * `{error: {...}}` errors), the one API version the pinned SDK speaks, unknown parameters refused, Stripe's
 * money (balance, fees, settlement delay, refunds, transfers, disputes) and Stripe's idempotency semantics
 * (docs.stripe.com/api/idempotent_requests, docs.stripe.com/error-low-level):
 * - the same `Idempotency-Key` with the same parameters replays the stored response with
 *   `Idempotent-Replayed: true`; other parameters or another endpoint get 400 `idempotency_error`;
 * - a key whose first request is still executing gets 409 `idempotency_key_in_use`;
 * - results are stored once the endpoint starts executing (errors included, 500s too); validation
 *   failures are not stored; the rate limiter answers before the idempotency layer; keys expire after
 *   24 hours (emulator clock).
 *
 * A control API under `/_emulator/` (and the methods of `StripeEmulator`) injects faults, moves the clock
 * and acts as Stripe's dashboard, the cardholder or the bank would (pay, refund, dispute, reverse, fail a
 * refund, pay out), delivering the signed events to the webhook URL, or only recording them.
 * @module
 */
import http from "node:http";
import type { AddressInfo } from "node:net";
import * as C from "./checkout.ts";
import { canonical, decodeForm, type Params } from "./form.ts";
import * as M from "./money.ts";
import * as R from "./resources.ts";
import { serve } from "./routes.ts";

export type { StripeEvent, StripeObject } from "./resources.ts";

/** A fault injected into matching API requests (`times` requests, default 1). */
export interface Fault {
  /** API path prefix to match, e.g. `/v1/refunds`; every API request when omitted. */
  path?: string;
  method?: string;
  /**
   * - `latency`: wait `ms` while the request executes (a same-key request meanwhile gets 409);
   * - `error_before`: 500 before the endpoint executes (nothing done, nothing stored);
   * - `rate_limit`: 429 `rate_limit` from the rate limiter, in front of the idempotency layer (nothing
   *   done, nothing stored: the key stays free; docs.stripe.com/rate-limits, docs.stripe.com/error-low-level);
   * - `error_after`: a 500 after execution began, stored for the key and replayed (with `created`, the
   *   object was created before the failure; docs.stripe.com/api/idempotent_requests: "including 500
   *   errors");
   * - `reset_after`: execute and store, then drop the connection without a response;
   * - `in_flight`: 409 `idempotency_key_in_use`, as if a concurrent request held the key;
   * - `error`: execute as a Stripe error `error` with `status` (stored and replayed, like a decline).
   */
  kind: "latency" | "error_before" | "rate_limit" | "error_after" | "reset_after" | "in_flight" | "error";
  times?: number;
  ms?: number;
  /** `error_after`: whether the endpoint's work (the object, its events) happened before the 500. */
  created?: boolean;
  status?: number;
  error?: { type: string; code?: string; message: string };
}

/**
 * Faults drawn per request, deterministically: a POST gets one of `kinds` with `probability`, drawn from a
 * hash of (`seed`, method, path with object ids blanked, the request's key label, the n-th request with
 * that Idempotency-Key), so that how concurrent requests interleave never changes which fault a request
 * gets (see `chaosFault`).
 */
export interface Chaos {
  seed: number;
  probability: number;
  kinds: Fault["kind"][];
  /** Latency spikes last up to this long. */
  maxLatencyMs?: number;
  /**
   * A name for an Idempotency-Key that stays the same from run to run (the key itself by default). The
   * products' Stripe keys are random, so a test that wants `seed` to repeat a run names each key after
   * what it stands for (e.g. "the 3rd refund").
   */
  label?: (idempotencyKey: string) => string | Promise<string>;
}

/** A request as the chaos picker sees it. */
export interface ChaosRequest {
  method: string;
  path: string;
  /** The Idempotency-Key's label (the key itself, or `Chaos.label`'s name for it), or null. */
  key: string | null;
  /** 1 for the first request with this Idempotency-Key, 2 for the next, ... */
  attempt: number;
}

/** FNV-1a (32 bits) of `parts` joined by newlines: a seed for `mulberry32`. */
export function hashSeed(...parts: (string | number | null)[]): number {
  let h = 0x811c9dc5;
  for (const c of parts.map(String).join("\n")) {
    h ^= c.codePointAt(0)!;
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h >>> 0;
}

/** mulberry32: a small seeded PRNG, numbers in [0, 1). */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * The fault chaos gives `request`, or undefined: a pure function of the chaos settings and the request, so
 * that a seed repeats the faults whatever the interleaving (and a separate process can draw the same).
 * Only POSTs get faults; object ids in the path (`/v1/transfers/tr_.../reversals`) are blanked.
 */
export function chaosFault(chaos: Omit<Chaos, "label">, request: ChaosRequest): Fault | undefined {
  if (request.method !== "POST" || chaos.kinds.length === 0) return undefined;
  const path = request.path.replace(/\/[a-z]+_[A-Za-z0-9_]+/g, "/{id}");
  const random = mulberry32(hashSeed(chaos.seed, request.method, path, request.key, request.attempt));
  if (random() >= chaos.probability) return undefined;
  const kind = chaos.kinds[Math.floor(random() * chaos.kinds.length)];
  const ms = Math.floor(random() * (chaos.maxLatencyMs ?? 300));
  return { kind, ms, ...(kind === "error_after" ? { created: random() < 0.5 } : {}) };
}

/** One API request as the emulator saw it. */
export interface RequestRecord {
  method: string;
  path: string;
  idempotencyKey: string | null;
  status: number;
  replayed: boolean;
  fault: Fault["kind"] | null;
  /** The n-th request with this Idempotency-Key (1 for the first), 0 without a key. */
  attempt: number;
  /** Under chaos, the key's label the fault was drawn for (see `Chaos.label`), else null. */
  label: string | null;
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

/**
 * How a control action treats the events it causes: delivered as `DeliveryOptions` say, or, with
 * `deliver: false`, only recorded (GET /v1/events lists them, with `pending_webhooks: 1`), as when a
 * webhook is missed, so that a product's audit can find the drift.
 */
export interface ActionOptions extends DeliveryOptions {
  deliver?: boolean;
}

/** Where the emulator listens and sends webhooks, and the platform's money. */
export interface EmulatorOptions extends R.MoneyOptions {
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
  #attempts = new Map<string, number>();
  #keys = new Map<string, Entry>();
  #outbox: R.StripeEvent[] = [];
  #server?: http.Server;
  #inflightDeliveries = new Set<Promise<unknown>>();

  constructor(readonly options: EmulatorOptions) {
    this.state = R.createState(
      "",
      () => Math.floor(Date.now() / 1000),
      (e) => {
        e.pending_webhooks = this.options.webhookUrl ? 1 : 0;
        this.#outbox.push(e);
      },
      options,
    );
  }

  /** Starts listening; resolves once the port is bound. */
  async listen(): Promise<this> {
    // a client gone mid-request (a function worker killed while it sent) ends that request, not the emulator
    this.#server = http.createServer((req, res) => void this.#handle(req, res).catch(() => res.destroy()));
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

  /** Injects faults drawn by `chaosFault` into API requests from now on (until `clearFaults`). */
  setChaos(chaos: Chaos): void {
    this.#chaos = chaos;
    this.#server?.closeIdleConnections();
  }

  /**
   * Lets `seconds` pass for everything the emulator holds: every timestamp of its objects and idempotency
   * keys moves back by `seconds`, so charges' funds whose `available_on` passed become available, pending
   * refunds the balance now covers succeed, open sessions whose `expires_at` passed expire, keys older than
   * 24 hours are forgotten. The clock itself stays on real time, like Stripe's and the database's, so new
   * requests (a Checkout Session's `expires_at` computed by the database) are judged as Stripe would.
   */
  async advanceClock(seconds: number, options: ActionOptions = {}): Promise<Delivery[]> {
    return (await this.#act(() => {
      R.age(this.state, seconds);
      for (const entry of this.#keys.values()) entry.createdAt -= seconds;
      M.settle(this.state);
      for (const s of this.state.sessions.values()) {
        if (s.status === "open" && (s.expires_at as number) <= this.state.now()) {
          C.expireCheckoutSession(this.state, s.id);
        }
      }
    }, options)).deliveries;
  }

  /**
   * Pays an open Checkout Session: `checkout.session.completed`, paid by card; with `async`, by a delayed
   * payment method (`payment_status: unpaid` until `finishAsyncPayment`).
   */
  async paySession(
    id: string,
    options: ActionOptions & { async?: boolean } = {},
  ): Promise<{ session: R.StripeObject; event: R.StripeEvent; deliveries: Delivery[] }> {
    const { result, deliveries } = await this.#act(
      () => C.payCheckoutSession(this.state, id, options.async),
      options,
    );
    return { ...result, deliveries };
  }

  /** Settles a session's delayed payment: `checkout.session.async_payment_succeeded` or `..._failed`. */
  async finishAsyncPayment(
    id: string,
    outcome: "succeeded" | "failed",
    options: ActionOptions = {},
  ): Promise<{ session: R.StripeObject; event: R.StripeEvent; deliveries: Delivery[] }> {
    const { result, deliveries } = await this.#act(
      () => C.settleAsyncPayment(this.state, id, outcome),
      options,
    );
    return { ...result, deliveries };
  }

  /** Refunds a payment (a PaymentIntent or charge id) from the dashboard: no metadata, no API request. */
  refundFromDashboard(payment: string, amount?: number, options: ActionOptions = {}) {
    if (!payment) throw R.missing("payment");
    const params: Params = { [payment.startsWith("ch_") ? "charge" : "payment_intent"]: payment };
    if (amount !== undefined) params.amount = String(amount);
    return this.#act(() => M.createRefund(this.state, params), options);
  }

  /** Makes a succeeded or pending refund fail, as a bank would later: `refund.updated`, `refund.failed`. */
  failRefund(id: string, options: ActionOptions & { failureReason?: string } = {}) {
    return this.#act(() => M.failRefund(this.state, id, options.failureReason), options);
  }

  /** Opens a dispute on a charge (or a PaymentIntent's charge): `charge.dispute.created`, `funds_withdrawn`. */
  openDispute(payment: string, options: ActionOptions & { amount?: number; reason?: string } = {}) {
    if (!payment) throw R.missing("payment");
    const charge = payment.startsWith("pi_")
      ? (C.getPaymentIntent(this.state, payment).latest_charge as string | null) ?? payment
      : payment;
    return this.#act(() => M.openDispute(this.state, charge, options), options);
  }

  /** Closes a dispute `won` (funds reinstated) or `lost`: `charge.dispute.closed`. */
  closeDispute(id: string, outcome: "won" | "lost", options: ActionOptions = {}) {
    return this.#act(() => M.closeDispute(this.state, id, outcome), options);
  }

  /** Reverses a transfer from the dashboard (all of what is left, or `amount`): `transfer.reversed`. */
  reverseTransfer(id: string, amount?: number, options: ActionOptions = {}) {
    const params: Params = amount === undefined ? {} : { amount: String(amount) };
    return this.#act(() => M.reverseTransfer(this.state, id, params), options);
  }

  /** Pays a connected account's available balance out to its bank; returns what was paid per currency. */
  async payOut(account: string): Promise<Record<string, number>> {
    return (await this.#act(() => M.payOut(this.state, account), { deliver: false })).result;
  }

  /** A connected account's balance per currency (`available`, `pending`). */
  accountBalance(account: string): R.Answer {
    M.settle(this.state);
    return M.accountBalance(this.state, account);
  }

  /**
   * Sends the thin form of a recorded event to the webhook, signed: `object: "v2.core.event"`, type
   * `v1.<type>`, `related_object` and `snapshot_event` (docs.stripe.com/changelog/endive/2026-09-30/
   * thin-events-for-api-v1-resources-generally-available; `V2/Core/Events.d.ts`), as Stripe sends to event
   * destinations configured with thin payloads. `constructEvent` refuses such a payload.
   */
  sendThinEvent(eventId: string, options: DeliveryOptions = {}): Promise<Delivery[]> {
    const e = this.state.events.get(eventId);
    if (!e) throw R.noSuch("event", eventId);
    const o = e.data.object;
    const thin = {
      id: R.newId("evt"),
      object: "v2.core.event",
      type: `v1.${e.type}`,
      created: new Date(e.created * 1000).toISOString(),
      livemode: false,
      related_object: { id: o.id, type: o.object, url: objectUrl(o) },
      snapshot_event: e.id,
      ...(e.request && (e.request as { id: string | null }).id
        ? { reason: { type: "request", request: e.request } }
        : {}),
    };
    return this.deliver([thin as unknown as R.StripeEvent], options);
  }

  /** The events emitted and not delivered yet (with `autoDeliver: false`, or held), oldest first. */
  takeEvents(): R.StripeEvent[] {
    return this.#outbox.splice(0);
  }

  /** Signs and posts `events` to the webhook URL as configured by `options`. */
  async deliver(events: R.StripeEvent[], options: DeliveryOptions = {}): Promise<Delivery[]> {
    const url = this.options.webhookUrl;
    if (options.hold) {
      this.#outbox.push(...events);
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
      const recorded = this.state.events.get(e.id);
      if (recorded && delivery.status >= 200 && delivery.status < 300) recorded.pending_webhooks = 0;
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
      charges: s.charges.size,
      refunds: s.refunds.size,
      transfers: s.transfers.size,
      disputes: s.disputes.size,
      balance_transactions: s.balanceTransactions.size,
      events: s.events.size,
    };
  }

  /**
   * Runs a control action (no API request: events carry `request: {id: null}`) and hands its events, and
   * those of refunds it made payable, to delivery, or only records them (`deliver: false`).
   */
  async #act<T>(
    action: () => T,
    options: ActionOptions,
  ): Promise<{ result: T; events: R.StripeEvent[]; deliveries: Delivery[] }> {
    M.settle(this.state);
    const from = this.#outbox.length;
    const result = action();
    M.settle(this.state);
    const events = this.#outbox.splice(from);
    const deliveries = options.deliver === false ? [] : await this.deliver(events, options);
    return { result, events, deliveries };
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
    // Under chaos, one request per connection: a client's transport resends a request that lost its
    // connection when the connection was a reused one, and whether it was depends on timing; a request
    // resent so would be an attempt more, and the seed would not repeat the run.
    if (this.#chaos) res.shouldKeepAlive = false;
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
    let attempt = 0;
    if (idemKey !== null) {
      attempt = (this.#attempts.get(idemKey) ?? 0) + 1;
      this.#attempts.set(idemKey, attempt);
    }
    const record: RequestRecord = {
      method,
      path,
      idempotencyKey: idemKey,
      status: 0,
      replayed: false,
      fault: null,
      attempt,
      label: null,
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
    const error = (status: number, e: R.StripeError["body"]) => out(status, { error: e });

    const apiKey = apiKeyOf(headers.authorization);
    if (!apiKey) {
      return error(401, { type: "invalid_request_error", message: "You did not provide an API key." });
    }
    if (!/^(sk|rk)_test_/.test(apiKey)) {
      return error(401, {
        type: "invalid_request_error",
        message: `Invalid API Key provided: ${apiKey.slice(0, 8)}****`,
      });
    }
    // Stripe answers a version it does not know with "Invalid Stripe API version: <version>" (400,
    // docs.stripe.com/api/versioning); the emulator speaks only the pinned SDK's version, so it refuses
    // every other one the same way (real Stripe would answer a valid older version in that version's shape).
    const version = headers["stripe-version"] as string | undefined;
    if (version !== undefined && version !== R.API_VERSION) {
      return error(400, { type: "invalid_request_error", message: `Invalid Stripe API version: ${version}` });
    }

    const fault = await this.#takeFault(record);
    record.fault = fault?.kind ?? null;
    // Faults in front of the API (a 500 from a load balancer, the rate limiter, a delay) come first; a reset
    // drops the connection after the answer was decided, whether it was executed or replayed.
    if (fault?.kind === "error_before") {
      return error(500, {
        type: "api_error",
        message: "An unknown error occurred (emulator fault error_before)",
      });
    }
    if (fault?.kind === "rate_limit") {
      return error(429, {
        type: "invalid_request_error",
        code: "rate_limit",
        message:
          "Request rate limit exceeded. Learn more about rate limits here https://stripe.com/docs/rate-limits.",
      });
    }
    const reply = await this.#idempotent(method, url, body, apiKey, idemKey, fault, requestId, record, out);
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
    requestId: string,
    record: RequestRecord,
    out: (status: number, payload: unknown, extra?: Record<string, string>) => Reply,
  ): Promise<Reply> {
    const path = url.pathname;
    const params = decodeForm(method === "GET" ? url.search.slice(1) : body);
    const endpoint = `${method} ${path}`;
    const storeKey = idemKey && method === "POST" ? `${apiKey}\n${idemKey}` : null;
    const pause = () =>
      fault?.kind === "latency" ? new Promise((r) => setTimeout(r, fault.ms ?? 1000)) : null;
    // A 5xx saved for a key is answered with `Stripe-Should-Retry: false`: a retry would replay it.
    const retryHeader = (status: number): Record<string, string> =>
      status >= 500 ? { "stripe-should-retry": "false" } : {};

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
          ...retryHeader(live.done.status),
        });
      }
      if (fault?.kind === "in_flight") return out(409, keyInUse());
      this.#keys.set(storeKey, { endpoint, fingerprint: canonical(params), createdAt: this.state.now() });
    } else if (fault?.kind === "in_flight") {
      return out(409, keyInUse());
    }

    await pause(); // while the key is held: a same-key request meanwhile gets 409
    M.settle(this.state);
    let status = 200;
    let payload: unknown;
    let stored = true;
    this.state.request = { id: requestId, idempotency_key: idemKey };
    try {
      if (fault?.kind === "error") {
        throw new R.StripeError(
          fault.status ?? 400,
          fault.error ?? { type: "invalid_request_error", message: "Injected error" },
        );
      }
      if (fault?.kind !== "error_after" || fault.created) payload = serve(this.state, method, path, params);
      if (fault?.kind === "error_after") {
        throw new R.StripeError(500, {
          type: "api_error",
          message: `An unknown error occurred (emulator fault error_after, ${
            fault.created ? "" : "not "
          }executed)`,
        });
      }
    } catch (e) {
      if (!(e instanceof R.StripeError)) throw e;
      status = e.status;
      payload = { error: e.body };
      stored = e.stored;
    } finally {
      this.state.request = null;
    }
    const reply = out(status, payload, retryHeader(status));
    if (storeKey) {
      if (stored) this.#keys.get(storeKey)!.done = { status, body: reply.body, requestId };
      else this.#keys.delete(storeKey);
    }
    if (this.options.autoDeliver ?? true) this.#track(this.deliver(this.takeEvents()));
    return reply;
  }

  async #control(method: string, path: string, body: string): Promise<Reply> {
    const json = (status: number, payload: unknown): Reply => ({
      status,
      body: JSON.stringify(payload, null, 2),
    });
    const input = parseJson(body);
    const options: ActionOptions = {
      ...input.delivery,
      ...(input.deliver === false ? { deliver: false } : {}),
    };
    const at = (pattern: RegExp) => path.match(pattern)?.[1];
    let id: string | undefined;
    try {
      if (path === "/_emulator/faults" && method === "POST") {
        this.addFault(input as unknown as Fault);
        return json(201, { faults: this.#faults.length });
      }
      if (path === "/_emulator/faults" && method === "DELETE") {
        this.clearFaults();
        return json(200, { faults: 0 });
      }
      if (path === "/_emulator/chaos" && method === "POST") {
        const chaos: Chaos = {
          seed: Number(input.seed ?? 0),
          probability: Number(input.probability ?? 0.5),
          kinds: input.kinds ?? ["reset_after", "error_before", "in_flight", "latency"],
          ...(input.max_latency_ms !== undefined ? { maxLatencyMs: Number(input.max_latency_ms) } : {}),
        };
        this.setChaos(chaos);
        return json(200, chaos);
      }
      if (path === "/_emulator/chaos" && method === "DELETE") {
        this.clearFaults();
        return json(200, { chaos: null });
      }
      if (path === "/_emulator/options" && method === "POST") {
        if (input.funds_delay_seconds !== undefined) {
          this.options.fundsDelaySeconds = Number(input.funds_delay_seconds);
        }
        if (input.initial_balance !== undefined) this.options.initialBalance = input.initial_balance;
        return json(200, {
          funds_delay_seconds: this.options.fundsDelaySeconds,
          initial_balance: this.options.initialBalance,
        });
      }
      if (path === "/_emulator/clock" && method === "POST") {
        const deliveries = await this.advanceClock(Number(input.advance_seconds ?? 0), options);
        return json(200, { now: this.state.now(), deliveries });
      }
      if (method === "POST" && (id = at(/^\/_emulator\/checkout\/sessions\/([^/]+)\/pay$/))) {
        return json(200, await this.paySession(id, { ...options, async: input.async === true }));
      }
      if (method === "POST" && (id = at(/^\/_emulator\/checkout\/sessions\/([^/]+)\/async_payment$/))) {
        return json(200, await this.finishAsyncPayment(id, input.outcome, options));
      }
      if ((id = at(/^\/_emulator\/checkout\/([^/]+)$/))) return await this.#checkoutPage(method, id);
      if (method === "POST" && path === "/_emulator/refunds") {
        return json(200, await this.refundFromDashboard(input.payment, input.amount, options));
      }
      if (method === "POST" && (id = at(/^\/_emulator\/refunds\/([^/]+)\/fail$/))) {
        return json(200, await this.failRefund(id, { ...options, failureReason: input.failure_reason }));
      }
      if (method === "POST" && path === "/_emulator/disputes") {
        return json(
          200,
          await this.openDispute(input.payment, { ...options, amount: input.amount, reason: input.reason }),
        );
      }
      if (method === "POST" && (id = at(/^\/_emulator\/disputes\/([^/]+)\/close$/))) {
        return json(200, await this.closeDispute(id, input.outcome, options));
      }
      if (method === "POST" && (id = at(/^\/_emulator\/transfers\/([^/]+)\/reversals$/))) {
        return json(200, await this.reverseTransfer(id, input.amount, options));
      }
      if (method === "POST" && (id = at(/^\/_emulator\/accounts\/([^/]+)\/payouts$/))) {
        return json(200, { paid: await this.payOut(id) });
      }
      if (method === "GET" && (id = at(/^\/_emulator\/accounts\/([^/]+)\/balance$/))) {
        return json(200, this.accountBalance(id));
      }
      if (method === "POST" && (id = at(/^\/_emulator\/events\/([^/]+)\/thin$/))) {
        return json(200, { deliveries: await this.sendThinEvent(id, input.delivery) });
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

  /**
   * The hosted Checkout page of a session (`url`): GET shows it; its Pay button (POST) pays the session and
   * redirects (303) to `success_url` with `{CHECKOUT_SESSION_ID}` replaced by the session's id
   * (docs.stripe.com/payments/checkout/custom-success-page).
   */
  async #checkoutPage(method: string, id: string): Promise<Reply> {
    const html = (status: number, content: string): Reply => ({
      status,
      headers: { "content-type": "text/html; charset=utf-8" },
      body: `<!doctype html><html lang="en"><title>Checkout ${id}</title><link rel="icon" href="data:,">` +
        `<h1>Emulated Checkout</h1>${content}`,
    });
    const session = C.getCheckoutSession(this.state, id);
    if (method === "POST") {
      if (session.status !== "open") return html(400, `<p>This session is ${session.status}.</p>`);
      await this.paySession(id);
      const success = session.success_url as string | null;
      if (!success) return html(200, "<p>Paid.</p>");
      return {
        status: 303,
        headers: { location: success.replaceAll("{CHECKOUT_SESSION_ID}", id) },
        body: "",
      };
    }
    return html(
      200,
      `<p>${session.amount_total} ${session.currency} &middot; ${session.status}</p>
<form method="post" action="/_emulator/checkout/${id}"><button>Pay</button></form>`,
    );
  }

  async #takeFault(record: RequestRecord): Promise<Fault | undefined> {
    const { method, path } = record;
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
    const key = record.idempotencyKey;
    record.label = key !== null && chaos.label ? await chaos.label(key) : key;
    return chaosFault(chaos, { method, path, key: record.label, attempt: record.attempt });
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

/** The API path of an object, for a thin event's `related_object.url`. */
function objectUrl(o: R.StripeObject): string {
  const collection: Record<string, string> = {
    "checkout.session": "checkout/sessions",
    payment_intent: "payment_intents",
    charge: "charges",
    refund: "refunds",
    transfer: "transfers",
    dispute: "disputes",
  };
  return `/v1/${collection[o.object] ?? o.object}/${o.id}`;
}

function apiKeyOf(authorization: string | undefined): string | null {
  if (!authorization) return null;
  const [scheme, value] = authorization.split(/\s+/, 2);
  if (/^bearer$/i.test(scheme)) return value ?? null;
  if (/^basic$/i.test(scheme)) return atob(value ?? "").split(":")[0] || null;
  return null;
}

// deno-lint-ignore no-explicit-any
function parseJson(body: string): Record<string, any> {
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
