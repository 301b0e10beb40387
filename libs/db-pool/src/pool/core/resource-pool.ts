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
import { type AdmissionGate, type GateView, TAKE, WAIT } from './gate.js';
import type { CoreEvents, Outcome, ResourcePoolOptions, SlotOwner, Waiter } from './contracts.js';
import type { Slot } from './slot.js';
import { IdleSweep } from './idle-sweep.js';
import { Waiters } from './waiters.js';

const ABORTED: Outcome = { kind: 'aborted' };

export type { CoreEvents, Outcome, PoolDriver, ResourcePoolOptions, SlotOwner, Waiter } from './contracts.js';

export class ResourcePool<S extends Slot, W extends Waiter<S> = Waiter<S>> implements GateView, SlotOwner<S> {
  ending = false;
  ended = false;
  readonly gate: AdmissionGate;
  private readonly slotSet = new Set<S>();
  private readonly idle: S[] = [];
  /** Callers waiting (first in, first out) or having their slot checked, with their one deadline timer. */
  private readonly waiters: Waiters<W>;
  private openingCount = 0;
  private closing = 0;
  private readonly sweep: IdleSweep<S>;
  private matching = false;
  private rematch = false;
  private readonly endWaiters: (() => void)[] = [];
  private readonly drainWaiters: (() => void)[] = [];
  private readonly events: CoreEvents<S>;

  constructor(private readonly options: ResourcePoolOptions<S>) {
    this.gate = options.gate;
    this.events = options.events ?? {};
    this.sweep = new IdleSweep<S>({
      idleTimeoutMs: options.idleTimeoutMs,
      clock: options.clock,
      min: () => this.options.min,
      idle: this.idle,
      total: () => this.slotSet.size,
      close: (slot) => this.destroy(slot, 'idle'),
    });
    this.waiters = new Waiters<W>(options.clock, (expired, waiting) => {
      const outcome: Outcome = { kind: 'timeout', waiting };
      for (const w of expired) this.finish(w, outcome);
    });
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
    return this.waiters.waiting;
  }
  get probesWaiting(): number {
    return this.waiters.probesWaiting;
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
    return this.waiters.head();
  }

  // ----- acquiring -----------------------------------------------------------------------------

  /** Hands `w` an idle slot if the gate lets it, else queues it (or fails it: shed, refused, closed, past its deadline). */
  acquire(w: W): void {
    if (this.ending) return this.finish(w, { kind: 'closed', waiting: this.waiting });
    this.admitOrQueue(w, false);
  }

