import { EventEmitter } from 'node:events';
import { performance } from 'node:perf_hooks';
import { trace } from '@opentelemetry/api';
import pg from 'pg';
import { PoolClosedError, PoolFailoverError, PoolUnavailableError, type PoolState } from '../errors.js';
import { scrubSecrets } from '../redact.js';
import type { BreakerState } from './breaker.js';
import { Acquire } from './checkout.js';
import { type ConcurrencyLimitState, GradientLimit } from './concurrency-limit.js';
import type { Connections } from './connection.js';
import type { Connector, HostStatus } from './connector.js';
import type { AdmissionGate } from './core/gate.js';
import type { ResourcePool } from './core/resource-pool.js';
import type { BudgetDecision, BudgetSampler } from '../monitor/budget.js';
import type { PositionSource } from './consistency.js';
import { currentDeadline } from './deadline.js';
import type { PoolTimings } from './histogram.js';
import { wireLayers } from './layers.js';
import type { CheckoutSite, LeakTracker, StackCaptureStats } from './leak-tracker.js';
import { PoolLease } from './lease.js';
import { callersContext, hideSecrets, promised } from './pg-api.js';
import type { PoolEntry } from './pool-entry.js';
import type { ReturnPath } from './return-path.js';
import { type DbPoolSettings, type PgPoolOptions, settingsFromPg } from './settings.js';
import { type ConnectHealth, type DbPoolCounters, PoolStats } from './tracker.js';

type Release = (err?: Error | boolean) => void;
type ConnectCallback = (err: Error | undefined, client: pg.PoolClient | undefined, release: Release) => void;
type QueryCallback = (err: Error | undefined, result?: pg.QueryResult) => void;
const NOOP = () => {};

/**
 * A PostgreSQL pool with pg.Pool's contract (`connect()`, `query()`, `end()`, its options, counts
 * and events) and SQLAlchemy QueuePool's semantics on top: `poolSize` connections kept warm,
 * `maxOverflow` more under load, a typed acquire deadline, recycling with jitter, pre-ping, and
 * connections rolled back and reset before anyone else gets them; a caller gets a lease valid for
 * its checkout only. The facade of the layers in docs/architecture.md: the generic core (./core),
 * the Postgres connection layer (./connection.ts, ./return-path.ts) with failover
 * (./failover.ts), and this class with the checkout loop (./checkout.ts) and the lease.
 */
export class DbPool extends EventEmitter {
  readonly settings: DbPoolSettings;
  /** pg.Pool's options as given, with pg-pool's defaults filled in (the password and connection string are not enumerable). */
  readonly options: pg.PoolOptions & PgPoolOptions;
  readonly Client: typeof pg.Client;

