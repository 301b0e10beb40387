import { AsyncResource } from 'node:async_hooks';
import { EventEmitter } from 'node:events';
import { performance } from 'node:perf_hooks';
import pg from 'pg';
import {
  PoolClosedError,
  PoolConnectError,
  PoolDeadlineError,
  PoolFailoverError,
  PoolLeaseError,
  PoolOverloadedError,
  PoolTimeoutError,
  PoolUnavailableError,
  type PoolState,
} from '../errors.js';
import { scrubSecrets } from '../redact.js';
import { type BreakerState, ConnectBreaker } from './breaker.js';
import { type ConcurrencyLimit, type ConcurrencyLimitState, FixedLimit, GradientLimit } from './concurrency-limit.js';
import { Connector, type HostStatus, INTERNAL_CONNECT_TIMEOUT_MS, type SessionState, sessionMatches, watchRole } from './connector.js';
import type { Span } from '@opentelemetry/api';
import { currentDeadline, type Deadline } from './deadline.js';
import type { HostAddress } from './hosts.js';
import type { PoolTimings } from './histogram.js';
import { CheckoutLeakTracker, type CheckoutSite, type LeakTracker, NO_LEAK_TRACKING, type StackCaptureStats } from './leak-tracker.js';
import { delegateToClient, PoolLease } from './lease.js';
import { lifetimeOf, Refill } from './lifetime.js';
import { awaitingServer, connectionLost, destroySocket, openSubmittables, protocolOf, queuedQueries } from './pg-internals.js';
import { stopSubmittable } from './submittables.js';
import { activeSpan, bindOtelMetricsWhenRegistered, type OtelBinding, POOL_NAME_ATTRIBUTE } from './otel.js';
import { PoolEntry } from './pool-entry.js';
import { type DbPoolSettings, type PgPoolOptions, settingsFromPg } from './settings.js';
import { type ConnectHealth, type DbPoolCounters, PoolStats, type RemovalReason } from './tracker.js';
import { cancelAndSettle, inTransaction, ping, resetSession, rollback, sendCancel, settle, watchSession } from './validation.js';

type Release = (err?: Error | boolean) => void;
type ConnectCallback = (err: Error | undefined, client: pg.PoolClient | undefined, release: Release) => void;
type QueryCallback = (err: Error | undefined, result?: pg.QueryResult) => void;
const NOOP = () => {};

/** Errors by which a server says it is going away (SQLSTATE class 57, operator intervention). */
const FAILOVER_CODES = new Map([
  ['57P01', 'admin_shutdown'],
  ['57P02', 'crash_shutdown'],
  ['57P03', 'cannot_connect_now'],
]);

/** One acquire, from the call to the hand-out or the failure. */
interface Acquire {
  readonly startedAt: number;
  /** performance.now() by which it must be served; Infinity = no deadline (pg's default). */
  readonly deadline: number;
  readonly timeoutMs: number;
  /** A short-deadline acquire of its own (`connectWithin`): counted apart when it times out, never shed, not held to the concurrency limit. */
  readonly probe: boolean;
  /**
   * The deadline is a request's (`withDeadline`), which bounds its statements too: it is shed
   * when its wait plus the mean use time would pass it, not just its wait.
   */
  readonly request: boolean;
  /** The request's deadline in force when it was made (`withDeadline`): its lease bounds statements by it. */
  readonly scope: Deadline | undefined;
  /** The span active where it was asked for (a tracer registered): told of a wait, a pre-ping, a retry. */
  readonly span: Span | undefined;
  /** A probe counted in `probesQueued` while it waits in the queue. */
  queuedProbe: boolean;
  /** Pre-pings run for it (each a round trip before the hand-out), and those that found their connection dead (each sent it round again). */
  prePings: number;
  retries: number;
  readonly site: CheckoutSite | undefined;
  readonly callback: (err: Error | undefined, lease?: PoolLease) => void;
  /** Handed out or failed; a connection meant for it later goes back to the pool. */
  settled: boolean;
  /** Why the last try failed (a dead connection's pre-ping): the timeout's cause. */
  lastError: Error | undefined;
}

/**
 * A PostgreSQL pool with pg.Pool's contract — `connect()` (promise and callback), `query()`,
 * `end()`, its options, counts and events — and SQLAlchemy QueuePool's semantics on top:
 * `poolSize` connections kept warm and topped up, `maxOverflow` more under load that close when
 * idle, an acquire deadline with a typed error, recycling with jitter, pre-ping with a bypass
 * window, and connections handed back inside a transaction or with session state rolled back
 * and reset before anyone else gets them. What a caller gets is a lease valid for its checkout
 * only.
 *
 * `new DbPool(pgOptions)` is a drop-in for `new pg.Pool(pgOptions)`; `createDbPool()` builds one
 * from db-pool's configuration. The queue is db-pool's own: FIFO, one deadline timer for all
 * waiters.
 */
export class DbPool extends EventEmitter {
  readonly settings: DbPoolSettings;
  /** pg.Pool's options as given, with pg-pool's defaults filled in (the password and connection string are not enumerable). */
  readonly options: pg.PoolOptions & PgPoolOptions;
  readonly Client: typeof pg.Client;
  ending = false;
  ended = false;

  private readonly stats = new PoolStats();
  private readonly clientConfig: pg.ClientConfig;
  private readonly Promise: PromiseConstructor;
  private readonly leaks: LeakTracker;
  private readonly refill: Refill;
  /** Every connection, being opened or open. */
  private readonly entries = new Set<PoolEntry>();
  /** Open and free; the last one in is the first out (warm connections, fewer pre-pings). */
  private readonly idle: PoolEntry[] = [];
  /** Callers waiting, first in first out. */
  private queue: Acquire[] = [];
  /** Acquires not in the queue and not settled: their connection is being validated. */
  private readonly validating = new Set<Acquire>();
  private opening = 0;
  /** Connections being closed; the pool has ended when none is left either. */
  private closing = 0;
  private deadlineTimer: NodeJS.Timeout | undefined;
  private deadlineAt = Infinity;
  private idleSweeper: NodeJS.Timeout | undefined;
  private readonly endWaiters: ((err?: Error) => void)[] = [];
  private graceTimer: NodeJS.Timeout | undefined;
  private readonly connector: Connector;
  private readonly breaker: ConnectBreaker;
  private readonly concurrency: ConcurrencyLimit;
  private readonly otel: OtelBinding;
  /** Probes (readiness, samplers) in the queue: served first when the limit holds others back. */
  private probesQueued = 0;
  /** Releases so far, and the stall guard's timer (adaptive limit only). */
  private releases = 0;
  private stallTimer: NodeJS.Timeout | undefined;
  /** Callers of drain() waiting for the checkouts to come back. */
  private readonly drainWaiters: (() => void)[] = [];
  /** Hosts with cancel requests not yet confirmed, and how many (cancelStatement). */
  private readonly suspectHosts = new Map<HostAddress, number>();
  /** Hosts whose role is being checked on a connection of its own (checkRole). */
  private readonly checkingRole = new Set<HostAddress>();

