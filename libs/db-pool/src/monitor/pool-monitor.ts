import type { DbPoolConfig } from '../config/db-pool.options.js';
import type { BreakerState } from '../pool/breaker.js';
import type { HostRole, HostStateName } from '../pool/connector.js';
import type { DbPool } from '../pool/db-pool.js';
import type { BudgetDecision, BudgetTrigger } from './budget.js';
import { READ_ROUTES, type ReadReason, type ReplicaOutOfRotation, type ReplicaStatus } from '../pool/replicas.js';
import { SampleTimeoutError } from '../pool/sample-connection.js';
import type { DbPoolLogger } from '../pool/logger.js';
import { codeOf, describeState, PoolClosedError, PoolConnectError, PoolTimeoutError } from '../errors.js';
import { scrubSecrets } from '../redact.js';
import { RECOMMENDATIONS } from './messages.constant.js';
import { pgbouncerDatabase, samplePgBouncer, type PgBouncerStats } from './pgbouncer-stats.js';
import { sampleServerHeadroom, type ServerHeadroom } from './server-headroom.js';

export type PoolHealth = 'healthy' | 'warning' | 'critical';

/** The pool's state at one moment (the original design's `get_pool_status()`), plus `waiting`. */
export interface PoolStatus {
  /** Connections kept open (DB_POOL_SIZE). */
  size: number;
  checked_out: number;
  checked_in: number;
  /** Connections open beyond `size`. */
  overflow: number;
  max_overflow: number;
  /** checked_out / total_capacity × 100, one decimal. */
  utilization: number;
  health: PoolHealth;
  total_capacity: number;
  /** Callers queued for a connection. */
  waiting: number;
  /**
   * True while opening connections fails: the last attempt failed, within the last 30 s. With
   * no open connection left, that makes the pool critical.
   */
  connect_failing: boolean;
  /** Failed connection attempts since the last one that succeeded. */
  consecutive_connect_failures: number;
  /**
   * Why the last attempt failed: the driver's code (`ECONNREFUSED`, `28P01`, …), or, with
   * DB_POOL_HEALTH_DETAIL, its message (which may name the host). Null when none failed.
   */
  last_connect_error: string | null;
  /**
   * Connections handed out at once at most right now: `total_capacity`, or with DB_POOL_ADAPTIVE
   * the limit learnt from checkout latency (between DB_POOL_ADAPTIVE_MIN and `total_capacity`).
   */
  concurrency_limit: number;
  /** Acquires shed at once with PoolOverloadedError over the last 10 s (the advice window). */
  shed_recently: number;
  /** PgBouncer's own figures (last sample), when DB_PGBOUNCER_ADMIN_URL is set. */
  pgbouncer?: PgBouncerStats;
}

/** Overload control as a health body shows it. */
export interface PoolOverloadReport {
  /** DB_POOL_ADAPTIVE. */
  adaptive: boolean;
  /** Connections handed out at once at most, right now. */
  limit: number;
  /** Its bounds: DB_POOL_ADAPTIVE_MIN (the capacity when not adaptive) and the capacity. */
  floor: number;
  ceiling: number;
  /** The checkout time the limit is judged against, ms; null when not adaptive or not measured yet. */
  baseline_ms: number | null;
  /** DB_POOL_MAX_WAITING (0: no bound). */
  max_waiting: number;
  /** Acquires shed (PoolOverloadedError) since start. */
  shed_total: number;
  /** Statements cancelled on the server because their caller had left (deadline, query timeout). */
  cancels_total: number;
}

/** The pool's configuration as the report shows it, with the URL (password redacted). */
export interface PoolConfiguration {
  pool_size: number;
  max_overflow: number;
  timeout: number;
  recycle: number;
  pre_ping: boolean;
  /** The connection URL, password redacted; only with DB_POOL_HEALTH_DETAIL (it names the host). */
  url?: string;
}

