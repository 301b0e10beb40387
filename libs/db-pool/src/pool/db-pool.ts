import { performance } from 'node:perf_hooks';
import pg from 'pg';
import { PoolConnectError, PoolReleaseError, PoolTimeoutError, type PoolState } from '../errors.js';
import { scrubSecrets } from '../redact.js';
import { createPoolTimings, type PoolTimings } from './histogram.js';
import { CheckoutLeakTracker, type CheckoutSite, type LeakTracker, NO_LEAK_TRACKING, type StackCaptureStats } from './leak-tracker.js';

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
  /** Bound on a pre-ping and on the rollback of a connection returned inside a transaction. */
  validationTimeoutMs: number;
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
  /** Acquires that ended in PoolTimeoutError. */
  timeouts: number;
  /** Acquires that ended in PoolConnectError. */
  connectErrors: number;
  /** Validation round trips before hand-out. */
  prePings: number;
  /** Validations that found the connection dead. */
  prePingFailures: number;
  /** Connections rolled back on return because they were inside a transaction. */
  resets: number;
  /** Connections discarded because the rollback on return failed. */
  resetFailures: number;
  /** Connections retired because they outlived `recycleMs`. */
  recycled: number;
  /** Errors raised by connections (idle or checked out) that the pool absorbed. */
  clientErrors: number;
}

type Callback = (err: Error | undefined, client?: pg.PoolClient, release?: (err?: Error | boolean) => void) => void;

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
/** LAST_USED of a connection opened for the caller about to get it: no need to validate it. */
const JUST_OPENED = -1;
type TrackedClient = pg.PoolClient & {
  [LAST_USED]?: number;
  [CHECKED_OUT_AT]?: number;
  [DEAD]?: boolean;
  getTransactionStatus?(): string | null;
  /** pg's own: the query on the wire, until its ReadyForQuery arrives. */
  _getActiveQuery?(): unknown;
  /** pg's own: false from sending a query until the server's ReadyForQuery. */
  readyForQuery?: boolean;
  connection?: NodeJS.EventEmitter;
};