  /**
   * @param options pg.Pool's options: `max`, `min`, `connectionTimeoutMillis`, `idleTimeoutMillis`,
   *   `maxLifetimeSeconds`, `maxUses`, `allowExitOnIdle`, `Client`, `onConnect`, `verify`, `log`,
   *   `Promise`, and every `pg.Client` option (`connectionString`, `keepAlive`, `ssl`, …).
   * @param settings db-pool's own settings over those derived from `options` (`createDbPool` passes them from the configuration).
   */
  constructor(options: PgPoolOptions = {}, settings: Partial<DbPoolSettings> = {}) {
    super();
    this.settings = settingsFromPg(options, settings);
    const { poolSize, maxOverflow, maxUses, allowExitOnIdle, recycleMs, overflowIdleTimeoutMs } = this.settings;
    this.options = hideSecrets(
      {
        ...options,
        max: poolSize + maxOverflow,
        min: poolSize,
        maxUses,
        allowExitOnIdle,
        maxLifetimeSeconds: recycleMs / 1000,
        idleTimeoutMillis: overflowIdleTimeoutMs,
      },
      options,
    );
    this.Client = (options.Client ?? pg.Client) as typeof pg.Client;
    this.Promise = (options.Promise ?? Promise) as PromiseConstructor;
    this.clientConfig = hideSecrets({ ...options, connectionTimeoutMillis: this.settings.connectTimeoutMs }, options);
    this.connector = new Connector({ Client: this.Client, clientConfig: this.clientConfig, lost: () => this.stats.failover() });
    this.breaker = new ConnectBreaker({
      threshold: 2,
      baseBackoffMs: 100,
      maxBackoffMs: 800,
      probe: () => this.probeConnect(),
      opened: (err) => this.breakerOpened(err),
    });
    this.concurrency = this.settings.adaptive
      ? new GradientLimit({ floor: this.settings.adaptiveMin, ceiling: poolSize + maxOverflow })
      : new FixedLimit(poolSize + maxOverflow);
    const { name, leakThresholdMs, leakStackRate, logger } = this.settings;
    this.leaks =
      leakThresholdMs > 0
        ? new CheckoutLeakTracker({
            poolName: name,
            thresholdMs: leakThresholdMs,
            stackRate: leakStackRate,
            logger,
            records: () => this.entries,
          })
        : NO_LEAK_TRACKING;
    this.otel = bindOtelMetricsWhenRegistered({
      name,
      timings: this.stats.timings,
      state: () => this.state(),
      waiting: () => this.queue.length,
      counters: this.stats.counters,
      capacity: { min: poolSize, max: poolSize + maxOverflow },
    });
    this.refill = new Refill({
      name,
      logger,
      missing: () => this.settings.poolSize - this.entries.size,
      openOne: (done) => this.openIdle(done),
    });
  }

  // ----- pg.Pool's counts and db-pool's state --------------------------------------------------

  /** The pool's name (the `name` option; `default` for the drop-in), in its errors and logs. */
  get name(): string {
    return this.settings.name;
  }

  get totalCount(): number {
    return this.entries.size;
  }
  get idleCount(): number {
    return this.idle.length;
  }
  get waitingCount(): number {
    return this.queue.length;
  }
  get expiredCount(): number {
    let n = 0;
    for (const entry of this.entries) if (entry.expired) n++;
    return n;
  }

  /** The pool's counts right now (`total` includes connections still being opened). */
  state(): PoolState {
    const total = this.entries.size;
    const idle = this.idle.length;
    return { total, active: total - idle - this.opening, idle, waiting: this.queue.length };
  }

  /** Running totals since the pool was created. */
  get counters(): DbPoolCounters {
    return this.stats.counters;
  }

  /** Wait, use and create times, in seconds. */
  get timings(): PoolTimings {
    return this.stats.timings;
  }

  /** How the recent connection attempts went (the monitor turns failures into health). */
  connectHealth(): ConnectHealth {
    return this.stats.connectHealth();
  }

  /** Each host of the pool's list: its role and state as the pool last saw them. */
  hosts(): HostStatus[] {
    return this.connector.hosts();
  }

  /** Open connections per host address (a read: one pass over the entries). */
  connectionsByHost(): Map<string, number> {
    const counts = new Map<string, number>();
    for (const entry of this.entries) {
      if (entry.host && !entry.connecting) counts.set(entry.host.address, (counts.get(entry.host.address) ?? 0) + 1);
    }
    return counts;
  }

  /** The pool has a host list or a session requirement (`target_session_attrs`): health and metrics show its hosts. */
  get highAvailability(): boolean {
    return this.connector.highAvailability;
  }

  /** The connect circuit breaker: `open` while connection attempts are held back after every host failed. */
  breakerState(): { state: BreakerState; opens: number; retryAt: number } {
    return { state: this.breaker.state, opens: this.breaker.opens, retryAt: this.breaker.retryAt };
  }

  /**
   * Connections the pool hands out at once: its capacity, or with `DB_POOL_ADAPTIVE` the limit it
   * has learnt (between `DB_POOL_ADAPTIVE_MIN` and the capacity) and the baseline checkout time
   * it learnt it against.
   */
  concurrencyLimit(): ConcurrencyLimitState {
    const c = this.concurrency;
    return {
      adaptive: c.adaptive,
      limit: c.limit,
      floor: c.adaptive ? Math.min(this.settings.adaptiveMin, this.capacity) : this.capacity,
      ceiling: this.capacity,
      baselineMs: c instanceof GradientLimit ? c.baseline : NaN,
    };
  }

  private get capacity(): number {
    return this.settings.poolSize + this.settings.maxOverflow;
  }

  /** Connections out for a caller (checked out, being validated for one, or being reset after one). */
  private get busy(): number {
    return this.entries.size - this.idle.length - this.opening;
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
    const now = performance.now();
    let oldest = 0;
    for (const entry of this.entries) if (entry.checkedOutAt >= 0) oldest = Math.max(oldest, now - entry.checkedOutAt);
    return oldest;
  }

  // ----- acquiring ----------------------------------------------------------------------------

  connect(): Promise<pg.PoolClient>;
  connect(callback: ConnectCallback): void;
  connect(callback?: ConnectCallback): Promise<pg.PoolClient> | void {
    const site = this.leaks.capture(this.connect);
    if (callback) {
      // Called back on a later tick, as pg.Pool does; on error with a no-op release, as pg.Pool
      // gives; in the caller's async context (AsyncLocalStorage, a request's deadline, a span),
      // not that of whoever released the connection it gets.
      const inCallersContext = callersContext(callback);
      return this.acquire(this.settings.poolTimeoutMs, false, site, (err, lease) =>
        process.nextTick(inCallersContext, err, lease as unknown as pg.PoolClient | undefined, lease ? lease.release : NOOP),
      );
    }
    return new this.Promise((resolve, reject) =>
      this.acquire(this.settings.poolTimeoutMs, false, site, (err, lease) =>
        err ? reject(err) : resolve(lease as unknown as pg.PoolClient),
      ),
    );
  }

  /**
   * Acquires with a deadline of its own, shorter than `DB_POOL_TIMEOUT`: for probes and
   * background samplers that must not queue behind a busy pool. Its timeouts are counted in
   * `counters.probeTimeouts`, not `counters.timeouts`.
   */
  connectWithin(timeoutMs: number): Promise<pg.PoolClient> {
    const site = this.leaks.capture(this.connectWithin);
    return new this.Promise((resolve, reject) =>
      this.acquire(timeoutMs, true, site, (err, lease) => (err ? reject(err) : resolve(lease as unknown as pg.PoolClient))),
    );
  }

  /**
   * pg.Pool's `query()`: checks out, runs one query, hands the connection back. A query that
   * fails keeps its connection when the server is fine (pg.Pool discards it); the release
   * decides, as for any checkout.
   */
  // pg.Pool's overloads, as @types/pg spells them, so that a DbPool goes wherever a pg.Pool does.
  /* eslint-disable @typescript-eslint/no-explicit-any */
  query<T extends pg.Submittable>(queryStream: T): T;
  query<R extends any[] = any[], I = any[]>(
    queryConfig: pg.QueryArrayConfig<I>,
    values?: pg.QueryConfigValues<I>,
  ): Promise<pg.QueryArrayResult<R>>;
  query<R extends pg.QueryResultRow = any, I = any[]>(queryConfig: pg.QueryConfig<I>): Promise<pg.QueryResult<R>>;
  query<R extends pg.QueryResultRow = any, I = any[]>(
    queryTextOrConfig: string | pg.QueryConfig<I>,
    values?: pg.QueryConfigValues<I>,
  ): Promise<pg.QueryResult<R>>;
  query<R extends any[] = any[], I = any[]>(
    queryConfig: pg.QueryArrayConfig<I>,
    callback: (err: Error, result: pg.QueryArrayResult<R>) => void,
  ): void;
  query<R extends pg.QueryResultRow = any, I = any[]>(
    queryTextOrConfig: string | pg.QueryConfig<I>,
    callback: (err: Error, result: pg.QueryResult<R>) => void,
  ): void;
  query<R extends pg.QueryResultRow = any, I = any[]>(
    queryText: string,
    values: pg.QueryConfigValues<I>,
    callback: (err: Error, result: pg.QueryResult<R>) => void,
  ): void;
  /* eslint-enable @typescript-eslint/no-explicit-any */
  query(text: unknown, values?: unknown, callback?: unknown): unknown {
    if (typeof text === 'function') {
      const err = new Error('Passing a function as the first parameter to pool.query is not supported');
      return promised(this.Promise, text as QueryCallback, (done) => setImmediate(() => done(err)));
    }
    if (typeof values === 'function') {
      callback = values;
      values = undefined;
    }
    // Called back in the caller's async context, not that of the release that served it.
    if (typeof callback === 'function') callback = callersContext(callback as QueryCallback);
    const site = this.leaks.capture(this.query);
    return promised(this.Promise, callback as QueryCallback | undefined, (done) => {
      // The acquire's own callback rather than connect()'s: the caller hears back only after the
      // query, so the extra tick connect(callback) takes (as pg.Pool does) buys nothing here.
      this.acquire(this.settings.poolTimeoutMs, false, site, (err, lease) => {
        if (err) return done(err);
        lease!.query(text as string, values as unknown[], (queryErr: Error | null, result: pg.QueryResult) => {
          lease!.release();
          done(queryErr ?? undefined, result);
        });
      });
    });
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
    try {
      return await client.query<R>({ text, query_timeout: left } as pg.QueryConfig);
    } finally {
      client.release();
    }
  }

