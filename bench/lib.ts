/**
 * The benchmark's measuring tools: latencies of operations at a given concurrency, and the statistics of
 * repeated runs (median and spread), so that one noisy repetition on a shared machine moves no figure.
 * @module
 */

/** The p-th quantile (0..1) of sorted values. */
export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))];
}

/** The median of values (any order). */
export function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** Repeated figures: their median, smallest and largest. */
export interface Spread {
  median: number;
  min: number;
  max: number;
  runs: number[];
}

/** The median and the range of repeated figures. */
export function spread(runs: number[]): Spread {
  return { median: median(runs), min: Math.min(...runs), max: Math.max(...runs), runs };
}

/** One run of `ops` operations: throughput and latency quantiles, in milliseconds. */
export interface Run {
  opsPerSecond: number;
  p50: number;
  p99: number;
  max: number;
  latencies: number[];
}

/** Runs `op(i)` `ops` times with `concurrency` in flight; latencies in milliseconds. */
export async function measure(
  ops: number,
  concurrency: number,
  op: (i: number) => Promise<unknown>,
): Promise<Run> {
  const latencies: number[] = [];
  let next = 0;
  const started = performance.now();
  await Promise.all(Array.from({ length: Math.min(concurrency, ops) }, async () => {
    while (next < ops) {
      const i = next++;
      const t = performance.now();
      await op(i);
      latencies.push(performance.now() - t);
    }
  }));
  const seconds = (performance.now() - started) / 1000;
  latencies.sort((a, b) => a - b);
  return {
    opsPerSecond: ops / seconds,
    p50: percentile(latencies, 0.5),
    p99: percentile(latencies, 0.99),
    max: latencies[latencies.length - 1] ?? NaN,
    latencies,
  };
}

/** Logs a line on stderr (stdout carries the report). */
export const log = (msg: string): void => console.error(`[bench] ${msg}`);

/** "met" or "NOT met". */
export const verdict = (ok: boolean): string => (ok ? "met" : "NOT met");

/** `12.3 ms (10.1-15.2)`: a median with its range. */
export function range(s: Spread, digits = 2, unit = " ms"): string {
  return `${s.median.toFixed(digits)}${unit} (${s.min.toFixed(digits)}-${s.max.toFixed(digits)})`;
}
