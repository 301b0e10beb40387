/**
 * How many connections the pool hands out at once. Fixed (the pool's capacity) unless
 * `DB_POOL_ADAPTIVE` is on; then {@link GradientLimit} learns it from the time each checkout
 * takes against the number of checkouts in flight.
 */
export interface ConcurrencyLimit {
  /** Connections that may be checked out at once right now (an integer, floor ≤ limit ≤ ceiling). */
  readonly limit: number;
  readonly adaptive: boolean;
  /**
   * A checkout came back after `useMs`, with `inFlight` checkouts out (itself included). Runs on
   * every release: arithmetic only. Returns true when the limit went up (waiters may be served).
   */
  sample(useMs: number, inFlight: number): boolean;
  /** Nothing came back for a while and callers wait behind the limit: raise it by one (end a probe). True when it went up. */
  unstall(): boolean;
  /** The pool's capacity changed (`DbPool.resize`): the limit's ceiling follows it, the limit kept within it. */
  resize(ceiling: number): void;
}

/** The limit as the status, health body and metrics show it. */
export interface ConcurrencyLimitState {
  /** `DB_POOL_ADAPTIVE`: the limit is learnt (else it is the capacity). */
  adaptive: boolean;
  /** Connections handed out at once at most, right now. */
  limit: number;
  /** `DB_POOL_ADAPTIVE_MIN` (the capacity when not adaptive). */
  floor: number;
  /** The capacity, `DB_POOL_SIZE + DB_MAX_OVERFLOW`. */
  ceiling: number;
  /** The lowest mean checkout time seen since the last probe, ms: what the limit is judged against (NaN when not adaptive or before any). */
  baselineMs: number;
}

export class FixedLimit implements ConcurrencyLimit {
  readonly adaptive = false;
  constructor(public limit: number) {}
  resize(ceiling: number): void {
    this.limit = ceiling;
  }
  sample(): boolean {
    return false;
  }
  unstall(): boolean {
    return false;
  }
}

export interface GradientLimitOptions {
  /** The lowest limit (`DB_POOL_ADAPTIVE_MIN`). */
  floor: number;
  /** The highest: the pool's capacity (`DB_POOL_SIZE + DB_MAX_OVERFLOW`). */
  ceiling: number;
  /** Windows between two baseline probes. @default 200 */
  probeEveryWindows?: number;
  /** Random in [0, 1) (tests pass their own). @default Math.random */
  random?: () => number;
}

/**
 * An adaptive concurrency limit by latency gradient, after Netflix's concurrency-limits
 * (`GradientLimit`: newLimit = limit × baseline / latency + √limit; `Gradient2Limit`'s latency
 * tolerance of 1.5; github.com/Netflix/concurrency-limits), with the baseline kept as BBR keeps its
 * minimum RTT (Cardwell et al., "BBR: Congestion-Based Congestion Control", ACM Queue 14(5), 2016):
 * the lowest window latency since the last probe, re-measured now and then by holding the limit at
 * the floor for one window, and TCP's slow start from the floor.
 *
 * Why it finds the server's best concurrency: while the server keeps up, latency stays near the
 * baseline, the gradient is 1 and the limit grows (doubling until the first decrease, then by
 * √limit per window); past the point where the server is saturated, latency grows in proportion
 * to the checkouts in flight, so limit × baseline / latency is what the server serves at its
 * baseline latency, and the limit settles a few (√limit, and the tolerance) above it. The gradient
 * is held within [0.25, 1]: the limit at most quarters per window.
 *
 * Samples are averaged over a window (4–8 checkouts) before the limit moves, so a mixed workload
 * (a 0.1 ms lookup next to a 50 ms report) moves it by its mean, and the cost per release is an
 * addition and a comparison. A window in which fewer than half the limit were in flight says
 * nothing about the server at the limit and only feeds the baseline.
 */
const TOLERANCE = 1.5;

export class GradientLimit implements ConcurrencyLimit {
  readonly adaptive = true;
  /** The estimate, fractional; `limit` is its floor. */
  private estimate: number;
  private sum = 0;
  private count = 0;
  private peakInFlight = 0;
  /** Lowest window mean since the last probe, ms (Infinity until a window has been measured). */
  private baselineMs = Infinity;
  private windows = 0;
  private nextProbe: number;
  /** Holding at the floor to re-measure the baseline; the estimate to go back to. */
  private probing = false;
  private resumeAt = 0;
  /** Doubling while the server keeps up, until the first decrease (TCP's slow start). */
  private slowStart = true;
  private floor: number;
  private ceiling: number;
  /** `DB_POOL_ADAPTIVE_MIN` as given: the floor is it, within the ceiling. */
  private readonly floorWanted: number;
  private readonly probeEvery: number;
  private readonly random: () => number;