  /** `SELECT 1` within `timeoutMs` in all: the readiness probe. */
  async ping(timeoutMs: number): Promise<void> {
    await this.queryWithin('SELECT 1', timeoutMs);
  }

  /**
   * Opens connections until `poolSize` are open. Resolves once they are (the seed's
   * "Checked In: 20"); when some could not be opened, rejects, after every attempt has ended,
   * with the first connect error.
   */
  async warmUp(): Promise<void> {
    const missing = this.settings.poolSize - this.entries.size;
    const attempts = Array.from(
      { length: Math.max(0, missing) },
      () => new Promise<void>((resolve, reject) => this.openIdle((err) => (err ? reject(err) : resolve()))),
    );
    const failed = (await Promise.allSettled(attempts)).find((r) => r.status === 'rejected');
    if (failed) throw (failed as PromiseRejectedResult).reason;
  }

  private acquire(timeoutMs: number, probe: boolean, site: CheckoutSite | undefined, callback: Acquire['callback']): void {
    const startedAt = performance.now();
    let deadline = timeoutMs > 0 ? startedAt + timeoutMs : Infinity;
    // A request's deadline (withDeadline) earlier than the pool's own bounds the wait.
    const scope = probe ? undefined : currentDeadline();
    const request = scope !== undefined && scope.at < deadline;
    if (request) {
      deadline = scope.at;
      timeoutMs = Math.max(0, Math.round(scope.at - startedAt));
    }
    const acquire: Acquire = {
      startedAt,
      deadline,
      timeoutMs,
      probe,
      request,
      scope,
      span: activeSpan(),
      queuedProbe: false,
      prePings: 0,
      retries: 0,
      site,
      callback,
      settled: false,
      lastError: undefined,
    };
    this.attempt(acquire, startedAt);
  }

  /** One try: an idle connection (pre-pinged if it sat idle), else a place in the queue. */
  private attempt(acquire: Acquire, now: number): void {
    if (this.ending) return this.fail(acquire, new PoolClosedError(this.settings.name, this.state()));
    // A deadline that has passed is final: no idle connection is taken (and pinged) after it.
    if (now >= acquire.deadline) return this.timeOut(acquire, this.state());
    // Probes (readiness, samplers) are not held to the concurrency limit: they are tiny, and a
    // pool that sheds load must not look dead.
    while (this.idle.length > 0 && (acquire.probe || this.busy < this.concurrency.limit)) {
      const entry = this.idle.pop()!;
      if (entry.dead || connectionLost(entry.client)) {
        this.remove(entry, 'broken');
        continue;
      }
      if (this.settings.allowExitOnIdle) refSocket(entry.client, true);
      if (this.settings.prePing && now - entry.lastUsed > this.settings.prePingBypassMs) return this.validate(acquire, entry);
      if (this.suspectHosts.size > 0 && entry.host !== undefined && this.suspectHosts.has(entry.host)) return this.validate(acquire, entry);
      return this.handOut(acquire, entry, now);
    }
    const shed = acquire.probe ? undefined : this.shedReason(acquire, now);
    if (shed !== undefined) {
      this.stats.shed();
      return this.fail(acquire, new PoolOverloadedError(this.settings.name, this.state(), shed));
    }
    if (!this.breaker.allowsConnect) {
      // With connections out, a caller waits for one to come back (no new one is opened); with
      // none, it is refused at once. A readiness probe or sampler is the breaker's probe when none
      // is out, else it waits for the one that is (within its own short deadline).
      if (!acquire.probe && !this.hasConnections()) return this.refuseByBreaker(acquire);
      this.enqueue(acquire);
      if (acquire.probe && this.entries.size < this.capacity && this.breaker.probeNow()) this.open(undefined, true);
      return;
    }
    this.enqueue(acquire);
    // A probe held back by the limit with no idle connection gets one of its own, within capacity.
    if (acquire.probe && this.idle.length === 0 && this.entries.size < this.capacity && this.opening < this.queue.length)
      this.open(undefined, true);
    else this.openForWaiters();
    if (this.concurrency.adaptive && !acquire.probe) this.watchStall();
  }

  private enqueue(acquire: Acquire): void {
    this.queue.push(acquire);
    if (acquire.probe && !acquire.queuedProbe) {
      acquire.queuedProbe = true;
      this.probesQueued++;
    }
    this.watchDeadline(acquire);
  }

  /** A queued probe has left the queue (served or failed). */
  private dequeued(acquire: Acquire): void {
    if (!acquire.queuedProbe) return;
    acquire.queuedProbe = false;
    this.probesQueued--;
  }

  /**
   * The adaptive limit moves only when connections come back. Should none come back while callers
   * wait behind the limit — the connections out are held long (a LISTEN, a report, a leak) and fill
   * it — the limit is raised by one after a while (four mean use times, 100 ms–1 s), and again, until
   * a caller is served: a limit never strands the queue.
   */
  private watchStall(): void {
    if (this.stallTimer !== undefined || this.ending) return;
    const armedAt = this.releases;
    const afterMs = Math.min(1_000, Math.max(100, 4 * this.stats.meanUseMs));
    this.stallTimer = setTimeout(() => {
      this.stallTimer = undefined;
      if (this.ending || this.queue.length === 0) return;
      if (this.releases === armedAt && this.busy >= this.concurrency.limit && this.concurrency.unstall()) this.serveWaiters();
      if (this.queue.length > 0) this.watchStall();
    }, afterMs);
    this.stallTimer.unref();
  }

  /**
   * The pre-ping, bounded by DB_VALIDATION_TIMEOUT_MS rather than by the caller's deadline: a
   * server slower than the caller's patience is not a dead one. The caller still fails at its
   * deadline; the connection then goes back to the pool if the ping answers.
   */
  private validate(acquire: Acquire, entry: PoolEntry): void {
    this.validating.add(acquire);
    this.watchDeadline(acquire);
    this.stats.prePingStarted();
    acquire.prePings++;
    // A host with a cancel request still unconfirmed may be partitioned: its ping gets a connect's bound.
    const suspect = entry.host !== undefined && this.suspectHosts.has(entry.host);
    ping(entry.client, suspect ? this.cancelTimeoutMs : this.settings.validationTimeoutMs, (err) => {
      this.validating.delete(acquire);
      if (err) {
        this.stats.prePingFailed();
        this.settings.logger.debug?.(
          `db-pool "${this.settings.name}": pre-ping failed, discarding the connection: ${scrubSecrets(err.message)}`,
        );
        if (suspect) this.hostGone(entry, 'a ping went unanswered while a cancel request was unconfirmed');
        this.remove(entry, 'pre-ping');
        acquire.retries++;
        if (acquire.settled) return;
        acquire.lastError = err;
        return this.attempt(acquire, performance.now());
      }
      const now = performance.now();
      entry.lastUsed = now;
      if (acquire.settled || this.ending) return this.makeAvailable(entry);
      this.handOut(acquire, entry, now);
    });
  }

