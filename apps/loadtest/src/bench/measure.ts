import { performance } from 'node:perf_hooks';

/** A growable list of doubles: no boxing, no per-push allocation once grown. */
export class Samples {
  private data = new Float64Array(1024);
  length = 0;

  push(value: number): void {
    if (this.length === this.data.length) {
      const bigger = new Float64Array(this.data.length * 2);
      bigger.set(this.data);
      this.data = bigger;
    }
    this.data[this.length++] = value;
  }

  values(): Float64Array {
    return this.data.subarray(0, this.length);
  }
}

/** Histogram bucket counts taken over one slice (bounds in seconds, last slot +Inf). */
export interface HistogramDelta {
  bounds: readonly number[];
  counts: number[];
}

/** What one contender did in one slice of one round. */
export interface SliceResult {
  ops: number;
  elapsedMs: number;
  /** Milliseconds per operation, as the caller saw it (may be empty when only an average is known). */
  latencies: Float64Array;
  /** The average latency in ms when per-operation times are not known (pgbench with several clients per thread). */
  latencyAvgMs?: number;
  /** Milliseconds per acquire, measured around `connect()`. */
  waits?: Float64Array;
  /** The pool's own wait-time histogram, counted over the slice. */
  waitHistogram?: HistogramDelta;
}

/** Records, per operation, the time spent waiting for a connection (when the contender can tell). */
export type Operation = (waits: Samples) => Promise<unknown>;

/**
 * Runs `callers` closed loops of `op` for `durationMs`: each caller starts its next operation as
 * soon as the last one finished. Any failed operation fails the slice: a benchmark that drops
 * errors measures something else.
 *
 * By default the slice's operations count over its whole length, the last ones' ends included.
 * With `steadyFromMs`, only the operations that end between `steadyFromMs` after the start and the
 * end of the slice count, over that window: the rate once every caller is under way, with neither
 * the start (no operation has ended yet) nor the drain (the last operations ending with the pool
 * emptying) in it. Both weigh on an operation that waits after its connection is back (a
 * read-your-writes token) more than on one that does not, by its wait.
 */
export async function closedLoop(
  callers: number,
  durationMs: number,
  op: Operation,
  options: { steadyFromMs?: number } = {},
): Promise<SliceResult> {
  const latencies = new Samples();
  const waits = new Samples();
  let failure: unknown;
  let steadyOps = 0;
  const started = performance.now();
  const end = started + durationMs;
  const steadyFrom = options.steadyFromMs === undefined ? undefined : started + options.steadyFromMs;
  const caller = async () => {
    while (failure === undefined && performance.now() < end) {
      const t0 = performance.now();
      try {
        await op(waits);
      } catch (err) {
        failure ??= err;
        return;
      }
      const t1 = performance.now();
      latencies.push(t1 - t0);
      if (steadyFrom !== undefined && t1 >= steadyFrom && t1 <= end) steadyOps++;
    }
  };
  await Promise.all(Array.from({ length: callers }, caller));
  const elapsedMs = performance.now() - started;
  if (failure !== undefined) throw failure;
  const counted = steadyFrom === undefined ? { ops: latencies.length, elapsedMs } : { ops: steadyOps, elapsedMs: end - steadyFrom };
  return { ...counted, latencies: latencies.values(), waits: waits.length > 0 ? waits.values() : undefined };
}

/**
 * Open loop: `total` arrivals `1000 / perSec` ms apart, each launched at its time whatever the
 * ones before it are doing (a closed loop, or a client that waits for a free connection, would
 * slow down with the server and hide the overload). `launch` gets the arrival's time, from which
 * its latency counts. Resolves once the last has been launched, with when the loop started and
 * ended, and the set of launches not yet settled (each leaves it when it settles).
 */
export async function openLoop(
  perSec: number,
  total: number,
  launch: (arrival: number) => Promise<unknown>,
): Promise<{ start: number; end: number; pending: Set<Promise<unknown>> }> {
  const intervalMs = 1000 / perSec;
  const pending = new Set<Promise<unknown>>();
  const start = performance.now();
  let launched = 0;
  while (launched < total) {
    const now = performance.now();
    while (launched < total && start + launched * intervalMs <= now) {
      const p = launch(start + launched * intervalMs);
      launched++;
      pending.add(p);
      void p.finally(() => pending.delete(p));
    }
    await new Promise<void>((resolve) => setTimeout(resolve, 1));
  }
  return { start, end: start + total * intervalMs, pending };
}

export function median(values: readonly number[]): number {
  return quantileSorted(Float64Array.from(values).sort(), 0.5);
}