/** One host of the pool's list as a health body shows it. */
export interface PoolHostReport {
  /** Its place in DATABASE_URL's host list, from 1. */
  index: number;
  role: HostRole;
  state: HostStateName;
  /** Connections of this pool open on it. */
  connections: number;
  /** `host:port`, and why it is not up: only with DB_POOL_HEALTH_DETAIL (they name the host). */
  address?: string;
  reason?: string;
}

/** The connect circuit breaker as a health body shows it. */
export interface PoolBreakerReport {
  state: BreakerState;
  /** When the next probe goes, while open (ISO time); null when closed. */
  retry_at: string | null;
  opens: number;
}

/** The pool report (`GET /health/db_pool`), plus the last server-headroom sample. */
export interface PoolHealthReport {
  /** For a read replica's pool: its lag and whether reads go to it. */
  replica?: PoolReplicaReport;
  timestamp: string;
  pool_status: PoolStatus;
  recommendations: string[];
  leak_detected: boolean;
  configuration: PoolConfiguration;
  server_headroom: ServerHeadroom | null;
  /** The connect circuit breaker (DATABASE_URL's hosts all failing opens it). */
  breaker: PoolBreakerReport;
  /** Overload control: the concurrency limit and what was shed. */
  overload: PoolOverloadReport;
  /** Each host of a host list, or of a URL with target_session_attrs; absent for a plain single-host URL. */
  hosts?: PoolHostReport[];
  /** A primary with read replicas: where its reads went, and why. */
  reads?: PoolReadsReport;
  /** `DB_POOL_SIZE=auto`: the connection budget's last decision and its inputs (null before the first sample). */
  budget?: BudgetDecision | null;
}

/**
 * Where the reads of a primary with replicas (DB_REPLICA_URLS) went since start-up, and why:
 * counts by reason under the side that served them (see `READ_ROUTES`).
 */
export interface PoolReadsReport {
  /** DB_REPLICA_CONSISTENCY. */
  consistency: 'eventual' | 'read-your-writes';
  replica: { total: number; eventual: number; replayed: number; replayed_on_check: number };
  primary: { total: number; replica_behind: number; position_unknown: number; no_replica: number };
  /**
   * Statements sent on the primary to read writes' WAL positions (read-your-writes; 0 with
   * eventual): each is shared by every write that committed before it was sent, and they go at most
   * one every 2 ms (`POSITION_READ_INTERVAL_MS`).
   */
  position_reads: number;
}

/** How long a failed connection attempt keeps `connect_failing` set, absent a later attempt. */
export const CONNECT_FAILURE_WINDOW_MS = 30_000;

/** A read replica's standing, in its pool's health body. */
export interface PoolReplicaReport {
  role: 'replica';
  /**
   * Replay lag at the last sample, ms on the pool's clock: the time since the primary passed the
   * position the replica has replayed. Null when unknown, or when the server is not a standby of
   * the primary.
   */
  lag_ms: number | null;
  /** WAL bytes from the replica's replay position to the primary's last sampled position; null when not known. */
  lag_bytes: number | null;
  /** The last sample could not measure the lag (the primary's or the replica's sample failed); `reason` says why. */
  lag_unknown: boolean;
  in_rotation: boolean;
  /** Why it is out of rotation, as a code (`lagging`, `lag_unknown`, `promoted`, …); null while in. */
  out_of_rotation: ReplicaOutOfRotation | null;
  /**
   * Why it is out of rotation or its lag is unknown. A failed sample's error is shown by its code,
   * or with DB_POOL_HEALTH_DETAIL by its message (which may name a host).
   */
  reason?: string;
}

export interface PoolMonitorOptions {
  /** The pool is a read replica: its standing in the rotation (out of rotation → health at least `warning`). */
  replica?: () => ReplicaStatus;
  /** The pool is a primary with read replicas: the router's read counts. */
  reads?: () => Record<ReadReason, number>;
  /** The pool is a primary with read replicas: the router's reads of writes' positions. */
  positionReads?: () => number;
  /** How long the pool must stay exhausted, with a connection held as long, to suspect a leak. @default 10000 */
  leakWindowMs?: number;
  /** Period of the leak and load bookkeeping. @default 1000 */
  tickMs?: number;
  /** Length of the window the pool-size advice is computed over. @default 10000 */
  adviceWindowMs?: number;
}

