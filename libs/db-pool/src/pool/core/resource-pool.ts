/**
 * The pool's core: a generic resource pool that imports nothing of PostgreSQL (jackc/puddle under
 * pgxpool is the model; HikariCP's ConcurrentBag the matcher). It holds the slots, the idle list
 * (last in, first out: warm resources, fewer pre-pings) and the callers waiting, first in first
 * out, with one deadline timer for all of them. One function — {@link ResourcePool.match} — hands
 * idle slots to waiters and opens resources for those it cannot serve, asking the
 * {@link AdmissionGate} each time. What a resource is, and how it opens and closes, is the
 * driver's; validating one before it is used, and deciding whether it may come back, are its
 * caller's (the facade's checkout loop, the connection layer's return path).
 */
import type { Clock, Timer } from './clock.js';
import { type AdmissionGate, type Candidate, type GateView, type Refusal, TAKE, WAIT } from './gate.js';
import type { Slot } from './slot.js';

/** How an acquire ended, when it was not served. */
export type Outcome =
  | Refusal
  /** `waiting`: callers waiting when it ended, itself included (what its error reports). */
  | { readonly kind: 'timeout'; readonly waiting: number }
  | { readonly kind: 'closed'; readonly waiting: number }
  /** The resource opened for it failed (`setUp`: it opened, and its set-up failed). */
  | { readonly kind: 'open-failed'; readonly error: Error; readonly setUp: boolean };

/** A caller of {@link ResourcePool.acquire}. */
export interface Waiter<S extends Slot> extends Candidate {
  /** When it asked (the clock's time): a failed open fails only a caller already waiting when it began. */
  readonly startedAt: number;
  /** Where it is, kept by the core: `handed` = given a slot its caller is still checking (a pre-ping). */
  stage: 'new' | 'queued' | 'handed' | 'done';
  /** Given a slot. Returns false to keep the acquire open while its caller checks the slot; it then calls settle() or retry(). */
  served(slot: S): boolean;
  /** Ended without a slot; called once, synchronously. */
  failed(outcome: Outcome): void;
}

/** What the core needs of its resources. */
export interface PoolDriver<S extends Slot> {
  /** A new slot, not yet open. */
  createSlot(now: number): S;
  /**
   * Opens the slot's resource and readies it. `internal`: the pool opens it for itself (a
   * probe, the refill), not for a waiting caller. `done(err, setUp)`: `setUp` when the resource
   * opened and its set-up failed (not the server's fault: the breaker does not count it).
   */
  open(slot: S, internal: boolean, done: (err?: Error, setUp?: boolean) => void): void;
  /** Closes the resource (`now`: at once, the pool is past its shutdown grace); `done` once closed. */
  close(slot: S, now: boolean, done: () => void): void;
  /** An idle slot is taken (`false`) or goes idle (`true`): for resources that must not keep the process alive while idle. */
  idling?(slot: S, idle: boolean): void;
}

/** What the core reports (a no-op where nobody listens). */
export interface CoreEvents<S extends Slot> {
  opened?(slot: S, ms: number): void;
  openFailed?(err: Error): void;
  removed?(slot: S, reason: string): void;
  /** Fewer slots than the pool's minimum remain. */
  belowMin?(): void;
}

export interface ResourcePoolOptions<S extends Slot> {
  /** Slots kept open (the refill tops the pool up to it; the idle sweep never goes below it). */
  min: number;
  /** Close idle slots above `min` after this long idle, ms (0: never). */
  idleTimeoutMs: number;
  gate: AdmissionGate;
  driver: PoolDriver<S>;
  clock: Clock;
  events?: CoreEvents<S>;
}

export class ResourcePool<S extends Slot, W extends Waiter<S> = Waiter<S>> implements GateView {
  ending = false;
  ended = false;
  readonly gate: AdmissionGate;
  private readonly slotSet = new Set<S>();
  private readonly idle: S[] = [];
  /** Waiting callers, first in first out (ended ones are dropped as the head reaches them). */
  private queue: W[] = [];
  private queued = 0;
  private probesQueued = 0;
  /** Callers handed a slot their caller is still checking: their deadline still runs. */
  private readonly handed = new Set<W>();
  private openingCount = 0;
  private closing = 0;
  private deadlineTimer: Timer | undefined;
  private deadlineAt = Infinity;
  private sweepTimer: Timer | undefined;
  private matching = false;
  private rematch = false;
  private readonly endWaiters: (() => void)[] = [];
  private readonly drainWaiters: (() => void)[] = [];
  private readonly events: CoreEvents<S>;

  constructor(private readonly options: ResourcePoolOptions<S>) {
    this.gate = options.gate;
    this.events = options.events ?? {};
  }

  // ----- counts (the GateView) -----------------------------------------------------------------