  constructor(options: GradientLimitOptions) {
    this.floorWanted = options.floor;
    this.floor = Math.max(1, Math.min(options.floor, options.ceiling));
    this.ceiling = options.ceiling;
    this.probeEvery = options.probeEveryWindows ?? 200;
    this.random = options.random ?? Math.random;
    // Starts at the floor and doubles while latency holds (slow start): a pool started into a
    // saturated server never lets its whole capacity loose on it.
    this.estimate = this.floor;
    // The first baseline may have been measured under load (a pool started into traffic): probed
    // soon, unless a window at the floor measures it first.
    this.nextProbe = 20;
  }

  get limit(): number {
    return this.probing ? this.floor : Math.floor(this.estimate);
  }

  /** The lowest mean checkout time seen since the last probe, in ms (NaN before any). */
  get baseline(): number {
    return this.baselineMs === Infinity ? NaN : this.baselineMs;
  }

  sample(useMs: number, inFlight: number): boolean {
    // While probing, checkouts begun above the floor are still coming back: not a floor measurement.
    if (this.probing && inFlight > this.floor) return false;
    this.sum += useMs;
    if (inFlight > this.peakInFlight) this.peakInFlight = inFlight;
    if (++this.count < this.windowSize()) return false;
    return this.endWindow();
  }

  resize(ceiling: number): void {
    this.ceiling = ceiling;
    this.floor = Math.max(1, Math.min(this.floorWanted, ceiling));
    this.estimate = Math.max(this.floor, Math.min(ceiling, this.estimate));
    this.resumeAt = Math.max(this.floor, Math.min(ceiling, this.resumeAt));
  }

  unstall(): boolean {
    const before = this.limit;
    if (this.probing) {
      // The probe cannot finish: more than the floor are held. Back to the estimate, baseline kept.
      this.probing = false;
      this.estimate = this.resumeAt;
      this.sum = this.count = this.peakInFlight = 0;
    }
    if (this.limit <= before) this.estimate = Math.min(this.ceiling, Math.floor(this.estimate) + 1);
    return this.limit > before;
  }

  private windowSize(): number {
    if (this.probing) return 8;
    return Math.min(8, Math.max(4, Math.ceil(this.estimate / 4)));
  }

  private endWindow(): boolean {
    const mean = this.sum / this.count;
    const peak = this.peakInFlight;
    this.sum = 0;
    this.count = 0;
    this.peakInFlight = 0;
    const before = this.limit;
    if (this.probing) {
      this.probing = false;
      this.baselineMs = mean;
      this.estimate = this.resumeAt;
      return this.limit > before;
    }
    // A window at the floor is what a probe measures: the baseline follows the workload (a heavier
    // query raises it), and no probe is needed while such windows come.
    if (peak <= this.floor) {
      this.baselineMs = mean;
      this.windows = 0;
    } else if (mean < this.baselineMs) this.baselineMs = mean;
    // Demand below half the limit: nothing learnt about the server at the limit.
    if (peak * 2 < this.estimate) return false;
    if (++this.windows >= this.nextProbe) {
      this.windows = 0;
      this.nextProbe = this.jitteredProbe();
      this.probing = true;
      this.resumeAt = this.estimate;
      return false;
    }
    // Averaged over a window, the reading is steady enough to act on most of it at once (Netflix
    // holds a single sample's gradient to at least 0.5).
    // Latency up to 1.5 × the baseline is tolerated (Netflix's Gradient2 `rttTolerance`): a server
    // that answers a little slower with more connections but more answers in all is not held back.
    const gradient = Math.max(0.25, Math.min(1, (TOLERANCE * this.baselineMs) / mean));
    let next: number;
    if (this.slowStart && gradient >= 0.9) next = this.estimate * 2;
    else {
      this.slowStart = false;
      next = this.estimate * gradient + Math.sqrt(this.estimate);
    }
    this.estimate = Math.max(this.floor, Math.min(this.ceiling, next));
    return this.limit > before;
  }

  /** 0.5–1.5 × the period, so pools started together do not probe together. */
  private jitteredProbe(): number {
    return Math.max(1, Math.round(this.probeEvery * (0.5 + this.random())));
  }
}