interface LoadSnapshot {
  at: number;
  shed: number;
  waits: number;
  waitsOver1ms: number;
  waitSum: number;
  uses: number;
  useSum: number;
}

/**
 * The pool seen from outside: status, health, leaks, recommendations and server headroom.
 * Everything is computed from counters the pool keeps or from samples taken in the background;
 * reading never waits on the pool.
 */
export class PoolMonitor {
  private exhaustedSince: number | undefined;
  /** Set by the monitor's tick: the pool has stayed exhausted, a connection held, for the leak window. */
  private leakSuspected = false;
  private headroom: ServerHeadroom | null = null;
  private pgbouncer: PgBouncerStats | undefined;
  private load: LoadSnapshot[] = [];
  private ticker: NodeJS.Timeout | undefined;
  private sampler: NodeJS.Timeout | undefined;
  private sampling = false;
  /** The budget's samples, one after another. */
  private budgetChain: Promise<unknown> = Promise.resolve();
  /** A budget sample is queued behind the one under way (a notice, a drain). */
  private budgetQueued = false;
  /** Listening for the pool's connections to drain to a smaller capacity. */
  private drained: (() => void) | undefined;
  private readonly leakWindowMs: number;
  private readonly tickMs: number;
  private readonly adviceWindowMs: number;
  private readonly replica: (() => ReplicaStatus) | undefined;
  private readonly reads: (() => Record<ReadReason, number>) | undefined;
  private readonly positionReads: (() => number) | undefined;

  constructor(
    readonly pool: DbPool,
    readonly config: DbPoolConfig,
    private readonly logger: DbPoolLogger,
    options: PoolMonitorOptions = {},
  ) {
    this.leakWindowMs = options.leakWindowMs ?? 10_000;
    this.tickMs = options.tickMs ?? 1_000;
    this.adviceWindowMs = options.adviceWindowMs ?? 10_000;
    this.replica = options.replica;
    this.reads = options.reads;
    this.positionReads = options.positionReads;
  }

  /** `DB_POOL_SIZE=auto`: the budget's last decision (undefined before the first sample, or without a budget). */
  getBudget(): BudgetDecision | undefined {
    return this.pool.budgetDecision;
  }

  /**
   * `DB_POOL_SIZE=auto`: one budget sample, and the pool resized to it (shrinking closes idle
   * connections first and fails no checkout). A failed sample keeps the size the pool has.
   * Samples run one at a time: one asked for while another is under way follows it.
   */
  sampleBudget(trigger: BudgetTrigger = 'interval'): Promise<BudgetDecision | undefined> {
    const run = this.budgetChain.then(() => this.takeBudgetSample(trigger));
    this.budgetChain = run;
    return run;
  }

  /** Another process's notice, or this pool drained to its new capacity: a sample after the one under way, shared by what comes meanwhile. */
  private sampleBudgetSoon(trigger: BudgetTrigger): void {
    if (this.budgetQueued) return;
    this.budgetQueued = true;
    void this.budgetChain.then(() => {
      this.budgetQueued = false;
      return this.sampleBudget(trigger);
    });
  }

