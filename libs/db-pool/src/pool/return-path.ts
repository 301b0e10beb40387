/**
 * The return path (HikariCP's recycle, pgxpool's keep-or-destroy on release): whether a
 * connection handed back may serve again, after what that takes. A cursor or stream still open is
 * refused and the connection closed; a statement still running is cancelled on the server and the
 * connection kept once the server settles; a transaction left open is rolled back, changed
 * session state reset; an expired, evicted, worn out or no longer matching connection is closed.
 */
import { PoolLeaseError } from '../errors.js';
import { type Connector, sessionMatches } from './connector.js';
import type { SlotOwner } from './core/resource-pool.js';
import type { Failover } from './failover.js';
import { awaitingServer, connectionLost, destroySocket, failCopyIn, openSubmittables, queuedQueries, socketTaken } from './pg-internals.js';
import type { PoolEntry } from './pool-entry.js';
import type { DbPoolSettings } from './settings.js';
import { stopSubmittable } from './submittables.js';
import type { PoolStats, RemovalReason } from './tracker.js';
import { cancelAndSettle, inTransaction, resetSession, rollback, settle } from './validation.js';

/** What a connection coming back gets: served again, or closed for `reason`. */
export type Verdict = { keep: true } | { keep: false; reason: RemovalReason };
const KEEP: Verdict = { keep: true };
const drop = (reason: RemovalReason): Verdict => ({ keep: false, reason });

export interface ReturnPathOptions {
  settings: DbPoolSettings;
  stats: PoolStats;
  connector: Connector;
  failover: Failover;
  core: SlotOwner<PoolEntry>;
  /** Cancels the statement a connection runs on the server (the connection layer's). */
  cancel: (entry: PoolEntry, done: (err?: Error) => void) => void;
}

export class ReturnPath {
  private readonly settings: DbPoolSettings;

  constructor(private readonly options: ReturnPathOptions) {
    this.settings = options.settings;
  }

  /**
   * Whether a connection handed back may serve again, after what that takes: a cursor or stream
   * still open is refused and the connection closed; a statement still running is cancelled on
   * the server and the connection kept once the server settles; a transaction left open is
   * rolled back, changed session state reset; an expired, evicted, worn out or no longer
   * matching connection is closed.
   */
  takeBack(entry: PoolEntry, err: Error | boolean | undefined, done: (verdict: Verdict) => void): void {
    const client = entry.client;
    const busy = awaitingServer(client);
    const queued = queuedQueries(client);
    const { validationTimeoutMs } = this.settings;
    // A cursor, stream or COPY still open reads the connection through a reference of its own:
    // it is refused from now on, and the connection is closed with it rather than handed on —
    // once the server has answered what it sent (a cursor's Sync), so that it ends as any failed
    // cursor read ends and a close() of its own returns.
    if (((busy || queued > 0) && this.refuseSubmittables(entry)) || entry.discard) {
      if (!busy || entry.dead || connectionLost(client)) return done(drop('discarded'));
      // A COPY TO reading the socket itself: pg would hear no answer to wait for. Closed now.
      if (socketTaken(client)) {
        destroySocket(client);
        return done(drop('discarded'));
      }
      return cancelAndSettle(
        client,
        (sent) => this.options.cancel(entry, sent),
        validationTimeoutMs,
        () => done(drop('discarded')),
      );
    }
    // A socket that has died cannot settle: dropped now, not after a timeout. Queries the
    // caller queued before releasing would run in the next borrower's checkout: dropped with it.
    if (err || this.closing() || entry.dead || connectionLost(client) || queued > 0) return done(drop(err ? 'discarded' : 'broken'));
    if (entry.evicted !== undefined) return done(drop('failover'));
    // A cancel was sent during the checkout (its deadline passed): the connection waits for it,
    // and for the server's answer, before anyone else gets it.
    if (entry.cancel !== undefined) {
      const cancel = entry.cancel;
      entry.cancel = undefined;
      const after = () => {
        if (cancel.failed) return done(drop('broken'));
        if (!awaitingServer(client)) return this.reset(entry, done);
        settle(client, validationTimeoutMs, (settleErr) => (settleErr ? done(drop('broken')) : this.reset(entry, done)));
      };
      if (cancel.done) after();
      else cancel.then.push(after);
      return;
    }
    // Released before the server's ReadyForQuery (a query abandoned by query_timeout, a caller
    // gone): the query is cancelled on the server — nothing runs for a caller who left — and the
    // connection kept only if the server settles in time.
    if (busy)
      return cancelAndSettle(
        client,
        (sent) => this.options.cancel(entry, sent),
        validationTimeoutMs,
        (settleErr) => (settleErr ? done(drop('broken')) : this.reset(entry, done)),
      );
    this.reset(entry, done);
  }

  /** Rolls back a transaction left open and resets changed session state, then judges whether it may serve again. */
  private reset(entry: PoolEntry, done: (verdict: Verdict) => void): void {
    const { validationTimeoutMs, name, logger } = this.settings;
    const { stats } = this.options;
    if (inTransaction(entry.client)) {
      return rollback(entry.client, validationTimeoutMs, (err) => {
        stats.rolledBack(!err);
        if (!err) return this.reset(entry, done); // a SET committed before, a LISTEN: the session reset covers them
        logger.warn(`db-pool "${name}": could not roll back a connection returned inside a transaction; discarding it`);
        done(drop('reset-failed'));
      });
    }
    if (entry.sessionChanged || entry.opaque || this.settings.resetSession === 'always') {
      entry.sessionChanged = false;
      return resetSession(entry.client, entry.setUp, validationTimeoutMs, (err) => {
        entry.sessionChanged = false; // the reset's own RESET marked it again
        stats.sessionReset(!err);
        if (!err) return done(this.judge(entry));
        logger.warn(`db-pool "${name}": could not reset the session state of a returned connection; discarding it`);
        done(drop('reset-failed'));
      });
    }
    done(this.judge(entry));
  }

  /** The pool is shutting down and nobody queued before it still waits: what comes back closes. */
  private closing(): boolean {
    const { core } = this.options;
    return core.ending && core.waiting === 0;
  }

  /** A connection back in a clean state: does it serve again? */
  private judge(entry: PoolEntry): Verdict {
    entry.uses++;
    this.options.failover.serving(entry);
    if (this.closing()) return drop('shutdown');
    if (entry.expired) return drop('recycled');
    // Evicted while it was reset: it never serves again.
    if (entry.evicted !== undefined) return drop('failover');
    // A session its borrower made read-only, which the reset did not undo: not what the pool promises.
    if (entry.session !== undefined && !sessionMatches(this.options.connector.target.targetSessionAttrs, entry.session))
      return drop('discarded');
    if (entry.uses >= this.settings.maxUses) return drop('max-uses');
    return KEEP;
  }

  /** Stops the cursors and streams a released connection still runs or holds queued; true if there were any. */
  private refuseSubmittables(entry: PoolEntry): boolean {
    const open = openSubmittables(entry.client);
    if (open.length === 0) return false;
    const { name } = this.settings;
    const err = new PoolLeaseError(
      name,
      'read',
      `db-pool "${name}": the client was released while a cursor, stream or COPY still used it; it was stopped and the connection closed (close it before releasing)`,
    );
    const taken = socketTaken(entry.client);
    for (const submittable of open) stopSubmittable(submittable, err, taken);
    // A COPY FROM waits on the client for its next row: failed, it is rolled back and the server answers.
    if (open.some((s) => typeof s.handleCopyInResponse === 'function')) failCopyIn(entry.client, err.message);
    return true;
  }
}
