/**
 * Time as the core sees it: a monotonic clock and one-shot timers. The pool runs on
 * {@link REAL_CLOCK}; the core's simulation runs it on a fake one it advances itself.
 */
export interface Timer {
  /** Lets the process exit while the timer is armed (Node's `unref`). */
  unref(): void;
  /** Keeps the process alive until the timer fires (Node's `ref`). */
  ref(): void;
}

export interface Clock {
  /** Milliseconds on a monotonic clock (performance.now()). */
  now(): number;
  setTimeout(fn: () => void, ms: number): Timer;
  clearTimeout(timer: Timer | undefined): void;
}

export const REAL_CLOCK: Clock = {
  // An arrow, not performance.now bound: V8 inlines it, and the double it returns stays unboxed.
  now: () => performance.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (timer) => clearTimeout(timer as NodeJS.Timeout | undefined),
};