  private async takeBudgetSample(trigger: BudgetTrigger): Promise<BudgetDecision | undefined> {
    const budget = this.pool.budget;
    if (!budget || this.pool.ending) return this.pool.budgetDecision;
    const timeoutMs = this.config.healthTimeoutMs;
    try {
      const { poolSize, maxOverflow } = this.pool.settings;
      // The claim the others read: the capacity, or the connections still out above it until they come back.
      const claim = () => Math.max(this.pool.settings.poolSize + this.pool.settings.maxOverflow, this.pool.totalCount);
      // The sample and the claims it decides, under the application's budget lock.
      const decision = await budget.locked(timeoutMs, async () => {
        const decided = await budget.decide(claim(), timeoutMs, trigger);
        // The pool began to end while the sample was out: it shows no claim now (its presence is about to leave).
        if (this.pool.ending) return undefined;
        // Growing: the claim first, so that no process sampling meanwhile counts those connections as free.
        if (decided.capacity > claim()) await budget.claim(decided.capacity, timeoutMs, true);
        if (decided.pool_size !== poolSize || decided.max_overflow !== maxOverflow)
          this.pool.resize(decided.pool_size, decided.max_overflow);
        if (claim() !== budget.claimed) await budget.claim(claim(), timeoutMs, true);
        return decided;
      });
      if (!decision) return this.pool.budgetDecision;
      if (this.pool.totalCount > decision.capacity) this.awaitDrain();
      if (decision.pool_size !== poolSize || decision.max_overflow !== maxOverflow) {
        this.logger.log(
          `db-pool "${this.name}": connection budget: capacity ${poolSize + maxOverflow} → ${decision.capacity} ` +
            `(${decision.inputs.processes} process(es), fair share ${decision.fair_share}, limited by ${decision.limited_by})`,
        );
      }
      this.pool.budgetDecision = decision;
    } catch (err) {
      this.logger.warn(
        `db-pool "${this.name}": connection budget not sampled, the pool keeps its size: ${scrubSecrets((err as Error).message)}`,
      );
    }
    return this.pool.budgetDecision;
  }

  /** Shrunk with connections out above the new capacity: once they are closed, the smaller claim is shown and the others hear of it. */
  private awaitDrain(): void {
    if (this.drained) return;
    this.drained = () => {
      if (this.pool.totalCount > this.pool.settings.poolSize + this.pool.settings.maxOverflow) return;
      this.stopAwaitingDrain();
      this.sampleBudgetSoon('drained');
    };
    this.pool.on('remove', this.drained);
  }

  private stopAwaitingDrain(): void {
    if (this.drained) this.pool.off('remove', this.drained);
    this.drained = undefined;
  }

  /** A primary with read replicas: where its reads went and why (undefined without replicas). */
  getReads(): PoolReadsReport | undefined {
    const counts = this.reads?.();
    if (!counts) return undefined;
    const report: PoolReadsReport = {
      consistency: this.config.replicaConsistency,
      replica: { total: 0, eventual: 0, replayed: 0, replayed_on_check: 0 },
      primary: { total: 0, replica_behind: 0, position_unknown: 0, no_replica: 0 },
      position_reads: this.positionReads?.() ?? 0,
    };
    for (const reason of Object.keys(READ_ROUTES) as ReadReason[]) {
      const side = report[READ_ROUTES[reason]] as Record<string, number>;
      side[reason] = counts[reason];
      side.total += counts[reason];
    }
    return report;
  }

  /** A read replica's standing (undefined for a primary pool). */
  getReplicaStatus(): ReplicaStatus | undefined {
    return this.replica?.();
  }

  /** The pool is a read replica's: readiness leaves it out (the primary serves its reads when it cannot). */
  get isReplica(): boolean {
    return this.replica !== undefined;
  }

  get name(): string {
    return this.config.name;
  }

  /** Starts the background bookkeeping and takes the first headroom sample (logging what it finds). */
  async start(): Promise<void> {
    if (this.ticker) return;
    this.ticker = setInterval(() => this.tick(), this.tickMs);
    this.ticker.unref();
    this.snapshotLoad();
    if (this.config.headroomIntervalMs > 0) {
      // The budget first: a process that starts takes its share before it opens more; then at
      // every notice of the application's other processes, as well as at the interval.
      if (this.pool.budget) this.pool.budget.onNotice = () => this.sampleBudgetSoon('notified');
      await this.sampleBudget();
      await Promise.all([this.sampleHeadroom(), this.samplePgBouncer()]);
      for (const advice of this.serverRecommendations()) this.logger.warn(`db-pool "${this.name}": ${advice}`);
      this.sampler = setInterval(() => this.sampleInBackground(), this.config.headroomIntervalMs);
      this.sampler.unref();
    }
  }

