import { type Clock, REAL_CLOCK, type Timer } from './core/clock.js';

export type BreakerState = 'closed' | 'open' | 'half-open';

/** A probe out this long (ms) is likely stuck on a server that accepts and never answers: a health check may send another. */
export const STALE_PROBE_MS = 1_000;

export interface BreakerOptions {
  /** Failed attempts in a row that open the breaker. */
  threshold: number;
  /** First back-off, ms; doubled on every failed probe up to `maxBackoffMs`. */
  baseBackoffMs: number;
  maxBackoffMs: number;
  /** Called when a probe may go: the pool opens one connection. */
  probe: () => void;
  /** Called when the breaker opens (the pool fails its waiters). */
  opened: (failure: Error) => void;
  random?: () => number;
  /** Its timers and the time a probe went (the core's simulation passes a fake clock). @default REAL_CLOCK */
  clock?: Clock;
}

/**
 * The connect circuit breaker. When connection attempts keep failing on every host (refused,
 * timed out, "too many clients"), opening more only adds load to a server that is down or
 * full, and every caller waits its whole deadline for nothing. After `threshold` failed attempts
 * in a row the breaker opens: the pool opens no connection and fails acquires that would need
 * one at once. After a jittered back-off it lets one probe through (half-open); the probe's
 * success closes it, its failure opens it again with a longer back-off (capped, so a host that
 * comes back is found within about a second).
 */
export class ConnectBreaker {
  state: BreakerState = 'closed';
  /** Times it has opened since the pool started. */
  opens = 0;
  /** The failure that opened it last. */
  lastFailure: Error | undefined;
  /** Wall-clock time (ms since the epoch, for reports) at which the next probe may go; 0 when closed. */
  retryAt = 0;
  private failuresInRow = 0;
  /** When the last probe went (the clock's time). */
  private probeAt = 0;
  private backoffMs: number;
  private timer: Timer | undefined;
  private readonly random: () => number;
  private readonly clock: Clock;

  constructor(private readonly options: BreakerOptions) {
    this.backoffMs = options.baseBackoffMs;
    this.random = options.random ?? Math.random;
    this.clock = options.clock ?? REAL_CLOCK;
  }

  /** False while open, and while half-open once the probe is out: no new connection may be opened. */
  get allowsConnect(): boolean {
    return this.state === 'closed';
  }

  /**
   * Lets a probe go now, ahead of the back-off, when none is out or the one out has been out
   * longer than {@link STALE_PROBE_MS} (a server that accepts and never answers holds it until its
   * connect timeout): for a health check, which is a probe by nature and is bounded by its own
   * polling rate. True when the caller may open one.
   */
  probeNow(now = this.clock.now()): boolean {
    if (this.state === 'half-open' ? now - this.probeAt < STALE_PROBE_MS : this.state !== 'open') return false;
    this.clock.clearTimeout(this.timer);
    this.state = 'half-open';
    this.probeAt = now;
    return true;
  }

  /** A connection attempt failed on every host. */
  failed(err: Error): void {
    this.lastFailure = err;
    this.failuresInRow++;
    if (this.state === 'half-open' || (this.state === 'closed' && this.failuresInRow >= this.options.threshold)) this.open(err);
  }

  /** A connection opened: the breaker closes and the back-off starts over. */
  succeeded(): void {
    this.failuresInRow = 0;
    if (this.state === 'closed') return;
    this.state = 'closed';
    this.retryAt = 0;
    this.backoffMs = this.options.baseBackoffMs;
    this.clock.clearTimeout(this.timer);
  }

  stop(): void {
    this.clock.clearTimeout(this.timer);
  }

  private open(err: Error): void {
    const wasHalfOpen = this.state === 'half-open';
    this.state = 'open';
    if (!wasHalfOpen) this.opens++;
    // Full jitter over the upper half: processes that lost the server together do not come back together.
    const wait = Math.round(this.backoffMs * (0.5 + this.random() / 2));
    this.backoffMs = Math.min(this.options.maxBackoffMs, this.backoffMs * 2);
    this.retryAt = Date.now() + wait;
    this.clock.clearTimeout(this.timer);
    this.timer = this.clock.setTimeout(() => {
      this.state = 'half-open';
      this.probeAt = this.clock.now();
      this.options.probe();
    }, wait);
    this.timer.unref();
    if (!wasHalfOpen) this.options.opened(err);
  }
}