  get total(): number {
    return this.slotSet.size;
  }
  get idleCount(): number {
    return this.idle.length;
  }
  get opening(): number {
    return this.openingCount;
  }
  /** Handed out (or being checked for a caller) and not back. */
  get busy(): number {
    return this.slotSet.size - this.idle.length - this.openingCount;
  }
  get waiting(): number {
    return this.queued;
  }
  get probesWaiting(): number {
    return this.probesQueued;
  }
  /** Every slot, open or being opened. */
  slots(): IterableIterator<S> {
    return this.slotSet.values();
  }
  isIdle(slot: S): boolean {
    return this.idle.includes(slot);
  }
  /** The caller first in the queue (a read: for health and the simulation's checks). */
  peek(): W | undefined {
    return this.queue[0];
  }

  // ----- acquiring -----------------------------------------------------------------------------

  /** Hands `w` an idle slot if the gate lets it, else queues it (or fails it: shed, refused, closed, past its deadline). */
  acquire(w: W, front = false): void {
    if (this.ending) return this.finish(w, { kind: 'closed', waiting: this.queued });
    const now = this.options.clock.now();
    // A deadline that has passed is final: no idle slot is taken (and checked) after it.
    if (now >= w.deadline) return this.finish(w, { kind: 'timeout', waiting: this.queued });
    if (this.queued === 0 && this.idle.length > 0) {
      const admission = this.gate.admit(w, this, now, true, false);
      if (admission === TAKE) return this.hand(w, this.idle.pop()!);
    }
    const admission = this.gate.admit(w, this, now, false, false);
    if (admission !== WAIT && admission !== TAKE) return this.finish(w, admission);
    this.enqueue(w, front);
    this.match();
  }

  /** `w`'s caller found the slot it was handed unusable and dropped it: `w` asks again, ahead of the queue. */
  retry(w: W): void {
    this.handed.delete(w);
    w.stage = 'new';
    this.acquire(w, true);
  }

  /** `w`'s caller is done checking its slot (served it, or failed it itself). */
  settle(w: W): void {
    this.handed.delete(w);
    w.stage = 'done';
  }

  /**
   * The matcher, the one place a waiter gets a slot: idle slots go to the waiters in order, each
   * as the gate allows (a probe may pass a head the limit holds back), then resources are opened
   * for the waiters no opening covers, as the gate allows. Re-entrant calls run once more.
   */
  match(): void {
    if (this.matching) {
      this.rematch = true;
      return;
    }
    this.matching = true;
    try {
      do {
        this.rematch = false;
        this.serve();
        this.openForWaiters();
      } while (this.rematch);
    } finally {
      this.matching = false;
    }
  }

  private serve(): void {
    const now = this.options.clock.now();
    while (this.idle.length > 0 && this.queued > 0) {
      const head = this.head()!;
      const admission = this.gate.admit(head, this, now, true, true);
      if (admission === WAIT) {
        const probe = this.probesQueued > 0 ? this.firstProbe() : undefined;
        if (!probe) return;
        this.dequeue(probe);
        this.hand(probe, this.idle.pop()!);
        continue;
      }
      this.dequeue(head);
      if (admission === TAKE) this.hand(head, this.idle.pop()!);
      else this.finish(head, admission);
    }
  }

  private openForWaiters(): void {
    if (this.ending) return;
    while (this.queued > this.openingCount && this.gate.mayOpen(this, false)) this.open(false);
    // A probe held back by the limit with nothing idle gets a resource of its own, within the
    // capacity. With the breaker open it is the breaker's probe: when none is out, or the one out
    // is stuck (the breaker says which), even if other openings are under way.
    const uncovered = this.queued > this.openingCount || !this.gate.breaker.allowsConnect;
    if (this.probesQueued > 0 && this.idle.length === 0 && uncovered && this.gate.mayOpen(this, true)) this.open(true);
  }

  private hand(w: W, slot: S): void {
    this.options.driver.idling?.(slot, false);
    w.stage = 'handed';
    const done = w.served(slot);
    // Its caller may have dropped the slot and asked again (retry) from within served().
    if (w.stage !== 'handed') return;
    if (done) w.stage = 'done';
    else {
      this.handed.add(w);
      this.watchDeadline(w.deadline);
    }
  }

  private finish(w: W, outcome: Outcome): void {
    if (w.stage === 'done') return;
    if (w.stage === 'queued') this.dequeue(w);
    this.handed.delete(w);
    w.stage = 'done';
    w.failed(outcome);
  }

  private enqueue(w: W, front: boolean): void {
    w.stage = 'queued';
    if (front) this.queue.unshift(w);
    else this.queue.push(w);
    this.queued++;
    if (w.probe) this.probesQueued++;
    else this.gate.watchStall(this);
    this.watchDeadline(w.deadline);
    // A caller in the queue keeps the process alive until it is served or fails (as pg-pool's timer does).
    this.deadlineTimer?.ref();
  }

