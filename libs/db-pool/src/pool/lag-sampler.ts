/**
 * The replicas' lag, read on the pool's own clock, never by comparing two servers' clocks: each
 * sample notes when (performance.now()) the primary was at which WAL position, and a replica's lag
 * is the time since the primary passed the position the replica has replayed
 * (`pg_last_wal_replay_lsn()`), interpolated between the two samples around it; its bytes behind
 * are the primary's last position less that one. See docs/high-availability.md, "Lag". A replica
 * counts only while it is a standby of the primary: in recovery, with the primary's system
 * identifier and timeline. Samples run on connections of the sampler's own (sample-connection.ts).
 */
import { performance } from 'node:perf_hooks';
import type pg from 'pg';
import type { DbPoolConfig } from '../config/db-pool.options.js';
import { callEach, parseLsn } from './consistency.js';
import type { ReplicaOutOfRotation } from './replicas.js';
import { SampleConnection } from './sample-connection.js';

/** What the last sample says of a replica: its lag, and whether (and why not) it stays in rotation. */
export interface Standing {
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

/** A replica as the sampler measures it. */
export interface SampledReplica {
  /** The sampler's own connection to it. */
  readonly sampler: SampleConnection;
  /** performance.now() when its last sample answered. */
  sampledAt: number | undefined;
  /** Replay position at its last sample (or read-your-writes check), while it is a standby of the primary. */
  replay: bigint | undefined;
  /** performance.now() when `replay` was read. */
  replayAt: number | undefined;
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

// The timeline a server writes, or (a standby) receives and replays: a standby's WAL receiver
// knows it; without one (or without the rights to see it) the last restartpoint's timeline.
const TIMELINE =
  `CASE WHEN pg_is_in_recovery() ` +
  `THEN coalesce((SELECT nullif(received_tli, 0) FROM pg_stat_wal_receiver), (SELECT timeline_id FROM pg_control_checkpoint())) ` +
  `ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END`;
const SYSTEM_ID = '(SELECT system_identifier FROM pg_control_system())::text';
const PRIMARY_SAMPLE = `SELECT pg_current_wal_lsn()::text AS lsn, pg_current_wal_insert_lsn()::text AS insert_lsn, ${SYSTEM_ID} AS system_id, ${TIMELINE} AS timeline`;
/** Read-your-writes: the position that has passed every commit record written before it is read. */
const INSERT_POSITION = 'SELECT pg_current_wal_insert_lsn()::text AS insert_lsn';
const REPLICA_SAMPLE = `SELECT pg_is_in_recovery() AS standby, pg_last_wal_replay_lsn()::text AS replay_lsn, ${SYSTEM_ID} AS system_id, ${TIMELINE} AS timeline`;

/**
 * The least time between two reads of the primary's insert position for writes' tokens. Each read
 * is a statement on the primary, shared by every write that committed before it was sent: at most
 * 500 a second from each router whatever the write rate, for about this long more on a write's token under load
 * (none when writes are sparse: the read goes at once). Sent at the next turn of the event loop, a
 * read served under two writes; a millisecond after the first write that needed it, about five,
 * and the position reads still took about a tenth of a write transaction's throughput. See
 * docs/benchmarks.md, "Read your own writes".
 */
export const POSITION_READ_INTERVAL_MS = 2;

/**
 * How a position read answers: an error, or the position and `reachedAt`, performance.now() when
 * its answer came (the primary had reached the position by then).
 */
export type PositionCallback = (err: Error | undefined, lsn?: bigint, reachedAt?: number) => void;

/** Primary positions kept; past it the oldest-but-one goes, so a far-behind replica's lag still grows, more coarsely. */
const MAX_MARKS = 1_000;

export interface LagSamplerOptions<R extends SampledReplica> {
  /** The primary pool's validated configuration: the connection to the primary is opened as its pool's are. */
  primaryConfig: DbPoolConfig;
  Client: typeof pg.Client;
  maxLagMs: number;
  /** Time one lag sample may take, per server. */
  sampleTimeoutMs: number;
  /** Takes a replica's standing the moment its sample has said it (the router's rotation). */
  onStanding(replica: R, next: Standing): void;
}

/** The primary's WAL positions on the pool's clock, and each replica's lag measured against them. */
export class LagSampler<R extends SampledReplica> {
  private readonly maxLagMs: number;
  private readonly sampleTimeoutMs: number;
  private readonly onStanding: (replica: R, next: Standing) => void;
  /** The primary's positions, oldest first, strictly increasing. */
  private marks: WalMark[] = [];
  private identity: Identity | undefined;
  /** Why the primary's last sample failed; undefined when it answered. */
  private primaryError: Error | undefined;
  private readonly primarySampler: SampleConnection;
  /** The latest insert position read on the primary, and when (performance.now()) it was asked for. */
  private insert: { lsn: bigint; sentAt: number; reachedAt: number } | undefined;
  /** A read of the insert position under way: when it was sent, and who it answers. */
  private inserting: { sentAt: number; waiters: PositionCallback[] } | undefined;
  private closed = false;
  /** Reads of the insert position sent for read-your-writes (samples aside), since start. */
  positionReads = 0;
  /** When the latest read of the insert position was sent (performance.now()): the next waits out {@link POSITION_READ_INTERVAL_MS} from it. */
  private lastInsertSentAt = -Infinity;
  /** Who the next read answers (callers that came after the one under way was sent), and whether its wait is over. */
  private nextInsert: { waiters: PositionCallback[]; due: boolean } | undefined;