  private handOut(acquire: Acquire, entry: PoolEntry, now: number): void {
    acquire.settled = true;
    this.dequeued(acquire);
    entry.checkedOutAt = now;
    const waitedMs = now - acquire.startedAt;
    this.stats.acquired(waitedMs);
    // On the caller's span, an acquire that did more than take an idle connection: one event (the
    // cheapest record that keeps each of several acquires of a request apart).
    if (acquire.span !== undefined && (waitedMs >= 1 || acquire.prePings > 0)) this.traceAcquire(acquire, waitedMs);
    this.leaks.checkout(entry, acquire.site, acquire.span);
    const lease = new PoolLease(this, entry, acquire.scope);
    if (this.listenerCount('acquire') > 0) this.emit('acquire', lease);
    acquire.callback(undefined, lease);
  }

  private traceAcquire(acquire: Acquire, waitedMs: number): void {
    acquire.span!.addEvent('db_pool.acquire', {
      [POOL_NAME_ATTRIBUTE]: this.settings.name,
      'db_pool.wait_ms': Math.round(waitedMs * 1000) / 1000,
      'db_pool.pre_pings': acquire.prePings,
      'db_pool.retries': acquire.retries,
    });
  }

  private fail(acquire: Acquire, err: Error): void {
    if (acquire.settled) return;
    acquire.settled = true;
    this.dequeued(acquire);
    acquire.callback(err);
  }

  private timeOut(acquire: Acquire, state: PoolState): void {
    if (acquire.settled) return;
    if (acquire.request) {
      // The caller's own deadline, not the pool's DB_POOL_TIMEOUT: not a pool timeout (its metric
      // and alert stay for callers the pool kept waiting past its own bound).
      this.stats.deadlineExpired();
      return this.fail(acquire, new PoolDeadlineError(this.settings.name, acquire.scope!.budgetMs, false, { cause: acquire.lastError }));
    }
    this.stats.timedOut(acquire.probe);
    this.fail(
      acquire,
      new PoolTimeoutError(this.settings.name, acquire.timeoutMs, state, acquire.lastError ? { cause: acquire.lastError } : undefined),
    );
  }

  /** One timer for every waiter: armed for the earliest deadline, never touched on the hot path. */
  private watchDeadline(acquire: Acquire): void {
    if (acquire.deadline < this.deadlineAt) this.armDeadline(acquire.deadline);
  }

  private armDeadline(at: number): void {
    clearTimeout(this.deadlineTimer);
    this.deadlineAt = at;
    // A caller in the queue keeps the process alive until it is served or fails (as pg-pool's timer
    // does), even when no socket is open (the breaker holding connects back). A pre-ping's deadline
    // alone does not: its socket is busy anyway.
    this.deadlineTimer = setTimeout(() => this.expireWaiters(), Math.max(0, at - performance.now()));
    if (this.queue.length === 0) this.deadlineTimer.unref();
  }

  /** Fails every waiter whose deadline has passed, and arms the timer for the next one. */
  private expireWaiters(): void {
    this.deadlineTimer = undefined;
    this.deadlineAt = Infinity;
    const now = performance.now();
    const state = this.state(); // as the callers saw it, themselves still waiting
    const expired: Acquire[] = [];
    let next = Infinity;
    const waiting: Acquire[] = [];
    for (const acquire of this.queue) {
      if (acquire.settled) continue;
      if (acquire.deadline <= now) expired.push(acquire);
      else {
        waiting.push(acquire);
        next = Math.min(next, acquire.deadline);
      }
    }
    this.queue = waiting;
    for (const acquire of this.validating) {
      if (acquire.deadline <= now) expired.push(acquire);
      else next = Math.min(next, acquire.deadline);
    }
    for (const acquire of expired) {
      this.validating.delete(acquire);
      this.timeOut(acquire, state);
    }
    if (next < Infinity) this.armDeadline(next);
  }

  /**
   * The first waiter worth serving: one whose request deadline would pass during its statement
   * (less time left than 1.5 × the mean use) fails now instead — the statement would only be cancelled,
   * after taking the server's time from callers who can still be answered.
   */
  private nextServable(now: number): Acquire | undefined {
    for (;;) {
      const waiter = this.nextWaiter();
      if (!waiter || !waiter.request || this.stats.useSamples < 16) return waiter;
      const left = waiter.deadline - now;
      // Its statement needs the mean use time and a margin for one slower than the mean: an answer
      // that lands at the deadline is as lost as one cancelled, and took the server's time.
      if (left >= 1.5 * this.stats.meanUseMs) return waiter;
      this.stats.shed();
      const err = new PoolOverloadedError(
        this.settings.name,
        this.state(),
        `${Math.round(left)} ms left of its deadline when a connection came free, less than 1.5 × the ${Math.round(this.stats.meanUseMs)} ms a connection is held on average`,
      );
      // Told on its own tick: a callback that throws must not unwind the release that served it.
      waiter.settled = true;
      process.nextTick(() => waiter.callback(err));
    }
  }

  /** The first probe in the queue (taken out of it): served past the limit. */
  private queuedProbe(): Acquire | undefined {
    const i = this.queue.findIndex((a) => a.probe && !a.settled);
    return i === -1 ? undefined : this.queue.splice(i, 1)[0];
  }

  /** The first waiter still waiting. */
  private nextWaiter(): Acquire | undefined {
    while (this.queue.length > 0) {
      const acquire = this.queue.shift()!;
      if (!acquire.settled) return acquire;
    }
    // Nobody waits: the deadline timer (which keeps the process alive) goes.
    if (this.deadlineTimer !== undefined && this.validating.size === 0) {
      clearTimeout(this.deadlineTimer);
      this.deadlineTimer = undefined;
      this.deadlineAt = Infinity;
    }
    return undefined;
  }

  // ----- releasing ----------------------------------------------------------------------------

  /** Takes a connection back from its lease (@internal: called by the lease's `release`). */
  giveBack(entry: PoolEntry, err: Error | boolean | undefined): void {
    const now = performance.now();
    const useMs = now - entry.checkedOutAt;
    this.stats.released(useMs);
    this.releases++;
    // The limit went up: waiters held back by it are served by idle or new connections (whatever
    // happens to this one below).
    if (this.concurrency.sample(useMs, this.busy)) this.serveWaiters();
    this.leaks.checkin(entry);
    entry.checkedOutAt = -1;
    if (this.drainWaiters.length > 0 && !this.checkedOut()) for (const done of this.drainWaiters.splice(0)) done();
    entry.lastUsed = now;
    if (this.listenerCount('release') > 0) this.emit('release', err instanceof Error ? err : undefined, entry.client);
    if (entry.removed) return; // closed by shutdown while it was out
    const client = entry.client;
    const busy = awaitingServer(client);
    const queued = queuedQueries(client);
    // A cursor, stream or COPY still open reads the connection through a reference of its own:
    // it is refused from now on, and the connection is closed with it rather than handed on —
    // once the server has answered what it sent (a cursor's Sync), so that it ends as any failed
    // cursor read ends and a close() of its own returns.
    if (((busy || queued > 0) && this.refuseSubmittables(entry)) || entry.discard) {
      if (!busy || entry.dead || connectionLost(client)) return this.remove(entry, 'discarded');
      return cancelAndSettle(
        client,
        (done) => this.cancelStatement(entry, done),
        this.settings.validationTimeoutMs,
        () => this.remove(entry, 'discarded'),
      );
    }
    // A socket that has died cannot settle: dropped now, not after a timeout. Queries the
    // caller queued before releasing would run in the next borrower's checkout: dropped with it.
    if (err || this.ending || entry.dead || connectionLost(client) || queued > 0) return this.remove(entry, err ? 'discarded' : 'broken');
    if (entry.evicted !== undefined) return this.remove(entry, 'failover');
    // A cancel was sent during the checkout (its deadline passed): the connection waits for it,
    // and for the server's answer, before anyone else gets it.
    if (entry.cancel !== undefined) {
      const cancel = entry.cancel;
      entry.cancel = undefined;
      const after = () => {
        if (cancel.failed) return this.remove(entry, 'broken');
        if (!awaitingServer(entry.client)) return this.resetAndReturn(entry);
        settle(entry.client, this.settings.validationTimeoutMs, (err) => (err ? this.remove(entry, 'broken') : this.resetAndReturn(entry)));
      };
      if (cancel.done) after();
      else cancel.then.push(after);
      return;
    }
    // Released before the server's ReadyForQuery (a query abandoned by query_timeout, a caller
    // gone): the query is cancelled on the server — nothing runs for a caller who left — and the
    // connection kept only if the server settles in time.
    if (busy) {
      return cancelAndSettle(
        entry.client,
        (done) => this.cancelStatement(entry, done),
        this.settings.validationTimeoutMs,
        (settleErr) => (settleErr ? this.remove(entry, 'broken') : this.resetAndReturn(entry)),
      );
    }
    this.resetAndReturn(entry);
  }

