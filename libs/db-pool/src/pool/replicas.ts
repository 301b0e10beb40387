/**
 * Read replicas: one db-pool per replica, behind a router that TypeORM sees as its one "slave"
 * pool. The router hands out a connection from a replica in rotation (round robin) and falls back
 * to the primary when none is; a replica leaves rotation while its replay lag exceeds
 * `DB_REPLICA_MAX_LAG_MS`, or while it cannot be sampled, and comes back when it catches up.
 */
import { EventEmitter } from 'node:events';
import { performance } from 'node:perf_hooks';
import type pg from 'pg';
import type { DbPoolConfig } from '../config/db-pool.options.js';
import { scrubSecrets } from '../redact.js';
import type { DbPool } from './db-pool.js';
import type { DbPoolLogger } from './logger.js';

/** One replica as the router sees it. */
export interface ReplicaStatus {
  /** The replica's pool name (`<pool>-replica-<n>`). */
  readonly name: string;
  /** Replay lag at the last sample, ms (0 when it has replayed everything the primary wrote); null before the first sample or when it failed. */
  readonly lagMs: number | null;
  /** Reads go to it. */
  readonly inRotation: boolean;
  /** Why it is out of rotation. */
  readonly reason: string | undefined;
  /** performance.now() of the last sample that answered. */
  readonly sampledAt: number | undefined;
}

interface Replica {
  pool: DbPool;
  lagMs: number | null;
  inRotation: boolean;
  reason: string | undefined;
  sampledAt: number | undefined;
}

type ConnectCallback = (err: Error | undefined, client: pg.PoolClient | undefined, release: (err?: Error | boolean) => void) => void;

const LSN = /^[0-9A-F]{1,8}\/[0-9A-F]{1,8}$/i;

export interface ReplicaRouterOptions {
  primary: DbPool;
  replicas: DbPool[];
  /** The replicas' validated configurations, in the same order (their monitors read them). */
  configs: DbPoolConfig[];
  maxLagMs: number;
  /** Time one lag sample may take, per server. */
  sampleTimeoutMs: number;
  logger: DbPoolLogger;
}

/**
 * What TypeORM's read query runners connect through (`replication.slaves`): `connect()` as
 * pg.Pool has it, from a replica in rotation or else the primary.
 */
export class ReplicaRouter extends EventEmitter {
  readonly primary: DbPool;
  readonly configs: readonly DbPoolConfig[];
  private readonly replicas: Replica[];
  private readonly maxLagMs: number;
  private readonly sampleTimeoutMs: number;
  private readonly logger: DbPoolLogger;
  private next = 0;
  private timer: NodeJS.Timeout | undefined;
  private sampling = false;
  private ended = false;
  private readonly endHooks: (() => void)[] = [];

  constructor(options: ReplicaRouterOptions) {
    super();
    this.primary = options.primary;
    this.configs = options.configs;
    this.replicas = options.replicas.map((pool) => ({
      pool,
      lagMs: null,
      inRotation: false,
      reason: 'not sampled yet',
      sampledAt: undefined,
    }));
    this.maxLagMs = options.maxLagMs;
    this.sampleTimeoutMs = options.sampleTimeoutMs;
    this.logger = options.logger;
  }

  /** How often the lag is sampled: a quarter of the allowed lag, between 250 ms and 1 s. */
  get sampleIntervalMs(): number {
    return Math.min(1_000, Math.max(250, Math.floor(this.maxLagMs / 4)));
  }

  /** Takes the first sample (so reads go to replicas from the start) and samples on a timer after that. */
  async start(): Promise<void> {
    await this.sample();
    if (this.ended || this.timer) return;
    this.timer = setInterval(() => {
      if (!this.sampling) void this.sample();
    }, this.sampleIntervalMs);
    this.timer.unref();
  }

  status(): ReplicaStatus[] {
    return this.replicas.map((r) => ({
      name: r.pool.name,
      lagMs: r.lagMs,
      inRotation: r.inRotation,
      reason: r.reason,
      sampledAt: r.sampledAt,
    }));
  }

  /** The replica pools, in `DB_REPLICA_URLS` order. */
  pools(): DbPool[] {
    return this.replicas.map((r) => r.pool);
  }

