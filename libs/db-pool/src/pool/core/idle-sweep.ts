/**
 * The close of idle slots above the pool's minimum once idle for `idleTimeoutMs`, as pg.Pool's
 * timer per release does, with one timer: armed for the oldest idle slot's due time; when it
 * fires, that slot closes (unless it was taken meanwhile), so do any others due, and it is armed
 * for the next.
 */
import type { Clock, Timer } from './clock.js';
import type { Slot } from './slot.js';

export interface IdleSweepOptions<S extends Slot> {
  readonly idleTimeoutMs: number;
  /** Slots kept open (read at each sweep: the pool may be resized). */
  min(): number;
  readonly clock: Clock;
  /** The pool's idle list, oldest first (it is LIFO: slots leave and come back at the end). */
  readonly idle: readonly S[];
  /** Slots open or being opened. */
  total(): number;
  close(slot: S): void;
}

export class IdleSweep<S extends Slot> {
  private timer: Timer | undefined;
  private stopped = false;

  constructor(private readonly options: IdleSweepOptions<S>) {}

  /** Arms the timer for the oldest idle slot, unless it is armed already (a slot came back idle). */
  arm(): void {
    const { idleTimeoutMs, clock, idle } = this.options;
    if (this.timer || idleTimeoutMs <= 0 || this.stopped || idle.length === 0) return;
    const due = idle[0];
    const since = due.lastUsed;
    this.timer = clock.setTimeout(
      () => {
        this.timer = undefined;
        this.fire(due, since);
      },
      Math.max(0, since + idleTimeoutMs - clock.now()),
    );
    this.timer.unref();
  }

  stop(): void {
    this.stopped = true;
    this.options.clock.clearTimeout(this.timer);
  }

  private fire(due: S, since: number): void {
    const { idleTimeoutMs, clock, idle } = this.options;
    const min = this.options.min();
    // A timer keeps its own clock: it may fire a fraction of a millisecond early by this one.
    const now = clock.now() + 1;
    for (const slot of [...idle]) {
      if (this.options.total() <= min) break;
      if ((slot === due && slot.lastUsed === since) || now - slot.lastUsed >= idleTimeoutMs) this.options.close(slot);
    }
    if (this.options.total() > min) this.arm();
  }
}