  /**
   * PostgreSQL's cancel request for the statement `entry` runs, on a connection of its own (bounded
   * like a connect: a cancel request is one). Until the server confirms it, the host is suspect:
   * a statement that timed out and a cancel that is not even accepted are what a partition looks
   * like, so idle connections to it are pinged before they are handed out, and a cancel that goes
   * unconfirmed, or a ping that goes unanswered meanwhile, means the host is gone.
   */
  private cancelStatement(entry: PoolEntry, done: (err?: Error) => void): void {
    const host = entry.host;
    this.stats.cancelled();
    if (host) this.suspectHosts.set(host, (this.suspectHosts.get(host) ?? 0) + 1);
    sendCancel(entry.client, host, this.cancelTimeoutMs, (err) => {
      if (host) {
        const left = this.suspectHosts.get(host)! - 1;
        if (left === 0) this.suspectHosts.delete(host);
        else this.suspectHosts.set(host, left);
        if (err) this.hostGone(entry, `a cancel request got no answer (${scrubSecrets(err.message)})`);
      }
      done(err);
    });
  }

  /** How long a cancel request, or a ping of a suspect host, may take: a connect's bound, within DB_VALIDATION_TIMEOUT_MS. */
  private get cancelTimeoutMs(): number {
    return Math.min(this.settings.validationTimeoutMs, this.settings.connectTimeoutMs || INTERNAL_CONNECT_TIMEOUT_MS);
  }

  /** Stops the cursors and streams a released connection still runs or holds queued; true if there were any. */
  private refuseSubmittables(entry: PoolEntry): boolean {
    const open = openSubmittables(entry.client);
    if (open.length === 0) return false;
    const err = new PoolLeaseError(
      this.settings.name,
      'read',
      `db-pool "${this.settings.name}": the client was released while a cursor, stream or COPY still used it; it was stopped and the connection closed (close it before releasing)`,
    );
    for (const submittable of open) stopSubmittable(submittable, err);
    return true;
  }

  /** @internal The lease's error for a statement on a connection whose host was evicted. */
  evictedError(entry: PoolEntry): Error {
    return new PoolFailoverError(this.settings.name, this.state(), entry.host?.address ?? 'unknown', entry.evicted ?? 'evicted');
  }

  /** @internal How long the answer to a cancelled statement whose outcome matters is awaited (DB_VALIDATION_TIMEOUT_MS). */
  get cancelWaitMs(): number {
    return this.settings.validationTimeoutMs;
  }

  /** @internal A request's deadline passed under a running statement (the lease's query): it is cancelled now, once. */
  deadlinePassed(entry: PoolEntry): void {
    if (entry.cancel !== undefined || entry.removed || entry.checkedOutAt < 0 || !awaitingServer(entry.client)) return;
    const cancel: NonNullable<PoolEntry['cancel']> = { done: false, failed: false, then: [] };
    entry.cancel = cancel;
    this.cancelStatement(entry, (err) => {
      cancel.done = true;
      cancel.failed = err !== undefined;
      for (const next of cancel.then.splice(0)) next();
    });
  }

  /** Rolls back a transaction left open and resets changed session state, then returns the connection. */
  private resetAndReturn(entry: PoolEntry): void {
    const { validationTimeoutMs, name, logger } = this.settings;
    if (inTransaction(entry.client)) {
      return rollback(entry.client, validationTimeoutMs, (err) => {
        this.stats.rolledBack(!err);
        if (!err) return this.resetAndReturn(entry); // a SET committed before, a LISTEN: the session reset covers them
        logger.warn(`db-pool "${name}": could not roll back a connection returned inside a transaction; discarding it`);
        this.remove(entry, 'reset-failed');
      });
    }
    if (entry.sessionChanged || this.settings.resetSession === 'always') {
      entry.sessionChanged = false;
      return resetSession(entry.client, entry.setUp, validationTimeoutMs, (err) => {
        entry.sessionChanged = false; // the reset's own RESET marked it again
        this.stats.sessionReset(!err);
        if (!err) return this.returnToPool(entry);
        logger.warn(`db-pool "${name}": could not reset the session state of a returned connection; discarding it`);
        this.remove(entry, 'reset-failed');
      });
    }
    this.returnToPool(entry);
  }

  private returnToPool(entry: PoolEntry): void {
    entry.uses++;
    // A host marked down (one of its connections ended) whose connection just served a checkout
    // is up: a terminated backend is not a server gone, and nothing else would say so while the
    // pool opens no connection there.
    if (entry.host !== undefined && this.connector.highAvailability) this.connector.serving(entry.host.address);
    if (this.ending) return this.remove(entry, 'shutdown');
    if (entry.expired) return this.remove(entry, 'recycled');
    // A session its borrower made read-only, which the reset did not undo: not what the pool promises.
    if (entry.session !== undefined && !sessionMatches(this.connector.target.targetSessionAttrs, entry.session))
      return this.remove(entry, 'discarded');
    if (entry.uses >= this.settings.maxUses) return this.remove(entry, 'max-uses');
    this.makeAvailable(entry);
  }

  /** Gives a connection to the first waiter, or puts it in the idle list. */
  private makeAvailable(entry: PoolEntry): void {
    if (this.ending) return this.remove(entry, 'shutdown');
    // Evicted while it was being validated, reset or set up: it never serves again.
    if (entry.evicted !== undefined) return this.remove(entry, 'failover');
    // The entry is still counted busy: handing it to a waiter keeps the count, within the limit
    // unless the limit has just come down (then it waits idle until the checkouts out fall below).
    const now = performance.now();
    const waiter = this.busy <= this.concurrency.limit ? this.nextServable(now) : this.probesQueued > 0 ? this.queuedProbe() : undefined;
    if (waiter) return this.handOut(waiter, entry, now);
    this.idle.push(entry);
    if (this.settings.allowExitOnIdle) refSocket(entry.client, false);
    if (this.entries.size > this.settings.poolSize) this.sweepIdleLater();
  }

  // ----- opening and closing connections ------------------------------------------------------

  /** Opens connections for waiters: one per waiter not already covered, within `max` and the concurrency limit. */
  private openForWaiters(): void {
    if (!this.breaker.allowsConnect) return;
    const { capacity } = this;
    const limit = this.concurrency.limit;
    while (this.entries.size < capacity && this.busy + this.opening < limit && this.opening < this.queue.length) this.open();
  }

  /** After the limit went up: waiters get idle connections, or new ones, up to the new limit. */
  private serveWaiters(): void {
    while (this.idle.length > 0 && this.busy < this.concurrency.limit) {
      const waiter = this.nextWaiter();
      if (!waiter) return;
      this.attempt(waiter, performance.now());
    }
    this.openForWaiters();
  }

  /** Opens one connection for the idle list (warm-up, refill). */
  private openIdle(done: (err?: Error) => void): void {
    if (this.ending) return done(new PoolClosedError(this.settings.name, this.state()));
    if (this.entries.size >= this.capacity) return done();
    if (!this.breaker.allowsConnect) return done(this.unavailable());
    this.open(done, true);
  }

  /**
   * Opens one connection; it goes to the first waiter or the idle list. `done` hears the outcome.
   * One the pool opens for itself (`internal`: a probe, the refill) is bounded even where pg's
   * options set no connect timeout.
   */
  private open(done?: (err?: Error) => void, internal = false): void {
    const startedAt = performance.now();
    let entry: PoolEntry | undefined;
    this.opening++;
    // pg builds a client synchronously and can throw there (an unreadable sslrootcert, EMFILE):
    // the connector reports that as a failed attempt like any other.
    this.connector.open(
      {
        attempt: (client) => {
          if (entry) entry.client = client;
          else this.entries.add((entry = new PoolEntry(client, startedAt)));
        },
        // A shutdown destroys the socket being opened; the walk goes no further.
        proceed: () => !this.ending,
        internal,
      },
      (err, opened) => {
        if (entry) entry.connecting = false;
        if (err) {
          if (entry) this.entries.delete(entry);
          return this.connectFailed(err, startedAt, done);
        }
        entry!.host = opened!.host;
        this.opening--;
        this.breaker.succeeded();
        this.stats.connectionCreated(performance.now() - startedAt);
        this.adopt(entry!, opened!.session, done);
      },
    );
  }

