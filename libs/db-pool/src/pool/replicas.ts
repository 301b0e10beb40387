/**
 * Read replicas: one db-pool per replica, behind a router that TypeORM sees as its one "slave"
 * pool. The router hands out a connection from a replica in rotation (round robin) and falls back
 * to the primary when none is. A replica is in rotation while it is a standby of the primary (in
 * recovery, with the primary's system identifier and timeline) whose lag is within
 * `DB_REPLICA_MAX_LAG_MS` — or, while the primary cannot be sampled, could be at most that.
 *
 * Lag is read on the pool's own clock, never by comparing two servers' clocks: each sample notes
 * when (performance.now()) the primary was at which WAL position, and a replica's lag is the time
 * since the primary passed the position the replica has replayed (`pg_last_wal_replay_lsn()`),
 * interpolated between the two samples around it; its bytes behind are the primary's last
 * position less that one. See docs/high-availability.md, "Lag".
 *
 * Samples run on connections of the sampler's own, one per server, outside the pools: a server
 * whose pool is busy (every connection running a report, callers queued) is not one that cannot
 * be sampled, and a read spike must not take every replica out of rotation at once.
 */
import { EventEmitter } from 'node:events';
import { performance } from 'node:perf_hooks';
import type pg from 'pg';
import type { DbPoolConfig } from '../config/db-pool.options.js';
import { scrubSecrets } from '../redact.js';
import { Connector } from './connector.js';
import type { DbPool } from './db-pool.js';
import type { DbPoolLogger } from './logger.js';
import { toPgPoolOptions } from './pg-options.js';
import { destroySocket } from './pg-internals.js';

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

interface Standing {
  lagMs: number | null;
  lagBytes: number | null;
  lagUnknown: boolean;
  outOfRotation: ReplicaOutOfRotation | undefined;
  reason: string | undefined;
  cause: Error | undefined;
}

/** A standing whose lag is known (or, for a server that is not a standby of the primary, does not apply). */
const KNOWN: Standing = {
  lagMs: null,
  lagBytes: null,
  lagUnknown: false,
  outOfRotation: undefined,
  reason: undefined,
  cause: undefined,
};
const UNKNOWN: Standing = { ...KNOWN, lagUnknown: true };

interface Replica extends Standing {
  pool: DbPool;
  sampler: SampleConnection;
  sampledAt: number | undefined;
  /** Replay position at its last sample, while it is a standby of the primary. */
  replay: bigint | undefined;
}

/** The primary seen at one WAL position: first and last at these pool-clock times (when the sample was sent). */
interface WalMark {
  lsn: bigint;
  firstAt: number;
  lastAt: number;
}

interface Identity {
  systemId: string;
  timeline: number;
}

type ConnectCallback = (err: Error | undefined, client: pg.PoolClient | undefined, release: (err?: Error | boolean) => void) => void;

const LSN = /^([0-9A-F]{1,8})\/([0-9A-F]{1,8})$/i;

/** A pg_lsn's text (`16/B374D848`) as a byte position. */
function parseLsn(text: string | null | undefined): bigint | undefined {
  const m = LSN.exec(text ?? '');
  return m ? (BigInt(`0x${m[1]}`) << 32n) | BigInt(`0x${m[2]}`) : undefined;
}

// The timeline a server writes, or (a standby) receives and replays: a standby's WAL receiver
// knows it; without one (or without the rights to see it) the last restartpoint's timeline.
const TIMELINE =
  `CASE WHEN pg_is_in_recovery() ` +
  `THEN coalesce((SELECT nullif(received_tli, 0) FROM pg_stat_wal_receiver), (SELECT timeline_id FROM pg_control_checkpoint())) ` +
  `ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END`;
const SYSTEM_ID = '(SELECT system_identifier FROM pg_control_system())::text';
const PRIMARY_SAMPLE = `SELECT pg_current_wal_lsn()::text AS lsn, ${SYSTEM_ID} AS system_id, ${TIMELINE} AS timeline`;
const REPLICA_SAMPLE = `SELECT pg_is_in_recovery() AS standby, pg_last_wal_replay_lsn()::text AS replay_lsn, ${SYSTEM_ID} AS system_id, ${TIMELINE} AS timeline`;

/** Primary positions kept; past it the oldest-but-one goes, so a far-behind replica's lag still grows, more coarsely. */
const MAX_MARKS = 1_000;

