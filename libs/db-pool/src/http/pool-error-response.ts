import { HttpException } from '@nestjs/common';
import pg from 'pg';
import { QueryFailedError } from 'typeorm';
import {
  codeOf,
  PoolAcquireError,
  PoolClosedError,
  PoolConnectError,
  PoolDeadlineError,
  PoolFailoverError,
  PoolOutcomeUnknownError,
  PoolOverloadedError,
  PoolTimeoutError,
} from '../errors.js';
import { NoHostError } from '../pool/connector.js';
import { outcomeSensitive } from '../pool/outcome.js';

/** What an answer of {@link poolErrorResponse} says went wrong. */
export type DbPoolErrorCondition =
  | 'pool_timeout'
  | 'overloaded'
  | 'deadline_exceeded'
  | 'database_unreachable'
  | 'shutting_down'
  | 'failover'
  | 'connection_lost'
  | 'statement_timeout'
  | 'outcome_unknown';

/** The conditions answered 503 with Retry-After: what failed was not applied, so a retry is safe. */
export type PoolUnavailableCondition = Exclude<DbPoolErrorCondition, 'outcome_unknown'>;

/** The JSON body of the answer. */
export interface DbPoolErrorBody {
  statusCode: 503 | 504;
  error: 'Service Unavailable' | 'Gateway Timeout';
  condition: DbPoolErrorCondition;
  message: string;
  /** The pool that could not serve the request (absent where the driver's error does not say). */
  pool?: string;
  /** Seconds, as in the Retry-After header; absent for `outcome_unknown`, which invites no retry. */
  retry_after?: number;
  /** The driver's code (`ECONNREFUSED`, `57P01`, `53300`, …). */
  code?: string;
  /** `outcome_unknown` only: the server said the transaction committed (its synchronous replication is unconfirmed). */
  committed?: true;
}

/** @deprecated Since `outcome_unknown` (504) the body is {@link DbPoolErrorBody}. */
export type PoolUnavailableBody = DbPoolErrorBody;

/** How to answer a request that failed on a pool error. */
export interface DbPoolErrorResponse {
  status: 503 | 504;
  /** Seconds for the Retry-After header; undefined: send none. */
  retryAfter: number | undefined;
  body: DbPoolErrorBody;
  /** The pool's or the driver's error that decided the answer, for the log (its message is not in the body). */
  error: Error;
}

/** Seconds a client is told to wait (Retry-After), per condition. */
export const RETRY_AFTER_SECONDS: Readonly<Record<PoolUnavailableCondition, number>> = {
  // Connections come back as requests finish: soon.
  pool_timeout: 1,
  // The queue is full or too slow for the deadline: shed now, try again in a moment.
  overloaded: 1,
  // The request's own deadline passed: the database is slow right now.
  deadline_exceeded: 1,
  // A server restart or failover takes seconds.
  database_unreachable: 5,
  // This process is going away; another replica may answer.
  shutting_down: 5,
  // The pool has evicted the old server and opens the next connection on the one with the role.
  failover: 1,
  // The server went away mid-request (a failover): the pool is already moving to the next host.
  connection_lost: 1,
  // A statement ran past statement_timeout or query_timeout (a lock held, a slow plan): it may pass in a moment.
  statement_timeout: 1,
};

/** What the walk found: the condition and the error it comes from. */
interface Found {
  condition: DbPoolErrorCondition;
  error: Error;
  pool?: string;
  code?: string;
  /** `deadline_exceeded`: whether the statement had been sent (and was cancelled). */
  sent?: boolean;
  committed?: true;
}

const at = (pool: string | undefined) => (pool === undefined ? '' : ` (pool "${pool}")`);

const MESSAGES: Readonly<Record<DbPoolErrorCondition, (found: Found) => string>> = {
  pool_timeout: ({ pool }) => `No database connection became free in time${at(pool)}; retry later.`,
  overloaded: ({ pool }) => `The database pool is overloaded${at(pool)}; the request was shed at once. Retry later.`,
  deadline_exceeded: ({ pool, sent }) =>
    sent
      ? `The request's deadline passed while the statement ran${at(pool)}; it was cancelled on the server and rolled back. Retry later.`
      : `The request's deadline passed before the statement was sent${at(pool)}. Retry later.`,
  database_unreachable: ({ pool }) => `The database cannot be reached${at(pool)}; retry later.`,
  shutting_down: () => 'The service is shutting down; retry later.',
  failover: ({ pool }) =>
    `The database server changed role (a failover)${at(pool)}; the statement was not sent, so it is safe to retry. Retry later.`,
  connection_lost: () =>
    'The database connection was lost during the request (a server restart or failover), before the transaction ended: the server rolled it back. Retry later.',
  statement_timeout: () =>
    'The statement ran past its time limit on the database (statement_timeout or query_timeout), or was cancelled, and was stopped before it finished: its transaction was rolled back, so nothing was applied. Retry later.',
  outcome_unknown: ({ pool, committed }) =>
    committed
      ? `The write was committed on the database${at(pool)}, but its replication to a standby was not confirmed. Do not send it again, except with the same Idempotency-Key.`
      : `The database did not answer a statement that ends a write${at(pool)}: it may have been applied. Do not retry blindly: retry only with the same Idempotency-Key, or check first whether it was applied.`,
};