/** Linear interpolation between closest ranks (R-7, what numpy and spreadsheets use). */
export function quantileSorted(sorted: Float64Array, q: number): number {
  const n = sorted.length;
  if (n === 0) return NaN;
  const pos = (n - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.min(n - 1, lo + 1);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}

export interface Percentiles {
  mean: number;
  p50: number;
  p95: number;
  p99: number;
  max: number;
}

export function percentiles(values: Float64Array): Percentiles {
  const sorted = Float64Array.from(values).sort();
  let sum = 0;
  for (let i = 0; i < sorted.length; i++) sum += sorted[i];
  return {
    mean: sorted.length ? sum / sorted.length : NaN,
    p50: quantileSorted(sorted, 0.5),
    p95: quantileSorted(sorted, 0.95),
    p99: quantileSorted(sorted, 0.99),
    max: sorted.length ? sorted[sorted.length - 1] : NaN,
  };
}

/**
 * The upper bound of the bucket a quantile falls in, in the histogram's unit: "the p99 is at most
 * this". Interpolating inside a bucket would invent precision (a 3 µs wait in the 0–100 µs bucket
 * would read 50 µs). Infinity when it falls past the last bound.
 */
export function histogramQuantileBound(h: HistogramDelta, q: number): number {
  const total = h.counts.reduce((a, b) => a + b, 0);
  if (total === 0) return NaN;
  const rank = Math.max(1, Math.ceil(q * total));
  let seen = 0;
  for (let i = 0; i < h.counts.length; i++) {
    seen += h.counts[i];
    if (seen >= rank) return i < h.bounds.length ? h.bounds[i] : Infinity;
  }
  return Infinity;
}

export function addHistograms(a: HistogramDelta | undefined, b: HistogramDelta): HistogramDelta {
  if (!a) return { bounds: b.bounds, counts: b.counts.slice() };
  return { bounds: a.bounds, counts: a.counts.map((c, i) => c + b.counts[i]) };
}

export function concat(arrays: Float64Array[]): Float64Array {
  const out = new Float64Array(arrays.reduce((n, a) => n + a.length, 0));
  let at = 0;
  for (const a of arrays) {
    out.set(a, at);
    at += a.length;
  }
  return out;
}

export const opsPerSec = (s: SliceResult): number => (s.ops / s.elapsedMs) * 1000;

export function meanLatency(s: SliceResult): number {
  if (s.latencies.length === 0) return s.latencyAvgMs ?? NaN;
  let sum = 0;
  for (let i = 0; i < s.latencies.length; i++) sum += s.latencies[i];
  return sum / s.latencies.length;
}

/** Per-round ratios of `metric(a) / metric(b)`, rounds where both ran. */
export function roundRatios(a: SliceResult[], b: SliceResult[], metric: (s: SliceResult) => number): number[] {
  const n = Math.min(a.length, b.length);
  const out: number[] = [];
  for (let i = 0; i < n; i++) out.push(metric(a[i]) / metric(b[i]));
  return out;
}

/**
 * Ratios over pairs of rounds, `metric(a)` summed over rounds 2k and 2k+1 over the same of `b`:
 * with the order reversed every other round (roundOrder), each pair holds both orders, so a slice
 * that runs slower for coming second (what the slice before it left the server to do) weighs on
 * both sides alike. Per-round ratios then fall in two clusters, one per order, and their median
 * lands anywhere between them.
 */
export function roundPairRatios(a: SliceResult[], b: SliceResult[], metric: (s: SliceResult) => number): number[] {
  const n = Math.min(a.length, b.length);
  const out: number[] = [];
  for (let i = 0; i + 1 < n; i += 2) out.push((metric(a[i]) + metric(a[i + 1])) / (metric(b[i]) + metric(b[i + 1])));
  return out;
}

export interface RatioStat {
  /** Median of the ratios: per round, or per pair of rounds ({@link roundPairRatios}). */
  median: number;
  min: number;
  max: number;
  /**
   * A 95 % confidence interval of that median, distribution-free (the order statistics whose
   * ranks bound it: n/2 ∓ 0.98√n); NaN bounds with fewer than 6 ratios.
   */
  ci95: [number, number];
  /** Half the interval's width over the median: the ± within which the run pins the ratio down. */
  spread: number;
  rounds: number[];
}

/**
 * The 95 % interval of a median from `sorted` samples, with no assumption on their distribution:
 * the number of samples below the true median is Binomial(n, ½), so the j-th and k-th smallest
 * (j = ⌊n/2 − 0.98√n⌋, k = ⌈n/2 + 1 + 0.98√n⌉, 1-based; normal approximation) bound it 95 % of
 * the time.
 */
export function medianInterval(sorted: readonly number[]): [number, number] {
  const n = sorted.length;
  const half = 0.98 * Math.sqrt(n);
  const j = Math.floor(n / 2 - half);
  const k = Math.ceil(n / 2 + 1 + half);
  return j < 1 || k > n ? [NaN, NaN] : [sorted[j - 1], sorted[k - 1]];
}

export function ratioStat(rounds: number[]): RatioStat {
  const m = median(rounds);
  const ci95 = medianInterval([...rounds].sort((a, b) => a - b));
  return { median: m, min: Math.min(...rounds), max: Math.max(...rounds), ci95, spread: (ci95[1] - ci95[0]) / 2 / m, rounds };
}
