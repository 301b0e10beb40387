import { performance } from 'node:perf_hooks';
import type { DbPoolLogger } from './db-pool.js';

/** Watches checkouts for connections held too long (HikariCP's leakDetectionThreshold). */
export interface LeakTracker {
  /**
   * Captures the caller's stack at the start of an acquire (the hand-out runs in a later tick);
   * `above` and the frames it called are left out.
   */
  capture(above: Function): CheckoutSite | undefined;
  checkout(client: object, site: CheckoutSite | undefined): void;
  checkin(client: object): void;
  /** Checkouts reported as possible leaks that have not come back. */
  outstanding(): number;
  stop(): void;
}

/** Leak tracking off: costs nothing on the hot path. */
export const NO_LEAK_TRACKING: LeakTracker = {
  capture: () => undefined,
  checkout() {},
  checkin() {},
  outstanding: () => 0,
  stop() {},
};

/** Holds the captured frames; V8 formats them only if `stack` is read. */
export interface CheckoutSite {
  stack?: string;
}

interface Checkout {
  since: number;
  site: CheckoutSite | undefined;
  reported: boolean;
}

const STACK_DEPTH = 12;

/**
 * Remembers when and where each connection was checked out. A sweep (not a timer per checkout)
 * reports, once, each one held past the threshold, with the stack of the code that took it, and
 * notes when a reported one comes back.
 */
export class CheckoutLeakTracker implements LeakTracker {
  private readonly out = new Map<object, Checkout>();
  private readonly sweeper: NodeJS.Timeout;
  private reported = 0;

  constructor(
    private readonly poolName: string,
    private readonly thresholdMs: number,
    private readonly logger: DbPoolLogger,
  ) {
    this.sweeper = setInterval(() => this.sweep(), Math.min(1_000, thresholdMs / 4));
    this.sweeper.unref();
  }

  capture(above: Function): CheckoutSite {
    // The cost is per frame (~0.5 µs each): keep the frames the reader needs, no more.
    const site: CheckoutSite = {};
    const limit = Error.stackTraceLimit;
    Error.stackTraceLimit = STACK_DEPTH;
    Error.captureStackTrace(site, above);
    Error.stackTraceLimit = limit;
    return site;
  }

  checkout(client: object, site: CheckoutSite | undefined): void {
    this.out.set(client, { since: performance.now(), site, reported: false });
  }

  checkin(client: object): void {
    const checkout = this.out.get(client);
    if (!checkout) return;
    this.out.delete(client);
    if (checkout.reported) {
      this.reported--;
      this.logger.log(`db-pool "${this.poolName}": the connection reported as possibly leaked was returned after ${seconds(performance.now() - checkout.since)} s`);
    }
  }

  outstanding(): number {
    return this.reported;
  }

  stop(): void {
    clearInterval(this.sweeper);
  }

  private sweep(): void {
    const now = performance.now();
    for (const checkout of this.out.values()) {
      if (checkout.reported || now - checkout.since < this.thresholdMs) continue;
      checkout.reported = true;
      this.reported++;
      const stack = (checkout.site?.stack ?? '').split('\n').slice(1).join('\n'); // without the "Error" line
      this.logger.warn(
        `db-pool "${this.poolName}": possible connection leak: a connection has been checked out for ${seconds(now - checkout.since)} s ` +
          `(DB_POOL_LEAK_THRESHOLD=${this.thresholdMs / 1000} s); it was checked out at:\n${stack}`,
      );
    }
  }
}

function seconds(ms: number): string {
  return (ms / 1000).toFixed(1);
}
