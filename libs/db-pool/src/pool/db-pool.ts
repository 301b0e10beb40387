import { performance } from 'node:perf_hooks';
import pg from 'pg';
import { PoolClosedError, PoolConnectError, PoolReleaseError, PoolTimeoutError, type PoolState } from '../errors.js';
import { scrubSecrets } from '../redact.js';
import { createPoolTimings, type PoolTimings } from './histogram.js';
import { CheckoutLeakTracker, type CheckoutSite, type LeakTracker, NO_LEAK_TRACKING, type StackCaptureStats } from './leak-tracker.js';
import { connectionLost, destroySocket, queuedQueries } from './pg-internals.js';

/** What db-pool adds to pg-pool's options. Durations in milliseconds. */
export interface DbPoolSettings {
  name: string;
  /** Connections kept open (pg-pool `min`), opened by {@link DbPool.warmUp}. */
  poolSize: number;
  /** Extra connections under load; `max` = poolSize + maxOverflow. */
  maxOverflow: number;
  /** How long an acquire may wait in all. */
  poolTimeoutMs: number;
  /** How long opening one connection may take. */
  connectTimeoutMs: number;
  /** Idle time after which a connection above `poolSize` is closed. */
  overflowIdleTimeoutMs: number;
  /** Maximum lifetime of a connection (0 = unlimited). */
  recycleMs: number;
  /** Fraction (0–0.5) by which each lifetime is shortened at random. */
  recycleJitter: number;
  prePing: boolean;
  prePingBypassMs: number;
  /** Bound on a pre-ping, on the rollback of a connection returned inside a transaction, and on a connection's close. */
  validationTimeoutMs: number;
  /**
   * When a returned connection's session state is reset (`RESET ALL`, `RESET ROLE`, `RESET
   * SESSION AUTHORIZATION`, `UNLISTEN *`, `pg_advisory_unlock_all()`): `auto` after a checkout
   * that ran SET, RESET or LISTEN or changed a reported setting; `always` after every checkout.
   */
  resetSession: 'auto' | 'always';
  /** Checkouts held longer than this are logged with their stack (0 = off). */
  leakThresholdMs: number;
  /** Checkout stacks captured per second at most, while leak tracking is on (0 = none). */
  leakStackRate: number;
  /** How long `end()` waits for checked-out connections before it closes them. */
  shutdownGraceMs: number;
  logger?: DbPoolLogger;
}

export interface DbPoolLogger {
  log(message: string): void;
  warn(message: string): void;
  debug?(message: string): void;
}

export type DbPoolOptions = pg.PoolConfig & { dbPool: DbPoolSettings };

/** Counters the pool keeps; reading them never waits on the pool. */
export interface DbPoolCounters {
  /** Connections opened, in all. */
  created: number;
  /** Connections closed and removed, in all. */
  removed: number;
  /** Successful acquires. */
  acquired: number;
  /** Acquires that waited their whole `DB_POOL_TIMEOUT` and ended in PoolTimeoutError. */
  timeouts: number;
  /**
   * Short-deadline acquires ({@link DbPool.connectWithin}: the readiness probe, the headroom
   * sampler) that ended in PoolTimeoutError. Counted apart: a busy pool makes them time out
   * without any caller having waited `DB_POOL_TIMEOUT`.
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
  /** Connections discarded because the rollback on return failed. */
  resetFailures: number;
  /** Connections retired because they outlived `recycleMs`. */
  recycled: number;
  /** Errors raised by connections (idle or checked out) that the pool absorbed. */
  clientErrors: number;
}

type Callback = (err: Error | undefined, client?: pg.PoolClient, release?: (err?: Error | boolean) => void) => void;

/** Whether connections can be opened right now, from the outcome of the recent attempts. */
export interface ConnectHealth {
  /** Failed attempts since the last one that succeeded (0 when the last one succeeded). */
  consecutiveFailures: number;
  /** When the last attempt failed (performance.now()), if one has. */
  lastFailureAt: number | undefined;
  /** The last failure (its message may name the host: show it only where that is wanted). */
  lastError: Error | undefined;
}