  /** One round of background samples, skipped while the previous one is still out (a slow server must not pile up acquires). */
  private sampleInBackground(): void {
    if (this.sampling) return;
    this.sampling = true;
    void Promise.all([this.sampleBudget(), this.sampleHeadroom(), this.samplePgBouncer()]).finally(() => (this.sampling = false));
  }

  stop(): void {
    if (this.pool.budget) this.pool.budget.onNotice = undefined;
    this.stopAwaitingDrain();
    clearInterval(this.ticker);
    clearInterval(this.sampler);
    this.ticker = this.sampler = undefined;
  }

  /** Nest lifecycle: the module starts the monitor once the application is up… */
  onApplicationBootstrap(): Promise<void> {
    return this.start();
  }

  /** …and stops it on shutdown. */
  onModuleDestroy(): void {
    this.stop();
  }

  getPoolStatus(): PoolStatus {
    const { total, active, idle, waiting } = this.pool.state();
    const size = this.pool.settings.poolSize;
    const capacity = size + this.pool.settings.maxOverflow;
    const connect = this.pool.connectHealth();
    const shed = this.pool.counters.overloaded - (this.load[0]?.shed ?? this.pool.counters.overloaded);
    const failing =
      connect.consecutiveFailures > 0 &&
      connect.lastFailureAt !== undefined &&
      performance.now() - connect.lastFailureAt < CONNECT_FAILURE_WINDOW_MS;
    return {
      size,
      checked_out: active,
      checked_in: idle,
      overflow: Math.max(0, total - size),
      max_overflow: this.pool.settings.maxOverflow,
      utilization: Math.round((active / capacity) * 1000) / 10,
      health: this.healthOf(active, capacity, idle, failing, shed),
      total_capacity: capacity,
      waiting,
      connect_failing: failing,
      consecutive_connect_failures: connect.consecutiveFailures,
      last_connect_error: connect.lastError ? this.describeError(connect.lastError) : null,
      concurrency_limit: this.pool.concurrencyLimit().limit,
      shed_recently: shed,
      ...(this.pgbouncer ? { pgbouncer: this.pgbouncer } : {}),
    };
  }

  /**
   * An error as a health body may show it. By default a driver's message is replaced by its
   * code (`ECONNREFUSED`, `28P01`, …): `getaddrinfo ENOTFOUND db-primary.internal` names the
   * host. With DB_POOL_HEALTH_DETAIL the message is shown (password positions masked).
   */
  describeError(err: Error): string {
    if (this.config.healthDetail) return scrubSecrets(err.message);
    // Our own texts: the pool's name and counts, a sample's bound.
    if (err instanceof PoolTimeoutError || err instanceof PoolClosedError || err instanceof SampleTimeoutError) return err.message;
    const timedOut = [err, err.cause].some((e) => e instanceof Error && e.message === 'timeout expired');
    const reason = timedOut
      ? `DB_CONNECT_TIMEOUT (${this.config.connectTimeoutMs} ms) expired`
      : (codeOf(err) ?? 'no error code; DB_POOL_HEALTH_DETAIL=true shows the message');
    return err instanceof PoolConnectError ? `could not open a connection: ${reason} (${describeState(err.state)})` : reason;
  }

  /**
   * The exhaustion heuristic — overflow maxed out and utilization above the critical threshold for
   * longer than 10 s — with one more condition that keeps a busy but healthy pool from being
   * flagged: a connection has been held that long too. Also true while a checkout reported by
   * DB_POOL_LEAK_THRESHOLD has not come back. A read: the suspicion is advanced by the monitor's
   * own timer (`start()`), never by asking.
   */
  checkConnectionLeaks(): boolean {
    return this.leakSuspected || this.pool.leaksOutstanding() > 0;
  }

