/**
 * The core's callers waiting: first in, first out, and those handed a slot their caller is still
 * checking (a pre-ping) — with one deadline timer for all of them, armed for the earliest
 * deadline and never touched when a caller is served. A caller in the queue keeps the process
 * alive until it is served or fails (as pg-pool's timer does); a check alone does not (its
 * socket is busy anyway).
 */
import type { Clock, Timer } from './clock.js';

/** What the queue reads of a caller. */
export interface Queued {
  readonly deadline: number;
  readonly probe: boolean;
}

export class Waiters<W extends Queued> {
  private queue: W[] = [];
  /** Callers in the queue (a field, not a getter: every acquire reads it). Written only here. */
  waiting = 0;
  private probes = 0;
  /** Callers handed a slot their caller is still checking: their deadline still runs. */
  private readonly handed = new Set<W>();
  private timer: Timer | undefined;
  private timerAt = Infinity;

  /** `expired` hears every caller whose deadline has passed, with how many were queued then (themselves included). */
  constructor(
    private readonly clock: Clock,
    private readonly expired: (callers: W[], waiting: number) => void,
  ) {}

  /** Of them, probes. */
  get probesWaiting(): number {
    return this.probes;
  }
  head(): W | undefined {
    return this.queue[0];
  }
  firstProbe(): W | undefined {
    return this.queue.find((w) => w.probe);
  }
  /** The queue's callers that are not probes (a copy). */
  nonProbes(): W[] {
    return this.queue.filter((w) => !w.probe);
  }
  /** Every caller, queued or being checked (a copy). */
  all(): W[] {
    return [...this.queue, ...this.handed];
  }

  /** Queues `w` at the back, or at the front (a caller asking again after its check failed). */
  push(w: W, front: boolean): void {
    if (front) this.queue.unshift(w);
    else this.queue.push(w);
    this.waiting++;
    if (w.probe) this.probes++;
    this.watch(w.deadline);
    this.timer?.ref();
  }

  remove(w: W): void {
    const i = this.queue.indexOf(w);
    if (i === -1) return;
    this.queue.splice(i, 1);
    this.waiting--;
    if (w.probe) this.probes--;
    if (this.waiting === 0) this.timer?.unref();
  }

  /** `w` was handed a slot its caller is checking: its deadline still runs. */
  checking(w: W): void {
    this.handed.add(w);
    this.watch(w.deadline);
  }

  /** `w` is no longer being checked. */
  checked(w: W): void {
    this.handed.delete(w);
  }

  stop(): void {
    this.clock.clearTimeout(this.timer);
  }

  private watch(at: number): void {
    if (at >= this.timerAt) return;
    this.clock.clearTimeout(this.timer);
    this.timerAt = at;
    this.timer = this.clock.setTimeout(() => this.expire(), Math.max(0, at - this.clock.now()));
    if (this.waiting === 0) this.timer.unref();
  }

  /** Fails every caller whose deadline has passed, and arms the timer for the next. */
  private expire(): void {
    this.timer = undefined;
    this.timerAt = Infinity;
    const now = this.clock.now();
    const due = this.all().filter((w) => w.deadline <= now);
    // Told the pool as they saw it, themselves still waiting.
    this.expired(due, this.waiting);
    let next = Infinity;
    for (const w of this.queue) next = Math.min(next, w.deadline);
    for (const w of this.handed) next = Math.min(next, w.deadline);
    if (next < Infinity) this.watch(next);
  }
}