const PING = 'SELECT 1';
/** Passwords to keep out of error texts, should a driver ever echo one; kept off the instance so util.inspect cannot show them. */
const SECRETS = new WeakMap<object, string[]>();
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
    connectErrors: 0,
    prePings: 0,
    prePingFailures: 0,
    resets: 0,
    resetFailures: 0,
    recycled: 0,
    clientErrors: 0,
  };
  /** Wait, use and create times, in seconds. */
  readonly timings: PoolTimings = createPoolTimings();
  /** Connections being opened (in pg-pool's list, neither idle nor checked out yet). */
  private connecting = 0;
  private readonly logger: DbPoolLogger;
  private readonly leaks: LeakTracker;

  private fillTimer: NodeJS.Timeout | undefined;
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
    SECRETS.set(this, passwordsOf(options));
    // pg-pool hides `password`; the connection string holds it too.
    if (this.options.connectionString) Object.defineProperty(this.options, 'connectionString', { enumerable: false });
    this.leaks = settings.leakThresholdMs > 0 ? new CheckoutLeakTracker({ poolName: settings.name, thresholdMs: settings.leakThresholdMs, stackRate: settings.leakStackRate, logger: this.logger }) : NO_LEAK_TRACKING;

    this.on('connect', (client: TrackedClient) => this.onConnect(client));
    this.on('remove', (client: TrackedClient) => this.onRemove(client));
    // An error on an idle client: pg-pool has removed it already; without a listener the
    // process would crash.
    // (Counted by the per-client listener in onConnect.)
    this.on('error', (err: Error) => {
      this.logger.warn(`db-pool "${settings.name}": idle connection lost: ${scrubSecrets(err.message, SECRETS.get(this)!)}`);
    });
  }

  private get internals(): PgPoolInternals {
    return this as unknown as PgPoolInternals;
  }

  /** The pool's counts right now (`total` includes connections still being opened). */
  state(): PoolState {
    const total = this.totalCount;
    const idle = this.idleCount;
    return { total, active: total - idle - this.connecting, idle, waiting: this.waitingCount };
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
    if (callback) return this.acquire(this.settings.poolTimeoutMs, site, callback);
    return new Promise((resolve, reject) => this.acquire(this.settings.poolTimeoutMs, site, (err, client) => (err ? reject(err) : resolve(client!))));
  }

  /**
   * Acquires with a deadline of its own, shorter than `DB_POOL_TIMEOUT`: for probes and
   * background samplers that must not queue behind a busy pool.
   */
  connectWithin(timeoutMs: number): Promise<pg.PoolClient> {
    const site = this.leaks.capture(this.connectWithin);
    return new Promise((resolve, reject) => this.acquire(timeoutMs, site, (err, client) => (err ? reject(err) : resolve(client!))));
  }

  /**
   * Runs one query within `timeoutMs` in all, acquire included. A connection whose answer does
   * not come in time is discarded, so a caller that gives up leaves no query holding it.
   */
  async queryWithin<R extends pg.QueryResultRow = pg.QueryResultRow>(text: string, timeoutMs: number): Promise<pg.QueryResult<R>> {
    const started = performance.now();
    const client = await this.connectWithin(timeoutMs);
    const left = Math.max(1, Math.round(timeoutMs - (performance.now() - started)));
    let result: pg.QueryResult<R>;
    try {
      result = await client.query<R>({ text, query_timeout: left } as pg.QueryConfig);
    } catch (err) {
      client.release(err as Error);
      throw err;
    }
    client.release();
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
    // pg-pool's ending pulse neither serves nor fails the queue: tell every waiter now.
    for (const item of this.internals._pendingQueue.splice(0)) item.callback(new Error('the pool is shutting down'));
    // Not unref'd: a shutdown under way keeps the process alive until it has finished.
    const grace = setTimeout(() => this.closeCheckedOut(), this.settings.shutdownGraceMs);
    const done = () => clearTimeout(grace);
    if (callback) {
      return super.end(() => {
        done();
        callback();
      });
    }
    return super.end().finally(done);
  }

  private closeCheckedOut(): void {
    const pool = this.internals;
    const left = pool._clients.slice();
    if (this.ended || left.length === 0) return;
    this.logger.warn(`db-pool "${this.settings.name}": closing ${left.length} connection(s) still checked out ${this.settings.shutdownGraceMs / 1000} s after shutdown began`);
    for (const client of left) {
      pool._remove(client);
      // Don't wait for a polite close from a server that may not answer.
      ((client as TrackedClient).connection as { stream?: { destroy(): void } } | undefined)?.stream?.destroy();
    }
    this.connecting = 0; // those still connecting were among them
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
    this.connecting++;
    pendingItem.callback = (err, client, release) => {
      this.connecting--;
      if (!err) this.timings.create.observe((performance.now() - started) / 1000);
      callback(err, client, release);
    };
    (pg.Pool.prototype as unknown as PgPoolInternals).newClient.call(this, pendingItem);
  }

  private acquire(timeoutMs: number, site: CheckoutSite | undefined, callback: Callback): void {
    const startedAt = performance.now();
    this.attempt(startedAt, startedAt + timeoutMs, timeoutMs, site, callback, undefined);
  }

  private attempt(startedAt: number, deadline: number, timeoutMs: number, site: CheckoutSite | undefined, callback: Callback, lastError: Error | undefined): void {
    if (this.ending) return super.connect(callback);
    let settled = false;
    let timer: NodeJS.Timeout | undefined;
    const onClient: Callback = (err, client) => {
      if (settled) {
        // We gave up waiting; a connection that arrives late goes back to the pool.
        if (!err) {
          (client as TrackedClient)[LAST_USED] = performance.now();
          client!.release();
        }
        return;
      }
      settled = true;
      if (timer) clearTimeout(timer);
      if (err) {
        this.counters.connectErrors++;
        // pg says only "timeout expired" when its connect timeout fires; name the setting.
        const reason = err.message === 'timeout expired' ? `DB_CONNECT_TIMEOUT (${this.settings.connectTimeoutMs} ms) expired` : scrubSecrets(err.message, SECRETS.get(this)!);
        return callback(new PoolConnectError(this.settings.name, this.state(), reason, { cause: err }));
      }
      const tracked = client as TrackedClient;
      const lastUsed = tracked[LAST_USED] ?? 0;
      if (tracked[DEAD]) {
        tracked.release(true);
        return this.attempt(startedAt, deadline, timeoutMs, site, callback, lastError);
      }
      if (this.settings.prePing && lastUsed !== JUST_OPENED && performance.now() - lastUsed > this.settings.prePingBypassMs) {
        return this.validate(tracked, startedAt, deadline, timeoutMs, site, callback);
      }
      this.handOut(tracked, startedAt, site, callback);
    };
    super.connect(onClient);

    // A caller that an idle connection will serve on the next tick needs no timer.
    const queue = this.internals._pendingQueue;
    const queued = queue.length > 0 && queue[queue.length - 1].callback === onClient;
    if (queued && queue.length <= this.idleCount) return;
    timer = setTimeout(() => {
      if (settled) return;
      settled = true;
      const state = this.state(); // as the caller saw it, itself still waiting
      const i = queue.findIndex((item) => item.callback === onClient);
      if (i !== -1) queue.splice(i, 1);
      this.counters.timeouts++;
      callback(new PoolTimeoutError(this.settings.name, timeoutMs, state, lastError ? { cause: lastError } : undefined));
    }, Math.max(0, deadline - performance.now()));
    timer.unref();
  }

  private validate(client: TrackedClient, startedAt: number, deadline: number, timeoutMs: number, site: CheckoutSite | undefined, callback: Callback): void {
    this.counters.prePings++;
    const queryTimeout = Math.max(1, Math.round(Math.min(this.settings.validationTimeoutMs, deadline - performance.now())));
    client.query({ text: PING, query_timeout: queryTimeout } as pg.QueryConfig, (err: Error | null) => {
      if (!err) return this.handOut(client, startedAt, site, callback);
      this.counters.prePingFailures++;
      this.logger.debug?.(`db-pool "${this.settings.name}": pre-ping failed, discarding the connection: ${err.message}`);
      client.release(err);
      this.attempt(startedAt, deadline, timeoutMs, site, callback, err);
    });
  }

  private handOut(client: TrackedClient, startedAt: number, site: CheckoutSite | undefined, callback: Callback): void {
    const checkedOutAt = performance.now();
    this.timings.wait.observe((checkedOutAt - startedAt) / 1000);
    client[CHECKED_OUT_AT] = checkedOutAt;
    this.leaks.checkout(client, site);
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
      if (err || client[DEAD]) return release(err ?? true);
      // Released before the server's ReadyForQuery: an error answer (pg calls back before the
      // ReadyForQuery that carries the transaction status), or a query abandoned by
      // query_timeout. Wait for the server to settle.
      if (client.readyForQuery === false) return this.settleAndRelease(client, release);
      this.resetAndRelease(client, release);
    };
    this.counters.acquired++;
    callback(undefined, client, client.release);
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
    release();
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
      release();
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
    (client.connection as NodeJS.EventEmitter | undefined)?.prependListener('errorMessage', (msg: { severity?: string }) => {
      if (msg.severity === 'FATAL' || msg.severity === 'PANIC') client[DEAD] = true;
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
    if (this.fillTimer) return;
    this.fillTimer = setTimeout(() => {
      this.fillTimer = undefined;
      this.fill();
    }, delayMs);
    this.fillTimer.unref();
  }

  /** Tops the pool back up to `poolSize` after connections were closed, with back-off on failure. */
  private fill(): void {
    const missing = this.settings.poolSize - this.totalCount;
    for (let i = 0; i < missing; i++) {
      this.openOne((err) => {
        if (!err) {
          this.fillRetryMs = FILL_RETRY_MIN_MS;
          return;
        }
        this.logger.debug?.(`db-pool "${this.settings.name}": refill failed: ${err.message}`);
        this.scheduleFill(this.fillRetryMs);
        this.fillRetryMs = Math.min(this.fillRetryMs * 2, FILL_RETRY_MAX_MS);
      });
    }
  }

  /** Opens one new connection and puts it straight into the idle list. */
  private openOne(done: (err?: Error) => void): void {
    if (this.ending || this.totalCount >= this.settings.poolSize + this.settings.maxOverflow) return done();
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

function passwordsOf(options: pg.PoolConfig): string[] {
  const out: string[] = [];
  if (typeof options.password === 'string' && options.password) out.push(options.password);
  if (options.connectionString) {
    try {
      const fromUrl = decodeURIComponent(new URL(options.connectionString).password);
      if (fromUrl) out.push(fromUrl);
    } catch {
      // not a URL pg can use either; nothing to hide
    }
  }
  return out;
}
