/**
 * Opens connections the way libpq does with a host list: each attempt walks the hosts in order
 * (shuffled with `load_balance_hosts=random`), each within the connect timeout, and keeps the
 * first whose session matches `target_session_attrs`; `prefer-standby` makes a second pass that
 * takes any host. It also keeps what the pool has learnt of each host (role, up or down), which
 * health and metrics show and failover acts on.
 */
import { performance } from 'node:perf_hooks';
import type pg from 'pg';
import { scrubSecrets } from '../redact.js';
import { withPasswordOrigin } from '../config/password.js';
import { connectTargetOf, type ConnectTarget, type HostAddress, type TargetSessionAttrs, walkOrder } from './hosts.js';
import { protocolOf } from './pg-internals.js';

export type HostRole = 'primary' | 'standby' | 'unknown';
/** `up`: connections open; `down`: the last attempt failed; `rejected`: up, but its session does not match; `evicted`: left after a failover signal. */
export type HostStateName = 'up' | 'down' | 'rejected' | 'evicted' | 'unknown';

/** What the pool knows of one host of its list. */
export interface HostStatus {
  readonly address: string;
  readonly role: HostRole;
  readonly state: HostStateName;
  /** Why it is down, rejected or evicted (secrets scrubbed). */
  readonly reason: string | undefined;
  /** performance.now() of the last change of state. */
  readonly since: number;
}

/** A session's read-only and hot-standby state, as the server reported it or answered. */
export interface SessionState {
  readOnly: boolean | undefined;
  hotStandby: boolean | undefined;
  /** The server's reported default_transaction_read_only (a standby's sessions are read-only whatever it says). */
  defaultReadOnly?: boolean;
  /** The server reports both settings (PostgreSQL 14+): the pool hears of a change as it happens. */
  reported: boolean;
}

/** No host of the list gave a usable session; `errors` holds each host's reason. */
export class NoHostError extends Error {
  override name = 'NoHostError';
  /** The code every host failed with, when they agree (ECONNREFUSED, 28P01, …). */
  readonly code: string | undefined;
  constructor(
    message: string,
    readonly errors: readonly { address: string; error: Error }[],
  ) {
    super(message);
    const codes = new Set(errors.map((e) => (e.error as { code?: string }).code));
    this.code = codes.size === 1 ? [...codes][0] : undefined;
  }
}

/**
 * Closes a client nobody else listens to: its socket may still fail while it closes (the server
 * shutting down sends a FATAL first), and an 'error' with no listener would end the process.
 */
function closeQuietly(client: pg.Client): void {
  client.on('error', () => {});
  client.end().catch(() => {});
}

/** The session is not the one `target_session_attrs` asks for. */
class WrongSessionError extends Error {
  override name = 'WrongSessionError';
}

const READ_ONLY_REPORTED = ['in_hot_standby', 'default_transaction_read_only'] as const;

/** True when `session` satisfies `attrs` (prefer-standby's first pass asks for `standby`). */
export function sessionMatches(attrs: TargetSessionAttrs, session: SessionState): boolean {
  switch (attrs) {
    case 'any':
    case 'prefer-standby':
      return true;
    case 'read-write':
      return session.readOnly === false;
    case 'read-only':
      return session.readOnly === true;
    case 'primary':
      return session.hotStandby === false;
    case 'standby':
      return session.hotStandby === true;
  }
}

function describe(attrs: TargetSessionAttrs): string {
  return attrs === 'read-write' ? 'a writable session' : attrs === 'read-only' ? 'a read-only session' : `a ${attrs}`;
}

export interface ConnectorOptions {
  Client: typeof pg.Client;
  /** pg's options (connection string, timeouts, …); the connection string may list several hosts. */
  clientConfig: pg.ClientConfig;
  /** A host that was up is not any more (down, rejected, evicted): a failover as this pool sees it. */
  lost?: (address: string) => void;
}