  constructor(options: LagSamplerOptions<R>) {
    this.primarySampler = new SampleConnection(options.primaryConfig, options.Client, { owner: 'the replica router' });
    this.maxLagMs = options.maxLagMs;
    this.sampleTimeoutMs = options.sampleTimeoutMs;
    this.onStanding = options.onStanding;
  }

  /** One sample round: the primary's WAL position and identity, then every replica against them. */
  async round(replicas: readonly R[]): Promise<void> {
    await this.samplePrimary();
    await Promise.all(replicas.map((r) => this.sampleReplica(r)));
    this.forgetPassedMarks(replicas);
  }

  /**
   * Calls `done` with the primary's insert position read at or after `at` (performance.now()):
   * past the commit record of every transaction that committed before `at`; or with the error
   * that kept it from being read. A read sent after `at` (a sample's, or one under way) serves;
   * else the next read does: at the next turn of the event loop, but not before
   * {@link POSITION_READ_INTERVAL_MS} after the one before it was sent, nor before that one has
   * answered. One at a time, each serving every caller that came before it was sent. Callbacks
   * rather than a promise each: a write's token is on the request path, and every promise there
   * costs (Node 20 runs AsyncLocalStorage's hooks for each).
   */
  insertPositionAfter(at: number, done: PositionCallback): void {
    if (this.closed) return done(new Error('the replica router has ended'));
    if (this.insert !== undefined && this.insert.sentAt >= at) return done(undefined, this.insert.lsn, this.insert.reachedAt);
    const under = this.inserting;
    if (under !== undefined && under.sentAt >= at) {
      under.waiters.push(done);
      return;
    }
    if (this.nextInsert !== undefined) {
      this.nextInsert.waiters.push(done);
      return;
    }
    const next: { waiters: PositionCallback[]; due: boolean } = { waiters: [done], due: false };
    this.nextInsert = next;
    // Timers run by the event loop's clock, which may lag performance.now(): the wait is checked again.
    const due = () => {
      const wait = this.lastInsertSentAt + POSITION_READ_INTERVAL_MS - performance.now();
      if (wait > 0) return void setTimeout(due, wait);
      next.due = true;
      this.sendInsertRead();
    };
    // The callers of this turn of the event loop share the read in any case.
    setImmediate(due);
  }

  /** Sends the next read of the insert position, once its wait is over and no read is under way. */
  private sendInsertRead(): void {
    const next = this.nextInsert;
    if (next === undefined || !next.due || this.inserting !== undefined) return;
    this.nextInsert = undefined;
    if (this.closed) return callEach(next.waiters, new Error('the replica router has ended'));
    const reading = { sentAt: performance.now(), waiters: next.waiters };
    this.lastInsertSentAt = reading.sentAt;
    this.positionReads++;
    this.inserting = reading;
    const answer = (err: Error | undefined, lsn?: bigint, reachedAt?: number) => {
      this.inserting = undefined;
      // The next read goes before these callers hear (whatever they do with the answer).
      this.sendInsertRead();
      callEach(reading.waiters, err, lsn, reachedAt);
    };
    this.primarySampler.queryRow<{ insert_lsn: string }>(INSERT_POSITION, this.sampleTimeoutMs).then(
      (row) => {
        const lsn = parseLsn(row?.insert_lsn);
        if (lsn === undefined) return answer(new Error(`pg_current_wal_insert_lsn() answered ${JSON.stringify(row?.insert_lsn)}`));
        const reachedAt = performance.now();
        this.tookInsert(lsn, reading.sentAt, reachedAt);
        answer(undefined, lsn, reachedAt);
      },
      (err: unknown) => answer(err instanceof Error ? err : new Error(String(err))),
    );
  }

