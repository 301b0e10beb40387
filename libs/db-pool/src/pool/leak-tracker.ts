import { performance } from 'node:perf_hooks';
import type { Span } from '@opentelemetry/api';
import type { DbPoolLogger } from './logger.js';

/**
 * What the tracker reads and marks on each connection: the pool keeps it on its own entry, so a
 * checkout costs two writes, not a map entry. `checkedOutAt` is on the tracker's clock; -1 while
 * the connection is not checked out.
 */
export interface LeakRecord {
  checkedOutAt: number;
  leakSite: CheckoutSite | undefined;
  /** The span active where the checkout was asked for (a tracer registered): its ids go in the report. */
  leakSpan: Span | undefined;
  leakReported: boolean;
}

/** Watches checkouts for connections held too long (HikariCP's leakDetectionThreshold). */
export interface LeakTracker {
  /**
   * Captures the caller's stack at the start of an acquire (the hand-out runs in a later tick);
   * `above` and the frames it called are left out. `undefined` when no stack is taken.
   */
  capture(above: (...args: never[]) => unknown): CheckoutSite | undefined;
  /** A checkout began (its `checkedOutAt` set by the caller). */
  checkout(record: LeakRecord, site: CheckoutSite | undefined, span: Span | undefined): void;
  /** A checkout ended; call before `checkedOutAt` is cleared. */
  checkin(record: LeakRecord): void;
  /** Checkouts reported as possible leaks that have not come back. */
  outstanding(): number;
  stackStats(): StackCaptureStats;
  stop(): void;
}

/** Holds the captured frames; V8 formats them only if `stack` is read. */
export interface CheckoutSite {
  stack?: string;
}

export interface LeakTrackerOptions {
  poolName: string;
  thresholdMs: number;
  /**
   * Stacks captured per second at most (0 = none). A capture costs ~7 µs of CPU and, measured in
   * throughput, more: a stack for every checkout cost a busy pool 20–40 % of its speed, 1000 a
   * second still 5–10 %. Below this rate every checkout has one, and none is skipped while armed.
   */
  stackRate: number;
  logger: DbPoolLogger;
  /** The connections to watch (the pool's), read by the sweep. */
  records: () => Iterable<LeakRecord>;
  /** The clock (ms) `checkedOutAt` is on; a test may pass its own and call `sweep()` itself. */
  now?: () => number;
  /** Sweep and refill on timers (default); off when a test calls `sweep()` and `refill()` by hand. */
  timer?: boolean;
}

/** What stack capture has done so far. */
export interface StackCaptureStats {
  captured: number;
  /** Checkouts taken without a stack: the rate was used up (or is 0). */
  skipped: number;
  /** True while every checkout is captured: a checkout has been held past half the threshold. */
  armed: boolean;
}

const STACK_DEPTH = 12;
/** How often the stack budget is refilled, and so how much of it can be spent at once: a tenth of a second's worth. */
const REFILL_MS = 100;

/**
 * Notes where each connection was checked out, on the connection's own record. A sweep (not a
 * timer per checkout) reports, once, each one held past the threshold, with the stack of the code
 * that took it, and notes when a reported one comes back.
 *
 * Stacks are captured at up to `stackRate` a second: a token bucket refilled every 100 ms on a timer
 * (the hot path reads no clock) and holding a tenth of a second's worth at most, so a burst after a
 * quiet spell spends 10 stacks, not a whole second's 100 at once (at ~30 µs a capture, that burst
 * cost a busy pool 3 % of a 100 ms stretch). Once a checkout has been held past half the threshold, the tracker
 * is armed: every checkout gets a stack, whatever the rate, until one threshold has passed
 * without such a checkout — so a leak that recurs is reported with its stack even at a rate of
 * checkouts far above `stackRate`.
 */
export class CheckoutLeakTracker implements LeakTracker {
  private readonly sweeper: NodeJS.Timeout | undefined;
  private readonly refiller: NodeJS.Timeout | undefined;
  /** The most the bucket holds: a tenth of a second's worth (at least one). */
  private readonly burst: number;
  private readonly now: () => number;
  private reported = 0;
  private tokens: number;
  private lastRefill: number;
  private armedUntil = -Infinity;
  private armed = false;
  private captured = 0;
  private skipped = 0;

