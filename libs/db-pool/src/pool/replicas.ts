/**
 * Read replicas: one db-pool per replica, behind a router that TypeORM sees as its one "slave"
 * pool. The router hands out a connection from a replica in rotation (round robin) and falls back
 * to the primary when none is. With `DB_REPLICA_CONSISTENCY=read-your-writes`, a read in a scope
 * that has a write position to see (consistency.ts) goes only to a replica that has replayed it
 * (at its last sample, or asked again when that sample is older than the write), else to the
 * primary. A replica is in rotation while it is a standby of the primary (in
 * recovery, with the primary's system identifier and timeline) whose lag is within
 * `DB_REPLICA_MAX_LAG_MS` — or, while the primary cannot be sampled, could be at most that. The
 * lag sampler (lag-sampler.ts) measures; the router keeps the standings, says when they change,
 * and picks.
 */
import { EventEmitter } from 'node:events';
import { performance } from 'node:perf_hooks';
import type pg from 'pg';
import type { DbPoolConfig } from '../config/db-pool.options.js';
import { scrubSecrets } from '../redact.js';
import { type ConsistencyScope, currentConsistencyScope, parseLsn, type PositionSource, readYourWritesStarted } from './consistency.js';
import type { DbPool } from './db-pool.js';
import { LagSampler, type PositionCallback, type SampledReplica, type Standing } from './lag-sampler.js';
import type { DbPoolLogger } from './logger.js';
import { SampleConnection } from './sample-connection.js';

/** Why a replica is out of rotation (a label of `db_pool_replica_out_of_rotation`, `replica.out_of_rotation` in health). */
export const REPLICA_OUT_OF_ROTATION = [
  'not_sampled',
  'lagging',
  'lag_unknown',
  'unreachable',
  'promoted',
  'timeline_mismatch',
  'system_mismatch',
] as const;
export type ReplicaOutOfRotation = (typeof REPLICA_OUT_OF_ROTATION)[number];

/**
 * Where a read went, and why (labels of `db_pool_replica_reads_total`, `reads` in status and
 * health): to a replica with no position to meet (`eventual`), or past the read's position at
 * its last sample (`replayed`) or when asked on the read's behalf (`replayed_on_check`); to the
 * primary because every replica in rotation was behind the read's position (`replica_behind`), the
 * position of the scope's write could not be read (`position_unknown`: the primary did not answer),
 * or none was in rotation (`no_replica`).
 */
export const READ_ROUTES = {
  eventual: 'replica',
  replayed: 'replica',
  replayed_on_check: 'replica',
  replica_behind: 'primary',
  position_unknown: 'primary',
  no_replica: 'primary',
} as const;
export type ReadReason = keyof typeof READ_ROUTES;

/** The one statement a read-your-writes check runs on a replica that was sampled before the write. */
const REPLAY_CHECK = 'SELECT pg_last_wal_replay_lsn()::text AS replay_lsn';

/** One replica as the router sees it. */
export interface ReplicaStatus {
  /** The replica's pool name (`<pool>-replica-<n>`). */
  readonly name: string;
  /**
   * Replay lag at the last sample, ms on the pool's clock: the time since the primary passed the
   * replica's replay position (0 when it had replayed all the primary had at its last sample).
   * Null when unknown, or when the server is not a standby of the primary.
   */
  readonly lagMs: number | null;
  /** WAL bytes from the replica's replay position to the primary's last sampled position; null when not known. */
  readonly lagBytes: number | null;
  /**
   * The lag could not be measured: the primary's or the replica's sample failed, or the replica
   * has not replayed up to the first position sampled on the primary.
   */
  readonly lagUnknown: boolean;
  /** Reads go to it. */
  readonly inRotation: boolean;
  /** Why it is out of rotation; undefined while in. */
  readonly outOfRotation: ReplicaOutOfRotation | undefined;
  /** Why it is out of rotation, or why its lag is unknown, in the router's words (no host named). */
  readonly reason: string | undefined;
  /** The failed sample's error behind `reason` (its message may name a host). */
  readonly cause: Error | undefined;
  /** performance.now() when the replica's last sample answered. */
  readonly sampledAt: number | undefined;
}

interface Replica extends Standing, SampledReplica {
  pool: DbPool;
  /** A read-your-writes check of its replay position under way (reads waiting on it share it). */
  checking: Promise<void> | undefined;
}

type ConnectCallback = (err: Error | undefined, client: pg.PoolClient | undefined, release: (err?: Error | boolean) => void) => void;

