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
  /**
   * The queue is `queue[start..end)`: the head leaves by moving `start` on (an array's shift or
   * splice at 0 moves every element behind it, which at a few hundred callers waiting was the
   * pool's costliest line), and an emptied queue starts over at 0 keeping its array (no backing
   * store to allocate again at the next caller); the live part moves to the front once the dead
   * prefix is half of it.
   */
  private readonly queue: (W | undefined)[] = [];
  private start = 0;
  private end = 0;
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
    return this.start < this.end ? this.queue[this.start] : undefined;
  }
  firstProbe(): W | undefined {
    return this.queued().find((w) => w.probe);
  }
  /** The queue's callers that are not probes (a copy). */
  nonProbes(): W[] {
    return this.queued().filter((w) => !w.probe);
  }
  /** Every caller, queued or being checked (a copy). */
  all(): W[] {
    return [...this.queued(), ...this.handed];
  }

  /** Queues `w` at the back, or at the front (a caller asking again after its check failed). */
  push(w: W, front: boolean): void {
    if (!front) this.queue[this.end++] = w;
    else if (this.start > 0) this.queue[--this.start] = w;
    else {
      this.queue.splice(0, 0, w);
      this.end++;
    }
    this.waiting++;
    if (w.probe) this.probes++;
    this.watch(w.deadline);
    this.timer?.ref();
  }

  remove(w: W): void {
    const { queue } = this;
    if (this.start < this.end && queue[this.start] === w) {
      queue[this.start++] = undefined;
      if (this.start === this.end) this.start = this.end = 0;
      else if (this.start >= 64 && this.start * 2 >= this.end) {
        queue.copyWithin(0, this.start, this.end);
        queue.fill(undefined, this.end - this.start, this.end);
        this.end -= this.start;
        this.start = 0;
      }
    } else {
      const i = queue.indexOf(w, this.start);
      if (i === -1 || i >= this.end) return;
      queue.copyWithin(i, i + 1, this.end);
      queue[--this.end] = undefined;
    }
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

  /** The callers in the queue, in order (a copy). */
  private queued(): W[] {
    return this.queue.slice(this.start, this.end) as W[];
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
    for (let i = this.start; i < this.end; i++) next = Math.min(next, this.queue[i]!.deadline);
    for (const w of this.handed) next = Math.min(next, w.deadline);
    if (next < Infinity) this.watch(next);
  }
}