/** How the pool follows one connection attempt. */
export interface AttemptHooks {
  /** A client is about to connect to a host (the pool tracks it: a shutdown destroys its socket). */
  attempt(client: pg.Client): void;
  /** Asked before the next host is tried: false ends the walk (the pool is shutting down). */
  proceed(): boolean;
  /**
   * The pool opens it for itself (a breaker probe, the refill): bounded by
   * {@link INTERNAL_CONNECT_TIMEOUT_MS} when pg's `connectionTimeoutMillis` sets no bound.
   */
  readonly internal?: boolean;
}

/**
 * The bound on a connection the pool opens for itself (a breaker probe, the refill, a role check)
 * when pg's `connectionTimeoutMillis` sets none: a server that accepts and never answers must not
 * hold a probe, and with it the breaker, forever.
 */
export const INTERNAL_CONNECT_TIMEOUT_MS = 5_000;

export interface Opened {
  client: pg.Client;
  host: HostAddress;
  session: SessionState;
}

export class Connector {
  readonly target: ConnectTarget;
  private readonly Client: typeof pg.Client;
  private readonly hostStates = new Map<string, HostStatus>();
  private readonly checksSession: boolean;
  private readonly lost: (address: string) => void;
  /** The session check after login gets what a connect gets: a host that logs in and stalls is passed over. */
  private readonly checkTimeoutMs: number | undefined;
  /** The bound on the connections the pool opens for itself. */
  private readonly internalTimeoutMs: number;

  constructor(options: ConnectorOptions) {
    this.Client = options.Client;
    this.checkTimeoutMs = options.clientConfig.connectionTimeoutMillis || undefined;
    this.internalTimeoutMs = this.checkTimeoutMs ?? INTERNAL_CONNECT_TIMEOUT_MS;
    this.lost = options.lost ?? (() => {});
    this.target = connectTargetOf(options.clientConfig);
    this.checksSession = this.target.targetSessionAttrs !== 'any';
    for (const host of this.target.hosts)
      this.hostStates.set(host.address, { address: host.address, role: 'unknown', state: 'unknown', reason: undefined, since: 0 });
  }

  /** More than one host, or a session requirement: what health and metrics show per host. */
  get highAvailability(): boolean {
    return this.target.hosts.length > 1 || this.checksSession;
  }

  hosts(): HostStatus[] {
    return [...this.hostStates.values()];
  }

  /** Records a host's state (a connect outcome, a failover signal, an eviction). */
  mark(address: string, state: HostStateName, reason?: string, role?: HostRole): void {
    const old = this.hostStates.get(address);
    if (!old) return;
    const changed = old.state !== state || (role !== undefined && role !== old.role);
    this.hostStates.set(address, {
      address,
      role: role ?? old.role,
      state,
      reason: reason === undefined ? undefined : scrubSecrets(reason),
      since: changed ? performance.now() : old.since,
    });
    if (old.state === 'up' && state !== 'up') this.lost(address);
  }

  /** A connection to `address` served a statement: a host marked down is up again. */
  serving(address: string): void {
    if (this.hostStates.get(address)?.state === 'down') this.mark(address, 'up');
  }

  /**
   * Opens one connection on the first host that answers with a matching session. Sync errors of
   * pg's constructor (an unreadable certificate) are an attempt's failure like any other.
   */
  open(hooks: AttemptHooks, done: (err: Error | undefined, opened?: Opened) => void): void {
    const attrs = this.target.targetSessionAttrs;
    const passes: TargetSessionAttrs[] = attrs === 'prefer-standby' ? ['standby', 'any'] : [attrs];
    const order = walkOrder(this.target);
    const errors: { address: string; error: Error }[] = [];
    let pass = 0;
    let i = 0;
    const next = (): void => {
      if (i === order.length) {
        pass++;
        i = 0;
        if (pass === passes.length) return done(this.noHost(errors));
      }
      if (errors.length > 0 && !hooks.proceed()) return done(errors[errors.length - 1].error);
      const host = order[i++];
      this.tryHost(host, passes[pass], hooks, (err, opened) => {
        if (opened) return done(undefined, opened);
        errors.push({ address: host.address, error: err! });
        next();
      });
    };
    next();
  }

