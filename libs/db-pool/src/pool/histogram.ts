/**
 * A histogram kept in plain arrays: `observe()` is a short scan and two additions, cheap enough
 * for every checkout. prom-client reads it only when /metrics is scraped.
 */
export class Histogram {
  /** counts[i] = observations ≤ bounds[i] and > bounds[i-1]; the last slot is +Inf. */
  readonly counts: number[];
  sum = 0;
  count = 0;
  /** Also told every observation (OpenTelemetry's histogram, when an SDK is registered). */
  mirror: ((value: number) => void) | undefined = undefined;

  constructor(readonly bounds: readonly number[]) {
    this.counts = new Array<number>(bounds.length + 1).fill(0);
  }

  observe(value: number): void {
    const bounds = this.bounds;
    let i = 0;
    while (i < bounds.length && value > bounds[i]) i++;
    this.counts[i]++;
    this.sum += value;
    this.count++;
    if (this.mirror !== undefined) this.mirror(value);
  }

  /** Cumulative counts per upper bound, as Prometheus `le` buckets want them. */
  cumulative(): { le: number; count: number }[] {
    let running = 0;
    const out = this.bounds.map((le, i) => ({ le, count: (running += this.counts[i]) }));
    out.push({ le: Infinity, count: running + this.counts[this.bounds.length] });
    return out;
  }
}

/** Seconds. Acquire waits are microseconds when a connection is idle, up to DB_POOL_TIMEOUT when not. */
export const WAIT_TIME_BUCKETS = [0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60];
export const USE_TIME_BUCKETS = [0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300];
export const CREATE_TIME_BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

/** The pool's timing histograms, in seconds. */
export interface PoolTimings {
  /** From the start of an acquire to the hand-out (OTel `db.client.connection.wait_time`). */
  wait: Histogram;
  /** From hand-out to release (OTel `db.client.connection.use_time`). */
  use: Histogram;
  /** Opening a new connection (OTel `db.client.connection.create_time`). */
  create: Histogram;
}

export function createPoolTimings(): PoolTimings {
  return { wait: new Histogram(WAIT_TIME_BUCKETS), use: new Histogram(USE_TIME_BUCKETS), create: new Histogram(CREATE_TIME_BUCKETS) };
}