  /** The recommendations for a status (by default, the pool's now). */
  getRecommendations(status: PoolStatus = this.getPoolStatus()): string[] {
    const out: string[] = [];
    const replica = this.replica?.();
    if (replica && !replica.inRotation) {
      out.push(
        RECOMMENDATIONS.REPLICA_OUT_OF_ROTATION(
          replica.outOfRotation ?? 'not_sampled',
          this.replicaReport(replica).reason ?? 'no reason given',
        ),
      );
    }
    // Only utilization is named as such: a warning for a replica out of rotation or a failing connect says why itself.
    if (status.health === 'warning' && status.checked_out * 100 > this.config.warnUtilization * status.total_capacity)
      out.push(RECOMMENDATIONS.WARNING(status.utilization));
    if (status.health === 'critical') out.push(RECOMMENDATIONS.CRITICAL(status.utilization));
    if (status.connect_failing)
      out.push(RECOMMENDATIONS.CONNECT_FAILING(status.consecutive_connect_failures, status.checked_out + status.checked_in));
    if (status.waiting > 0) out.push(RECOMMENDATIONS.WAITING(status.waiting));
    if (status.shed_recently > 0)
      out.push(
        RECOMMENDATIONS.OVERLOADED(
          status.shed_recently,
          Math.round(this.adviceWindowMs / 1000),
          status.concurrency_limit,
          status.total_capacity,
        ),
      );
    if (this.checkConnectionLeaks()) {
      const tracked = this.pool.leaksOutstanding();
      out.push(tracked > 0 ? RECOMMENDATIONS.LEAK_TRACKED(tracked, this.config.leakThresholdMs / 1000) : RECOMMENDATIONS.LEAK);
    }
    out.push(...this.serverRecommendations(), ...this.poolSizeAdvice());
    if (out.length === 0) out.push(RECOMMENDATIONS.HEALTHY);
    return out;
  }

  isPoolHealthy(status: PoolStatus = this.getPoolStatus()): boolean {
    return status.health !== 'critical' && !this.checkConnectionLeaks();
  }

  getConfiguration(): PoolConfiguration {
    const c = this.config;
    return {
      pool_size: c.poolSize,
      max_overflow: c.maxOverflow,
      timeout: c.poolTimeoutMs / 1000,
      recycle: c.recycleMs / 1000,
      pre_ping: c.prePing,
      ...(c.healthDetail ? { url: c.redactedUrl } : {}),
    };
  }

  /** The last server-headroom sample, or null before the first (or when sampling is off). */
  getServerHeadroom(): ServerHeadroom | null {
    return this.headroom;
  }

  /** The pool report (`GET /health/db_pool`), from one reading of the pool's status. */
  getHealthReport(): PoolHealthReport {
    const status = this.getPoolStatus();
    const breaker = this.pool.breakerState();
    return {
      timestamp: new Date().toISOString(),
      pool_status: status,
      recommendations: this.getRecommendations(status),
      leak_detected: this.checkConnectionLeaks(),
      configuration: this.getConfiguration(),
      server_headroom: this.shownHeadroom(),
      breaker: {
        state: breaker.state,
        retry_at: breaker.state === 'closed' ? null : new Date(breaker.retryAt).toISOString(),
        opens: breaker.opens,
      },
      overload: this.getOverload(),
      ...(this.pool.highAvailability ? { hosts: this.getHosts() } : {}),
      ...(this.replica ? { replica: this.replicaReport(this.replica()) } : {}),
      ...(this.reads ? { reads: this.getReads() } : {}),
      ...(this.pool.budget ? { budget: this.pool.budgetDecision ?? null } : {}),
    };
  }

  /** Overload control: the concurrency limit, its bounds, and what was shed and cancelled. */
  getOverload(): PoolOverloadReport {
    const c = this.pool.concurrencyLimit();
    const counters = this.pool.counters;
    return {
      adaptive: c.adaptive,
      limit: c.limit,
      floor: c.floor,
      ceiling: c.ceiling,
      baseline_ms: Number.isFinite(c.baselineMs) ? Math.round(c.baselineMs * 100) / 100 : null,
      max_waiting: this.config.maxWaiting,
      shed_total: counters.overloaded,
      cancels_total: counters.cancels,
    };
  }

