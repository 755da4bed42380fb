/**
 * The ticket drop: `buyers` signed-in buyers, one ticket each, for `seats` seats at `concurrency` in flight,
 * through enhanced-checkout end to end. Once on one tier (every buyer after the same seat counter), once
 * with the same load and the same seats spread over 20 tiers (the contention ratio compares the two).
 * Exactly `seats` orders must be taken and every other buyer answered a clean 409 sold-out, or the
 * benchmark fails.
 * @module
 */
import type postgres from "npm:postgres@3.4.9";
import { log, measure, type Run } from "./lib.ts";

const ORGANISER = "11111111-1111-4111-8111-111111111111";

/** What the drop needs from the benchmark's setup. */
export interface DropContext {
  url: string;
  direct: postgres.Sql;
  tokens: string[];
}

/** One drop's figures. */
export interface DropRun extends Omit<Run, "latencies"> {
  tiers: number;
  sold: number;
  soldOut: number;
}

/** Makes `count` buyers (auth.users rows) and returns their ids. */
export async function makeBuyers(direct: postgres.Sql, count: number): Promise<string[]> {
  const rows = await direct`
    insert into auth.users (id, email)
    select gen_random_uuid(), 'drop-' || i || '-' || md5(random()::text) || '@example.com' from generate_series(1, ${count}) i
    returning id`;
  return rows.map((r) => r.id as string);
}

/** A new event on sale with `tiers` tiers sharing `seats` seats; its tier ids. */
async function newEvent(direct: postgres.Sql, tiers: number, seats: number): Promise<[string, string[]]> {
  const [{ id }] = await direct`
    insert into events.events (organiser_id, title, currency, starts_at, on_sale)
    values (${ORGANISER}, 'Drop', 'usd', now() + interval '30 days', true) returning id`;
  const rows = await direct`
    insert into events.ticket_tiers (event_id, name, price_cents, capacity, max_per_order)
    select ${id}, 'Tier ' || i, 2500, ${seats / tiers}, 4 from generate_series(1, ${tiers}) i
    returning id`;
  return [id as string, rows.map((r) => r.id as string)];
}

/** Runs one drop; throws unless exactly `seats` were taken and everyone else got 409 sold-out. */
export async function drop(
  ctx: DropContext,
  tiers: number,
  seats: number,
  concurrency: number,
): Promise<DropRun> {
  const buyers = ctx.tokens.length;
  const [eventId, tierIds] = await newEvent(ctx.direct, tiers, seats);
  const run = crypto.randomUUID().slice(0, 8);
  const statuses = new Map<string, number>();
  const m = await measure(buyers, concurrency, async (i) => {
    const res = await fetch(`${ctx.url}/functions/v1/enhanced-checkout`, {
      method: "POST",
      headers: {
        authorization: `Bearer ${ctx.tokens[i]}`,
        "content-type": "application/json",
        "idempotency-key": `drop-${run}-${i}`,
      },
      body: JSON.stringify({ event_id: eventId, items: [{ tier_id: tierIds[i % tiers], quantity: 1 }] }),
    });
    const text = await res.text();
    let outcome = String(res.status);
    if (res.status === 409) {
      const type = (() => {
        try {
          return String(JSON.parse(text).type ?? "");
        } catch {
          return "";
        }
      })();
      outcome = type.endsWith("sold-out") ? "409 sold-out" : `409 ${type || text.slice(0, 80)}`;
    }
    statuses.set(outcome, (statuses.get(outcome) ?? 0) + 1);
  });
  const sold = statuses.get("201") ?? 0;
  const soldOut = statuses.get("409 sold-out") ?? 0;
  const [db] = await ctx.direct`
    select coalesce(sum(t.held + t.sold), 0)::int as taken, bool_and(t.held + t.sold <= t.capacity) as within,
      (select count(*)::int from events.orders o where o.event_id = ${eventId}) as orders
    from events.ticket_tiers t where t.event_id = ${eventId}`;
  const answers = JSON.stringify(Object.fromEntries(statuses));
  if (
    sold !== seats || soldOut !== buyers - seats || db.taken !== seats || !db.within || db.orders !== seats
  ) {
    throw new Error(
      `Ticket drop over ${tiers} tier(s) went wrong: answers ${answers}; ${db.taken} seats taken and ` +
        `${db.orders} orders in the database; expected exactly ${seats} sold and ${
          buyers - seats
        } 409 sold-out`,
    );
  }
  log(`drop over ${tiers} tier(s): ${answers}, ${m.opsPerSecond.toFixed(0)}/s, p50 ${m.p50.toFixed(1)} ms`);
  const { latencies: _, ...figures } = m;
  return { ...figures, tiers, sold, soldOut };
}