/** How long closing a sample connection waits for the server's goodbye before the socket is destroyed. */
const CLOSE_WAIT_MS = 1_000;

/** A lag sample that did not answer within its bound. Its text is the router's own: it names no host. */
export class SampleTimeoutError extends Error {
  override name = 'SampleTimeoutError';
  constructor(readonly timeoutMs: number) {
    super(`no answer within ${timeoutMs} ms (DB_POOL_HEALTH_TIMEOUT_MS), connect included`);
  }
}

/**
 * The sampler's connection to one server: opened as that server's pool opens its own (its host
 * list, `target_session_attrs`, pg's options and `application_name`, `DB_CONNECT_TIMEOUT`) but
 * outside the pool, so that a sample never queues behind the pool's callers. One sample at a
 * time (the router's rounds do not overlap). A sample that fails or does not answer in time
 * closes the connection and the next opens another; a connect still under way when a sample
 * gives up goes on, bounded by its own timeout, and serves the next sample.
 */
export class SampleConnection {
  private client: pg.Client | undefined;
  private opening: Promise<pg.Client> | undefined;
  /** The client of the connect under way (a shutdown ends it). */
  private connecting: pg.Client | undefined;
  private closed = false;
  private readonly dropped = new WeakSet<pg.Client>();
  private readonly connector: Connector;

  constructor(config: DbPoolConfig, Client: typeof pg.Client) {
    const clientConfig = toPgPoolOptions(config);
    clientConfig.connectionTimeoutMillis = config.connectTimeoutMs;
    this.connector = new Connector({ Client, clientConfig });
  }

  /** The first row `text` answers, within `timeoutMs` in all, connect included. */
  async queryRow<R>(text: string, timeoutMs: number): Promise<R> {
    let timer: NodeJS.Timeout | undefined;
    let client: pg.Client | undefined;
    let timedOut = false;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        timedOut = true;
        // A query on the wire with no answer: the connection goes (the server ends the backend on
        // the Terminate, or when the socket is destroyed). A connect under way goes on.
        if (client) this.drop(client);
        reject(new SampleTimeoutError(timeoutMs));
      }, timeoutMs);
      timer.unref();
    });
    const run = async (): Promise<R> => {
      const opened = await this.connected();
      if (timedOut) throw new SampleTimeoutError(timeoutMs); // nobody waits for it: kept for the next sample
      client = opened;
      try {
        return (await opened.query<R & pg.QueryResultRow>(text)).rows[0];
      } catch (err) {
        this.drop(opened);
        throw err;
      }
    };
    try {
      return await Promise.race([timeout, run()]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Closes the connection, and ends a connect under way; later samples fail. */
  async close(): Promise<void> {
    this.closed = true;
    if (this.connecting) destroySocket(this.connecting);
    const client = this.client;
    this.client = undefined;
    if (client) await closeClient(client);
  }

  private connected(): Promise<pg.Client> {
    if (this.closed) return Promise.reject(new Error('the replica router has ended'));
    if (this.client) return Promise.resolve(this.client);
    this.opening ??= new Promise<pg.Client>((resolve, reject) => {
      this.connector.open(
        {
          attempt: (client) => {
            this.connecting = client;
            // An error on a socket nobody queries (the server went away between samples) must not go unheard.
            client.on('error', () => this.drop(client));
          },
          proceed: () => !this.closed,
          internal: true,
        },
        (err, opened) => {
          const attempted = this.connecting;
          this.opening = this.connecting = undefined;
          if (err || !opened) {
            if (attempted) destroySocket(attempted);
            return reject(err ?? new Error('no connection'));
          }
          if (this.closed) {
            void closeClient(opened.client);
            return reject(new Error('the replica router has ended'));
          }
          this.client = opened.client;
          opened.client.once('end', () => this.drop(opened.client));
          resolve(opened.client);
        },
      );
    });
    return this.opening;
  }

  private drop(client: pg.Client): void {
    if (this.client === client) this.client = undefined;
    if (this.dropped.has(client)) return;
    this.dropped.add(client);
    void closeClient(client);
  }
}

/** Ends a client: its Terminate, then its socket destroyed if the server has not closed it within {@link CLOSE_WAIT_MS}. */
function closeClient(client: pg.Client): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      destroySocket(client);
      resolve();
    }, CLOSE_WAIT_MS);
    timer.unref();
    client.end().then(
      () => {
        clearTimeout(timer);
        resolve();
      },
      () => {
        clearTimeout(timer);
        destroySocket(client);
        resolve();
      },
    );
  });
}

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
  logger: DbPoolLogger;
}