  private noHost(errors: { address: string; error: Error }[]): Error {
    // One host and a plain connect error: the driver's own error, as pg.Pool gives it.
    if (errors.length === 1 && !(errors[0].error instanceof WrongSessionError)) return errors[0].error;
    const wanted = describe(this.target.targetSessionAttrs);
    const list = errors.map((e) => `${e.address}: ${e.error.message}`).join('; ');
    const err = new NoHostError(`no host gave ${wanted} (target_session_attrs=${this.target.targetSessionAttrs}): ${list}`, errors);
    return err;
  }

  private tryHost(
    host: HostAddress,
    wanted: TargetSessionAttrs,
    hooks: AttemptHooks,
    done: (err: Error | undefined, opened?: Opened) => void,
  ): void {
    const timeoutMs = hooks.internal ? this.internalTimeoutMs : this.checkTimeoutMs;
    this.connectAndRead(host, wanted, timeoutMs, this.checksSession, hooks, (err, client, session) => {
      if (err) {
        this.mark(host.address, 'down', err.message);
        return done(err);
      }
      if (!this.checksSession) {
        this.mark(host.address, 'up');
        return done(undefined, { client: client!, host, session: session! });
      }
      const role: HostRole = session!.hotStandby === undefined ? 'unknown' : session!.hotStandby ? 'standby' : 'primary';
      if (sessionMatches(wanted, session!)) {
        this.mark(host.address, 'up', undefined, role);
        return done(undefined, { client: client!, host, session: session! });
      }
      const why = `${session!.hotStandby ? 'a standby' : session!.readOnly ? 'read-only' : 'a writable primary'}, not ${describe(wanted)}`;
      // prefer-standby's first pass passing over a primary is not a verdict on it: the second pass may take it.
      if (this.target.targetSessionAttrs !== 'prefer-standby') this.mark(host.address, 'rejected', why, role);
      closeQuietly(client!);
      done(new WrongSessionError(why));
    });
  }

  /**
   * The session a new connection to `host` gets, read on a connection of its own and closed
   * again: whether a role signal seen on one session (`default_transaction_read_only` now on) is
   * the server's or that session's own. Marks nothing.
   */
  checkSession(host: HostAddress, done: (err: Error | undefined, session?: SessionState) => void): void {
    this.connectAndRead(host, this.target.targetSessionAttrs, this.internalTimeoutMs, true, undefined, (err, client, session) => {
      if (client) closeQuietly(client);
      done(err, session);
    });
  }

  /**
   * Connects a client to `host` within `timeoutMs` (when pg's options set no bound of their own)
   * and, with `readSession`, reads its session. A client whose session could not be read is
   * closed; sync errors of pg's constructor (an unreadable certificate) are failures like any other.
   */
  private connectAndRead(
    host: HostAddress,
    wanted: TargetSessionAttrs,
    timeoutMs: number | undefined,
    readSession: boolean,
    hooks: AttemptHooks | undefined,
    done: (err: Error | undefined, client?: pg.Client, session?: SessionState) => void,
  ): void {
    let client: pg.Client;
    let config: pg.ClientConfig;
    try {
      config = boundedConfig(this.target.clientConfig(host), timeoutMs);
      client = new this.Client(config);
      // pg takes a URL's password over the `password` option, an empty one when the URL has none:
      // then the option's (a function: DB_PASSWORD_FILE, a cloud token) is the one to use.
      if (config.connectionString !== undefined && config.password !== undefined && !(client as { password?: unknown }).password)
        (client as { password?: unknown }).password = config.password;
    } catch (err) {
      // A URL error carries the URL, password included, as `input`.
      if (err && typeof err === 'object' && 'input' in err) delete (err as { input?: unknown }).input;
      return process.nextTick(done, err as Error);
    }
    hooks?.attempt(client);
    const reported = new Map<string, string>();
    const protocol = protocolOf(client);
    const onStatus = (msg: { parameterName: string; parameterValue: string }) => {
      if ((READ_ONLY_REPORTED as readonly string[]).includes(msg.parameterName)) reported.set(msg.parameterName, msg.parameterValue);
    };
    if (readSession) protocol?.on('parameterStatus', onStatus);
    client.connect((err?: Error) => {
      protocol?.removeListener('parameterStatus', onStatus);
      if (err) return done(withPasswordOrigin(err, config.password));
      if (!readSession) return done(undefined, client, { readOnly: undefined, hotStandby: undefined, reported: false });
      this.sessionOf(client, reported, wanted, timeoutMs, (checkErr, session) => {
        if (!checkErr) return done(undefined, client, session);
        closeQuietly(client);
        done(checkErr);
      });
    });
  }

