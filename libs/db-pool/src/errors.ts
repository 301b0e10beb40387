/** The pool's counters at the moment an error was raised. */
export interface PoolState {
  /** Connections open or being opened. */
  total: number;
  /** Connections checked out (or being validated or reset for a caller). */
  active: number;
  /** Connections open and waiting in the pool. */
  idle: number;
  /** Callers queued for a connection. */
  waiting: number;
}

export function describeState(state: PoolState): string {
  return `total=${state.total}, active=${state.active}, idle=${state.idle}, waiting=${state.waiting}`;
}

/** What a typed error copies from the driver's error it wraps, so `err.code` checks keep working. */
const DRIVER_FIELDS = ['code', 'errno', 'syscall', 'severity', 'detail', 'hint', 'routine'] as const;

/** Base class of every error a db-pool acquire rejects with. */
export class PoolAcquireError extends Error {
  /** The driver's code (`ECONNREFUSED`, `28P01`, `53300`, …), copied from the cause. */
  readonly code?: string;
  readonly errno?: number;
  readonly syscall?: string;
  readonly severity?: string;
  readonly detail?: string;
  readonly hint?: string;
  readonly routine?: string;

  constructor(
    message: string,
    readonly poolName: string,
    readonly state: PoolState,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = new.target.name;
    const cause = options?.cause as Record<string, unknown> | undefined;
    if (cause && typeof cause === 'object') {
      for (const field of DRIVER_FIELDS) {
        if (cause[field] !== undefined) (this as Record<string, unknown>)[field] = cause[field];
      }
    }
  }
}

/**
 * No connection became free within the acquire deadline (`DB_POOL_TIMEOUT`, or pg's
 * `connectionTimeoutMillis`). The message keeps pg-pool's own text, which code in the wild
 * matches on.
 */
export class PoolTimeoutError extends PoolAcquireError {
  constructor(
    poolName: string,
    readonly timeoutMs: number,
    state: PoolState,
    options?: { cause?: unknown },
  ) {
    super(
      `db-pool "${poolName}": timeout exceeded when trying to connect: no connection within ${timeoutMs} ms (${describeState(state)})`,
      poolName,
      state,
      options,
    );
  }
}

/** Opening a new connection failed (server down, refused, auth, too many clients, connect timeout). */
export class PoolConnectError extends PoolAcquireError {
  constructor(poolName: string, state: PoolState, reason: string, options?: { cause?: unknown }) {
    super(`db-pool "${poolName}": could not open a connection: ${reason} (${describeState(state)})`, poolName, state, options);
  }
}

/**
 * The connect circuit breaker is open: connection attempts failed on every host, so the pool
 * opens none for a back-off and fails acquires that need one at once instead of letting each
 * wait its deadline. `retryAt` is when the next probe goes (ms since the epoch). A
 * {@link PoolConnectError}: code that handles "database unreachable" handles this too.
 */
export class PoolUnavailableError extends PoolConnectError {
  constructor(
    poolName: string,
    state: PoolState,
    readonly retryAt: number,
    options?: { cause?: unknown },
  ) {
    // Not `instanceof Error`: a socket error comes from another realm under some test runners.
    const lastMessage = (options?.cause as { message?: unknown } | undefined)?.message;
    const last = typeof lastMessage === 'string' ? `; last failure: ${lastMessage}` : '';
    super(
      poolName,
      state,
      `every host failed, so no connection is opened until ${new Date(retryAt).toISOString()} (connect circuit breaker open${last})`,
      options,
    );
  }
}

/**
 * The pool is overloaded: the queue is full (`DB_POOL_MAX_WAITING`), or the wait the caller would
 * have — its place in the queue times the measured time a connection is held, over the pool's
 * capacity — is longer than its deadline. Failed at once rather than after waiting it out.
 */
export class PoolOverloadedError extends PoolAcquireError {
  constructor(
    poolName: string,
    state: PoolState,
    readonly reason: string,
  ) {
    super(`db-pool "${poolName}": overloaded, not queued: ${reason} (${describeState(state)})`, poolName, state);
  }
}

/**
 * The server behind a checked-out connection changed role (a promotion or demotion seen by the
 * pool): the statement was not sent. Release the client and check out another; it goes to the
 * host that now has the session the pool needs.
 */
export class PoolFailoverError extends PoolAcquireError {
  constructor(
    poolName: string,
    state: PoolState,
    readonly host: string,
    reason: string,
  ) {
    super(
      `db-pool "${poolName}": the server at ${host} was evicted (${reason}); the statement was not sent, check out another connection (${describeState(state)})`,
      poolName,
      state,
    );
  }
}

/**
 * The pool is shutting down (or has shut down): the acquire was refused, or failed while it
 * waited. Not a connect error: the server may be fine.
 */
export class PoolClosedError extends PoolAcquireError {
  constructor(poolName: string, state: PoolState, options?: { cause?: unknown }) {
    super(`db-pool "${poolName}": the pool is shutting down (${describeState(state)})`, poolName, state, options);
  }
}

