import { performance } from 'node:perf_hooks';
import { createPoolTimings, type PoolTimings } from './histogram.js';

/** Why a connection left the pool. */
export type RemovalReason =
  'discarded' | 'broken' | 'recycled' | 'max-uses' | 'idle' | 'pre-ping' | 'reset-failed' | 'shutdown' | 'failover';

/**
 * What the pool reports as it works (HikariCP's `IMetricsTracker`). Every method is a no-op
 * here: a tracker implements what it needs. Called on the hot path: keep each to arithmetic.
 */
export class PoolEventTracker {
  /** A connection was opened, in `ms`. */
  connectionCreated(_ms: number): void {}
  /** Opening a connection failed (an acquire's, the warm-up's or the refill's attempt). */
  connectionFailed(_err: Error): void {}
  /** A connection left the pool. */
  connectionRemoved(_reason: RemovalReason): void {}
  /** A caller got a connection after waiting `ms`. */
  acquired(_ms: number): void {}
  /** A caller handed its connection back after `ms`. */
  released(_ms: number): void {}
  /** An acquire timed out; `probe` when it was a short-deadline one (readiness, samplers). */
  timedOut(_probe: boolean): void {}
  /** An acquire failed because its connection could not be opened. */
  connectFailed(): void {}
  /** A pre-ping was sent. */
  prePingStarted(): void {}
  /** A pre-ping found the connection dead (no answer within DB_VALIDATION_TIMEOUT_MS, or an error). */
  prePingFailed(): void {}
  /** A connection returned inside a transaction was rolled back; `ok` when that worked. */
  rolledBack(_ok: boolean): void {}
  /** A connection's session state was reset on return; `ok` when that worked. */
  sessionReset(_ok: boolean): void {}
  /** A connection was marked for replacement: it outlived `DB_POOL_RECYCLE`. */
  recycled(): void {}
  /** A connection in use or idle raised an error the pool absorbed. */
  clientError(): void {}
  /** A host the pool used went away or changed role. */
  failover(): void {}
  /** Connections were closed or refused further statements because their host went away or changed role. */
  evicted(_connections: number): void {}
  /** A role signal that one session could have caused was checked on a connection of its own. */
  roleChecked(): void {}
  /** The connect circuit breaker opened. */
  breakerOpened(): void {}
  /** An acquire was shed at once (the queue full, or its expected wait past its deadline). */
  shed(): void {}
  /** A connection was released with its query still running: a cancel request was sent. */
  cancelled(): void {}
  /** A request's deadline (withDeadline) passed while its acquire waited. */
  deadlineExpired(): void {}
  /** An acquire was refused at once because the connect circuit breaker was open. */
  breakerRefused(): void {}
}

/** Counters the pool keeps; reading them never waits on the pool. */
export interface DbPoolCounters {
  /** Connections opened, in all. */
  created: number;
  /** Connections closed and removed, in all. */
  removed: number;
  /** Successful acquires. */
  acquired: number;
  /** Acquires that waited their whole deadline (`DB_POOL_TIMEOUT`) and ended in PoolTimeoutError. */
  timeouts: number;
  /**
   * Short-deadline acquires (`connectWithin`: the readiness probe, the headroom sampler) that
   * ended in PoolTimeoutError. Counted apart: a busy pool makes them time out without any
   * caller having waited `DB_POOL_TIMEOUT`.
   */
  probeTimeouts: number;
  /** Acquires that ended in PoolConnectError. */
  connectErrors: number;
  /** Connection attempts that failed, whoever made them (an acquire, the warm-up, the refill). */
  connectFailures: number;
  /** Validation round trips before hand-out. */
  prePings: number;
  /** Validations that found the connection dead. */
  prePingFailures: number;
  /** Connections rolled back on return because they were inside a transaction. */
  resets: number;
  /** Connections whose session state (settings, role, LISTEN, advisory locks) was reset on return. */
  sessionResets: number;
  /** Connections discarded because the rollback or session reset on return failed. */
  resetFailures: number;
  /** Connections retired because they outlived `recycleMs`. */
  recycled: number;
  /** Errors raised by connections (idle or checked out) that the pool absorbed. */
  clientErrors: number;
  /** Times a host the pool used went away or changed role (a failover seen by this pool). */
  failovers: number;
  /** Connections evicted with their host. */
  evictions: number;
  /**
   * Role signals checked on a new connection before anything was evicted: a session that turned
   * `default_transaction_read_only` on may have done it itself (SET, set_config(), a function).
   */
  roleChecks: number;
  /** Times the connect circuit breaker opened. */
  breakerOpens: number;
  /** Acquires refused at once while the connect circuit breaker was open. */
  breakerRefusals: number;
  /** Acquires shed at once with PoolOverloadedError (DB_POOL_MAX_WAITING, or a wait past the deadline). */
  overloaded: number;
  /** Queries cancelled on the server because their caller released the connection before the answer. */
  cancels: number;
  /** Acquires whose request deadline (withDeadline) passed while they waited: PoolDeadlineError, not counted in `timeouts`. */
  deadlines: number;
}