  /** The breaker's half-open probe: one connection attempt for the idle list. */
  private probeConnect(): void {
    if (this.ending) return;
    if (this.entries.size >= this.capacity) return this.breaker.succeeded();
    this.open((err) => {
      if (!err) this.openForWaiters();
    }, true);
  }

  private unavailable(): PoolUnavailableError {
    return new PoolUnavailableError(this.settings.name, this.state(), this.breaker.retryAt, { cause: this.breaker.lastFailure });
  }

  private refuseByBreaker(acquire: Acquire): void {
    this.stats.breakerRefused();
    this.fail(acquire, this.unavailable());
  }

  /** Every host failed twice in a row: the queue fails now rather than at each caller's deadline. */
  private breakerOpened(err: Error): void {
    this.stats.breakerOpened();
    this.settings.logger.warn(
      `db-pool "${this.settings.name}": connections failed on every host; holding back new ones (connect circuit breaker open): ${scrubSecrets(err.message)}`,
    );
    this.refuseWaiters();
  }

  /**
   * Why an acquire about to queue should fail now instead (undefined: let it queue): at capacity,
   * the callers waiting on the busy pool (not on a connection being opened) are DB_POOL_MAX_WAITING, or — at capacity, with the use time measured — its place in the queue
   * times the mean use time, over the pool's capacity (the rate connections come back at), puts its
   * hand-out past its deadline.
   * Probes (readiness, samplers) are never shed. Runs only when no connection is idle.
   */
  private shedReason(acquire: Acquire, now: number): string | undefined {
    const { maxWaiting } = this.settings;
    const limit = this.concurrency.limit;
    // Below the limit and the capacity this caller gets a connection of its own: never shed.
    if (this.busy < limit && this.entries.size < this.capacity) return undefined;
    // Waiters a connection being opened will serve are not waiting on the busy pool.
    const ahead = Math.max(0, this.queue.length - this.opening);
    if (maxWaiting > 0 && ahead >= maxWaiting) return `${ahead} caller(s) already waiting (DB_POOL_MAX_WAITING=${maxWaiting})`;
    if (acquire.deadline === Infinity || this.stats.useSamples < 16) return undefined;
    // The pool hands out limit / mean-use connections per ms: this caller's turn comes after ahead + 1 of them.
    const meanUse = this.stats.meanUseMs;
    const expected = ((ahead + 1) / limit) * meanUse;
    // A request's deadline bounds its statement too: it must be handed out with its use time left,
    // and a quarter of its budget is kept as margin (the waits and uses it was judged by are means;
    // an answer a little late is as lost as one not given).
    const left = acquire.deadline - now;
    if (acquire.request ? expected + meanUse <= 0.75 * left : expected <= left) return undefined;
    return `expected wait ${Math.round(expected)} ms${acquire.request ? ` and use ${Math.round(meanUse)} ms` : ''} (${ahead} ahead, ${limit} connections held ${Math.round(meanUse)} ms on average) is past the deadline (${Math.round(left)} ms left)`;
  }

  /** Open connections (checked out or idle): a waiter can still be served by one coming back. */
  private hasConnections(): boolean {
    return this.entries.size - this.opening > 0;
  }

  /**
   * While the breaker is open and no connection is left to come back, callers in the queue fail
   * now; probes wait for the breaker's own probe.
   */
  private refuseWaiters(): void {
    if (this.hasConnections()) return;
    const refused = this.queue.filter((a) => !a.settled && !a.probe);
    this.queue = this.queue.filter((a) => !a.settled && a.probe);
    for (const acquire of refused) this.refuseByBreaker(acquire);
  }

  private connectFailed(err: Error, startedAt: number, done: ((err?: Error) => void) | undefined): void {
    this.opening--;
    this.stats.connectionFailed(err);
    done?.(err);
    if (this.ending) return this.checkEnded();
    this.hostRefused(err);
    this.breaker.failed(err);
    if (!this.breaker.allowsConnect) this.refuseWaiters();
    // Fail fast, as pg.Pool does: one waiter per failed attempt, the longest waiting first — but
    // only one that was already waiting when the attempt began; a later one gets its own.
    const head = this.queue.find((a) => !a.settled);
    const waiter = head && head.startedAt <= startedAt ? this.nextWaiter() : undefined;
    if (waiter) {
      this.stats.connectFailed();
      // pg says only "timeout expired" when its connect timeout fires; name the setting.
      const reason =
        err.message === 'timeout expired'
          ? `Connection terminated due to connection timeout (DB_CONNECT_TIMEOUT ${this.settings.connectTimeoutMs} ms)`
          : scrubSecrets(err.message);
      this.fail(waiter, new PoolConnectError(this.settings.name, this.state(), reason, { cause: err }));
    }
    this.openForWaiters();
  }

  /** A new connection: listeners, lifetime, the application's set-up, then into service. */
  private adopt(entry: PoolEntry, session: SessionState, done: ((err?: Error) => void) | undefined): void {
    const client = entry.client;
    delegateOnce(this.Client, client);
    // Its errors must never crash the process: an idle one is dropped and reported, a
    // checked-out one is dropped when it comes back (its caller sees the query fail).
    client.on('error', (err: Error) => this.onClientError(entry, err));
    const protocol = protocolOf(client);
    // A FATAL answer (the backend was terminated, the server shuts down) reaches the query before
    // the socket's end does; marked first, so a caller that releases in its callback sees it.
    protocol.prependListener('errorMessage', (msg: { severity?: string; code?: string }) => {
      // Only a FATAL ends the session: any SQL can RAISE an ERROR, WARNING or NOTICE with a 57P0x
      // code (USING ERRCODE = 'admin_shutdown'), so only a FATAL one says the server is going. (An
      // immediate shutdown's 57P01 warning is not acted on either: the connection's end that
      // follows it is.)
      if (msg.severity === 'FATAL' || msg.severity === 'PANIC') {
        entry.dead = true;
        entry.fatalCode = msg.code ?? '';
        if (msg.code !== undefined && FAILOVER_CODES.has(msg.code))
          this.connectionEnded(entry, `${msg.code} ${FAILOVER_CODES.get(msg.code)}`);
      }
      // A write refused as read-only (25006) where the server does not report its state (before
      // 14, a pooler in between): a caller's own read-only transaction gives it too, so only this
      // connection goes, when it comes back; new connections check the server's role. (Where the
      // state is reported, a server-wide change arrives as a parameter status: watchRole.)
      else if (msg.code === '25006' && this.needsWrites && !session.reported) entry.expired = true;
    });
    // A connection that ends without the pool closing it: its server may be gone. (Its caller
    // may have released it before this event: remove() looks for that case too.)
    client.on('end', () => {
      if (!entry.endAsked) this.connectionEnded(entry, 'a connection was lost');
    });
    if (this.connector.target.targetSessionAttrs !== 'any') {
      entry.session = session;
      watchRole(client, session, this.connector.target.targetSessionAttrs, (why, parameter) => {
        // in_hot_standby is the server's alone (a promotion, a demotion). default_transaction_read_only
        // may be this session's own (SET, set_config(), SET SESSION CHARACTERISTICS, a function): the
        // server's is read on a connection of its own before anything is evicted.
        if (parameter === 'in_hot_standby') this.evictHost(entry.host, why);
        else this.checkRole(entry.host, why);
      });
    }
    const lifetime = lifetimeOf(this.settings.recycleMs, this.settings.recycleJitter);
    if (lifetime > 0) {
      entry.lifetimeTimer = setTimeout(() => this.retire(entry), lifetime);
      entry.lifetimeTimer.unref();
    }
    this.setUp(entry, (err) => {
      if (err) {
        this.remove(entry, 'broken');
        done?.(err);
        const waiter = this.nextWaiter();
        if (waiter)
          this.fail(
            waiter,
            new PoolConnectError(this.settings.name, this.state(), `the connection's set-up failed: ${scrubSecrets(err.message)}`, {
              cause: err,
            }),
          );
        return;
      }
      watchSession(client, () => (entry.sessionChanged = true));
      entry.lastUsed = performance.now();
      done?.();
      this.makeAvailable(entry);
    });
  }