/**
 * A client was used after it was released: its connection may belong to another caller now,
 * so nothing was done with it.
 */
export class PoolLeaseError extends Error {
  constructor(
    readonly poolName: string,
    readonly member: string,
    message = `db-pool "${poolName}": ${member} called on a client that was released to the pool; check out another one`,
  ) {
    super(message);
    this.name = new.target.name;
  }
}

/** A client was handed back twice: `release()` on a client already released. */
export class PoolReleaseError extends PoolLeaseError {
  constructor(poolName: string) {
    super(poolName, 'release', `db-pool "${poolName}": release called on a client that was already released to the pool`);
  }
}

/**
 * The request's deadline (`withDeadline`, `@DbPoolDeadline`) passed: the statement was not sent,
 * or it was still running and was cancelled on the server. A retry is safe only for reads; a
 * write cancelled mid-way was rolled back by the server, but one whose answer was merely late
 * may have committed.
 */
export class PoolDeadlineError extends Error {
  readonly code = 'DB_POOL_DEADLINE';
  constructor(
    readonly poolName: string,
    readonly budgetMs: number,
    readonly sent: boolean,
    options?: { cause?: unknown },
  ) {
    super(
      `db-pool "${poolName}": the request's deadline of ${budgetMs} ms passed ${sent ? 'while the statement ran (it was cancelled on the server)' : 'before the statement was sent (while it waited for a connection, or after it had one)'}`,
      options,
    );
    this.name = new.target.name;
  }
}

/**
 * The caller's signal aborted (`withSignal`: the HTTP client disconnected, a job was cancelled):
 * the statement was not sent, or it was running and was cancelled on the server. A
 * {@link PoolDeadlineError}, so code and filters that handle a passed deadline handle this too;
 * `reason` is the signal's.
 */
export class PoolAbortedError extends PoolDeadlineError {
  constructor(
    poolName: string,
    sent: boolean,
    readonly reason: unknown,
    options?: { cause?: unknown },
  ) {
    super(poolName, Infinity, sent, options);
    this.message = `db-pool "${poolName}": the caller's signal aborted ${sent ? 'while the statement ran (it was cancelled on the server)' : 'before the statement was sent (while it waited for a connection, or after it had one)'}`;
  }
}

/** Why the answer to a statement whose outcome matters never came. */
export type OutcomeUnknownReason = 'deadline' | 'query_timeout' | 'connection_lost' | 'cancelled';

/**
 * A statement that ends a transaction (`COMMIT`, `END`, `PREPARE TRANSACTION`, `COMMIT
 * PREPARED`) or writes in a transaction of its own was sent, and no answer came: the request's
 * deadline passed and the server did not answer the cancel in time, pg's `query_timeout` fired,
 * or the connection was lost. The server may have applied it. Never retry it blindly: check, or
 * retry with an idempotency key. `committed` is true where the server said the transaction
 * committed locally (its wait for synchronous replication was cancelled): the write is on the
 * primary, its replication is unconfirmed.
 */
export class PoolOutcomeUnknownError extends Error {
  readonly code = 'DB_POOL_OUTCOME_UNKNOWN';
  constructor(
    readonly poolName: string,
    /** The statement's command (`COMMIT`, `INSERT`, …). */
    readonly command: string,
    readonly reason: OutcomeUnknownReason,
    /** true: committed on the server, replication unconfirmed; undefined: unknown. */
    readonly committed: true | undefined,
    options?: { cause?: unknown },
  ) {
    super(
      committed
        ? `db-pool "${poolName}": ${command} committed on the server, but its synchronous replication was not confirmed (${REASONS[reason]}); do not retry it`
        : `db-pool "${poolName}": the outcome of ${command} is unknown (${REASONS[reason]} after it was sent); it may have been applied, so do not retry it blindly`,
      options,
    );
    this.name = new.target.name;
  }
}

const REASONS: Readonly<Record<OutcomeUnknownReason, string>> = {
  deadline: "the request's deadline passed",
  query_timeout: 'its query_timeout passed',
  connection_lost: 'the connection was lost',
  cancelled: 'it was cancelled on the server',
};

/** The configuration given to db-pool is invalid; the message lists every bad key. */
export class DbPoolConfigError extends Error {
  constructor(
    readonly poolName: string,
    readonly problems: readonly string[],
  ) {
    super(
      `Invalid db-pool configuration for pool "${poolName}" (${problems.length} problem${problems.length === 1 ? '' : 's'}):\n` +
        problems.map((p) => `  - ${p}`).join('\n'),
    );
    this.name = 'DbPoolConfigError';
  }
}

/** The driver's code of an error or of its cause (`ECONNREFUSED`, `ENOTFOUND`, a SQLSTATE). */
export function codeOf(err: unknown): string | undefined {
  for (let e = err as { code?: unknown; cause?: unknown } | undefined, depth = 0; e && depth < 5; e = e.cause as typeof e, depth++) {
    if (typeof e.code === 'string' && e.code) return e.code;
  }
  return undefined;
}