/**
 * A connection that died under a statement: the server ended the session (`57P01`–`57P03`, class
 * `08`), or node's socket failed — reset, broken pipe, a keepalive or TCP timeout, a host or
 * network unreachable or down, aborted — as pg passes it on. Socket codes say nothing of which
 * connection failed: they count only where the error is the database's (see {@link find}).
 */
const LOST_CODES = new Set([
  '57P01',
  '57P02',
  '57P03',
  '08000',
  '08003',
  '08006',
  'ECONNRESET',
  'EPIPE',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EHOSTDOWN',
  'ENETDOWN',
  'ECONNABORTED',
]);
/** pg's messages for a connection that ended under a query (they carry no code). */
/** pg's refusals to send on a connection already lost: the statement never left the process. */
const NOT_SENT_MESSAGES = new Set([
  'Client has encountered a connection error and is not queryable',
  'Client was closed and is not queryable',
]);
const LOST_MESSAGES = new Set(['Connection terminated unexpectedly', 'Connection terminated', ...NOT_SENT_MESSAGES]);
/** query_canceled: the server stopped the statement (statement_timeout, or a cancel request: the pool's or an operator's). */
const CANCELED = '57014';
/** pg's error when its query_timeout passes (it carries no code); the pool cancels the statement on the server at release. */
const READ_TIMEOUT = 'Query read timeout';
/**
 * A statement whose answer never came (its connection died, or its query_timeout passed) is
 * judged as if inside a transaction (the error does not say whether it was; a write outside one
 * the pool reports itself, as PoolOutcomeUnknownError): only one that ends the transaction
 * (`COMMIT`, `END`, `PREPARE TRANSACTION`) counts, as the server may have committed it.
 */
const IN_TRANSACTION = { getTransactionStatus: () => 'T' };

/** Levels of wrapping followed (`cause`, `driverError`, an AggregateError's `errors`). */
const MAX_DEPTH = 8;
/** Errors looked at in all: an AggregateError may hold thousands. */
const MAX_ERRORS = 64;

/**
 * How to answer a request that failed because of the pool, or `undefined` when the error is not
 * the pool's (nor the database's for a connection that died or a statement stopped by a timeout)
 * and the application's own handling applies. The error may be wrapped in anything: TypeORM's
 * `QueryFailedError` (`driverError`), `cause` chains, an `AggregateError`, a transaction
 * callback's rethrow. An error that may have been applied (outcome unknown) wins over any other
 * found beside it; otherwise the outermost pool error decides. An `HttpException` is the
 * application's chosen answer, kept as it is. Use it from your own exception filter to combine
 * it with your own handling (and {@link hideQueryValues} before logging what it leaves).
 */
export function poolErrorResponse(error: unknown): DbPoolErrorResponse | undefined {
  if (error instanceof HttpException) return undefined;
  const found = find(error);
  if (!found) return undefined;
  const unknown = found.condition === 'outcome_unknown';
  const retryAfter = unknown ? undefined : RETRY_AFTER_SECONDS[found.condition as PoolUnavailableCondition];
  // 504, not 503: the database, this service's upstream, gave no answer in time, and a 504 makes
  // no claim that the request was left undone, as a 503 does; clients and proxies that retry
  // every 503 must not repeat a write that may have committed. Not 500: neither the request nor
  // the code is wrong.
  const status = unknown ? 504 : 503;
  const body: DbPoolErrorBody = {
    statusCode: status,
    error: unknown ? 'Gateway Timeout' : 'Service Unavailable',
    condition: found.condition,
    message: MESSAGES[found.condition](found),
    ...(found.pool !== undefined ? { pool: found.pool } : {}),
    ...(retryAfter !== undefined ? { retry_after: retryAfter } : {}),
    ...(found.code ? { code: found.code } : {}),
    ...(found.committed ? { committed: true } : {}),
  };
  return { status, retryAfter, body, error: found.error };
}

/** An error met on the walk, and whether it is the database's: a QueryFailedError's `driverError`, or the server's own answer. */
interface Reached {
  error: object;
  database: boolean;
}

/**
 * Breadth first through the wrappers (`cause`, `driverError`, an AggregateError's `errors`), each
 * error once, bounded. A socket code or one of pg's message-only errors is the database's only
 * where TypeORM names it a query's `driverError`, or where the server sent it (pg's
 * `DatabaseError`): anywhere else — another service's `fetch failed` caused by `ECONNRESET`, a
 * child process' `EPIPE` — it says nothing of the database, and must not be answered "nothing
 * was applied, retry".
 */