  /**
   * The application's per-connection set-up — 'connect' listeners, pg-pool's `onConnect` and
   * `verify` hooks — runs before anyone gets the connection. The statements they send are kept
   * and replayed after a session reset, so a `SET search_path` made there survives it.
   */
  private setUp(entry: PoolEntry, done: (err?: Error) => void): void {
    const { onConnect, verify } = this.options;
    const client = entry.client;
    if (this.listenerCount('connect') === 0 && !onConnect && !verify) return done();
    const query = client.query;
    const record = (config: unknown, values: unknown) => {
      if (values !== undefined && typeof values !== 'function') return;
      const text = typeof config === 'string' ? config : (config as { text?: unknown } | null)?.text;
      if (typeof text === 'string' && !(config as { values?: unknown }).values) entry.setUp.push(text.trim().replace(/;+$/, ''));
    };
    (client as unknown as { query: unknown }).query = function (this: pg.Client, config: unknown, values?: unknown, callback?: unknown) {
      record(config, values);
      return (query as (...args: unknown[]) => unknown).call(this, config, values, callback);
    };
    const restore = () => delete (client as unknown as { query?: unknown }).query;
    try {
      this.emit('connect', client);
    } catch (err) {
      restore();
      return done(err as Error);
    }
    const hook = onConnect ? this.Promise.resolve().then(() => onConnect(client as pg.PoolClient)) : this.Promise.resolve();
    hook
      .then(() =>
        verify
          ? new this.Promise<void>((resolve, reject) => verify(client as pg.PoolClient, (err) => (err ? reject(err) : resolve())))
          : undefined,
      )
      // Whatever the set-up sent has run before the connection is handed out.
      .then(() =>
        queuedQueries(client) > 0 || awaitingServer(client)
          ? (query as (text: string) => Promise<unknown>).call(client, 'SELECT 1')
          : undefined,
      )
      .then(
        () => {
          restore();
          done();
        },
        (err: Error) => {
          restore();
          done(err);
        },
      );
  }

  /** The pool's sessions must accept writes (`target_session_attrs` read-write or primary). */
  private get needsWrites(): boolean {
    const attrs = this.connector.target.targetSessionAttrs;
    return attrs === 'read-write' || attrs === 'primary';
  }

  /**
   * A connection failed or ended without the pool closing it (a reset, a crash, a 57P0x), seen
   * once per connection whichever of pg's 'error', its 'end' or the release comes first: its host
   * may be gone. A FATAL the server sent for this session alone (idle_session_timeout,
   * idle_in_transaction_session_timeout, …) says why it ended: its host is fine.
   */
  private connectionEnded(entry: PoolEntry, why: string): void {
    if (entry.endSeen) return;
    entry.endSeen = true;
    if (entry.fatalCode !== undefined && !FAILOVER_CODES.has(entry.fatalCode)) return;
    this.hostGone(entry, why);
  }

  /**
   * A server signalled it is going away (57P01 shutdown, 57P02 crash, 57P03 not accepting
   * connections — as an error or, for an immediate shutdown, a warning), or one of its
   * connections was lost: its idle connections are closed now, so no caller is handed one and
   * nothing more is sent there; new connections walk the host list. Checked-out ones are left
   * to their callers (PostgreSQL sends the same 57P01 for `pg_terminate_backend()` of a single
   * backend, whose siblings then just reconnect) and are closed on return if they died.
   */
  private hostGone(entry: PoolEntry, why: string): void {
    const host = entry.host;
    if (!host || this.ending) return;
    let closed = 0;
    for (const other of [...this.idle]) {
      if (other.host === host && other !== entry) {
        this.remove(other, 'failover');
        closed++;
      }
    }
    if (closed > 0) this.stats.evicted(closed);
    // With one host and no session requirement there is nothing to fail over to: a terminated
    // backend is not a failover there (its alert would fire for a DBA's pg_terminate_backend).
    if (this.connector.highAvailability) this.connector.mark(host.address, 'down', why);
    if (closed > 0)
      this.settings.logger.debug?.(`db-pool "${this.settings.name}": ${host.address}: ${why}; closed its ${closed} idle connection(s)`);
  }

  /** A connection refused at the host's address: its idle connections are dead too. */
  private hostRefused(err: Error): void {
    const errors = (err as { errors?: { address: string; error: Error }[] }).errors ?? [];
    const refused = new Set(errors.filter((e) => (e.error as { code?: string }).code === 'ECONNREFUSED').map((e) => e.address));
    if ((err as { code?: string }).code === 'ECONNREFUSED' && this.connector.target.hosts.length === 1)
      refused.add(this.connector.target.hosts[0].address);
    if (refused.size === 0) return;
    let closed = 0;
    for (const entry of [...this.idle]) {
      if (entry.host && refused.has(entry.host.address)) {
        this.remove(entry, 'failover');
        closed++;
      }
    }
    if (closed > 0) this.stats.evicted(closed);
  }

  /**
   * One session said it became read-only, which its own statement may have done: a new
   * connection to its host says whether the server did. Evicts the host only then; one check per
   * host at a time (a reload reaches every connection of the host).
   */
  private checkRole(host: HostAddress | undefined, why: string): void {
    if (!host || this.ending || this.checkingRole.has(host)) return;
    this.checkingRole.add(host);
    this.connector.checkSession(host, (err, session) => {
      this.checkingRole.delete(host);
      this.stats.roleChecked();
      if (err) {
        // Unreachable: the host's own failures will show (its connections end, connects fail).
        this.settings.logger.debug?.(
          `db-pool "${this.settings.name}": ${host.address}: ${why}; its role could not be checked: ${scrubSecrets(err.message)}`,
        );
        return;
      }
      if (!sessionMatches(this.connector.target.targetSessionAttrs, session!)) this.evictHost(host, `${why} (a new session confirms it)`);
    });
  }

  /**
   * The server at `host` no longer has the session the pool needs (promoted, demoted, made
   * read-only): every connection to it leaves — idle ones now, checked-out ones refuse any
   * further statement (PoolFailoverError) and close when they come back. New connections walk
   * the host list again.
   */
  private evictHost(host: HostAddress | undefined, why: string): void {
    if (!host || this.ending) return;
    let evicted = 0;
    for (const entry of [...this.entries]) {
      if (entry.host !== host || entry.evicted !== undefined || entry.removed) continue;
      entry.evicted = why;
      evicted++;
      if (this.idle.includes(entry)) this.remove(entry, 'failover');
    }
    if (evicted === 0) return;
    this.stats.evicted(evicted);
    this.connector.mark(host.address, 'evicted', why);
    this.settings.logger.warn(
      `db-pool "${this.settings.name}": evicted ${evicted} connection(s) to ${host.address}: ${scrubSecrets(why)}; new connections walk the host list again`,
    );
  }

  private onClientError(entry: PoolEntry, err: Error): void {
    this.stats.clientError();
    // pg reports a dead socket as an error, before its 'end' (and before removal below).
    if (!entry.endAsked) this.connectionEnded(entry, `a connection failed: ${(err as { code?: string }).code ?? err.message}`);
    const i = this.idle.indexOf(entry);
    if (i === -1) return this.settings.logger.debug?.(`db-pool "${this.settings.name}": connection error: ${scrubSecrets(err.message)}`);
    this.idle.splice(i, 1);
    this.remove(entry, 'broken');
    if (this.listenerCount('error') > 0) this.emit('error', err, entry.client);
    else this.settings.logger.warn(`db-pool "${this.settings.name}": idle connection lost: ${scrubSecrets(err.message)}`);
  }

  /** Marks a connection as expired: closed now if idle, else when it comes back. */
  private retire(entry: PoolEntry): void {
    this.stats.recycled();
    entry.expired = true;
    const i = this.idle.indexOf(entry);
    if (i !== -1) {
      this.idle.splice(i, 1);
      this.remove(entry, 'recycled');
    }
  }

