/**
 * The claim as the table grows, and the purge of expired rows beside concurrent claims.
 *
 * Growth: two databases with the same schema, one holding 10,000 finished rows and one 1,000,000, claimed
 * in alternation (one claim here, one there) so that whatever else the machine does falls on both alike.
 * The big one is filled once, then vacuumed, analysed and checkpointed, as a table that grew over weeks
 * is: claims measured right after a bulk insert of a million rows measured the checkpoint writing that
 * insert out (and the commit's WAL flush waiting behind it), not the table's size. Beside the latency,
 * the buffers one claim touches in each (EXPLAIN (ANALYZE, BUFFERS)), which no load changes.
 *
 * Purge: a copy of the big database per repetition; a claimer claims alone for a while (the baseline),
 * then while every expired row is purged in batches, each batch its own transaction.
 * @module
 */
import postgres from "npm:postgres@3.4.9";
import { log, median, percentile, type Spread, spread } from "./lib.ts";

/** Connects with one connection. */
export const connect = (url: string): postgres.Sql => postgres(url, { max: 1, onnotice: () => {} });

/** `url` with another database name. */
export function databaseUrl(url: string, name: string): string {
  const u = new URL(url);
  u.pathname = `/${name}`;
  return u.toString();
}

/**
 * Adds finished, expired rows up to `rows` in all. For a million rows, the table's secondary indexes
 * are dropped during the insert and built again afterwards with their own definitions (the same indexes,
 * built in seconds rather than inserted into row by row for minutes on this shared machine).
 */
export async function fill(sql: postgres.Sql, rows: number): Promise<void> {
  const started = performance.now();
  const indexes = rows > 100_000
    ? await sql`
        select i.indexrelid::regclass::text as name, pg_catalog.pg_get_indexdef(i.indexrelid) as def, c.conname,
          pg_catalog.pg_get_constraintdef(c.oid) as condef
        from pg_catalog.pg_index i left join pg_catalog.pg_constraint c on c.conindid = i.indexrelid
          and c.conrelid = i.indrelid
        where i.indrelid = 'public.stripe_idempotency_keys'::regclass and not i.indisprimary`
    : [];
  for (const ix of indexes) {
    await sql.unsafe(
      ix.conname
        ? `alter table public.stripe_idempotency_keys drop constraint "${ix.conname}"`
        : `drop index ${ix.name}`,
    );
  }
  // user_id stays null: its foreign key trigger would check nothing, a million times over
  await sql`set session_replication_role = replica`;
  await sql.unsafe(`
    insert into public.stripe_idempotency_keys (operation_type, operation_id, stripe_idempotency_key, status,
      stripe_resource_id, request_fingerprint, request_params, completed_at, expires_at)
    select 'bench:fill', 'fill-' || i, 'bench:fill:fill-' || i || ':' || md5(i::text), 'completed', 'pi_' || i,
      md5(i::text), '{"amount": 1000}', now() - interval '40 days', now() - interval '10 days'
    from generate_series(1, ${rows}) as i`);
  await sql`set session_replication_role = origin`;
  for (const ix of indexes) {
    await sql.unsafe(
      ix.conname
        ? `alter table public.stripe_idempotency_keys add constraint "${ix.conname}" ${ix.condef}`
        : ix.def,
    );
  }
  await sql`vacuum (analyze) public.stripe_idempotency_keys`;
  log(`${rows.toLocaleString("en")} rows in ${((performance.now() - started) / 1000).toFixed(1)} s`);
}

let serial = 0;
async function claim(sql: postgres.Sql, label: string): Promise<number> {
  const id = `${label}-${serial++}`;
  const t = performance.now();
  await sql`select public.claim_stripe_operation('bench:claim', ${id}, ${`bench:claim:${id}:k`}, '{"amount": 1}')`;
  return performance.now() - t;
}

