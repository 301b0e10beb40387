/**
 * The Postgres connection layer beside the generic core (HikariCP's PoolBase): it opens
 * connections through the host walk, adopts them (their listeners, lifetime and the
 * application's set-up hooks), validates one before it is handed out (the pre-ping), decides on
 * return whether it may serve again (the cancel, settle, rollback and session reset, expiry,
 * `maxUses`, eviction), cancels statements on the server, and closes connections. The core
 * calls it as its driver; failover acts through the core, from ./failover.ts.
 */
import type { EventEmitter } from 'node:events';
import type pg from 'pg';
import { scrubSecrets } from '../redact.js';
import { type Connector, INTERNAL_CONNECT_TIMEOUT_MS, type SessionState, watchRole } from './connector.js';
import type { PoolDriver, SlotOwner } from './core/resource-pool.js';
import { FAILOVER_CODES, type Failover } from './failover.js';
import { delegateFields, delegateToClient } from './lease.js';
import { lifetimeOf } from './lifetime.js';
import { awaitingServer, connectionLost, destroySocket, hasPgInternals, protocolOf, queuedQueries } from './pg-internals.js';
import { PoolEntry } from './pool-entry.js';
import type { DbPoolSettings, PgPoolOptions } from './settings.js';
import type { PoolStats } from './tracker.js';
import { ping, sendCancel, watchSession } from './validation.js';

/** A borrowed connection's {@link Connections.check}. */
export const READY = 0;
export const STALE = 1;
export const PING_DUE = 2;
export type Readiness = typeof READY | typeof STALE | typeof PING_DUE;

const NOOP = () => {};

export interface ConnectionsOptions {
  settings: DbPoolSettings;
  /** pg.Pool's hooks (`onConnect`, `verify`) and `Promise`. */
  hooks: Pick<PgPoolOptions, 'onConnect' | 'verify'>;
  Client: typeof pg.Client;
  Promise: PromiseConstructor;
  connector: Connector;
  stats: PoolStats;
  failover: Failover;
  /** The pool's emitter: 'connect' (set-up), 'error' (an idle connection lost), 'remove'. */
  events: EventEmitter;
}

export class Connections implements PoolDriver<PoolEntry> {
  private core!: SlotOwner<PoolEntry>;
  private readonly settings: DbPoolSettings;
  /** A connection of a Client class that is not pg's was adopted, and the log said so. */
  private toldOpaque = false;

  /** pg's `allowExitOnIdle`: an idle connection's socket does not keep the process alive (pg's `client.ref()`/`unref()`). */
  readonly idling?: (entry: PoolEntry, idle: boolean) => void;

  constructor(private readonly options: ConnectionsOptions) {
    this.settings = options.settings;
    if (this.settings.allowExitOnIdle)
      this.idling = (entry, idle) => {
        const c = entry.client as unknown as { ref(): void; unref(): void };
        if (idle) c.unref();
        else c.ref();
      };
  }

  /** The core it serves (built after it: the core's driver is this layer). */
  attach(core: SlotOwner<PoolEntry>): void {
    this.core = core;
  }

  // ----- the core's driver ---------------------------------------------------------------------

  createSlot(now: number): PoolEntry {
    return new PoolEntry(now);
  }

  /** Opens one connection on the first host that answers with the session the pool needs, then adopts it. */
  open(entry: PoolEntry, internal: boolean, done: (err?: Error, setUp?: boolean) => void): void {
    const { trace } = this.settings;
    trace?.('connecting new client');
    // pg builds a client synchronously and can throw there (an unreadable sslrootcert, EMFILE):
    // the connector reports that as a failed attempt like any other.
    this.options.connector.open(
      {
        attempt: (client) => (entry.client = client),
        // A shutdown destroys the socket being opened; the walk goes no further.
        proceed: () => !this.core.ending,
        internal,
      },
      (err, opened) => {
        if (err) {
          trace?.('client failed to connect');
          this.options.failover.hostRefused(err);
          return done(err);
        }
        trace?.('new client connected');
        entry.host = opened!.host;
        this.adopt(entry, opened!.session, done);
      },
    );
  }

  /**
   * Closes a connection the core took out. A statement still running is cancelled first (closing
   * the socket alone leaves it running on the server, locks held); a server that never closes its
   * end (a hung backend) would hold the close, and shutdown, forever: past
   * DB_VALIDATION_TIMEOUT_MS (at once past the shutdown grace) the socket is destroyed.
   */
  close(entry: PoolEntry, now: boolean, done: () => void): void {
    clearTimeout(entry.lifetimeTimer);
    const client = entry.client;
    // Released (or found) already lost, before pg's 'end' reached its listener: the host may be gone.
    if (!entry.endAsked && connectionLost(client)) this.options.failover.connectionEnded(entry, 'a connection was lost');
    else if (!entry.endAsked && awaitingServer(client) && entry.cancel === undefined) this.cancelStatement(entry, NOOP);
    entry.endAsked = true;
    let closed = false;
    const onClosed = () => {
      if (closed) return;
      closed = true;
      clearTimeout(timer);
      const events = this.options.events;
      if (events.listenerCount('remove') > 0) events.emit('remove', entry.seenAs);
      done();
    };
    const timer = setTimeout(() => destroySocket(client), now ? 0 : this.settings.validationTimeoutMs);
    timer.unref();
    client.end().then(onClosed, onClosed);
  }