export interface ReplicaRouterOptions {
  primary: DbPool;
  /** The primary pool's validated configuration: the sampler's connection to the primary is opened as its pool's are. */
  primaryConfig: DbPoolConfig;
  replicas: DbPool[];
  /** The replicas' validated configurations, in the same order (their monitors read them). */
  configs: DbPoolConfig[];
  maxLagMs: number;
  /** Time one lag sample may take, per server. */
  sampleTimeoutMs: number;
  /** `DB_REPLICA_CONSISTENCY`. @default 'eventual' */
  consistency?: 'eventual' | 'read-your-writes';
  logger: DbPoolLogger;
}

/**
 * What TypeORM's read query runners connect through (`replication.slaves`): `connect()` as
 * pg.Pool has it, from a replica in rotation or else the primary (an EventEmitter, as TypeORM
 * listens for a pool's `'error'`).
 */
export class ReplicaRouter extends EventEmitter implements PositionSource {
  readonly primary: DbPool;
  readonly configs: readonly DbPoolConfig[];
  private readonly replicas: Replica[];
  private readonly maxLagMs: number;
  private readonly logger: DbPoolLogger;
  private next = 0;
  private timer: NodeJS.Timeout | undefined;
  private sampling = false;
  private ended = false;
  private readonly endHooks: (() => void)[] = [];
  private readonly lag: LagSampler<Replica>;
  private readonly sampleTimeoutMs: number;
  /** Reads by where they went and why, since the router started. */
  private readonly reads: Record<ReadReason, number> = {
    eventual: 0,
    replayed: 0,
    replayed_on_check: 0,
    replica_behind: 0,
    position_unknown: 0,
    no_replica: 0,
  };
  /** `DB_REPLICA_CONSISTENCY=read-your-writes`. */
  readonly readYourWrites: boolean;

