/**
 * How long connections live: a lifetime with jitter (recycling), the close of overflow
 * connections left idle, and the refill that tops the pool back up to its size.
 */
import { scrubSecrets } from '../redact.js';
import type { DbPoolLogger } from './logger.js';

const FILL_RETRY_MIN_MS = 250;
const FILL_RETRY_MAX_MS = 5_000;

/**
 * A connection's lifetime: `recycleMs` shortened at random by up to `jitter` (0–0.5), so that
 * connections opened together are not all replaced together. 0 = unlimited.
 */
export function lifetimeOf(recycleMs: number, jitter: number): number {
  return recycleMs > 0 ? recycleMs * (1 - jitter * Math.random()) : 0;
}

/** What the refill needs of its pool. */
export interface RefillTarget {
  readonly name: string;
  /** Connections missing to reach the pool size (0 or less: none). */
  missing(): number;
  /** Opens one connection into the idle list; `done(err)` when it is there or has failed. */
  openOne(done: (err?: Error) => void): void;
  readonly logger: DbPoolLogger;
}

/**
 * Tops the pool back up after connections were closed. One round opens every missing connection;
 * a round with failures schedules the next, the delay doubling per round (not per failed
 * connection) from 250 ms up to 5 s; a round without failures resets it. Connections lost while
 * a round runs wait for the next one.
 */
export class Refill {
  private timer: NodeJS.Timeout | undefined;
  private running = false;
  private retryMs = FILL_RETRY_MIN_MS;
  private stopped = false;

  constructor(private readonly target: RefillTarget) {}

  /** Asks for a round after `delayMs` (now by default), unless one is due or running. */
  schedule(delayMs = 0): void {
    if (this.timer || this.running || this.stopped) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.round();
    }, delayMs);
    this.timer.unref();
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
  }

  private round(): void {
    const missing = this.target.missing();
    if (missing <= 0 || this.stopped) return;
    this.running = true;
    let pending = missing;
    let failed = 0;
    let firstError: Error | undefined;
    for (let i = 0; i < missing; i++) {
      this.target.openOne((err) => {
        if (err) {
          failed++;
          firstError ??= err;
        }
        if (--pending > 0) return;
        this.running = false;
        if (this.stopped) return;
        if (failed === 0) {
          this.retryMs = FILL_RETRY_MIN_MS;
          if (this.target.missing() > 0) this.schedule(); // lost during the round
          return;
        }
        this.target.logger.debug?.(
          `db-pool "${this.target.name}": refill failed for ${failed} of ${missing} connection(s): ${scrubSecrets(firstError!.message)}; next round in ${this.retryMs} ms`,
        );
        this.schedule(this.retryMs);
        this.retryMs = Math.min(this.retryMs * 2, FILL_RETRY_MAX_MS);
      });
    }
  }
}
