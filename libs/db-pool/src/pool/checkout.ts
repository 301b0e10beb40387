/**
 * One acquire, from the call to the lease or the failure (HikariCP's `getConnection` loop): the
 * core hands it a slot; if the connection is stale it is dropped and the acquire asks again,
 * ahead of the queue; if a pre-ping is due it is pinged first; then the caller gets a lease. A
 * failure the core reports becomes the typed error the caller sees.
 */
import type { Span } from '@opentelemetry/api';
import {
  PoolAbortedError,
  PoolClosedError,
  PoolConnectError,
  PoolDeadlineError,
  PoolOverloadedError,
  PoolTimeoutError,
  type PoolState,
} from '../errors.js';
import { scrubSecrets } from '../redact.js';
import { type Connections, READY, STALE } from './connection.js';
import type { Outcome, ResourcePool, Waiter } from './core/resource-pool.js';
import type { Deadline } from './deadline.js';
import type { CheckoutSite } from './leak-tracker.js';
import type { PoolLease } from './lease.js';
import { POOL_NAME_ATTRIBUTE } from './otel.js';
import type { PoolEntry } from './pool-entry.js';
import type { DbPoolSettings } from './settings.js';
import type { PoolStats } from './tracker.js';

/** What an acquire needs of its pool. */
export interface CheckoutHost {
  readonly settings: DbPoolSettings;
  readonly core: ResourcePool<PoolEntry, Acquire>;
  readonly connections: Connections;
  readonly stats: PoolStats;
  /** The pool's counts now. */
  state(): PoolState;
  /** The error a caller refused by the open breaker gets. */
  unavailable(): Error;
  /** Hands `entry` out to the acquire's caller as a lease. */
  lease(acquire: Acquire, entry: PoolEntry): void;
}

export class Acquire implements Waiter<PoolEntry> {
  stage: Waiter<PoolEntry>['stage'] = 'new';
  /** Pre-pings run for it, and those that found their connection dead (each sent it round again). */
  prePings = 0;
  retries = 0;
  /** Why the last try failed (a dead connection's pre-ping): the timeout's cause. */
  lastError: Error | undefined = undefined;
  /** Under a caller's signal (`withSignal`): stops listening to it (when it is served or fails). */
  unwatch: (() => void) | undefined = undefined;

  constructor(
    private readonly host: CheckoutHost,
    readonly startedAt: number,
    /** performance.now() by which it must be served; Infinity: no deadline (pg's default). */
    readonly deadline: number,
    readonly timeoutMs: number,
    /** A short-deadline acquire of its own (`connectWithin`): counted apart when it times out, never shed, not held to the limit. */
    readonly probe: boolean,
    /** The deadline is a request's (`withDeadline`), which bounds its statements too. */
    readonly request: boolean,
    /** The request's deadline in force when it was made: its lease bounds statements by it. */
    readonly scope: Deadline | undefined,
    /** The span active where it was asked for (a tracer registered): told of a wait, a pre-ping, a retry. */
    readonly span: Span | undefined,
    readonly site: CheckoutSite | undefined,
    readonly callback: (err: Error | undefined, lease?: PoolLease) => void,
  ) {}

  /**
   * On the caller's span, an acquire that did more than take an idle connection: one event (the
   * cheapest record that keeps each of several acquires of a request apart).
   */
  trace(waitedMs: number): void {
    this.span!.addEvent('db_pool.acquire', {
      [POOL_NAME_ATTRIBUTE]: this.host.settings.name,
      'db_pool.wait_ms': Math.round(waitedMs * 1000) / 1000,
      'db_pool.pre_pings': this.prePings,
      'db_pool.retries': this.retries,
    });
  }

  /**
   * Under a caller's signal (`withSignal`): an acquire whose signal has aborted fails now (false:
   * not to be queued); else it leaves the queue, or its pre-ping, when the signal aborts.
   */
  abortWith(signal: AbortSignal): boolean {
    if (signal.aborted) {
      this.failed({ kind: 'aborted' });
      return false;
    }
    const onAbort = () => this.host.core.abort(this);
    signal.addEventListener('abort', onAbort, { once: true });
    this.unwatch = () => signal.removeEventListener('abort', onAbort);
    return true;
  }

  /** The checkout loop's step: a stale connection is dropped and the acquire asks again; a pre-ping if due; then the lease. */
  served(entry: PoolEntry): boolean {
    const { core, connections } = this.host;
    const readiness = connections.check(entry, performance.now());
    if (readiness === READY) {
      this.host.lease(this, entry);
      return true;
    }
    if (readiness === STALE) {
      core.destroy(entry, 'broken');
      core.retry(this);
      return false;
    }
    this.prePings++;
    connections.validate(entry, (err) => {
      if (err) {
        core.destroy(entry, 'pre-ping');
        this.retries++;
        if (this.stage === 'done') return;
        this.lastError = err;
        return core.retry(this);
      }
      entry.lastUsed = performance.now();
      // Its deadline passed during the ping: the caller has its error; the connection goes back.
      if (this.stage === 'done') return core.release(entry);
      core.settle(this);
      this.host.lease(this, entry);
    });
    return false;
  }

  /** The core could not serve it: the typed error, counted, told on its own tick (a callback that throws unwinds nothing of the pool's). */
  failed(outcome: Outcome): void {
    this.unwatch?.();
    const err = this.error(outcome);
    process.nextTick(this.callback, err);
  }

  private error(outcome: Outcome): Error {
    const { settings, stats } = this.host;
    const name = settings.name;
    switch (outcome.kind) {
      case 'timeout': {
        const state = { ...this.host.state(), waiting: outcome.waiting };
        if (this.request) {
          // The caller's own deadline, not the pool's DB_POOL_TIMEOUT: not a pool timeout (its
          // metric and alert stay for callers the pool kept waiting past its own bound).
          stats.deadlineExpired();
          return new PoolDeadlineError(name, this.scope!.budgetMs, false, { cause: this.lastError });
        }
        stats.timedOut(this.probe);
        return new PoolTimeoutError(name, this.timeoutMs, state, this.lastError ? { cause: this.lastError } : undefined);
      }
      case 'closed':
        return new PoolClosedError(name, { ...this.host.state(), waiting: outcome.waiting });
      case 'aborted':
        return new PoolAbortedError(name, false, this.scope?.signal?.reason);
      case 'shed':
        stats.shed();
        return new PoolOverloadedError(name, this.host.state(), outcome.reason);
      case 'refused':
        stats.breakerRefused();
        return this.host.unavailable();
      case 'open-failed': {
        stats.connectFailed();
        const err = outcome.error;
        // A set-up hook's (onConnect, verify) own error, as pg.Pool gives it: the application's.
        if (outcome.setUp) return (err.cause as Error | undefined) ?? err;
        // The drop-in gives the driver's own error, as pg.Pool does.
        if (settings.dropIn) return err;
        // pg says only "timeout expired" when its connect timeout fires; name the setting.
        const reason =
          err.message === 'timeout expired'
            ? `Connection terminated due to connection timeout (DB_CONNECT_TIMEOUT ${settings.connectTimeoutMs} ms)`
            : scrubSecrets(err.message);
        return new PoolConnectError(name, this.host.state(), reason, { cause: err });
      }
    }
  }
}