  private replicaReport(r: ReplicaStatus): PoolReplicaReport {
    const reason = r.reason && r.cause ? `${r.reason}: ${this.describeError(r.cause)}` : r.reason;
    return {
      role: 'replica',
      lag_ms: r.lagMs,
      lag_bytes: r.lagBytes,
      lag_unknown: r.lagUnknown,
      in_rotation: r.inRotation,
      out_of_rotation: r.outOfRotation ?? null,
      ...(reason ? { reason } : {}),
    };
  }

  /** Each host of the pool's list: role, state and connections; addresses and reasons with DB_POOL_HEALTH_DETAIL. */
  getHosts(): PoolHostReport[] {
    const open = this.pool.connectionsByHost();
    return this.pool.hosts().map((h, i) => ({
      index: i + 1,
      role: h.role,
      state: h.state,
      connections: open.get(h.address) ?? 0,
      ...(this.config.healthDetail ? { address: h.address, ...(h.reason ? { reason: h.reason } : {}) } : {}),
    }));
  }

  /** The headroom sample as a health body shows it: other applications' names only with DB_POOL_HEALTH_DETAIL. */
  private shownHeadroom(): ServerHeadroom | null {
    const h = this.headroom;
    if (!h || this.config.healthDetail) return h;
    const { by_application: _omitted, ...counts } = h;
    return counts;
  }

  /** Takes a headroom sample now; failures keep the previous sample. */
  async sampleHeadroom(): Promise<ServerHeadroom | null> {
    try {
      this.headroom = await sampleServerHeadroom(this.pool, this.config.healthTimeoutMs);
    } catch (err) {
      this.logger.debug?.(`db-pool "${this.name}": server headroom not sampled: ${scrubSecrets((err as Error).message)}`);
    }
    return this.headroom;
  }

  /** Takes a PgBouncer sample now (when DB_PGBOUNCER_ADMIN_URL is set); failures keep the previous one. */
  async samplePgBouncer(): Promise<PgBouncerStats | undefined> {
    const adminUrl = this.config.pgbouncerAdminUrl;
    if (!adminUrl) return undefined;
    try {
      this.pgbouncer = await samplePgBouncer(adminUrl, pgbouncerDatabase(this.config), this.config.healthTimeoutMs);
    } catch (err) {
      this.logger.debug?.(`db-pool "${this.name}": PgBouncer not sampled: ${scrubSecrets((err as Error).message)}`);
    }
    return this.pgbouncer;
  }

  /** The last PgBouncer sample, if any. */
  getPgBouncerStats(): PgBouncerStats | undefined {
    return this.pgbouncer;
  }

  /**
   * From exact counts, not the rounded utilization: every accepted threshold can be crossed. A
   * pool with no free connection that cannot open one is critical whatever its utilization: the
   * server gave fewer connections than configured, or none.
   */
  private healthOf(active: number, capacity: number, idle: number, connectFailing: boolean, shed: number): PoolHealth {
    // A replica out of rotation serves no reads, whatever its counters say (a replica that is down
    // cannot connect): degraded, never down — the primary serves its reads.
    if (this.replica && !this.replica().inRotation) return 'warning';
    if (connectFailing && idle === 0) return 'critical';
    if (active * 100 > this.config.criticalUtilization * capacity) return 'critical';
    // Shedding load: callers are being turned away (503), whatever the utilization says.
    if (connectFailing || shed > 0 || active * 100 > this.config.warnUtilization * capacity) return 'warning';
    return 'healthy';
  }

  private tick(): void {
    this.advanceLeakSuspicion();
    this.snapshotLoad();
  }