  private tookInsert(lsn: bigint, sentAt: number, reachedAt: number): void {
    if (this.insert === undefined || sentAt > this.insert.sentAt) this.insert = { lsn, sentAt, reachedAt };
  }

  /** Closes the connection to the primary (each replica's is closed by whoever made it). */
  close(): Promise<void> {
    this.closed = true;
    return this.primarySampler.close();
  }

  private async samplePrimary(): Promise<void> {
    // The time before asking: the primary was at the position it reports at some moment after it.
    const sentAt = performance.now();
    try {
      const row = await this.primarySampler.queryRow<{ lsn: string; insert_lsn: string; system_id: string; timeline: number }>(
        PRIMARY_SAMPLE,
        this.sampleTimeoutMs,
      );
      const lsn = parseLsn(row?.lsn);
      if (lsn === undefined) throw new Error(`pg_current_wal_lsn() answered ${JSON.stringify(row?.lsn)}`);
      const identity = { systemId: row.system_id, timeline: Number(row.timeline) };
      const insert = parseLsn(row.insert_lsn);
      if (insert !== undefined) this.tookInsert(insert, sentAt, performance.now());
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

  private async sampleReplica(replica: R): Promise<void> {
    let row: { standby: boolean; replay_lsn: string | null; system_id: string; timeline: number };
    try {
      row = await replica.sampler.queryRow<typeof row>(REPLICA_SAMPLE, this.sampleTimeoutMs);
    } catch (err) {
      replica.replay = undefined;
      this.onStanding(replica, {
        ...UNKNOWN,
        outOfRotation: 'unreachable',
        reason: 'the replica could not be sampled',
        cause: err as Error,
      });
      return;
    }
    const at = performance.now();
    replica.sampledAt = at;
    replica.replay = undefined;
    const primary = this.identity;
    const timeline = Number(row.timeline);
    if (primary && row.system_id !== primary.systemId) {
      return this.onStanding(replica, {
        ...KNOWN,
        outOfRotation: 'system_mismatch',
        reason: `another database cluster: system identifier ${row.system_id}, the primary's ${primary.systemId}`,
      });
    }
    if (!row.standby) {
      return this.onStanding(replica, {
        ...KNOWN,
        outOfRotation: 'promoted',
        reason: `not a standby: promoted (timeline ${timeline}; the primary's is ${primary?.timeline ?? 'unknown'})`,
      });
    }
    if (primary && timeline !== primary.timeline) {
      return this.onStanding(replica, {
        ...KNOWN,
        outOfRotation: 'timeline_mismatch',
        reason: `replays timeline ${timeline}, the primary writes timeline ${primary.timeline}`,
      });
    }
    const replay = parseLsn(row.replay_lsn);
    if (replay === undefined) {
      return this.onStanding(replica, {
        ...UNKNOWN,
        outOfRotation: 'lag_unknown',
        reason: 'lag unknown: the replica reports no replay position',
      });
    }
    if (!primary) {
      return this.onStanding(replica, { ...UNKNOWN, ...this.primaryUnknown(), outOfRotation: 'lag_unknown' });
    }
    replica.replay = replay;
    replica.replayAt = at;
    this.onStanding(replica, this.lagOf(replay, at));
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
  private forgetPassedMarks(replicas: readonly R[]): void {
    const replays = replicas.flatMap((r) => (r.replay === undefined ? [] : [r.replay]));
    if (replays.length === 0) return;
    const least = replays.reduce((a, b) => (b < a ? b : a));
    let keep = 0;
    while (keep + 1 < this.marks.length && this.marks[keep + 1].lsn <= least) keep++;
    if (keep > 0) this.marks.splice(0, keep);
  }
}