  constructor(private readonly options: LeakTrackerOptions) {
    this.now = options.now ?? (() => performance.now());
    this.burst = Math.max(1, options.stackRate / (1000 / REFILL_MS));
    this.tokens = options.stackRate > 0 ? this.burst : 0;
    this.lastRefill = this.now();
    if (options.timer !== false) {
      this.sweeper = setInterval(() => this.sweep(), Math.min(1_000, options.thresholdMs / 4));
      this.sweeper.unref();
      if (options.stackRate > 0) {
        this.refiller = setInterval(() => this.refill(), REFILL_MS);
        this.refiller.unref();
      }
    }
  }

  capture(above: (...args: never[]) => unknown): CheckoutSite | undefined {
    if (this.armed ? this.options.stackRate === 0 : this.tokens < 1) {
      this.skipped++;
      return undefined;
    }
    if (!this.armed) this.tokens--;
    this.captured++;
    // Each capture costs the same few µs whatever its depth; 12 frames reach the caller's code.
    const site: CheckoutSite = {};
    const limit = Error.stackTraceLimit;
    Error.stackTraceLimit = STACK_DEPTH;
    Error.captureStackTrace(site, above);
    Error.stackTraceLimit = limit;
    return site;
  }

  checkout(record: LeakRecord, site: CheckoutSite | undefined, span: Span | undefined): void {
    record.leakSite = site;
    record.leakSpan = span;
    record.leakReported = false;
  }

  checkin(record: LeakRecord): void {
    record.leakSite = undefined;
    record.leakSpan = undefined;
    if (!record.leakReported) return;
    record.leakReported = false;
    this.reported--;
    this.options.logger.log(
      `db-pool "${this.options.poolName}": the connection reported as possibly leaked was returned after ${seconds(this.now() - record.checkedOutAt)} s`,
    );
  }

  outstanding(): number {
    return this.reported;
  }

  stackStats(): StackCaptureStats {
    return { captured: this.captured, skipped: this.skipped, armed: this.armed };
  }

  stop(): void {
    clearInterval(this.sweeper);
    clearInterval(this.refiller);
  }

  /** Adds the stacks earned since the last refill, up to a tenth of a second's worth. */
  refill(): void {
    const now = this.now();
    this.tokens = Math.min(this.burst, this.tokens + ((now - this.lastRefill) * this.options.stackRate) / 1000);
    this.lastRefill = now;
  }

  /** Arms or disarms capture, and reports checkouts past the threshold. */
  sweep(): void {
    const { thresholdMs, stackRate, poolName, logger } = this.options;
    const now = this.now();
    for (const record of this.options.records()) {
      if (record.checkedOutAt < 0 || record.leakReported) continue;
      const heldMs = now - record.checkedOutAt;
      if (heldMs >= thresholdMs / 2) this.armedUntil = now + thresholdMs;
      if (heldMs < thresholdMs) continue;
      record.leakReported = true;
      this.reported++;
      logger.warn(
        `db-pool "${poolName}": possible connection leak: a connection has been checked out for ${seconds(heldMs)} s ` +
          `(DB_POOL_LEAK_THRESHOLD=${thresholdMs / 1000} s)${traceOf(record.leakSpan)}; ${whereFrom(record.leakSite, stackRate)}`,
      );
    }
    this.armed = now < this.armedUntil;
  }
}

/** The trace the checkout belongs to, so a leak leads to the request that caused it. */
function traceOf(span: Span | undefined): string {
  if (!span) return '';
  const { traceId, spanId } = span.spanContext();
  return ` in trace_id=${traceId} span_id=${spanId}`;
}

function whereFrom(site: CheckoutSite | undefined, stackRate: number): string {
  if (site) return `it was checked out at:\n${(site.stack ?? '').split('\n').slice(1).join('\n')}`; // without the "Error" line
  if (stackRate === 0) return 'no stack was captured (DB_POOL_LEAK_STACK_RATE=0)';
  return (
    `its stack was not captured: checkouts were coming faster than DB_POOL_LEAK_STACK_RATE=${stackRate} stacks per second. ` +
    'Every checkout is captured now, and until one threshold passes without a checkout held past half of it, so a recurring leak is reported with its stack.'
  );
}

function seconds(ms: number): string {
  return (ms / 1000).toFixed(1);
}