  /**
   * One lag sample of every replica: the primary's current WAL position first, then each
   * replica's replay position and the age of its last replayed transaction. A replica that has
   * replayed up to the primary's position has no lag, however long ago its last transaction was
   * (an idle primary must not make its replicas look late).
   */
  async sample(): Promise<void> {
    this.sampling = true;
    try {
      let primaryLsn: string | undefined;
      try {
        const { rows } = await this.primary.queryWithin<{ lsn: string }>('SELECT pg_current_wal_lsn()::text AS lsn', this.sampleTimeoutMs);
        primaryLsn = LSN.test(rows[0]?.lsn ?? '') ? rows[0].lsn : undefined;
      } catch {
        primaryLsn = undefined; // the primary is down or is itself a standby: lag from timestamps alone
      }
      await Promise.all(this.replicas.map((r) => this.sampleOne(r, primaryLsn)));
    } finally {
      this.sampling = false;
    }
  }

  private async sampleOne(replica: Replica, primaryLsn: string | undefined): Promise<void> {
    const caughtUp = primaryLsn ? `pg_last_wal_replay_lsn() >= '${primaryLsn}'::pg_lsn` : 'false';
    try {
      const { rows } = await replica.pool.queryWithin<{ standby: boolean; caught_up: boolean | null; lag_ms: number | null }>(
        `SELECT pg_is_in_recovery() AS standby, ${caughtUp} AS caught_up, ` +
          `(extract(epoch FROM now() - pg_last_xact_replay_timestamp()) * 1000)::float8 AS lag_ms`,
        this.sampleTimeoutMs,
      );
      const row = rows[0];
      replica.sampledAt = performance.now();
      if (!row.standby) {
        // Promoted: it has no lag, and it takes reads as well as any primary.
        this.set(replica, 0, true, undefined);
      } else {
        const lag = row.caught_up ? 0 : row.lag_ms === null ? null : Math.max(0, Math.round(row.lag_ms));
        if (lag === null) this.set(replica, null, false, 'it has replayed no transaction yet');
        else if (lag > this.maxLagMs)
          this.set(replica, lag, false, `replay lag ${lag} ms exceeds DB_REPLICA_MAX_LAG_MS (${this.maxLagMs} ms)`);
        else this.set(replica, lag, true, undefined);
      }
    } catch (err) {
      this.set(replica, null, false, `lag not sampled: ${scrubSecrets((err as Error).message)}`);
    }
  }

  private set(replica: Replica, lagMs: number | null, inRotation: boolean, reason: string | undefined): void {
    replica.lagMs = lagMs;
    if (replica.inRotation !== inRotation && replica.sampledAt !== undefined) {
      if (inRotation) this.logger.log(`db-pool "${replica.pool.name}": back in rotation for reads (lag ${lagMs ?? '?'} ms)`);
      else
        this.logger.warn(
          `db-pool "${replica.pool.name}": out of rotation for reads: ${reason}; reads go to the other replicas or the primary`,
        );
    }
    replica.inRotation = inRotation;
    replica.reason = reason;
  }

  /** pg.Pool's `connect()` as TypeORM calls it: a replica in rotation (round robin), else the primary. */
  connect(): Promise<pg.PoolClient>;
  connect(callback: ConnectCallback): void;
  connect(callback?: ConnectCallback): Promise<pg.PoolClient> | void {
    const pool = this.pick();
    return callback ? pool.connect(callback) : pool.connect();
  }

  private pick(): DbPool {
    const n = this.replicas.length;
    for (let i = 0; i < n; i++) {
      const replica = this.replicas[(this.next + i) % n];
      if (replica.inRotation && replica.pool.breakerState().state === 'closed') {
        this.next = (this.next + i + 1) % n;
        return replica.pool;
      }
    }
    return this.primary;
  }

  /** Runs `hook` when the router ends (the module stops the replicas' monitors). */
  onEnd(hook: () => void): void {
    this.endHooks.push(hook);
  }

  /** TypeORM ends its pools when the DataSource is destroyed (`end(callback)`): the replicas' pools end with the router. */
  end(): Promise<void>;
  end(callback: (err?: Error) => void): void;
  end(callback?: (err?: Error) => void): Promise<void> | void {
    const done = this.endAll();
    if (!callback) return done;
    done.then(() => callback(), callback);
  }

  private async endAll(): Promise<void> {
    if (this.ended) return;
    this.ended = true;
    clearInterval(this.timer);
    for (const hook of this.endHooks.splice(0)) hook();
    await Promise.all(this.replicas.map((r) => (r.pool.ending ? undefined : r.pool.end())));
  }
}