/** One acquire, from the call to the hand-out or the failure. */
interface Acquire {
  readonly startedAt: number;
  readonly deadline: number;
  readonly timeoutMs: number;
  /** `connect()` waits `DB_POOL_TIMEOUT`; a probe (`connectWithin`) a short deadline of its own. */
  readonly probe: boolean;
  readonly site: CheckoutSite | undefined;
  readonly callback: Callback;
  /** Fires at the deadline; armed only when the acquire may have to wait. */
  timer: NodeJS.Timeout | undefined;
  /** The callback of the current attempt in pg-pool's queue, taken out on timeout. */
  waiter: Callback | undefined;
  /** Why the previous attempt failed (a dead connection's pre-ping), the timeout's cause. */
  lastError: Error | undefined;
  /** Settled: handed out or failed; whatever arrives later goes back to the pool. */
  done: boolean;
}
// pg-pool keeps its state in these fields; we read and use them rather than keep a copy.
interface PgPoolInternals {
  _clients: pg.PoolClient[];
  _idle: { client: pg.PoolClient; timeoutId?: NodeJS.Timeout }[];
  _pendingQueue: { callback: Callback }[];
  _expired: WeakSet<pg.PoolClient>;
  _remove(client: pg.PoolClient, callback?: () => void): void;
  _pulseQueue(): void;
  newClient(pendingItem: { callback: Callback }): void;
}

// Per-connection timestamps (performance.now()), kept on the client itself.
const LAST_USED = Symbol('dbPool.lastUsed');
const CHECKED_OUT_AT = Symbol('dbPool.checkedOutAt');
/** Set when the server sent a FATAL error: the connection is closing, whatever pg says yet. */
const DEAD = Symbol('dbPool.dead');
/** Set when a checkout changed the session (SET, RESET, LISTEN, a reported setting): reset it on return. */
const SESSION_CHANGED = Symbol('dbPool.sessionChanged');
/**
 * Undoes what a borrower may have left on the session. Not DISCARD ALL: that would also drop
 * the named prepared statements pg keeps track of on the client, which would then fail.
 */
const RESET_SESSION = 'RESET ALL; RESET ROLE; RESET SESSION AUTHORIZATION; UNLISTEN *; SELECT pg_advisory_unlock_all()';
/** Command tags after which a session may differ from a fresh one. */
const SESSION_COMMANDS = new Set(['SET', 'RESET', 'LISTEN']);
/** LAST_USED of a connection opened for the caller about to get it: no need to validate it. */
const JUST_OPENED = -1;
type TrackedClient = pg.PoolClient & {
  [LAST_USED]?: number;
  [CHECKED_OUT_AT]?: number;
  [DEAD]?: boolean;
  [SESSION_CHANGED]?: boolean;
  getTransactionStatus?(): string | null;
  /** pg's own: the query on the wire, until its ReadyForQuery arrives. */
  _getActiveQuery?(): unknown;
  /** pg's own: false from sending a query until the server's ReadyForQuery. */
  readyForQuery?: boolean;
  connection?: NodeJS.EventEmitter;
};

const PING = 'SELECT 1';
const REMOVED = new WeakSet<object>();
const FILL_RETRY_MIN_MS = 250;
const FILL_RETRY_MAX_MS = 5_000;

/**
 * pg's `Pool` with SQLAlchemy QueuePool semantics: `poolSize` connections kept warm, up to
 * `maxOverflow` more under load that close when idle, an acquire deadline with a typed error,
 * recycling with jitter, pre-ping with a bypass window, and a rollback of connections handed
 * back inside a transaction. The queue, idle timeouts and lifetimes stay pg-pool's.
 *
 * TypeORM builds it through its `driver` option and calls `connect(callback)`; the promise form
 * works as on `pg.Pool`.
 */
