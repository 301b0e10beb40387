import { AsyncLocalStorage } from 'node:async_hooks';
import { performance } from 'node:perf_hooks';

/** A deadline in force for the code running inside {@link withDeadline}. */
export interface Deadline {
  /** performance.now() by which the work must be done. */
  readonly at: number;
  /** The budget it was given, in ms (for messages); Infinity under a signal alone. */
  readonly budgetMs: number;
  /** A signal that ends the work early (`withSignal`): the caller is gone. */
  readonly signal?: AbortSignal;
}

const current = new AsyncLocalStorage<Deadline>();

/**
 * The longest delay a Node timer keeps (2^31 − 1 ms, about 24.8 days): a longer one fires after
 * 1 ms. The longest budget a deadline takes, and the cap on any timer a deadline sets.
 */
export const MAX_TIMER_MS = 2_147_483_647;

/**
 * Runs `fn` with a deadline `budgetMs` from now, carried with AsyncLocalStorage through every
 * await. Inside it, every db-pool acquire waits at most until the deadline (or its own
 * `DB_POOL_TIMEOUT`, whichever comes first), is shed at once with `PoolOverloadedError` when the
 * pool's measured wait plus use time would pass the deadline, and every statement gets the time
 * left as its `query_timeout`: a statement still running at the deadline fails and is cancelled
 * on the server. A nested call can shorten the deadline, never extend it, and bounds the
 * statements made inside it on a connection acquired before it too. The budget is at most
 * {@link MAX_TIMER_MS}.
 */
export function withDeadline<T>(budgetMs: number, fn: () => T, options?: { signal?: AbortSignal }): T {
  if (!Number.isFinite(budgetMs) || budgetMs <= 0)
    throw new RangeError(`withDeadline: the budget must be a positive number of ms, got ${String(budgetMs)}`);
  // Refused, not clamped: a caller who asks for more than a timer can hold meant "no deadline".
  if (budgetMs > MAX_TIMER_MS)
    throw new RangeError(
      `withDeadline: the budget must be at most ${MAX_TIMER_MS} ms (the longest Node timer); for no deadline, call fn outside withDeadline; got ${String(budgetMs)}`,
    );
  if (options?.signal !== undefined && !(options.signal instanceof AbortSignal))
    throw new TypeError('withDeadline: options.signal must be an AbortSignal');
  const at = performance.now() + budgetMs;
  const outer = current.getStore();
  const signal = joined(outer?.signal, options?.signal);
  if (outer && outer.at <= at) return signal === outer.signal ? current.run(outer, fn) : current.run({ ...outer, signal }, fn);
  return current.run(signal === undefined ? { at, budgetMs } : { at, budgetMs, signal }, fn);
}

/**
 * Runs `fn` with `signal` in force, carried with AsyncLocalStorage as a deadline is: when it
 * aborts (the HTTP client disconnected, a job was cancelled), an acquire still waiting fails at
 * once, a statement not yet sent is not sent, and one running is cancelled on the server; each
 * fails with `PoolAbortedError`, and the connection goes back to the pool clean. A deadline
 * in force (`withDeadline`, inside or around it) still applies; so does an outer signal.
 */
export function withSignal<T>(signal: AbortSignal, fn: () => T): T {
  if (!(signal instanceof AbortSignal)) throw new TypeError('withSignal: the first argument must be an AbortSignal');
  const outer = current.getStore();
  const joinedSignal = joined(outer?.signal, signal);
  return current.run({ at: outer?.at ?? Infinity, budgetMs: outer?.budgetMs ?? Infinity, signal: joinedSignal }, fn);
}

function joined(outer: AbortSignal | undefined, inner: AbortSignal | undefined): AbortSignal | undefined {
  if (inner === undefined || inner === outer) return outer;
  return outer === undefined ? inner : AbortSignal.any([outer, inner]);
}

/** The deadline in force here, if any. */
export function currentDeadline(): Deadline | undefined {
  return current.getStore();
}

/** Ms left before the deadline in force here (undefined when none is; Infinity under a signal alone). */
export function deadlineLeftMs(): number | undefined {
  const d = current.getStore();
  return d === undefined ? undefined : d.at - performance.now();
}