/** Whether connections can be opened right now, from the outcome of the recent attempts. */
export interface ConnectHealth {
  /** Failed attempts since the last one that succeeded (0 when the last one succeeded). */
  consecutiveFailures: number;
  /** When the last attempt failed (performance.now()), if one has. */
  lastFailureAt: number | undefined;
  /** The last failure (its message may name the host: show it only where that is wanted). */
  lastError: Error | undefined;
}

/** The tracker every pool has: the counters, the wait/use/create histograms and the connect health that the monitor and the metrics read. */
export class PoolStats extends PoolEventTracker {
  readonly counters: DbPoolCounters = {
    created: 0,
    removed: 0,
    acquired: 0,
    timeouts: 0,
    probeTimeouts: 0,
    connectErrors: 0,
    connectFailures: 0,
    prePings: 0,
    prePingFailures: 0,
    resets: 0,
    sessionResets: 0,
    resetFailures: 0,
    recycled: 0,
    clientErrors: 0,
    failovers: 0,
    evictions: 0,
    roleChecks: 0,
    breakerOpens: 0,
    breakerRefusals: 0,
    overloaded: 0,
    cancels: 0,
    deadlines: 0,
  };
  /** Wait, use and create times, in seconds. */
  readonly timings: PoolTimings = createPoolTimings();
  private readonly connect: ConnectHealth = { consecutiveFailures: 0, lastFailureAt: undefined, lastError: undefined };

  override connectionCreated(ms: number): void {
    this.counters.created++;
    this.connect.consecutiveFailures = 0;
    this.timings.create.observe(ms / 1000);
  }

  override connectionFailed(err: Error): void {
    this.counters.connectFailures++;
    this.connect.consecutiveFailures++;
    this.connect.lastFailureAt = performance.now();
    this.connect.lastError = err;
  }

  override connectionRemoved(_reason: RemovalReason): void {
    this.counters.removed++;
  }

  override acquired(ms: number): void {
    this.counters.acquired++;
    this.timings.wait.observe(ms / 1000);
  }

  override released(ms: number): void {
    this.timings.use.observe(ms / 1000);
  }

  override timedOut(probe: boolean): void {
    if (probe) this.counters.probeTimeouts++;
    else this.counters.timeouts++;
  }

  override connectFailed(): void {
    this.counters.connectErrors++;
  }

  override prePingStarted(): void {
    this.counters.prePings++;
  }

  override prePingFailed(): void {
    this.counters.prePingFailures++;
  }

  override rolledBack(ok: boolean): void {
    this.counters.resets++;
    if (!ok) this.counters.resetFailures++;
  }

  override sessionReset(ok: boolean): void {
    this.counters.sessionResets++;
    if (!ok) this.counters.resetFailures++;
  }

  override recycled(): void {
    this.counters.recycled++;
  }

  override clientError(): void {
    this.counters.clientErrors++;
  }

  /** How the recent connection attempts went (a copy). */
  override failover(): void {
    this.counters.failovers++;
  }

  override evicted(connections: number): void {
    this.counters.evictions += connections;
  }

  override roleChecked(): void {
    this.counters.roleChecks++;
  }

  override breakerOpened(): void {
    this.counters.breakerOpens++;
  }

  override shed(): void {
    this.counters.overloaded++;
  }

  override cancelled(): void {
    this.counters.cancels++;
  }

  override deadlineExpired(): void {
    this.counters.deadlines++;
  }

  override breakerRefused(): void {
    this.counters.breakerRefusals++;
  }

  connectHealth(): ConnectHealth {
    return { ...this.connect };
  }
}