  private dequeue(w: W): void {
    if (w.stage !== 'queued') return;
    const i = this.queue.indexOf(w);
    if (i !== -1) this.queue.splice(i, 1);
    w.stage = 'new';
    this.queued--;
    if (w.probe) this.probesQueued--;
    if (this.queued === 0) this.deadlineTimer?.unref();
  }

  private head(): W | undefined {
    return this.queue[0];
  }

  private firstProbe(): W | undefined {
    return this.queue.find((w) => w.probe);
  }

  // ----- the one deadline timer ----------------------------------------------------------------

  private watchDeadline(at: number): void {
    if (at < this.deadlineAt) this.armDeadline(at);
  }

  private armDeadline(at: number): void {
    const clock = this.options.clock;
    clock.clearTimeout(this.deadlineTimer);
    this.deadlineAt = at;
    this.deadlineTimer = clock.setTimeout(() => this.expire(), Math.max(0, at - clock.now()));
    // A check in progress alone does not keep the process alive: its socket is busy anyway.
    if (this.queued === 0) this.deadlineTimer.unref();
  }

  /** Fails every caller whose deadline has passed (queued, or handed a slot still being checked), and arms the timer for the next. */
  private expire(): void {
    this.deadlineTimer = undefined;
    this.deadlineAt = Infinity;
    const now = this.options.clock.now();
    const expired = [...this.queue, ...this.handed].filter((w) => w.deadline <= now);
    // Told the pool as they saw it, themselves still waiting.
    const outcome: Outcome = { kind: 'timeout', waiting: this.queued };
    for (const w of expired) this.finish(w, outcome);
    let next = Infinity;
    for (const w of this.queue) next = Math.min(next, w.deadline);
    for (const w of this.handed) next = Math.min(next, w.deadline);
    if (next < Infinity) this.armDeadline(next);
  }

  // ----- giving back ---------------------------------------------------------------------------

  /** A slot comes back usable: to the next waiter the gate allows, or to the idle list. */
  release(slot: S): void {
    if (slot.removed) return;
    if (this.ending) return this.destroy(slot, 'shutdown');
    slot.lastUsed = this.options.clock.now();
    this.idle.push(slot);
    this.options.driver.idling?.(slot, true);
    this.drained();
    this.match();
    if (this.slotSet.size > this.options.min && this.idle.length > 0) this.sweepLater();
  }

  /** Takes a slot out of the pool and closes it (`now`: at once, past the shutdown grace). */
  destroy(slot: S, reason: string, now = false): void {
    if (slot.removed) return;
    slot.removed = true;
    this.slotSet.delete(slot);
    const i = this.idle.indexOf(slot);
    if (i !== -1) this.idle.splice(i, 1);
    this.closing++;
    this.events.removed?.(slot, reason);
    this.options.driver.close(slot, now, () => {
      this.closing--;
      this.checkEnded();
    });
    this.drained();
    if (this.ending) return;
    // The slot is free: serve waiters without waiting for the close (an idle slot the limit held
    // back may go now); with the breaker holding opening back, callers with nothing left to wait
    // for fail now.
    this.match();
    if (!this.gate.breaker.allowsConnect) this.refuseWaiters();
    if (this.slotSet.size < this.options.min) this.events.belowMin?.();
  }

  /** Destroys every idle slot that matches; returns how many. */
  destroyWhere(predicate: (slot: S) => boolean, reason: string): number {
    let destroyed = 0;
    for (const slot of [...this.idle]) {
      if (predicate(slot)) {
        this.destroy(slot, reason);
        destroyed++;
      }
    }
    return destroyed;
  }

  // ----- opening -------------------------------------------------------------------------------

  /**
   * Opens one slot for the idle list (warm-up, refill); `done` hears how it went. Refused, it
   * hears `refusal('closed')` (the pool is ending) or `refusal('unavailable')` (the breaker is open).
   */
  openIdle(done: (err?: Error) => void, refusal: (why: 'closed' | 'unavailable') => Error): void {
    if (this.ending) return done(refusal('closed'));
    if (this.slotSet.size >= this.gate.capacity) return done();
    if (!this.gate.breaker.allowsConnect) return done(refusal('unavailable'));
    this.open(true, done);
  }

  /** The breaker's half-open probe: one resource, for the idle list. */
  probe(): void {
    if (this.ending) return;
    if (this.slotSet.size >= this.gate.capacity) return this.gate.breaker.succeeded();
    this.open(true, (err) => {
      if (!err) this.match();
    });
  }

