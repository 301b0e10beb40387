import type { Span } from '@opentelemetry/api';
import type pg from 'pg';
import type { SessionState } from './connector.js';
import type { HostAddress } from './hosts.js';
import { Slot } from './core/slot.js';
import type { CheckoutSite, LeakRecord } from './leak-tracker.js';
import type { Verdict } from './return-path.js';

/**
 * One connection of the pool and what the pool knows of it (HikariCP's `PoolEntry`): the core's
 * slot (its being opened, idle or out, when it was last used) and the Postgres layer's knowledge.
 */
export class PoolEntry extends Slot implements LeakRecord {
  /** The client being opened (the current host's, while a host list is walked), then the connection's. */
  client!: pg.Client;
  /** Where the current checkout was taken (leak tracking, within its stack rate). */
  leakSite: CheckoutSite | undefined = undefined;
  /** The span active where the current checkout was asked for, when leak tracking and a tracer are on. */
  leakSpan: Span | undefined = undefined;
  /**
   * The lease that held it last: what the pool's 'release', 'remove' and 'error' events name, so
   * that an observer compares them with the client it was given (its raw client before any checkout).
   */
  lastLease: object | undefined = undefined;
  /** What the pool does with the return path's verdict on it (made once, see DbPool.giveBack). */
  afterReturn: ((verdict: Verdict) => void) | undefined = undefined;

  /** The connection as the pool's events name it (see {@link lastLease}). */
  get seenAs(): object {
    return this.lastLease ?? this.client;
  }
  /** The current checkout was reported as a possible leak. */
  leakReported = false;
  /** Checkouts so far (pg's `maxUses`). */
  uses = 0;
  /** Outlived its lifetime: closed when it comes back, or now if idle. */
  expired = false;
  /** The server sent a FATAL error: the connection is closing, whatever pg says yet. */
  dead = false;
  /** A checkout changed the session (SET, RESET, LISTEN, a reported setting): reset it on return. */
  sessionChanged = false;
  /** Its Client is not pg's (no internals to read): every return rolls back and resets. */
  opaque = false;
  /** The SQLSTATE of a FATAL the server sent on it (it ended the session, saying why). */
  fatalCode: string | undefined = undefined;
  /** The pool is closing it (or has): its 'end' is no news. */
  endAsked = false;
  /** Its unasked end or failure has been handled (once per connection, whichever event came first). */
  endSeen = false;
  /** A cursor or stream stopped by its request's deadline may still write to it: closed at release, never reused. */
  discard = false;
  /** Statements the application ran on it when it was opened ('connect' listeners), replayed after a session reset. */
  setUp: string[] = [];
  lifetimeTimer: NodeJS.Timeout | undefined;
  /** The host it is connected to (of the pool's host list); unset while being opened. */
  host: HostAddress | undefined = undefined;
  /** The session's read-only and hot-standby state as the server last reported it (a host list or target_session_attrs). */
  session: SessionState | undefined = undefined;
  /** Its server changed role (failover): no statement is sent on it any more; closed when it comes back. */
  evicted: string | undefined = undefined;
  /**
   * A cancel request sent for the current checkout's statement (its request's deadline passed):
   * the connection goes to no one else before the server has taken it.
   */
  cancel: { done: boolean; failed: boolean; then: (() => void)[] } | undefined = undefined;
}