  /** Where the monitor's leak state moves: on its timer, once per tick. Logs when a suspicion begins. */
  private advanceLeakSuspicion(): void {
    const status = this.getPoolStatus();
    // Exhausted: every connection is in use and no more can be had — at capacity, or the server
    // refuses more (max_connections, a role's CONNECTION LIMIT) below it.
    const atCapacity =
      status.overflow >= status.max_overflow && status.checked_out * 100 > this.config.criticalUtilization * status.total_capacity;
    const exhausted = atCapacity || (status.checked_in === 0 && status.checked_out > 0 && status.connect_failing);
    const now = performance.now();
    if (!exhausted) this.exhaustedSince = undefined;
    else this.exhaustedSince ??= now;
    const suspected =
      this.exhaustedSince !== undefined &&
      now - this.exhaustedSince >= this.leakWindowMs &&
      this.pool.oldestCheckoutMs() >= this.leakWindowMs;
    if (suspected && !this.leakSuspected) {
      this.logger.warn(
        `db-pool "${this.name}": potential connection leak detected! Pool exhausted: ${status.checked_out} connections in use`,
      );
    }
    this.leakSuspected = suspected;
  }

  private serverRecommendations(): string[] {
    const h = this.headroom;
    if (!h) return [];
    const out: string[] = [];
    const capacity = this.pool.settings.poolSize + this.pool.settings.maxOverflow;
    const need = this.config.expectedReplicas * capacity;
    const others = h.in_use - h.in_use_by_pool;
    // Behind PgBouncer our connections are its clients, not the server's: it decides. With the
    // budget (DB_POOL_SIZE=auto) the capacity is already a share of what the server has.
    if (!this.config.pgbouncerAdminUrl && !this.config.budget && need > h.available - others) {
      out.push(
        RECOMMENDATIONS.HEADROOM(
          this.config.expectedReplicas,
          capacity,
          need,
          h.available - others,
          h.max_connections,
          h.superuser_reserved_connections,
          others,
        ),
      );
    }
    if (h.idle_session_timeout_ms > 0) out.push(RECOMMENDATIONS.SERVER_IDLE_TIMEOUT(h.idle_session_timeout_ms));
    if (h.idle_in_transaction > 0) out.push(RECOMMENDATIONS.IDLE_IN_TRANSACTION(h.idle_in_transaction, this.config.applicationName));
    return out;
  }

  private snapshotLoad(): void {
    const { wait, use } = this.pool.timings;
    const over1ms = wait.count - wait.cumulative().find((b) => b.le >= 0.001)!.count;
    this.load.push({
      at: performance.now(),
      shed: this.pool.counters.overloaded,
      waits: wait.count,
      waitsOver1ms: over1ms,
      waitSum: wait.sum,
      uses: use.count,
      useSum: use.sum,
    });
    const keep = Math.ceil(this.adviceWindowMs / this.tickMs) + 1;
    if (this.load.length > keep) this.load.splice(0, this.load.length - keep);
  }

  /** Little's law over the last window: checkouts/s × mean use time = connections kept busy. */
  private poolSizeAdvice(): string[] {
    if (this.load.length < 2) return [];
    const first = this.load[0];
    const last = this.load[this.load.length - 1];
    const seconds = (last.at - first.at) / 1000;
    const waits = last.waits - first.waits;
    const uses = last.uses - first.uses;
    if (seconds <= 0 || waits < 50 || uses === 0) return [];
    const waitedShare = (last.waitsOver1ms - first.waitsOver1ms) / waits;
    if (waitedShare < 0.1) return [];
    const rate = uses / seconds;
    const meanUse = (last.useSum - first.useSum) / uses;
    const busy = rate * meanUse;
    const suggested = Math.min(10_000, Math.ceil(busy * 1.25));
    if (suggested <= this.pool.settings.poolSize) return [];
    const meanWait = (last.waitSum - first.waitSum) / waits;
    return [
      RECOMMENDATIONS.POOL_SIZE(
        Math.round(waitedShare * 100),
        round1(meanWait * 1000),
        round1(meanUse * 1000),
        Math.round(rate),
        suggested,
        this.pool.settings.poolSize,
      ),
    ];
  }
}

function round1(n: number): number {
  return Math.round(n * 10) / 10;
}