  /** A connection being opened when the shutdown grace ended: its connect fails, and the pool ends. */
  abort(entry: PoolEntry): void {
    if (entry.client) destroySocket(entry.client);
  }

  // ----- adopting ------------------------------------------------------------------------------

  /** A new connection: listeners, lifetime, the application's set-up, then into service. */
  private adopt(entry: PoolEntry, session: SessionState, done: (err?: Error, setUp?: boolean) => void): void {
    const { connector, failover } = this.options;
    const client = entry.client;
    delegateOnce(this.options.Client, client);
    if (!hasPgInternals(client)) {
      // It works through pg.Client's public API; what needs pg's internals is off, said once.
      entry.opaque = true;
      if (!this.toldOpaque) {
        this.toldOpaque = true;
        this.settings.logger.warn(
          `db-pool "${this.settings.name}": the Client class is not pg's (no protocol connection or query queue where pg keeps them): its connections are rolled back and reset on every return, and FATAL, role and session-change reports, settling a statement left running at release and closing a socket at once are off`,
        );
      }
    }
    // Its errors must never crash the process: an idle one is dropped and reported, a
    // checked-out one is dropped when it comes back (its caller sees the query fail).
    client.on('error', (err: Error) => this.onClientError(entry, err));
    // A FATAL answer (the backend was terminated, the server shuts down) reaches the query before
    // the socket's end does; marked first, so a caller that releases in its callback sees it.
    protocolOf(client)?.prependListener('errorMessage', (msg: { severity?: string; code?: string }) => {
      // Only a FATAL ends the session: any SQL can RAISE an ERROR, WARNING or NOTICE with a 57P0x
      // code (USING ERRCODE = 'admin_shutdown'), so only a FATAL one says the server is going. (An
      // immediate shutdown's 57P01 warning is not acted on either: the connection's end that
      // follows it is.)
      if (msg.severity === 'FATAL' || msg.severity === 'PANIC') {
        entry.dead = true;
        entry.fatalCode = msg.code ?? '';
        if (msg.code !== undefined && FAILOVER_CODES.has(msg.code))
          failover.connectionEnded(entry, `${msg.code} ${FAILOVER_CODES.get(msg.code)}`);
      }
      // A write refused as read-only (25006) where the server does not report its state (before
      // 14, a pooler in between): a caller's own read-only transaction gives it too, so only this
      // connection goes, when it comes back; new connections check the server's role. (Where the
      // state is reported, a server-wide change arrives as a parameter status: watchRole.)
      else if (msg.code === '25006' && this.needsWrites && !session.reported) entry.expired = true;
    });
    // A connection that ends without the pool closing it: its server may be gone. (Its caller
    // may have released it before this event: close() looks for that case too.)
    client.on('end', () => {
      if (!entry.endAsked) failover.connectionEnded(entry, 'a connection was lost');
    });
    if (connector.target.targetSessionAttrs !== 'any') {
      entry.session = session;
      watchRole(client, session, connector.target.targetSessionAttrs, (why, parameter) => {
        // in_hot_standby is the server's alone (a promotion, a demotion). default_transaction_read_only
        // may be this session's own (SET, set_config(), SET SESSION CHARACTERISTICS, a function): the
        // server's is read on a connection of its own before anything is evicted.
        if (parameter === 'in_hot_standby') failover.evictHost(entry.host, why);
        else failover.checkRole(entry.host, why);
      });
    }
    const lifetime = lifetimeOf(this.settings.recycleMs, this.settings.recycleJitter);
    if (lifetime > 0) {
      entry.lifetimeTimer = setTimeout(() => this.retire(entry), lifetime);
      entry.lifetimeTimer.unref();
    }
    this.setUp(entry, (err) => {
      if (err) {
        entry.endAsked = true;
        client.end().catch(NOOP);
        return done(new Error(`the connection's set-up failed: ${scrubSecrets(err.message)}`, { cause: err }), true);
      }
      watchSession(client, () => (entry.sessionChanged = true));
      delegateFields(client); // what the set-up put on the connection reads through its leases
      done();
    });
  }

