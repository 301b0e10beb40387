/** The pool's counters at the moment an error was raised. */
export interface PoolState {
  /** Connections open (checked out + idle). */
  total: number;
  /** Connections checked out. */
  active: number;
  /** Connections open and waiting in the pool. */
  idle: number;
  /** Callers queued for a connection. */
  waiting: number;
}

export function describeState(state: PoolState): string {
  return `total=${state.total}, active=${state.active}, idle=${state.idle}, waiting=${state.waiting}`;
}

/** Base class of every error a db-pool acquire rejects with. */
export class PoolAcquireError extends Error {
  constructor(
    message: string,
    readonly poolName: string,
    readonly state: PoolState,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** No connection became free within `DB_POOL_TIMEOUT`. */
export class PoolTimeoutError extends PoolAcquireError {
  constructor(
    poolName: string,
    readonly timeoutMs: number,
    state: PoolState,
    options?: { cause?: unknown },
  ) {
    super(
      `db-pool "${poolName}": timed out after ${timeoutMs} ms waiting for a connection (${describeState(state)})`,
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
 * The pool is shutting down (or has shut down): the acquire was refused, or failed while it
 * waited. Not a connect error: the server may be fine.
 */
export class PoolClosedError extends PoolAcquireError {
  constructor(poolName: string, state: PoolState, options?: { cause?: unknown }) {
    super(`db-pool "${poolName}": the pool is shutting down (${describeState(state)})`, poolName, state, options);
  }
}

/** A client was handed back twice in one checkout. */
export class PoolReleaseError extends Error {
  constructor(readonly poolName: string) {
    super(`db-pool "${poolName}": release called on a client that was already released to the pool`);
    this.name = 'PoolReleaseError';
  }
}

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