/**
 * What TypeORM's read query runners connect through (`replication.slaves`): `connect()` as
 * pg.Pool has it, from a replica in rotation or else the primary (an EventEmitter, as TypeORM
 * listens for a pool's `'error'`).
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
  /** The primary's positions, oldest first, strictly increasing. */
  private marks: WalMark[] = [];
  private identity: Identity | undefined;
  /** Why the primary's last sample failed; undefined when it answered. */
  private primaryError: Error | undefined;
  private readonly primarySampler: SampleConnection;

  constructor(options: ReplicaRouterOptions) {
    super();
    this.primary = options.primary;
    this.configs = options.configs;
    this.primarySampler = new SampleConnection(options.primaryConfig, options.primary.Client);
    this.replicas = options.replicas.map((pool, i) => ({
      pool,
      sampler: new SampleConnection(options.configs[i], pool.Client),
      lagMs: null,
      lagBytes: null,
      lagUnknown: true,
      outOfRotation: 'not_sampled',
      reason: 'not sampled yet',
      cause: undefined,
      sampledAt: undefined,
      replay: undefined,
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
      lagBytes: r.lagBytes,
      lagUnknown: r.lagUnknown,
      inRotation: r.outOfRotation === undefined,
      outOfRotation: r.outOfRotation,
      reason: r.reason,
      cause: r.cause,
      sampledAt: r.sampledAt,
    }));
  }

  /** The replica pools, in `DB_REPLICA_URLS` order. */
  pools(): DbPool[] {
    return this.replicas.map((r) => r.pool);
  }

  /** One sample round: the primary's WAL position and identity, then every replica against them. */
  async sample(): Promise<void> {
    this.sampling = true;
    try {
      await this.samplePrimary();
      await Promise.all(this.replicas.map((r) => this.sampleReplica(r)));
      this.forgetPassedMarks();
    } finally {
      this.sampling = false;
    }
  }

  private async samplePrimary(): Promise<void> {
    // The time before asking: the primary was at the position it reports at some moment after it.
    const sentAt = performance.now();
    try {
      const row = await this.primarySampler.queryRow<{ lsn: string; system_id: string; timeline: number }>(
        PRIMARY_SAMPLE,
        this.sampleTimeoutMs,
      );
      const lsn = parseLsn(row?.lsn);
      if (lsn === undefined) throw new Error(`pg_current_wal_lsn() answered ${JSON.stringify(row?.lsn)}`);
      const identity = { systemId: row.system_id, timeline: Number(row.timeline) };
      const last = this.marks[this.marks.length - 1];
      // Another server, or one that went back: positions from before say nothing about it.
      if (this.identity?.systemId !== identity.systemId || this.identity.timeline !== identity.timeline || (last && lsn < last.lsn)) {
        this.marks = [];
      }
      this.identity = identity;
      const latest = this.marks[this.marks.length - 1];
      if (latest && latest.lsn === lsn) latest.lastAt = sentAt;
      else this.marks.push({ lsn, firstAt: sentAt, lastAt: sentAt });
      if (this.marks.length > MAX_MARKS) this.marks.splice(1, 1);
      this.primaryError = undefined;
    } catch (err) {
      this.primaryError = err as Error;
    }
  }

  private async sampleReplica(replica: Replica): Promise<void> {
    let row: { standby: boolean; replay_lsn: string | null; system_id: string; timeline: number };
    try {
      row = await replica.sampler.queryRow<typeof row>(REPLICA_SAMPLE, this.sampleTimeoutMs);
    } catch (err) {
      replica.replay = undefined;
      this.set(replica, { ...UNKNOWN, outOfRotation: 'unreachable', reason: 'the replica could not be sampled', cause: err as Error });
      return;
    }
    const at = performance.now();
    replica.sampledAt = at;
    replica.replay = undefined;
    const primary = this.identity;
    const timeline = Number(row.timeline);
    if (primary && row.system_id !== primary.systemId) {
      return this.set(replica, {
        ...KNOWN,
        outOfRotation: 'system_mismatch',
        reason: `another database cluster: system identifier ${row.system_id}, the primary's ${primary.systemId}`,
      });
    }
    if (!row.standby) {
      return this.set(replica, {
        ...KNOWN,
        outOfRotation: 'promoted',
        reason: `not a standby: promoted (timeline ${timeline}; the primary's is ${primary?.timeline ?? 'unknown'})`,
      });
    }
    if (primary && timeline !== primary.timeline) {
      return this.set(replica, {
        ...KNOWN,
        outOfRotation: 'timeline_mismatch',
        reason: `replays timeline ${timeline}, the primary writes timeline ${primary.timeline}`,
      });
    }
    const replay = parseLsn(row.replay_lsn);
    if (replay === undefined) {
      return this.set(replica, { ...UNKNOWN, outOfRotation: 'lag_unknown', reason: 'lag unknown: the replica reports no replay position' });
    }
    if (!primary) {
      return this.set(replica, { ...UNKNOWN, ...this.primaryUnknown(), outOfRotation: 'lag_unknown' });
    }
    replica.replay = replay;
    this.set(replica, this.lagOf(replay, at));
  }

  /** A standby of the primary whose replay position is `replay` at `at`: its lag and whether it stays in rotation. */
  private lagOf(replay: bigint, at: number): Standing {
    const latest = this.marks[this.marks.length - 1];
    const bytes = latest.lsn > replay ? Number(latest.lsn - replay) : 0;
    const passed = this.marks.findIndex((m) => m.lsn > replay);
    if (passed === -1) {
      // It has all the primary had at its last sample.
      if (!this.primaryError) return { ...KNOWN, lagMs: 0, lagBytes: 0 };
      // The primary has not answered since: it may have written since, the replica not. At most
      // the time since that sample, which grows until the limit.
      const bound = Math.round(at - latest.lastAt);
      const unknown = this.primaryUnknown();
      return bound <= this.maxLagMs
        ? {
            ...UNKNOWN,
            ...unknown,
            reason: `${unknown.reason}; at most ${bound} ms behind, within DB_REPLICA_MAX_LAG_MS (${this.maxLagMs} ms)`,
            outOfRotation: undefined,
          }
        : {
            ...UNKNOWN,
            ...unknown,
            reason: `${unknown.reason} for ${bound} ms, more than DB_REPLICA_MAX_LAG_MS (${this.maxLagMs} ms)`,
            outOfRotation: 'lag_unknown',
          };
    }
    if (passed === 0) {
      return {
        ...UNKNOWN,
        lagBytes: bytes,
        outOfRotation: 'lag_unknown',
        reason: 'lag unknown: it has not replayed up to the first WAL position sampled on the primary',
      };
    }
    // The primary was at or before `replay` at `before.lastAt`, past it at `after.firstAt`: in
    // between, as the positions interpolate.
    const before = this.marks[passed - 1];
    const after = this.marks[passed];
    const share = Number(replay - before.lsn) / Number(after.lsn - before.lsn);
    const lag = Math.max(0, Math.round(at - (before.lastAt + share * (after.firstAt - before.lastAt))));
    if (lag > this.maxLagMs) {
      return {
        ...KNOWN,
        lagMs: lag,
        lagBytes: bytes,
        outOfRotation: 'lagging',
        reason: `replay lag ${lag} ms exceeds DB_REPLICA_MAX_LAG_MS (${this.maxLagMs} ms)`,
      };
    }
    return { ...KNOWN, lagMs: lag, lagBytes: bytes };
  }

  private primaryUnknown(): Pick<Standing, 'reason' | 'cause'> {
    return { reason: "lag unknown: the primary's WAL position could not be sampled", cause: this.primaryError };
  }

  /** Drops the primary's positions every sampled replica has replayed past, but the last of them (the lower end of an interpolation). */
  private forgetPassedMarks(): void {
    const replays = this.replicas.flatMap((r) => (r.replay === undefined ? [] : [r.replay]));
    if (replays.length === 0) return;
    const least = replays.reduce((a, b) => (b < a ? b : a));
    let keep = 0;
    while (keep + 1 < this.marks.length && this.marks[keep + 1].lsn <= least) keep++;
    if (keep > 0) this.marks.splice(0, keep);
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
      if (replica.outOfRotation === undefined && replica.pool.breakerState().state === 'closed') {
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
    await Promise.all([
      this.primarySampler.close(),
      ...this.replicas.map((r) => Promise.all([r.sampler.close(), r.pool.ending ? undefined : r.pool.end()])),
    ]);
  }
}