  constructor(options: ReplicaRouterOptions) {
    super();
    this.primary = options.primary;
    this.configs = options.configs;
    this.lag = new LagSampler<Replica>({
      primaryConfig: options.primaryConfig,
      Client: options.primary.Client,
      maxLagMs: options.maxLagMs,
      sampleTimeoutMs: options.sampleTimeoutMs,
      onStanding: (replica, next) => this.set(replica, next),
    });
    this.replicas = options.replicas.map((pool, i) => ({
      pool,
      sampler: new SampleConnection(options.configs[i], pool.Client, { owner: 'the replica router' }),
      lagMs: null,
      lagBytes: null,
      lagUnknown: true,
      outOfRotation: 'not_sampled',
      reason: 'not sampled yet',
      cause: undefined,
      sampledAt: undefined,
      replay: undefined,
      replayAt: undefined,
      checking: undefined,
    }));
    this.maxLagMs = options.maxLagMs;
    this.sampleTimeoutMs = options.sampleTimeoutMs;
    this.readYourWrites = options.consistency === 'read-your-writes';
    // The primary's writes note their positions in a read-your-writes scope from now on.
    if (this.readYourWrites) {
      options.primary.positionSource = this;
      this.endHooks.push(readYourWritesStarted(), () => {
        if (options.primary.positionSource === this) options.primary.positionSource = undefined;
      });
    }
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
      lagBytes: r.lagBytes,
      lagUnknown: r.lagUnknown,
      inRotation: r.outOfRotation === undefined,
      outOfRotation: r.outOfRotation,
      reason: r.reason,
      cause: r.cause,
      sampledAt: r.sampledAt,
    }));
  }

  /** Reads by where they went and why, since the router started. */
  readCounts(): Record<ReadReason, number> {
    return { ...this.reads };
  }

  /** Statements sent on the primary to read writes' WAL positions (read-your-writes), each shared by the writes before it, since the router started. */
  positionReads(): number {
    return this.lag.positionReads;
  }

  /** The replica pools, in `DB_REPLICA_URLS` order. */
  pools(): DbPool[] {
    return this.replicas.map((r) => r.pool);
  }

  /** One sample round: the primary's WAL position and identity, then every replica against them. */
  async sample(): Promise<void> {
    this.sampling = true;
    try {
      await this.lag.round(this.replicas);
    } finally {
      this.sampling = false;
    }
  }

  private set(replica: Replica, next: Standing): void {
    const was = replica.outOfRotation;
    const wasUnknown = replica.lagUnknown;
    Object.assign(replica, next);
    const why = () => `${next.reason}${next.cause ? `: ${scrubSecrets(next.cause.message)}` : ''}`;
    const name = `db-pool "${replica.pool.name}"`;
    if (next.outOfRotation !== was) {
      if (next.outOfRotation === undefined) {
        if (was !== 'not_sampled') this.logger.log(`${name}: back in rotation for reads (lag ${next.lagMs ?? 'unknown'} ms)`);
      } else {
        this.logger.warn(`${name}: out of rotation for reads: ${why()}; reads go to the other replicas or the primary`);
      }
    } else if (next.outOfRotation === undefined && next.lagUnknown && !wasUnknown) {
      this.logger.warn(`${name}: ${why()}; it stays in rotation while it could be at most DB_REPLICA_MAX_LAG_MS behind`);
    }
  }

  /**
   * pg.Pool's `connect()` as TypeORM calls it: a replica in rotation (round robin), else the
   * primary. In a read-your-writes scope with a position to see, only a replica that has replayed
   * it: one sampled before the position was noted is asked again first (one statement on the
   * router's own connection, shared by the reads waiting on it).
   */
  connect(): Promise<pg.PoolClient>;
  connect(callback: ConnectCallback): void;
  connect(callback?: ConnectCallback): Promise<pg.PoolClient> | void {
    const scope = this.readYourWrites ? currentConsistencyScope() : undefined;
    const chosen =
      scope === undefined ? this.route(undefined) : scope.pending ? scope.settle().then(() => this.route(scope)) : this.route(scope);
    if (!(chosen instanceof Promise)) return callback ? chosen.connect(callback) : chosen.connect();
    if (!callback) return chosen.then((pool) => pool.connect());
    void chosen.then((pool) => pool.connect(callback));
  }

  /** The primary's insert position read at or after `at` (read-your-writes: a scope's writes' position). */
  positionAfter(at: number, done: PositionCallback): void {
    this.lag.insertPositionAfter(at, done);
  }

  /** Where a read in `scope` (settled) goes: a pool now, or once a replica sampled before the scope's position has been asked again. */
  private route(scope: ConsistencyScope | undefined): DbPool | Promise<DbPool> {
    const lsn = scope?.lsn;
    if (scope?.unknown) {
      this.reads.position_unknown++;
      return this.primary;
    }
    const replica = this.pick(lsn);
    if (replica !== undefined) {
      this.reads[lsn === undefined ? 'eventual' : 'replayed']++;
      return replica.pool;
    }
    if (lsn === undefined || !this.replicas.some((r) => this.serves(r))) {
      this.reads.no_replica++;
      return this.primary;
    }
    const since = scope!.since;
    const stale = this.replicas.filter((r) => this.serves(r) && (r.replayAt ?? -Infinity) < since);
    if (stale.length === 0) {
      this.reads.replica_behind++;
      return this.primary;
    }
    return Promise.all(stale.map((r) => this.check(r))).then(() => {
      const caughtUp = this.pick(lsn);
      this.reads[caughtUp ? 'replayed_on_check' : 'replica_behind']++;
      return caughtUp?.pool ?? this.primary;
    });
  }

  /** A replica reads may go to now: in rotation, its pool's breaker closed. */
  private serves(replica: Replica): boolean {
    return replica.outOfRotation === undefined && replica.pool.breakerState().state === 'closed';
  }

  /** The next replica in rotation (round robin) that has replayed `lsn` as last seen (any in rotation when undefined). */
  private pick(lsn: bigint | undefined): Replica | undefined {
    const n = this.replicas.length;
    for (let i = 0; i < n; i++) {
      const replica = this.replicas[(this.next + i) % n];
      if (this.serves(replica) && (lsn === undefined || (replica.replay !== undefined && replica.replay >= lsn))) {
        this.next = (this.next + i + 1) % n;
        return replica;
      }
    }
    return undefined;
  }

  /**
   * Reads `replica`'s replay position now, for a read whose position came after its last sample.
   * The position only moves forward while the sampler counts it a standby of the primary, so a
   * higher one is taken; a failed check changes nothing (the read goes to the primary).
   */
  private check(replica: Replica): Promise<void> {
    replica.checking ??= (async () => {
      const sentAt = performance.now();
      try {
        const row = await replica.sampler.queryRow<{ replay_lsn: string | null }>(REPLAY_CHECK, this.sampleTimeoutMs);
        const replay = parseLsn(row?.replay_lsn);
        if (replay !== undefined && replica.replay !== undefined && replay >= replica.replay) {
          replica.replay = replay;
          replica.replayAt = sentAt;
        }
      } catch {
        // The next sample says what is wrong with it; this read goes to the primary.
      } finally {
        replica.checking = undefined;
      }
    })();
    return replica.checking;
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
    await Promise.all([
      this.lag.close(),
      ...this.replicas.map((r) => Promise.all([r.sampler.close(), r.pool.ending ? undefined : r.pool.end()])),
    ]);
  }
}