export class DbPool extends pg.Pool {
  readonly settings: DbPoolSettings;
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
  };
  /** Wait, use and create times, in seconds. */
  readonly timings: PoolTimings = createPoolTimings();
  /**
   * Connections being opened (in pg-pool's list, neither idle nor checked out yet), by the
   * callback that will hand each over; shutdown fails those still open when its grace ends.
   */
  private readonly connecting = new Set<Callback>();
  private connectHealthState: ConnectHealth = { consecutiveFailures: 0, lastFailureAt: undefined, lastError: undefined };
  private readonly logger: DbPoolLogger;
  private readonly leaks: LeakTracker;

  private fillTimer: NodeJS.Timeout | undefined;
  /** A refill round is under way: connections removed meanwhile wait for the next round. */
  private filling = false;
  private fillRetryMs = FILL_RETRY_MIN_MS;

  constructor(options: DbPoolOptions) {
    const settings = options.dbPool;
    const connectTimeoutMs = settings.connectTimeoutMs;
    // pg-pool would apply one `connectionTimeoutMillis` both to the wait in its queue and to
    // opening a socket. We give the wait its own deadline and the client its connect timeout.
    class DbPoolClient extends pg.Client {
      constructor(config: pg.ClientConfig) {
        super(config);
        (this as unknown as { _connectionTimeoutMillis: number })._connectionTimeoutMillis = connectTimeoutMs;
      }
    }
    super({
      ...options,
      min: settings.poolSize,
      max: settings.poolSize + settings.maxOverflow,
      idleTimeoutMillis: settings.overflowIdleTimeoutMs,
      connectionTimeoutMillis: 0,
      maxLifetimeSeconds: 0,
      Client: DbPoolClient,
    } as unknown as pg.PoolConfig);
    this.settings = settings;
    this.logger = settings.logger ?? { log: () => {}, warn: () => {} };
    // pg-pool hides `password`; the connection string holds it too.
    if (this.options.connectionString) Object.defineProperty(this.options, 'connectionString', { enumerable: false });
    this.leaks = settings.leakThresholdMs > 0 ? new CheckoutLeakTracker({ poolName: settings.name, thresholdMs: settings.leakThresholdMs, stackRate: settings.leakStackRate, logger: this.logger }) : NO_LEAK_TRACKING;

    this.on('connect', (client: TrackedClient) => this.onConnect(client));
    this.on('remove', (client: TrackedClient) => this.onRemove(client));
    // An error on an idle client: pg-pool has removed it already; without a listener the
    // process would crash.
    // (Counted by the per-client listener in onConnect.)
    this.on('error', (err: Error) => {
      this.logger.warn(`db-pool "${settings.name}": idle connection lost: ${scrubSecrets(err.message)}`);
    });
  }

  private get internals(): PgPoolInternals {
    return this as unknown as PgPoolInternals;
  }

  /** The pool's counts right now (`total` includes connections still being opened). */
  state(): PoolState {
    const total = this.totalCount;
    const idle = this.idleCount;
    return { total, active: total - idle - this.connecting.size, idle, waiting: this.waitingCount };
  }

  /** How the recent connection attempts went (the monitor turns failures into health). */
  connectHealth(): ConnectHealth {
    return { ...this.connectHealthState };
  }

  /**
   * Opens connections until `poolSize` are open. Resolves once they are (the seed's
   * "Checked In: 20"); when some could not be opened, rejects, after every attempt has ended,
   * with the first connect error.
   */
  async warmUp(): Promise<void> {
    const missing = this.settings.poolSize - this.totalCount;
    const attempts: Promise<void>[] = [];
    for (let i = 0; i < missing; i++) attempts.push(new Promise((resolve, reject) => this.openOne((err) => (err ? reject(err) : resolve()))));
    const failed = (await Promise.allSettled(attempts)).find((r) => r.status === 'rejected');
    if (failed) throw (failed as PromiseRejectedResult).reason;
  }

  override connect(): Promise<pg.PoolClient>;
  override connect(callback: Callback): void;
  override connect(callback?: Callback): Promise<pg.PoolClient> | void {
    const site = this.leaks.capture(this.connect);
    if (callback) return this.acquire(this.settings.poolTimeoutMs, false, site, callback);
    return new Promise((resolve, reject) => this.acquire(this.settings.poolTimeoutMs, false, site, (err, client) => (err ? reject(err) : resolve(client!))));
  }

  /**
   * Acquires with a deadline of its own, shorter than `DB_POOL_TIMEOUT`: for probes and
   * background samplers that must not queue behind a busy pool. Its timeouts are counted in
   * `counters.probeTimeouts`, not `counters.timeouts`.
   */
  connectWithin(timeoutMs: number): Promise<pg.PoolClient> {
    const site = this.leaks.capture(this.connectWithin);
    return new Promise((resolve, reject) => this.acquire(timeoutMs, true, site, (err, client) => (err ? reject(err) : resolve(client!))));
  }

  /**
   * Runs one query within `timeoutMs` in all, acquire included. When the answer is late, the
   * caller gets the error at once and the connection is kept only if the server answers within
   * `DB_VALIDATION_TIMEOUT_MS` (a slow server is not a dead one); otherwise it is discarded.
   */
  async queryWithin<R extends pg.QueryResultRow = pg.QueryResultRow>(text: string, timeoutMs: number): Promise<pg.QueryResult<R>> {
    const started = performance.now();
    const client = await this.connectWithin(timeoutMs);
    const left = Math.max(1, Math.round(timeoutMs - (performance.now() - started)));
    let result: pg.QueryResult<R>;
    try {
      result = await client.query<R>({ text, query_timeout: left } as pg.QueryConfig);
    } finally {
      // An error answer or a late one: the release settles the connection or discards it.
      client.release();
    }
    return result;
  }

  /** `SELECT 1` within `timeoutMs` in all: the readiness probe. */
  async ping(timeoutMs: number): Promise<void> {
    await this.queryWithin(PING, timeoutMs);
  }

  /**
   * Closes idle connections now and the others as they come back, like pg-pool; connections
   * still checked out after `shutdownGraceMs` (leaked, or stuck on a dead server) are closed
   * then, so shutdown always finishes.
   */
  override end(): Promise<void>;
  override end(callback: () => void): void;
  override end(callback?: () => void): Promise<void> | void {
    clearTimeout(this.fillTimer);
    this.leaks.stop();
    if (this.ending) return callback ? super.end(callback) : super.end();
    // pg-pool's ending pulse neither serves nor fails the queue: every waiter is told, each on
    // its own tick, so that a callback that throws cannot stop the shutdown or the others.
    const waiters = this.internals._pendingQueue.splice(0);
    const state = { ...this.state(), waiting: waiters.length };
    // Not unref'd: a shutdown under way keeps the process alive until it has finished.
    const grace = setTimeout(() => this.closeCheckedOut(), this.settings.shutdownGraceMs);
    const done = () => clearTimeout(grace);
    const ended = callback
      ? super.end(() => {
          done();
          callback();
        })
      : super.end().finally(done);
    for (const item of waiters) process.nextTick(() => item.callback(new PoolClosedError(this.settings.name, state)));
    return ended;
  }

  private closeCheckedOut(): void {
    const pool = this.internals;
    const left = pool._clients.slice();
    if (this.ended) return;
    if (left.length === 0) return pool._pulseQueue(); // ends the pool if a close is all that was left
    this.logger.warn(`db-pool "${this.settings.name}": closing ${left.length} connection(s) still checked out or being opened ${this.settings.shutdownGraceMs / 1000} s after shutdown began`);
    // A connection still being opened: pg never calls back a client ended while it connects,
    // so its caller is failed here, not left to its own deadline.
    const closed = new PoolClosedError(this.settings.name, this.state());
    for (const handOver of [...this.connecting]) handOver(closed);
    for (const client of left) {
      pool._remove(client);
      // Don't wait for a polite close from a server that may not answer.
      ((client as TrackedClient).connection as { stream?: { destroy(): void } } | undefined)?.stream?.destroy();
    }
    pool._pulseQueue(); // `_clients` is empty now: this ends the pool
  }

  /** Checkouts reported as possible leaks (DB_POOL_LEAK_THRESHOLD) that have not come back. */
  leaksOutstanding(): number {
    return this.leaks.outstanding();
  }

  /** Checkout stacks captured and skipped so far (DB_POOL_LEAK_STACK_RATE); zeros when leak tracking is off. */
  leakStackStats(): StackCaptureStats {
    return this.leaks.stackStats();
  }

  /** How long the longest-held connection has been checked out, in ms (0 when none is). */
  oldestCheckoutMs(): number {
    const idle = new Set(this.internals._idle.map((item) => item.client));
    const now = performance.now();
    let oldest = 0;
    for (const client of this.internals._clients as TrackedClient[]) {
      const since = client[CHECKED_OUT_AT];
      if (since !== undefined && !idle.has(client)) oldest = Math.max(oldest, now - since);
    }
    return oldest;
  }

  /** pg-pool's own (undeclared in its types): opens a connection for a pending item. */
  newClient(pendingItem: { callback: Callback }): void {
    const started = performance.now();
    const callback = pendingItem.callback;
    const handOver: Callback = (err, client, release) => {
      // Called once: by pg-pool when the attempt ends, or by shutdown when its grace is over.
      if (!this.connecting.delete(handOver)) return;
      if (err instanceof PoolClosedError) {
        // ok: shutdown gave up on it
      } else if (err) {
        this.counters.connectFailures++;
        const health = this.connectHealthState;
        health.consecutiveFailures++;
        health.lastFailureAt = performance.now();
        health.lastError = err;
      } else {
        this.connectHealthState.consecutiveFailures = 0;
        this.timings.create.observe((performance.now() - started) / 1000);
      }
      callback(err, client, release);
    };
    this.connecting.add(handOver);
    pendingItem.callback = handOver;
    try {
      (pg.Pool.prototype as unknown as PgPoolInternals).newClient.call(this, pendingItem);
    } catch (err) {
      // pg builds the client synchronously and can throw there (an unreadable sslrootcert,
      // EMFILE): a failed connection attempt like any other, not an exception in the caller.
      process.nextTick(() => handOver(err as Error));
    }
  }

  /**
   * pg-pool's own: takes a client out of the pool and closes it politely, calling back once the
   * server has closed its end. A server that never does (a hung backend) would hold the slot,
   * and shutdown, forever: past DB_VALIDATION_TIMEOUT_MS the socket is destroyed.
   */
  _remove(client: pg.PoolClient, callback?: () => void): void {
    (pg.Pool.prototype as unknown as PgPoolInternals)._remove.call(this, client, callback);
    if ((client as unknown as { _ended?: boolean })._ended) return;
    const timer = setTimeout(() => destroySocket(client), this.settings.validationTimeoutMs);
    timer.unref();
    client.once('end', () => clearTimeout(timer));
    // The slot is free now: serve a waiter without waiting for the close.
    if (!this.ending && this.internals._pendingQueue.length > 0) process.nextTick(() => this.internals._pulseQueue());
  }

  private acquire(timeoutMs: number, probe: boolean, site: CheckoutSite | undefined, callback: Callback): void {
    const startedAt = performance.now();
    const acquire: Acquire = { startedAt, deadline: startedAt + timeoutMs, timeoutMs, probe, site, callback, timer: undefined, waiter: undefined, lastError: undefined, done: false };
    this.attempt(acquire);
  }

  /** One try at a connection: from pg-pool's idle list or queue, or a new one. */
  private attempt(acquire: Acquire): void {
    if (this.ending) return this.fail(acquire, new PoolClosedError(this.settings.name, this.state()));
    // A deadline that has passed is final: no idle connection is taken (and pre-pinged) after it.
    if (performance.now() >= acquire.deadline) return this.timeOut(acquire);
    const waiter: Callback = (err, client) => this.onClient(acquire, waiter, err, client);
    acquire.waiter = waiter;
    super.connect(waiter);
    if (acquire.timer || acquire.done) return;
    // A caller that an idle connection will serve on the next tick needs no timer.
    const queue = this.internals._pendingQueue;
    const queued = queue.length > 0 && queue[queue.length - 1].callback === waiter;
    if (queued && queue.length <= this.idleCount) return;
    this.armDeadline(acquire);
  }

  private armDeadline(acquire: Acquire): void {
    acquire.timer = setTimeout(() => this.timeOut(acquire), Math.max(0, acquire.deadline - performance.now()));
    acquire.timer.unref();
  }

  private onClient(acquire: Acquire, waiter: Callback, err: Error | undefined, client: pg.PoolClient | undefined): void {
    if (acquire.done || acquire.waiter !== waiter) {
      // The caller gave up; a connection that arrives late goes back to the pool.
      if (!err) {
        (client as TrackedClient)[LAST_USED] = performance.now();
        client!.release();
      }
      return;
    }
    acquire.waiter = undefined;
    if (err) {
      if (err instanceof PoolClosedError) return this.fail(acquire, err);
      if (this.ending) return this.fail(acquire, new PoolClosedError(this.settings.name, this.state(), { cause: err }));
      this.counters.connectErrors++;
      // pg says only "timeout expired" when its connect timeout fires; name the setting.
      const reason = err.message === 'timeout expired' ? `DB_CONNECT_TIMEOUT (${this.settings.connectTimeoutMs} ms) expired` : scrubSecrets(err.message);
      return this.fail(acquire, new PoolConnectError(this.settings.name, this.state(), reason, { cause: err }));
    }
    const tracked = client as TrackedClient;
    if (tracked[DEAD] || connectionLost(tracked)) {
      tracked.release(true);
      return this.attempt(acquire);
    }
    const lastUsed = tracked[LAST_USED] ?? 0;
    if (this.settings.prePing && lastUsed !== JUST_OPENED && performance.now() - lastUsed > this.settings.prePingBypassMs) {
      return this.validate(acquire, tracked);
    }
    this.handOut(acquire, tracked);
  }

  /**
   * Pre-ping, bounded by DB_VALIDATION_TIMEOUT_MS rather than by the caller's deadline: a
   * server slower than the caller's patience is not a dead one. The caller still fails at its
   * deadline; the connection then goes back to the pool if the ping answers.
   */
  private validate(acquire: Acquire, client: TrackedClient): void {
    if (!acquire.timer) this.armDeadline(acquire);
    this.counters.prePings++;
    client.query({ text: PING, query_timeout: this.settings.validationTimeoutMs } as pg.QueryConfig, (err: Error | null) => {
      if (err) {
        this.counters.prePingFailures++;
        this.logger.debug?.(`db-pool "${this.settings.name}": pre-ping failed, discarding the connection: ${scrubSecrets(err.message)}`);
        client.release(err);
        if (acquire.done) return;
        acquire.lastError = err;
        return this.attempt(acquire);
      }
      if (acquire.done) {
        client[LAST_USED] = performance.now();
        return client.release();
      }
      this.handOut(acquire, client);
    });
  }

  private timeOut(acquire: Acquire): void {
    if (acquire.done) return;
    const state = this.state(); // as the caller saw it, itself still waiting
    const queue = this.internals._pendingQueue;
    const i = acquire.waiter ? queue.findIndex((item) => item.callback === acquire.waiter) : -1;
    if (i !== -1) queue.splice(i, 1);
    if (acquire.probe) this.counters.probeTimeouts++;
    else this.counters.timeouts++;
    this.fail(acquire, new PoolTimeoutError(this.settings.name, acquire.timeoutMs, state, acquire.lastError ? { cause: acquire.lastError } : undefined));
  }

  private fail(acquire: Acquire, err: Error): void {
    if (acquire.done) return;
    acquire.done = true;
    clearTimeout(acquire.timer);
    acquire.callback(err);
  }

  private handOut(acquire: Acquire, client: TrackedClient): void {
    acquire.done = true;
    clearTimeout(acquire.timer);
    const checkedOutAt = performance.now();
    this.timings.wait.observe((checkedOutAt - acquire.startedAt) / 1000);
    client[CHECKED_OUT_AT] = checkedOutAt;
    this.leaks.checkout(client, acquire.site);
    const release = client.release;
    let released = false;
    client.release = (err?: Error | boolean) => {
      if (released) throw new PoolReleaseError(this.settings.name);
      released = true;
      const now = performance.now();
      client[LAST_USED] = now;
      client[CHECKED_OUT_AT] = undefined; // back, or on its way: no longer a checkout's age
      this.timings.use.observe((now - checkedOutAt) / 1000);
      this.leaks.checkin(client);
      // A socket that has already died cannot settle: drop it now, not after a timeout. Queries
      // the caller queued before releasing would run in the next borrower's checkout: drop those
      // with the connection (they fail with pg's "Client was closed").
      if (err || client[DEAD] || connectionLost(client) || queuedQueries(client) > 0) return release(err ?? true);
      // Released before the server's ReadyForQuery: an error answer (pg calls back before the
      // ReadyForQuery that carries the transaction status), or a query abandoned by
      // query_timeout. Wait for the server to settle.
      if (client.readyForQuery === false) return this.settleAndRelease(client, release);
      this.resetAndRelease(client, release);
    };
    this.counters.acquired++;
    acquire.callback(undefined, client, client.release);
  }

  /** Hands the connection back once the server is ready for a query again, or discards it. */
  private settleAndRelease(client: TrackedClient, release: (err?: Error | boolean) => void): void {
    const connection = client.connection;
    if (!connection) return release(true);
    let settled = false;
    const settle = (outcome: () => void) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      connection.removeListener('readyForQuery', onReady);
      connection.removeListener('end', onEnd);
      outcome();
    };
    // pg clears its active query in its own readyForQuery handler, which may run after ours.
    const onReady = () => settle(() => setImmediate(() => (client.readyForQuery === false ? release(true) : this.resetAndRelease(client, release))));
    const onEnd = () => settle(() => release(true));
    const timer = setTimeout(
      () =>
        settle(() => {
          this.logger.debug?.(`db-pool "${this.settings.name}": a connection released with a query in flight did not settle; discarding it`);
          release(new Error('released with a query in flight that did not finish'));
        }),
      this.settings.validationTimeoutMs,
    );
    connection.once('readyForQuery', onReady);
    connection.once('end', onEnd);
  }

  private resetAndRelease(client: TrackedClient, release: (err?: Error | boolean) => void): void {
    const status = client.getTransactionStatus?.();
    if (status === 'T' || status === 'E') return this.rollbackAndRelease(client, release);
    if (client[SESSION_CHANGED] || this.settings.resetSession === 'always') return this.resetSessionAndRelease(client, release);
    release();
  }

  /** Undoes session state a borrower left (settings, role, LISTEN, advisory locks), or discards the connection. */
  private resetSessionAndRelease(client: TrackedClient, release: (err?: Error | boolean) => void): void {
    this.counters.sessionResets++;
    client[SESSION_CHANGED] = false;
    client.query({ text: RESET_SESSION, query_timeout: this.settings.validationTimeoutMs } as pg.QueryConfig, (err: Error | null) => {
      // The reset's own RESET marks the session changed again: it is clean now.
      client[SESSION_CHANGED] = false;
      if (err) {
        this.counters.resetFailures++;
        this.logger.warn(`db-pool "${this.settings.name}": could not reset the session state of a returned connection; discarding it`);
        return release(err);
      }
      release();
    });
  }

  /** A connection handed back inside a transaction is rolled back, or discarded, before reuse. */
  private rollbackAndRelease(client: TrackedClient, release: (err?: Error | boolean) => void): void {
    this.counters.resets++;
    client.query({ text: 'ROLLBACK', query_timeout: this.settings.validationTimeoutMs } as pg.QueryConfig, (err: Error | null) => {
      if (err || client.getTransactionStatus?.() !== 'I') {
        this.counters.resetFailures++;
        this.logger.warn(`db-pool "${this.settings.name}": could not roll back a connection returned inside a transaction; discarding it`);
        return release(err ?? true);
      }
      // A SET inside the transaction that was just rolled back is undone too; one committed
      // before it, or a LISTEN, is not: the session reset covers what is left.
      this.resetAndRelease(client, release);
    });
  }

  private onConnect(client: TrackedClient): void {
    this.counters.created++;
    client[LAST_USED] = JUST_OPENED;
    // A checked-out client has no pg-pool listener; its errors must not crash the process.
    // pg marks it unusable and pg-pool drops it when it comes back.
    client.on('error', (err: Error) => {
      this.counters.clientErrors++;
      this.logger.debug?.(`db-pool "${this.settings.name}": connection error: ${err.message}`);
    });
    // A FATAL answer (the backend was terminated, the server shuts down) reaches the query
    // before the socket's end does; mark the connection so it is not handed out in between.
    // Prepended: pg's own handler calls the query back synchronously, and a caller that releases
    // there must already see the mark.
    const connection = client.connection as NodeJS.EventEmitter | undefined;
    connection?.prependListener('errorMessage', (msg: { severity?: string }) => {
      if (msg.severity === 'FATAL' || msg.severity === 'PANIC') client[DEAD] = true;
    });
    // Session state a borrower may leave behind: SET (role, settings), LISTEN, and any change
    // the server reports (a reported setting changed by set_config(), say).
    connection?.on('commandComplete', (msg: { text?: string }) => {
      const text = msg.text ?? '';
      if (SESSION_COMMANDS.has(text)) client[SESSION_CHANGED] = true;
    });
    connection?.on('parameterStatus', () => {
      client[SESSION_CHANGED] = true;
    });
    const { recycleMs, recycleJitter } = this.settings;
    if (recycleMs > 0) {
      const lifetime = recycleMs * (1 - recycleJitter * Math.random());
      const timer = setTimeout(() => this.retire(client), lifetime);
      timer.unref();
      client.once('end', () => clearTimeout(timer));
    }
  }

  /** Marks a connection as expired; pg-pool closes it now if idle, else when it comes back. */
  private retire(client: TrackedClient): void {
    const pool = this.internals;
    this.counters.recycled++;
    pool._expired.add(client);
    if (pool._idle.some((item) => item.client === client)) pool._remove(client, () => pool._pulseQueue());
  }

  private onRemove(client: TrackedClient): void {
    // pg-pool can emit `remove` twice for one client (closed at shutdown, then released late).
    if (REMOVED.has(client)) return;
    REMOVED.add(client);
    this.counters.removed++;
    if (!this.ending && this.totalCount < this.settings.poolSize) this.scheduleFill(0);
  }

  private scheduleFill(delayMs: number): void {
    if (this.fillTimer || this.filling) return;
    this.fillTimer = setTimeout(() => {
      this.fillTimer = undefined;
      this.fill();
    }, delayMs);
    this.fillTimer.unref();
  }

  /**
   * Tops the pool back up to `poolSize` after connections were closed. One round opens every
   * missing connection; a round with failures schedules the next one, the delay doubling per
   * round (not per failed connection) up to 5 s, and a round without failures resets it.
   */
  private fill(): void {
    const missing = this.settings.poolSize - this.totalCount;
    if (missing <= 0 || this.ending) return;
    this.filling = true;
    let pending = missing;
    let failed = 0;
    let firstError: Error | undefined;
    for (let i = 0; i < missing; i++) {
      this.openOne((err) => {
        if (err) {
          failed++;
          firstError ??= err;
        }
        if (--pending > 0) return;
        this.filling = false;
        if (this.ending) return;
        if (failed === 0) {
          this.fillRetryMs = FILL_RETRY_MIN_MS;
          if (this.totalCount < this.settings.poolSize) this.scheduleFill(0); // removed during the round
          return;
        }
        this.logger.debug?.(`db-pool "${this.settings.name}": refill failed for ${failed} of ${missing} connection(s): ${scrubSecrets(firstError!.message)}; next round in ${this.fillRetryMs} ms`);
        this.scheduleFill(this.fillRetryMs);
        this.fillRetryMs = Math.min(this.fillRetryMs * 2, FILL_RETRY_MAX_MS);
      });
    }
  }

  /** Opens one new connection and puts it straight into the idle list. */
  private openOne(done: (err?: Error) => void): void {
    if (this.ending) return done(new PoolClosedError(this.settings.name, this.state()));
    if (this.totalCount >= this.settings.poolSize + this.settings.maxOverflow) return done();
    this.internals.newClient({
      callback: (err, client) => {
        if (err) return done(err);
        (client as TrackedClient)[LAST_USED] = performance.now();
        client!.release();
        done();
      },
    });
  }
}