  /**
   * The application's per-connection set-up — 'connect' listeners, pg-pool's `onConnect` and
   * `verify` hooks — runs before anyone gets the connection. The statements they send are kept
   * and replayed after a session reset, so a `SET search_path` made there survives it.
   */
  private setUp(entry: PoolEntry, done: (err?: Error) => void): void {
    const { onConnect, verify } = this.options.hooks;
    const { events, Promise: P } = this.options;
    const client = entry.client;
    if (events.listenerCount('connect') === 0 && !onConnect && !verify) return done();
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
      events.emit('connect', client);
    } catch (err) {
      restore();
      return done(err as Error);
    }
    const hook = onConnect ? P.resolve().then(() => onConnect(client as pg.PoolClient)) : P.resolve();
    hook
      .then(() =>
        verify ? new P<void>((resolve, reject) => verify(client as pg.PoolClient, (err) => (err ? reject(err) : resolve()))) : undefined,
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
    const attrs = this.options.connector.target.targetSessionAttrs;
    return attrs === 'read-write' || attrs === 'primary';
  }

  private onClientError(entry: PoolEntry, err: Error): void {
    const { stats, failover, events } = this.options;
    stats.clientError();
    // pg reports a dead socket as an error, before its 'end' (and before removal below).
    if (!entry.endAsked) failover.connectionEnded(entry, `a connection failed: ${(err as { code?: string }).code ?? err.message}`);
    const { name, logger } = this.settings;
    if (!this.core.isIdle(entry)) return logger.debug?.(`db-pool "${name}": connection error: ${scrubSecrets(err.message)}`);
    this.core.destroy(entry, 'broken');
    if (events.listenerCount('error') > 0) {
      // As pg.Pool: the error names its connection too.
      (err as Error & { client?: object }).client = entry.seenAs;
      events.emit('error', err, entry.seenAs);
    } else logger.warn(`db-pool "${name}": idle connection lost: ${scrubSecrets(err.message)}`);
  }

  /** Marks a connection as expired: closed now if idle, else when it comes back. */
  private retire(entry: PoolEntry): void {
    this.options.stats.recycled();
    entry.expired = true;
    if (this.core.isIdle(entry)) this.core.destroy(entry, 'recycled');
  }

  // ----- before a hand-out ---------------------------------------------------------------------

  /**
   * What a connection taken from the idle list needs before it is handed out: nothing
   * ({@link READY}); to be dropped ({@link STALE}: the server ended it, or its socket has); or a
   * pre-ping ({@link PING_DUE}: it sat idle past the bypass window (DB_POOL_PRE_PING), or its host
   * has a cancel request unconfirmed — it may be partitioned).
   */
  check(entry: PoolEntry, now: number): Readiness {
    if (entry.dead || connectionLost(entry.client)) return STALE;
    const { prePing, prePingBypassMs } = this.settings;
    if (prePing && now - entry.lastUsed > prePingBypassMs) return PING_DUE;
    const { failover } = this.options;
    return failover.suspects.size > 0 && failover.isSuspect(entry) ? PING_DUE : READY;
  }

  /**
   * The pre-ping, bounded by DB_VALIDATION_TIMEOUT_MS rather than by the caller's deadline (a
   * server slower than the caller's patience is not a dead one), or by a connect's bound for a
   * suspect host. A suspect host whose ping goes unanswered is gone.
   */
  validate(entry: PoolEntry, done: (err?: Error) => void): void {
    const { stats, failover } = this.options;
    stats.prePingStarted();
    const suspect = failover.isSuspect(entry);
    ping(entry.client, suspect ? this.cancelTimeoutMs : this.settings.validationTimeoutMs, (err) => {
      if (!err) return done();
      stats.prePingFailed();
      this.settings.logger.debug?.(
        `db-pool "${this.settings.name}": pre-ping failed, discarding the connection: ${scrubSecrets(err.message)}`,
      );
      if (suspect) failover.hostGone(entry, 'a ping went unanswered while a cancel request was unconfirmed');
      done(err);
    });
  }

  // ----- cancelling ----------------------------------------------------------------------------

  /**
   * PostgreSQL's cancel request for the statement `entry` runs, on a connection of its own (bounded
   * like a connect: a cancel request is one). Until the server confirms it the host is suspect
   * (see Failover.suspect).
   */
  cancelStatement(entry: PoolEntry, done: (err?: Error) => void): void {
    this.options.stats.cancelled();
    const unsuspect = this.options.failover.suspect(entry);
    sendCancel(entry.client, entry.host, this.cancelTimeoutMs, (err) => {
      unsuspect(err);
      done(err);
    });
  }

  /** A request's deadline passed under a running statement (the lease's query): it is cancelled now, once. */
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

  /** How long a cancel request, or a ping of a suspect host, may take: a connect's bound, within DB_VALIDATION_TIMEOUT_MS. */
  private get cancelTimeoutMs(): number {
    return Math.min(this.settings.validationTimeoutMs, this.settings.connectTimeoutMs || INTERNAL_CONNECT_TIMEOUT_MS);
  }
}

const delegatedClasses = new WeakSet<object>();
/** Gives leases the members of a client class, once per class. */
function delegateOnce(Client: typeof pg.Client, sample: pg.Client): void {
  if (delegatedClasses.has(Client)) return;
  delegatedClasses.add(Client);
  delegateToClient(sample);
}
