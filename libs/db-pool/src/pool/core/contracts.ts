/**
 * What the core promises its callers and asks of its driver: the contracts of ./resource-pool.ts
 * (a caller, how an acquire ends, the driver that opens and closes resources, the events the core
 * reports, and what the layers beside it may do with its slots).
 */
import type { AdmissionGate, Candidate, Refusal } from './gate.js';
import type { Clock } from './clock.js';
import type { Slot } from './slot.js';

/** How an acquire ended, when it was not served. */
export type Outcome =
  | Refusal
  /** `waiting`: callers waiting when it ended, itself included (what its error reports). */
  | { readonly kind: 'timeout'; readonly waiting: number }
  | { readonly kind: 'closed'; readonly waiting: number }
  /** Its caller gave up (an AbortSignal): {@link ResourcePool.abort}. */
  | { readonly kind: 'aborted' }
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

/** What the layers beside the core may do with its slots (the core whatever its callers' type). */
export interface SlotOwner<S extends Slot> {
  readonly ending: boolean;
  /** Callers in the queue (during a shutdown: those queued before it, which a slot coming back still serves). */
  readonly waiting: number;
  slots(): IterableIterator<S>;
  isIdle(slot: S): boolean;
  release(slot: S): void;
  destroy(slot: S, reason: string, now?: boolean): void;
  destroyWhere(predicate: (slot: S) => boolean, reason: string): number;
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