  private admitOrQueue(w: W, front: boolean): void {
    const now = this.options.clock.now();
    // A deadline that has passed is final: no idle slot is taken (and checked) after it.
    if (now >= w.deadline) return this.finish(w, { kind: 'timeout', waiting: this.waiting });
    if (this.waiters.waiting === 0 && this.idle.length > 0) {
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
    this.waiters.checked(w);
    w.stage = 'new';
    // Ahead of the queue; during a shutdown too, as a caller queued before it began.
    this.admitOrQueue(w, true);
  }

  /** `w`'s caller gave up: it leaves the queue (or the check of its slot, which then comes back) and fails now. */
  abort(w: W): void {
    this.finish(w, ABORTED);
  }

  /** `w`'s caller is done checking its slot (served it, or failed it itself). */
  settle(w: W): void {
    this.waiters.checked(w);
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
    while (this.idle.length > 0 && this.waiting > 0) {
      const head = this.waiters.head()!;
      const admission = this.gate.admit(head, this, now, true, true);
      if (admission === WAIT) {
        const probe = this.probesWaiting > 0 ? this.waiters.firstProbe() : undefined;
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
    while (this.waiting > this.openingCount && this.gate.mayOpen(this, false)) this.open(false);
    // A probe held back by the limit with nothing idle gets a resource of its own, within the
    // capacity. With the breaker open it is the breaker's probe: when none is out, or the one out
    // is stuck (the breaker says which), even if other openings are under way.
    const uncovered = this.waiting > this.openingCount || !this.gate.breaker.allowsConnect;
    if (this.probesWaiting > 0 && this.idle.length === 0 && uncovered && this.gate.mayOpen(this, true)) this.open(true);
  }

  private hand(w: W, slot: S): void {
    this.options.driver.idling?.(slot, false);
    w.stage = 'handed';
    const done = w.served(slot);
    // Its caller may have dropped the slot and asked again (retry) from within served().
    if (w.stage !== 'handed') return;
    if (done) w.stage = 'done';
    else this.waiters.checking(w);
  }

  private finish(w: W, outcome: Outcome): void {
    if (w.stage === 'done') return;
    if (w.stage === 'queued') this.dequeue(w);
    this.waiters.checked(w);
    w.stage = 'done';
    w.failed(outcome);
  }

  private enqueue(w: W, front: boolean): void {
    w.stage = 'queued';
    this.waiters.push(w, front);
    if (!w.probe) this.gate.watchStall(this);
  }

  private dequeue(w: W): void {
    if (w.stage !== 'queued') return;
    this.waiters.remove(w);
    w.stage = 'new';
  }

  // ----- giving back ---------------------------------------------------------------------------

  /**
   * A slot comes back usable: to the next waiter the gate allows, or to the idle list — or, while
   * the pool holds more than its capacity (it was resized down), it closes.
   */
  release(slot: S): void {
    if (slot.removed) return;
    if (this.slotSet.size > this.gate.capacity && !this.ending) return this.destroy(slot, 'resized');
    slot.lastUsed = this.options.clock.now();
    this.idle.push(slot);
    this.options.driver.idling?.(slot, true);
    this.drained();
    this.match();
    // Shutting down: it served a caller queued before the shutdown began, or it closes now.
    if (this.ending) {
      for (const idle of [...this.idle]) this.destroy(idle, 'shutdown');
      return this.checkEnded();
    }
    if (this.slotSet.size > this.options.min) this.sweep.arm();
  }

  /**
   * A new size: `min` slots kept open, `capacity` open or opening at most. Growing serves the
   * callers waiting at once; shrinking closes idle slots above the capacity now (the longest idle
   * first) and slots out as they come back, and fails no caller: those waiting wait for a slot
   * within the new capacity, as they would for any.
   */
  resize(min: number, capacity: number): void {
    this.options.min = Math.min(min, capacity);
    this.gate.resize(capacity);
    while (this.slotSet.size > capacity && this.idle.length > 0) this.destroy(this.idle[0], 'resized');
    if (this.ending) return;
    this.match();
    if (this.slotSet.size > this.options.min) this.sweep.arm();
    else if (this.slotSet.size < this.options.min) this.events.belowMin?.();
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
    // Fail fast, as pg.Pool does: one waiter per failed attempt, the longest waiting first — but
    // only one that was already waiting when the attempt began; a later one gets its own.
    const head = this.waiters.head();
    if (this.ending) {
      if (head) this.finish(head, { kind: 'open-failed', error: err, setUp });
      return this.checkEnded();
    }
    if (!setUp) this.gate.breaker.failed(err);
    if (!this.gate.breaker.allowsConnect) this.refuseWaiters();
    if (head && head.startedAt <= startedAt) this.finish(head, { kind: 'open-failed', error: err, setUp });
    if (this.slotSet.size < this.options.min) this.events.belowMin?.();
    this.match();
  }

  /** The breaker is open and no resource is left to come back: callers queued fail now; probes wait for the breaker's probe. */
  refuseWaiters(): void {
    if (this.slotSet.size - this.openingCount > 0) return;
    for (const w of this.waiters.nonProbes()) this.finish(w, { kind: 'refused' });
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
   * Stops the pool, as pg.Pool's `end()` does: new callers are refused (closed); callers already
   * queued are served as slots come back or finish opening (the limit no longer holds them back),
   * within their deadlines; idle slots nobody waits for close now, slots out as they come back.
   * `done` once every slot has closed and every caller has its answer (the caller bounds the
   * wait: its grace ends in {@link closeAll}, which fails the callers still queued).
   */
  end(done: () => void): void {
    this.ending = true;
    this.gate.stop();
    this.sweep.stop();
    this.endWaiters.push(done);
    this.match();
    for (const slot of [...this.idle]) this.destroy(slot, 'shutdown');
    this.checkEnded();
  }

  /** The shutdown grace has ended: callers still queued fail (closed), every slot left closes now (`abort` ends one still being opened). */
  closeAll(abort: (slot: S) => void): S[] {
    this.failWaiters();
    const left = [...this.slotSet];
    for (const slot of left) {
      if (slot.connecting) abort(slot);
      else this.destroy(slot, 'shutdown', true);
    }
    return left;
  }

  /** Every caller queued or being checked fails (closed). */
  private failWaiters(): void {
    const waiters = this.waiters.all();
    const outcome: Outcome = { kind: 'closed', waiting: waiters.length };
    for (const w of waiters) this.finish(w, outcome);
  }

  private checkEnded(): void {
    if (!this.ending || this.ended) return;
    // No slot is left to serve the callers still queued: they fail now.
    if (this.slotSet.size === 0) this.failWaiters();
    if (this.slotSet.size > 0 || this.closing > 0 || this.openingCount > 0) return;
    this.ended = true;
    this.waiters.stop();
    for (const done of this.endWaiters.splice(0)) done();
  }
}