  /**
   * The session's state from what the server reported at start-up (`in_hot_standby` and
   * `default_transaction_read_only`, PostgreSQL 14+), else asked: `SHOW transaction_read_only`
   * and `pg_is_in_recovery()`, as libpq does with older servers.
   */
  private sessionOf(
    client: pg.Client,
    reported: Map<string, string>,
    wanted: TargetSessionAttrs,
    timeoutMs: number | undefined,
    done: (err: Error | undefined, session?: SessionState) => void,
  ): void {
    const hot = reported.get('in_hot_standby');
    const ro = reported.get('default_transaction_read_only');
    if (hot !== undefined && ro !== undefined)
      return done(undefined, {
        hotStandby: hot === 'on',
        readOnly: hot === 'on' || ro === 'on',
        defaultReadOnly: ro === 'on',
        reported: true,
      });
    const needsReadOnly = wanted === 'read-write' || wanted === 'read-only';
    client.query(
      {
        text: needsReadOnly
          ? "SELECT current_setting('transaction_read_only') = 'on' AS read_only, pg_is_in_recovery() AS hot_standby"
          : 'SELECT pg_is_in_recovery() AS hot_standby, NULL::boolean AS read_only',
        query_timeout: timeoutMs,
      } as pg.QueryConfig,
      (err: Error | null, result?: pg.QueryResult<{ read_only: boolean | null; hot_standby: boolean }>) => {
        if (err) return done(err);
        const row = result!.rows[0];
        done(undefined, { hotStandby: row.hot_standby, readOnly: row.read_only ?? row.hot_standby, reported: false });
      },
    );
  }
}

/**
 * Follows a session's reported `in_hot_standby` and `default_transaction_read_only` (a promotion,
 * a server made read-only): updates `session` and calls `changed` when it no longer matches.
 */
export function watchRole(
  client: pg.Client,
  session: SessionState,
  attrs: TargetSessionAttrs,
  changed: (why: string, parameter: string) => void,
): void {
  if (!session.reported) return;
  const values = new Map<string, string>([
    ['in_hot_standby', session.hotStandby ? 'on' : 'off'],
    ['default_transaction_read_only', (session.defaultReadOnly ?? (session.readOnly && !session.hotStandby)) ? 'on' : 'off'],
  ]);
  protocolOf(client)?.on('parameterStatus', (msg: { parameterName: string; parameterValue: string }) => {
    if (!(READ_ONLY_REPORTED as readonly string[]).includes(msg.parameterName)) return;
    values.set(msg.parameterName, msg.parameterValue);
    const matched = sessionMatches(attrs, session);
    session.hotStandby = values.get('in_hot_standby') === 'on';
    session.readOnly = session.hotStandby || values.get('default_transaction_read_only') === 'on';
    if (matched && !sessionMatches(attrs, session)) changed(`${msg.parameterName} is now ${msg.parameterValue}`, msg.parameterName);
  });
}

/** pg's options with `connectionTimeoutMillis` set to `timeoutMs` where they set none; secrets stay as hidden as they were. */
function boundedConfig(config: pg.ClientConfig, timeoutMs: number | undefined): pg.ClientConfig {
  if (timeoutMs === undefined || config.connectionTimeoutMillis) return config;
  const copy = Object.create(Object.getPrototypeOf(config) as object, Object.getOwnPropertyDescriptors(config)) as pg.ClientConfig;
  copy.connectionTimeoutMillis = timeoutMs;
  return copy;
}