async function buffersPerClaim(sql: postgres.Sql): Promise<number> {
  const counts: number[] = [];
  for (let i = 0; i < 5; i++) {
    const id = `explain-${serial++}`;
    const [row] = await sql.unsafe(
      `explain (analyze, buffers, format json) select public.claim_stripe_operation('bench:claim', $1, $2, '{"amount": 1}')`,
      [id, `bench:claim:${id}:k`],
    );
    const plan = row["QUERY PLAN"][0].Plan;
    counts.push(plan["Shared Hit Blocks"] + plan["Shared Read Blocks"]);
  }
  return median(counts);
}

/** The claim's p50 in both databases, in alternation; one ratio per round. */
export interface Growth {
  rowsSmall: number;
  rowsBig: number;
  p50Small: Spread;
  p50Big: Spread;
  ratio: Spread;
  buffersSmall: number;
  buffersBig: number;
}

/** Measures `rounds` rounds of `claims` claims in each database, alternating claim by claim. */
export async function growth(
  small: postgres.Sql,
  big: postgres.Sql,
  rows: [number, number],
  rounds: number,
  claims: number,
): Promise<Growth> {
  for (let i = 0; i < 200; i++) await claim(i % 2 ? big : small, "warm"); // warm-up, caches of both
  const p50Small: number[] = [];
  const p50Big: number[] = [];
  const ratios: number[] = [];
  for (let r = 0; r < rounds; r++) {
    const ls: number[] = [];
    const lb: number[] = [];
    for (let i = 0; i < claims; i++) {
      // which goes first alternates too
      if (i % 2) {
        ls.push(await claim(small, "small"));
        lb.push(await claim(big, "big"));
      } else {
        lb.push(await claim(big, "big"));
        ls.push(await claim(small, "small"));
      }
    }
    p50Small.push(median(ls));
    p50Big.push(median(lb));
    ratios.push(median(lb) / median(ls));
    log(`growth round ${r + 1}: ${median(ls).toFixed(3)} ms vs ${median(lb).toFixed(3)} ms`);
  }
  return {
    rowsSmall: rows[0],
    rowsBig: rows[1],
    p50Small: spread(p50Small),
    p50Big: spread(p50Big),
    ratio: spread(ratios),
    buffersSmall: await buffersPerClaim(small),
    buffersBig: await buffersPerClaim(big),
  };
}

/** One purge beside a claimer. */
export interface PurgeRun {
  rows: number;
  seconds: number;
  batches: number;
  claims: number;
  /** The longest claim during the purge, its 99.9th percentile, and the longest without a purge. */
  longestMs: number;
  p999Ms: number;
  baselineLongestMs: number;
  /** The longest batch (one transaction of the purge). */
  longestBatchMs: number;
}

/** Claims alone for `baselineMs`, then purges every expired row while claiming. */
export async function purge(url: string, batch: number, baselineMs: number): Promise<PurgeRun> {
  const claimer = connect(url);
  const purger = connect(url);
  try {
    await purger`select 1`;
    for (let i = 0; i < 50; i++) await claim(claimer, "warm");
    const baseline: number[] = [];
    const until = performance.now() + baselineMs;
    while (performance.now() < until) baseline.push(await claim(claimer, "alone"));
    let purging = true;
    const during: number[] = [];
    const claiming = (async () => {
      while (purging) during.push(await claim(claimer, "during"));
    })();
    const started = performance.now();
    let rows = 0;
    let batches = 0;
    let longestBatchMs = 0;
    for (;;) {
      const t = performance.now();
      const [{ r }] = await purger`select public.purge_expired_idempotency(${batch}) as r`;
      longestBatchMs = Math.max(longestBatchMs, performance.now() - t);
      batches++;
      rows += r.stripe_operations;
      if (r.stripe_operations === 0) break;
    }
    const seconds = (performance.now() - started) / 1000;
    purging = false;
    await claiming;
    during.sort((a, b) => a - b);
    return {
      rows,
      seconds,
      batches,
      claims: during.length,
      longestMs: during[during.length - 1],
      p999Ms: percentile(during, 0.999),
      baselineLongestMs: Math.max(...baseline),
      longestBatchMs,
    };
  } finally {
    await claimer.end();
    await purger.end();
  }
}