  private open(internal: boolean, done?: (err?: Error) => void): void {
    const clock = this.options.clock;
    const startedAt = clock.now();
    const slot = this.options.driver.createSlot(startedAt);
    this.slotSet.add(slot);
    this.openingCount++;
    this.options.driver.open(slot, internal, (err, setUp = false) => {
      slot.connecting = false;
      this.openingCount--;
      if (err) {
        if (!slot.removed) {
          slot.removed = true;
          this.slotSet.delete(slot);
        }
        return this.openFailed(err, setUp, startedAt, done);
      }
      this.gate.breaker.succeeded();
      this.events.opened?.(slot, clock.now() - startedAt);
      done?.();
      if (slot.removed) return this.checkEnded(); // closed by shutdown while it opened
      this.release(slot);
    });
  }

  private openFailed(err: Error, setUp: boolean, startedAt: number, done: ((err?: Error) => void) | undefined): void {
    this.events.openFailed?.(err);
    done?.(err);
    if (this.ending) return this.checkEnded();
    if (!setUp) this.gate.breaker.failed(err);
    if (!this.gate.breaker.allowsConnect) this.refuseWaiters();
    // Fail fast, as pg.Pool does: one waiter per failed attempt, the longest waiting first — but
    // only one that was already waiting when the attempt began; a later one gets its own.
    const head = this.head();
    if (head && head.startedAt <= startedAt) this.finish(head, { kind: 'open-failed', error: err, setUp });
    if (this.slotSet.size < this.options.min) this.events.belowMin?.();
    this.match();
  }

  /** The breaker is open and no resource is left to come back: callers queued fail now; probes wait for the breaker's probe. */
  refuseWaiters(): void {
    if (this.slotSet.size - this.openingCount > 0) return;
    for (const w of this.queue.filter((q) => !q.probe)) this.finish(w, { kind: 'refused' });
  }

  // ----- idle sweep ----------------------------------------------------------------------------

  /** Closes slots above the minimum idle longer than `idleTimeoutMs` (a sweep, not a timer per release). */
  private sweepLater(): void {
    const { idleTimeoutMs, clock, min } = this.options;
    if (this.sweepTimer || idleTimeoutMs <= 0 || this.ending) return;
    this.sweepTimer = clock.setTimeout(
      () => {
        this.sweepTimer = undefined;
        const now = clock.now();
        // Oldest idle first (the list is LIFO); never below the minimum.
        for (const slot of [...this.idle]) {
          if (this.slotSet.size <= min) break;
          if (now - slot.lastUsed >= idleTimeoutMs) this.destroy(slot, 'idle');
        }
        if (this.slotSet.size > min && this.idle.length > 0) this.sweepLater();
      },
      Math.max(10, idleTimeoutMs / 4),
    );
    this.sweepTimer.unref();
  }

  // ----- draining and ending -------------------------------------------------------------------

  /** Resolves once no slot is out (handed to a caller), or after `timeoutMs`. */
  drain(timeoutMs: number, done: () => void): void {
    if (this.busy === 0) return done();
    const timer = this.options.clock.setTimeout(finish, timeoutMs);
    const waiters = this.drainWaiters;
    function finish(): void {
      const i = waiters.indexOf(finish);
      if (i !== -1) waiters.splice(i, 1);
      timer.unref();
      done();
    }
    waiters.push(finish);
  }

  private drained(): void {
    if (this.drainWaiters.length > 0 && this.busy === 0) for (const done of this.drainWaiters.splice(0)) done();
  }

  /**
   * Stops the pool: callers queued or being checked fail (closed), idle slots close now, slots out
   * close as they come back; `done` once every slot has closed (the caller bounds the wait: its
   * grace ends in {@link closeAll}).
   */
  end(done: () => void): void {
    this.ending = true;
    this.gate.stop();
    const clock = this.options.clock;
    clock.clearTimeout(this.deadlineTimer);
    clock.clearTimeout(this.sweepTimer);
    this.endWaiters.push(done);
    const waiters = [...this.queue, ...this.handed];
    const outcome: Outcome = { kind: 'closed', waiting: waiters.length };
    for (const w of waiters) this.finish(w, outcome);
    for (const slot of [...this.idle]) this.destroy(slot, 'shutdown');
    this.checkEnded();
  }

  /** The shutdown grace has ended: every slot left closes now (`abort` ends one still being opened). */
  closeAll(abort: (slot: S) => void): S[] {
    const left = [...this.slotSet];
    for (const slot of left) {
      if (slot.connecting) abort(slot);
      else this.destroy(slot, 'shutdown', true);
    }
    return left;
  }

  private checkEnded(): void {
    if (!this.ending || this.ended || this.slotSet.size > 0 || this.closing > 0 || this.openingCount > 0) return;
    this.ended = true;
    for (const done of this.endWaiters.splice(0)) done();
  }
}