  /**
   * Takes a connection out of the pool and closes it politely. A server that never closes its
   * end (a hung backend) would hold the close, and shutdown, forever: past
   * DB_VALIDATION_TIMEOUT_MS the socket is destroyed.
   */
  private remove(entry: PoolEntry, reason: RemovalReason, now = false): void {
    if (entry.removed) return;
    entry.removed = true;
    this.entries.delete(entry);
    const i = this.idle.indexOf(entry);
    if (i !== -1) this.idle.splice(i, 1);
    clearTimeout(entry.lifetimeTimer);
    this.stats.connectionRemoved(reason);
    this.closing++;
    const client = entry.client;
    // Released (or found) already lost, before pg's 'end' reached its listener: the host may be gone.
    if (!entry.endAsked && !entry.connecting && connectionLost(client)) this.connectionEnded(entry, 'a connection was lost');
    // A statement still running (released with an error, with queries queued, at the end of the
    // shutdown grace) is cancelled first: closing the socket alone leaves it running on the
    // server, locks held, until it ends by itself.
    else if (!entry.endAsked && !entry.connecting && awaitingServer(client) && entry.cancel === undefined)
      this.cancelStatement(entry, NOOP);
    entry.endAsked = true;
    let closed = false;
    const onClosed = () => {
      if (closed) return;
      closed = true;
      clearTimeout(timer);
      this.closing--;
      if (this.listenerCount('remove') > 0) this.emit('remove', client);
      this.checkEnded();
    };
    const timer = setTimeout(() => destroySocket(client), now ? 0 : this.settings.validationTimeoutMs);
    timer.unref();
    client.end().then(onClosed, onClosed);
    if (this.ending) return;
    // The slot is free now: serve waiters without waiting for the close (unless the breaker holds
    // connects back: then they fail now if nothing is left to serve them), and keep the pool warm.
    if (this.breaker.allowsConnect) this.serveWaiters();
    else this.refuseWaiters();
    if (this.entries.size < this.settings.poolSize) this.refill.schedule();
  }

  /** Closes overflow connections idle longer than DB_POOL_OVERFLOW_IDLE_TIMEOUT (a sweep, not a timer per release). */
  private sweepIdleLater(): void {
    const timeoutMs = this.settings.overflowIdleTimeoutMs;
    if (this.idleSweeper || timeoutMs <= 0) return;
    this.idleSweeper = setTimeout(
      () => {
        this.idleSweeper = undefined;
        const now = performance.now();
        // Oldest idle first (the list is LIFO); never below the pool size.
        for (const entry of [...this.idle]) {
          if (this.entries.size <= this.settings.poolSize) break;
          if (now - entry.lastUsed >= timeoutMs) this.remove(entry, 'idle');
        }
        if (this.entries.size > this.settings.poolSize && this.idle.length > 0) this.sweepIdleLater();
      },
      Math.max(10, timeoutMs / 4),
    );
    this.idleSweeper.unref();
  }

  // ----- shutting down ------------------------------------------------------------------------

  /**
   * Resolves once no connection is checked out, or after `timeoutMs`: what an owner that must
   * release its callers' connections itself (TypeORM's `destroy()` releases every query runner,
   * which cancels their statements) waits for first, so that work in flight finishes within the
   * shutdown grace. Acquires are still served meanwhile.
   */
  drain(timeoutMs = this.settings.shutdownGraceMs): Promise<void> {
    return new this.Promise<void>((resolve) => {
      if (!this.checkedOut()) return resolve();
      const timer = setTimeout(done, timeoutMs);
      function done(): void {
        clearTimeout(timer);
        resolve();
      }
      this.drainWaiters.push(done);
    });
  }

  /** Any connection checked out (its caller has not released it). */
  private checkedOut(): boolean {
    for (const entry of this.entries) if (entry.checkedOutAt >= 0) return true;
    return false;
  }

  /**
   * Fails queued callers at once (PoolClosedError), closes idle connections now and the others as
   * they come back; connections still checked out or being opened after `shutdownGraceMs`
   * (leaked, or stuck on a dead server) are closed then, so shutdown always finishes.
   */
  end(): Promise<void>;
  end(callback: (err?: Error) => void): void;
  end(callback?: (err?: Error) => void): Promise<void> | void {
    if (this.ending) {
      const err = new Error('Called end on pool more than once');
      return callback ? callback(err) : this.Promise.reject(err);
    }
    this.ending = true;
    this.refill.stop();
    this.leaks.stop();
    this.breaker.stop();
    this.otel.unbind();
    clearTimeout(this.stallTimer);
    clearTimeout(this.deadlineTimer);
    clearTimeout(this.idleSweeper);
    const result = promised<void>(this.Promise, callback as ((err?: Error) => void) | undefined, (done) => this.endWaiters.push(done));
    // Each waiter is told on its own tick, after shutdown has begun: a callback that throws
    // stops neither the shutdown nor the others.
    const waiters = [...this.queue, ...this.validating];
    const state = { ...this.state(), waiting: waiters.length };
    this.queue = [];
    this.validating.clear();
    for (const acquire of waiters) {
      if (acquire.settled) continue;
      acquire.settled = true;
      process.nextTick(() => acquire.callback(new PoolClosedError(this.settings.name, state)));
    }
    for (const entry of [...this.idle]) this.remove(entry, 'shutdown');
    // Not unref'd: a shutdown under way keeps the process alive until it has finished.
    this.graceTimer = setTimeout(() => this.closeAll(), this.settings.shutdownGraceMs);
    this.checkEnded();
    return result;
  }

  private closeAll(): void {
    if (this.ended) return;
    const left = [...this.entries];
    if (left.length > 0) {
      this.settings.logger.warn(
        `db-pool "${this.settings.name}": closing ${left.length} connection(s) still checked out or being opened ${this.settings.shutdownGraceMs / 1000} s after shutdown began`,
      );
    }
    for (const entry of left) {
      if (entry.connecting)
        destroySocket(entry.client); // its connect fails, and the pool ends
      else this.remove(entry, 'shutdown', true);
    }
  }

  private checkEnded(): void {
    if (!this.ending || this.ended || this.entries.size > 0 || this.closing > 0 || this.opening > 0) return;
    this.ended = true;
    clearTimeout(this.graceTimer);
    for (const done of this.endWaiters.splice(0)) done();
  }
}

/**
 * `fn`, run in the async context it was made in (the caller's AsyncLocalStorage stores: a request's
 * deadline, a span) wherever it is called from. An AsyncResource of its own rather than
 * `AsyncResource.bind`, which also defines deprecated accessors on every bound function (twice the
 * cost, in profile); no destroy hook is wanted, so none is registered.
 */
function callersContext<A, B, C>(fn: (a: A, b: B, c: C) => void): (a: A, b: B, c: C) => void {
  const resource = new AsyncResource('db-pool.callback', { requireManualDestroy: true });
  return (a, b, c) => resource.runInAsyncScope(fn, undefined, a, b, c);
}

const delegatedClasses = new WeakSet<object>();
/** Gives leases the members of a client class, once per class. */
function delegateOnce(Client: typeof pg.Client, sample: pg.Client): void {
  if (delegatedClasses.has(Client)) return;
  delegatedClasses.add(Client);
  delegateToClient(sample);
}

/** pg's `client.ref()` / `unref()` (not in its typings): an idle socket that does not keep the process alive (`allowExitOnIdle`). */
function refSocket(client: pg.Client, ref: boolean): void {
  const c = client as unknown as { ref(): void; unref(): void };
  if (ref) c.ref();
  else c.unref();
}

/** Copies `password` and `connectionString` from `source` onto `target` as non-enumerable, as pg-pool hides the password. */
function hideSecrets<T extends object>(target: T, source: pg.PoolConfig): T {
  for (const key of ['password', 'connectionString'] as const) {
    if (key in source) Object.defineProperty(target, key, { value: source[key], enumerable: false, writable: true, configurable: true });
  }
  return target;
}

/** pg's dual API: a callback when one is given, else a promise. */
function promised<T>(
  P: PromiseConstructor,
  callback: ((err: Error | undefined, value?: T) => void) | undefined,
  run: (done: (err?: Error, value?: T) => void) => void,
): Promise<T> | undefined {
  if (callback) {
    run((err, value) => callback(err, value));
    return undefined;
  }
  return new P<T>((resolve, reject) => run((err, value) => (err ? reject(err) : resolve(value as T))));
}