  // The layers the checkout path reads (internal: not part of the drop-in's API).
  readonly core: ResourcePool<PoolEntry, Acquire>;
  readonly connections: Connections;
  readonly stats = new PoolStats();
  private readonly returnPath: ReturnPath;
  private readonly gate: AdmissionGate;
  private readonly connector: Connector;
  private readonly Promise: PromiseConstructor;
  /** Undefined when leak tracking is off (DB_POOL_LEAK_THRESHOLD 0): the checkout path calls nothing for it. */
  private readonly leaks: LeakTracker | undefined;
  private readonly shutdown: (done: () => void) => void;
  private endCalled = false;

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
    const capacity = poolSize + maxOverflow;
    this.options = hideSecrets(
      {
        ...options,
        max: capacity,
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
    const layers = wireLayers(this, options, this.settings, this.stats);
    ({ core: this.core, connections: this.connections, returnPath: this.returnPath, gate: this.gate, connector: this.connector } = layers);
    ({ leaks: this.leaks, shutdown: this.shutdown } = layers);
  }

  // ----- pg.Pool's counts and db-pool's state --------------------------------------------------

  /** pg-pool's `_clients` (private there; code written against pg-pool reads it): the open connections' clients. */
  get _clients(): pg.Client[] {
    const clients: pg.Client[] = [];
    for (const entry of this.core.slots()) if (!entry.connecting) clients.push(entry.client);
    return clients;
  }

  /** The pool's name (the `name` option; `default` for the drop-in), in its errors and logs. */
  get name(): string {
    return this.settings.name;
  }
  /** `end()` was called (pg.Pool's). */
  get ending(): boolean {
    return this.endCalled;
  }
  /** Every connection has closed since `end()` (pg.Pool's). */
  get ended(): boolean {
    return this.core.ended;
  }
  get totalCount(): number {
    return this.core.total;
  }
  get idleCount(): number {
    return this.core.idleCount;
  }
  get waitingCount(): number {
    return this.core.waiting;
  }
  get expiredCount(): number {
    let n = 0;
    for (const entry of this.core.slots()) if (entry.expired) n++;
    return n;
  }

  /** The pool's counts right now (`total` includes connections still being opened). */
  state(): PoolState {
    const { total, idleCount: idle, busy: active, waiting } = this.core;
    return { total, active, idle, waiting };
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

  /** Open connections per host address (a read: one pass over the connections). */
  connectionsByHost(): Map<string, number> {
    const counts = new Map<string, number>();
    for (const entry of this.core.slots())
      if (entry.host && !entry.connecting) counts.set(entry.host.address, (counts.get(entry.host.address) ?? 0) + 1);
    return counts;
  }

  /** The pool has a host list or a session requirement (`target_session_attrs`): health and metrics show its hosts. */
  get highAvailability(): boolean {
    return this.connector.highAvailability;
  }

  /** The connect circuit breaker: `open` while connection attempts are held back after every host failed. */
  breakerState(): { state: BreakerState; opens: number; retryAt: number } {
    const { state, opens, retryAt } = this.gate.breaker;
    return { state, opens, retryAt };
  }

  /**
   * Connections the pool hands out at once: its capacity, or with `DB_POOL_ADAPTIVE` the limit it
   * has learnt (between `DB_POOL_ADAPTIVE_MIN` and the capacity) and the baseline checkout time
   * it learnt it against.
   */
  concurrencyLimit(): ConcurrencyLimitState {
    const { limit: c, capacity } = this.gate;
    return {
      adaptive: c.adaptive,
      limit: c.limit,
      floor: c.adaptive ? Math.min(this.settings.adaptiveMin, capacity) : capacity,
      ceiling: capacity,
      baselineMs: c instanceof GradientLimit ? c.baseline : NaN,
    };
  }

  /** Checkouts reported as possible leaks (DB_POOL_LEAK_THRESHOLD) that have not come back. */
  leaksOutstanding(): number {
    return this.leaks?.outstanding() ?? 0;
  }

  /** Checkout stacks captured and skipped so far (DB_POOL_LEAK_STACK_RATE); zeros when leak tracking is off. */
  leakStackStats(): StackCaptureStats {
    return this.leaks?.stackStats() ?? { captured: 0, skipped: 0, armed: false };
  }

  /** How long the longest-held connection has been checked out, in ms (0 when none is). */
  oldestCheckoutMs(): number {
    const now = performance.now();
    let oldest = 0;
    for (const entry of this.core.slots()) if (entry.checkedOutAt >= 0) oldest = Math.max(oldest, now - entry.checkedOutAt);
    return oldest;
  }

  // ----- acquiring ----------------------------------------------------------------------------

  connect(): Promise<pg.PoolClient>;
  connect(callback: ConnectCallback): void;
  connect(callback?: ConnectCallback): Promise<pg.PoolClient> | void {
    const site = this.leaks?.capture(this.connect);
    if (callback) {
      // Called back on a later tick, as pg.Pool does; on error with a no-op release, as pg.Pool
      // gives; in the caller's async context (AsyncLocalStorage, a request's deadline, a span),
      // not that of whoever released the connection it gets.
      // Served at once (an idle connection), the callback's tick is queued here, in the caller's
      // context already; only an acquire that waits needs that context kept for it.
      let inCallersContext: ConnectCallback | undefined;
      let answered = false;
      this.acquire(this.settings.poolTimeoutMs, false, site, (err, lease) => {
        answered = true;
        process.nextTick(inCallersContext ?? callback, err, lease as unknown as pg.PoolClient | undefined, lease ? lease.release : NOOP);
      });
      if (!answered) inCallersContext = callersContext(callback);
      return;
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
    const site = this.leaks?.capture(this.connectWithin);
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
    const site = this.leaks?.capture(this.query);
    return promised(this.Promise, callback as QueryCallback | undefined, (done) => {
      // The acquire's own callback rather than connect()'s: the caller hears back only after the
      // query, so the extra tick connect(callback) takes (as pg.Pool does) buys nothing here.
      this.acquire(this.settings.poolTimeoutMs, false, site, (err, lease) => {
        if (err) return done(err);
        this.settings.trace?.('dispatching query');
        try {
          lease!.query(text as string, values as unknown[], (queryErr: Error | null, result: pg.QueryResult) => {
            // The drop-in closes the connection of a failed statement, as pg.Pool does; createDbPool's keeps it (the return path checks it).
            lease!.release(this.settings.dropIn ? (queryErr ?? undefined) : undefined);
            done(queryErr ?? undefined, result);
          });
        } catch (thrown) {
          // pg refuses some arguments by throwing (a null query): the caller hears it, the connection goes back.
          lease!.release();
          done(thrown as Error);
        }
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
   * Opens connections until `poolSize` are open. Resolves once they are (the pool
   * report's "checked in" equals the pool size); when some could not be opened, rejects, after every attempt has ended,
   * with the first connect error.
   */
  async warmUp(): Promise<void> {
    const missing = this.settings.poolSize - this.core.total;
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
    const acquire = new Acquire(this, startedAt, deadline, timeoutMs, probe, request, scope, trace.getActiveSpan(), site, callback);
    if (scope?.signal === undefined || acquire.abortWith(scope.signal)) this.core.acquire(acquire);
  }

  /** @internal Hands a connection to an acquire's caller: a lease for this checkout. */
  lease(acquire: Acquire, entry: PoolEntry): void {
    acquire.unwatch?.();
    const now = performance.now();
    entry.checkedOutAt = now;
    const waitedMs = now - acquire.startedAt;
    this.stats.acquired(waitedMs);
    if (acquire.span !== undefined && (waitedMs >= 1 || acquire.prePings > 0)) acquire.trace(waitedMs);
    this.leaks?.checkout(entry, acquire.site, acquire.span);
    const lease = new PoolLease(this, entry, acquire.scope);
    if (this.listenerCount('acquire') > 0) this.emit('acquire', lease);
    acquire.callback(undefined, lease);
  }

  /** @internal The error a caller refused by the open connect breaker gets. */
  unavailable(): PoolUnavailableError {
    const { retryAt, lastFailure } = this.gate.breaker;
    return new PoolUnavailableError(this.settings.name, this.state(), retryAt, { cause: lastFailure });
  }

  // ----- giving back (the lease's owner) --------------------------------------------------------

  /** Takes a connection back from its lease (@internal: called by the lease's `release`). */
  giveBack(entry: PoolEntry, err: Error | boolean | undefined): void {
    const useMs = performance.now() - entry.checkedOutAt;
    this.stats.released(useMs);
    // The limit went up: waiters held back by it are served (whatever happens to this connection).
    if (this.gate.released(useMs, this.core.busy)) this.core.match();
    this.leaks?.checkin(entry);
    entry.checkedOutAt = -1;
    if (this.listenerCount('release') > 0) this.emit('release', err instanceof Error ? err : undefined, entry.seenAs);
    if (entry.removed) return; // closed by shutdown while it was out
    // One callback per connection, made at its first return: a release allocates nothing for it.
    entry.afterReturn ??= (verdict) => (verdict.keep ? this.core.release(entry) : this.core.destroy(entry, verdict.reason));
    this.returnPath.takeBack(entry, err, entry.afterReturn);
  }

  /** @internal The lease's error for a statement on a connection whose host was evicted. */
  evictedError(entry: PoolEntry): Error {
    return new PoolFailoverError(this.settings.name, this.state(), entry.host?.address ?? 'unknown', entry.evicted ?? 'evicted');
  }

  /** @internal How long the answer to a cancelled statement whose outcome matters is awaited (DB_VALIDATION_TIMEOUT_MS). */
  get cancelWaitMs(): number {
    return this.settings.validationTimeoutMs;
  }

  /**
   * @internal Set by a replica router with `DB_REPLICA_CONSISTENCY=read-your-writes` over this
   * pool: a write committed here inside a read-your-writes scope is noted there, and its position
   * read from this source when the scope needs it.
   */
  positionSource: PositionSource | undefined = undefined;

  /** @internal `DB_POOL_SIZE=auto`: the connection budget's presence connection and samples (createDbPool sets it; the monitor samples). */
  budget: BudgetSampler | undefined = undefined;
  /** @internal The budget's last decision. */
  budgetDecision: BudgetDecision | undefined = undefined;

  /** @internal A request's deadline passed under a running statement (the lease's query): it is cancelled now, once. */
  deadlinePassed(entry: PoolEntry): void {
    this.connections.deadlinePassed(entry);
  }

  // ----- opening (warm-up, refill) --------------------------------------------------------------

  /**
   * Changes the pool's size while it runs: `poolSize` connections kept open, `maxOverflow` more
   * under load. Growing serves the callers waiting at once, and the refill opens connections up to
   * the new size. Shrinking closes idle connections above the new capacity now (the longest idle
   * first) and connections out as they come back; it fails no checkout in progress (callers
   * waiting wait for a connection within the new capacity). The adaptive limit's ceiling follows.
   */
  resize(poolSize: number, maxOverflow: number): void {
    const problems: string[] = [];
    if (!Number.isInteger(poolSize) || poolSize < 0) problems.push(`poolSize=${String(poolSize)}: must be an integer of at least 0`);
    if (!Number.isInteger(maxOverflow) || maxOverflow < 0)
      problems.push(`maxOverflow=${String(maxOverflow)}: must be an integer of at least 0`);
    if (problems.length === 0 && poolSize + maxOverflow < 1) problems.push('poolSize + maxOverflow must be at least 1');
    if (problems.length > 0) throw new RangeError(`db-pool "${this.settings.name}": resize(${problems.join('; ')})`);
    if (this.endCalled) return;
    this.settings.poolSize = poolSize;
    this.settings.maxOverflow = maxOverflow;
    this.options.max = poolSize + maxOverflow;
    this.options.min = poolSize;
    this.core.resize(poolSize, poolSize + maxOverflow);
  }

  /** @internal Opens one connection for the idle list (warm-up, refill). */
  openIdle(done: (err?: Error) => void): void {
    this.core.openIdle(done, (why) => (why === 'closed' ? new PoolClosedError(this.settings.name, this.state()) : this.unavailable()));
  }

  /** @internal Every host failed twice in a row: the queue fails now rather than at each caller's deadline. */
  breakerOpened(err: Error): void {
    this.stats.breakerOpened();
    this.settings.logger.warn(
      `db-pool "${this.settings.name}": connections failed on every host; holding back new ones (connect circuit breaker open): ${scrubSecrets(err.message)}`,
    );
    this.core.refuseWaiters();
  }

  // ----- shutting down ------------------------------------------------------------------------

  /**
   * Resolves once no connection is checked out, or after `timeoutMs`: what an owner that must
   * release its callers' connections itself (TypeORM's `destroy()` releases every query runner,
   * which cancels their statements) waits for first, so that work in flight finishes within the
   * shutdown grace. Acquires are still served meanwhile.
   */
  drain(timeoutMs = this.settings.shutdownGraceMs): Promise<void> {
    return new this.Promise<void>((resolve) => this.core.drain(timeoutMs, resolve));
  }

  /**
   * Shuts down as pg.Pool's `end()` does: a new acquire fails at once (PoolClosedError); callers
   * already queued are served as connections come back or finish opening, so no queued work is
   * lost; idle connections nobody waits for close now, the others as they come back. After
   * `shutdownGraceMs`, callers still queued fail (PoolClosedError) and connections still checked
   * out or being opened (leaked, or stuck on a dead server) are closed, so shutdown always finishes.
   */
  end(): Promise<void>;
  end(callback: (err?: Error) => void): void;
  end(callback?: (err?: Error) => void): Promise<void> | void {
    if (this.endCalled) {
      const err = new Error('Called end on pool more than once');
      return callback ? callback(err) : this.Promise.reject(err);
    }
    this.endCalled = true;
    // The budget's presence connection goes last, once the pool's own connections are closed: the
    // other processes hear of it and take the share it gave back.
    return promised<void>(this.Promise, callback as ((err?: Error) => void) | undefined, (done) =>
      this.shutdown(() =>
        this.budget
          ? void this.budget.close().then(
              () => done(),
              () => done(),
            )
          : done(),
      ),
    );
  }
}
