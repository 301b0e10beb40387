/**
 * The admission gate: whether a caller may have a resource now, may wait for one, or must fail
 * at once — and whether the pool may open another. Every rule of admission lives here, as a
 * policy of the one gate the core asks:
 *
 * - the concurrency limit (fixed at the capacity, or learnt: DB_POOL_ADAPTIVE) holds hand-outs
 *   back; probes (readiness, samplers) pass it, so a pool that sheds load does not look dead;
 * - the stall guard raises a learnt limit that nothing comes back under, so it never strands
 *   the queue;
 * - shedding fails a caller that cannot be served in time (the queue bound, an expected wait
 *   past its deadline, a request whose deadline would pass during its statement);
 * - the connect circuit breaker holds opening back while every attempt fails, refuses callers
 *   with nothing to wait for, and lets probes through.
 */
import { ConnectBreaker } from '../breaker.js';
import type { ConcurrencyLimit } from '../concurrency-limit.js';
import type { Clock, Timer } from './clock.js';

/** What the gate reads of its pool (the pool itself implements it: no object per question). */
export interface GateView {
  /** Resources out: handed to a caller and not yet back. */
  readonly busy: number;
  readonly idleCount: number;
  readonly opening: number;
  /** Open or being opened. */
  readonly total: number;
  /** Callers waiting in the queue. */
  readonly waiting: number;
  /** Of them, probes. */
  readonly probesWaiting: number;
}

/** A caller as the gate judges it. */
export interface Candidate {
  /** The clock's time by which it must be served (Infinity: none). */
  readonly deadline: number;
  /** A readiness probe or sampler: passes the limit, never shed, may be the breaker's probe. */
  readonly probe: boolean;
  /** Its deadline is a request's, which bounds its statements too. */
  readonly request: boolean;
}

export const TAKE = 'take';
export const WAIT = 'wait';
/** Why a caller fails at once: shed (it could not be served in time), or refused by the breaker (nothing to wait for). */
export type Refusal = { readonly kind: 'shed'; readonly reason: string } | { readonly kind: 'refused' };
export type Admission = typeof TAKE | typeof WAIT | Refusal;

const REFUSED: Refusal = { kind: 'refused' };

export interface GateOptions {
  capacity: number;
  limit: ConcurrencyLimit;
  /** Callers that may wait on a busy pool (0: no bound). */
  maxWaiting: number;
  clock: Clock;
  /** The breaker may send a probe: the pool opens one resource. */
  probe: () => void;
  /** The breaker opened: the pool refuses the callers it has nothing to serve with. */
  breakerOpened: (failure: Error) => void;
  /** The stall guard raised the limit: the pool serves its waiters. */
  raised: () => void;
  random?: () => number;
}

export class AdmissionGate {
  /** Resources open or opening at most (`resize` changes it). */
  capacity: number;
  readonly limit: ConcurrencyLimit;
  readonly breaker: ConnectBreaker;
  /** Mean time a resource is held, ms, exponentially weighted (the newest counts 1/16); 0 before any. */
  meanUseMs = 0;
  /** Uses the mean is taken over, up to 16 (shedding trusts the estimate once it is 16). */
  useSamples = 0;
  private readonly maxWaiting: number;
  private readonly clock: Clock;
  private readonly raised: () => void;
  private releases = 0;
  private stallTimer: Timer | undefined;
  private stopped = false;

  constructor(options: GateOptions) {
    this.capacity = options.capacity;
    this.limit = options.limit;
    this.maxWaiting = options.maxWaiting;
    this.clock = options.clock;
    this.raised = options.raised;
    this.breaker = new ConnectBreaker({
      threshold: 2,
      baseBackoffMs: 100,
      maxBackoffMs: 800,
      probe: options.probe,
      opened: options.breakerOpened,
      random: options.random,
      clock: options.clock,
    });
  }

  /** The pool's capacity changed: the limit's ceiling follows. */
  resize(capacity: number): void {
    this.capacity = capacity;
    this.limit.resize(capacity);
  }