function* walk(root: unknown): Generator<Reached> {
  const seen = new Set<object>();
  let level: { error: unknown; driver: boolean }[] = [{ error: root, driver: false }];
  for (let depth = 0; depth <= MAX_DEPTH && level.length > 0; depth++) {
    const next: typeof level = [];
    for (const { error, driver } of level) {
      if (typeof error !== 'object' || error === null || seen.has(error) || seen.size >= MAX_ERRORS) continue;
      seen.add(error);
      yield { error, database: driver || error instanceof pg.DatabaseError };
      const { cause, driverError } = error as { cause?: unknown; driverError?: unknown };
      next.push({ error: driverError, driver: error instanceof QueryFailedError }, { error: cause, driver: false });
      if (error instanceof AggregateError) for (const e of error.errors as unknown[]) next.push({ error: e, driver: false });
    }
    level = next;
  }
}

/** The outermost pool error, unless an outcome-unknown one lies anywhere. */
function find(root: unknown): Found | undefined {
  let first: Found | undefined;
  for (const reached of walk(root)) {
    const found = classify(reached);
    if (found?.condition === 'outcome_unknown') return found;
    first ??= found;
  }
  return first;
}

function classify({ error, database }: Reached): Found | undefined {
  if (error instanceof PoolOutcomeUnknownError)
    return { condition: 'outcome_unknown', error, pool: error.poolName, committed: error.committed };
  if (error instanceof PoolDeadlineError) return { condition: 'deadline_exceeded', error, pool: error.poolName, sent: error.sent };
  if (error instanceof PoolAcquireError)
    return {
      condition: acquireCondition(error),
      error,
      pool: error.poolName,
      code: error instanceof PoolConnectError ? codeOf(error.cause) : undefined,
    };
  if (error instanceof NoHostError) return { condition: 'database_unreachable', error, code: error.code };
  // TypeORM copies its driver error's fields (`code` too) onto itself: the driver error is
  // classified on its own; here only what TypeORM alone knows, the statement that failed. A
  // COMMIT whose answer never came may have committed, whichever pool sent it.
  if (error instanceof QueryFailedError) {
    const driverError: unknown = error.driverError;
    const neverSent = NOT_SENT_MESSAGES.has(String((driverError as { message?: unknown } | null)?.message ?? ''));
    return ((isLost(driverError) && !neverSent) || isReadTimeout(driverError)) &&
      outcomeSensitive(error.query ?? '', IN_TRANSACTION) !== undefined
      ? { condition: 'outcome_unknown', error, code: codeOf(driverError) }
      : undefined;
  }
  if (!database) return undefined;
  if (isLost(error)) return { condition: 'connection_lost', error: error as Error, code: codeOf(error) };
  // The server answered the statement with an error (a COMMIT's too: it rolled back), or pg gave
  // up waiting and the pool cancels it at release: either way its transaction can only roll back.
  if (isStopped(error)) return { condition: 'statement_timeout', error: error as Error, code: codeOf(error) };
  return undefined;
}

function acquireCondition(error: PoolAcquireError): PoolUnavailableCondition {
  if (error instanceof PoolClosedError) return 'shutting_down';
  if (error instanceof PoolTimeoutError) return 'pool_timeout';
  if (error instanceof PoolOverloadedError) return 'overloaded';
  if (error instanceof PoolFailoverError) return 'failover';
  return 'database_unreachable';
}

/** A driver's error for a connection that died under a statement. */
function isLost(error: unknown): boolean {
  const { code, message } = (error ?? {}) as { code?: unknown; message?: unknown };
  return LOST_CODES.has(String(code ?? '')) || LOST_MESSAGES.has(String(message ?? ''));
}

function isReadTimeout(error: unknown): boolean {
  return (error as { message?: unknown } | null | undefined)?.message === READ_TIMEOUT;
}

/** A statement the server cancelled, or whose answer pg stopped waiting for. */
function isStopped(error: object): boolean {
  return (error as { code?: unknown }).code === CANCELED || isReadTimeout(error);
}

/** What a database error may carry of the request or the rows: bind parameters, and the server's `detail`. */
const QUERY_VALUES = ['parameters', 'detail'] as const;

/**
 * Hides what the database errors in `error` carry of the request and its rows — TypeORM's bind
 * `parameters` and the server's `detail` ("Failing row contains (…)", "Key (…)=(…) already
 * exists") — before the error is logged: it may hold personal data or secrets (an idempotency
 * key). Made non-enumerable, as pg-pool hides a password: still on the object for code that reads
 * it, absent from `util.inspect`, `JSON.stringify` and Nest's logger. The message, the SQL text,
 * the code and the stacks stay. `DbPoolExceptionFilter` does this to every error it hands to Nest.
 */
export function hideQueryValues(error: unknown): void {
  for (const { error: e, database } of walk(error)) {
    if (!database && !(e instanceof QueryFailedError)) continue;
    for (const key of QUERY_VALUES) {
      const own = Object.getOwnPropertyDescriptor(e, key);
      if (own?.enumerable && own.configurable) Object.defineProperty(e, key, { ...own, enumerable: false });
    }
  }
}