  /**
   * The one question: may `c` have a resource now? With one `free` (idle, or about to be handed
   * on): take it, unless the limit holds it back, or — a request at its turn — too little of its
   * deadline is left for its statement. With none: wait, unless it must fail now.
   */
  admit(c: Candidate, pool: GateView, now: number, free: boolean, atTurn: boolean): Admission {
    if (free) {
      // Stopped (the pool is shutting down): the callers queued before it drain the pool, unheld.
      if (!c.probe && !this.stopped && pool.busy >= this.limit.limit) return WAIT;
      return atTurn ? (this.tooLate(c, now) ?? TAKE) : TAKE;
    }
    if (c.probe) return WAIT;
    const shed = this.shedReason(c, pool, now);
    if (shed !== undefined) return { kind: 'shed', reason: shed };
    // Open breaker: a caller waits for a resource to come back; with none out, it is refused now.
    if (!this.breaker.allowsConnect && pool.total - pool.opening === 0) return REFUSED;
    return WAIT;
  }

  /** May the pool open a resource now: within the capacity, under the limit (probes aside), the breaker closed? */
  mayOpen(pool: GateView, forProbe: boolean): boolean {
    if (pool.total >= this.capacity) return false;
    if (!this.breaker.allowsConnect) return forProbe && this.breaker.probeNow();
    return forProbe || pool.busy + pool.opening < this.limit.limit;
  }

  /** A resource came back after `useMs` with `busy` out (itself included): true when the limit went up. */
  released(useMs: number, busy: number): boolean {
    this.releases++;
    if (this.useSamples < 16) this.useSamples++;
    this.meanUseMs += (useMs - this.meanUseMs) / this.useSamples;
    return this.limit.sample(useMs, busy);
  }

  /**
   * A caller queued behind a learnt limit. Should nothing come back while callers wait — the
   * resources out are held long (a LISTEN, a report, a leak) and fill the limit — the limit goes
   * up by one after four mean use times (100 ms–1 s), and again, until a caller is served.
   */
  watchStall(pool: GateView): void {
    if (!this.limit.adaptive || this.stallTimer !== undefined || this.stopped) return;
    const armedAt = this.releases;
    const afterMs = Math.min(1_000, Math.max(100, 4 * this.meanUseMs));
    this.stallTimer = this.clock.setTimeout(() => {
      this.stallTimer = undefined;
      if (this.stopped || pool.waiting === 0) return;
      if (this.releases === armedAt && pool.busy >= this.limit.limit && this.limit.unstall()) this.raised();
      if (pool.waiting > 0) this.watchStall(pool);
    }, afterMs);
    this.stallTimer.unref();
  }

  stop(): void {
    this.stopped = true;
    this.breaker.stop();
    this.clock.clearTimeout(this.stallTimer);
  }

  /**
   * Why a caller with nothing free should fail now (undefined: it may wait). At the limit or the
   * capacity: the callers waiting on the busy pool are at the bound, or — with the use time
   * measured — its place in the queue times the mean use, over the limit (the rate resources
   * come back at), puts its turn past its deadline. A request's deadline bounds its statement
   * too, and a quarter of it is kept as margin (waits and uses are means).
   */
  private shedReason(c: Candidate, pool: GateView, now: number): string | undefined {
    const limit = this.limit.limit;
    // Under the limit and the capacity it gets a resource of its own.
    if (pool.busy < limit && pool.total < this.capacity) return undefined;
    // Callers a resource being opened will serve are not waiting on the busy pool.
    const ahead = Math.max(0, pool.waiting - pool.opening);
    if (this.maxWaiting > 0 && ahead >= this.maxWaiting)
      return `${ahead} caller(s) already waiting (DB_POOL_MAX_WAITING=${this.maxWaiting})`;
    if (c.deadline === Infinity || this.useSamples < 16) return undefined;
    const meanUse = this.meanUseMs;
    const expected = ((ahead + 1) / limit) * meanUse;
    const left = c.deadline - now;
    if (c.request ? expected + meanUse <= 0.75 * left : expected <= left) return undefined;
    return `expected wait ${Math.round(expected)} ms${c.request ? ` and use ${Math.round(meanUse)} ms` : ''} (${ahead} ahead, ${limit} connections held ${Math.round(meanUse)} ms on average) is past the deadline (${Math.round(left)} ms left)`;
  }

  /**
   * A request whose deadline would pass during its statement (less left than 1.5 × the mean use)
   * is shed at its turn: its statement would only be cancelled, after taking the server's time
   * from callers who can still be answered.
   */
  private tooLate(c: Candidate, now: number): Refusal | undefined {
    if (!c.request || this.useSamples < 16) return undefined;
    const left = c.deadline - now;
    if (left >= 1.5 * this.meanUseMs) return undefined;
    return {
      kind: 'shed',
      reason: `${Math.round(left)} ms left of its deadline when a connection came free, less than 1.5 × the ${Math.round(this.meanUseMs)} ms a connection is held on average`,
    };
  }
}
