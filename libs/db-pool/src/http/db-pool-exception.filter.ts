import { type ArgumentsHost, Catch, type ExceptionFilter, HttpStatus, Injectable, Logger } from '@nestjs/common';
import { BaseExceptionFilter, HttpAdapterHost } from '@nestjs/core';
import { QueryFailedError } from 'typeorm';
import {
  codeOf,
  PoolAcquireError,
  PoolClosedError,
  PoolConnectError,
  PoolDeadlineError,
  PoolOverloadedError,
  PoolTimeoutError,
} from '../errors.js';

/** What a 503 from {@link DbPoolExceptionFilter} says went wrong. */
export type PoolUnavailableCondition =
  'pool_timeout' | 'overloaded' | 'deadline_exceeded' | 'database_unreachable' | 'shutting_down' | 'connection_lost';

/** The JSON body of that 503. */
export interface PoolUnavailableBody {
  statusCode: 503;
  error: 'Service Unavailable';
  condition: PoolUnavailableCondition;
  message: string;
  /** The pool that could not serve the request (absent for `connection_lost`: the driver's error does not say). */
  pool?: string;
  /** Seconds, as in the Retry-After header. */
  retry_after: number;
  /** The driver's code for an unreachable server (`ECONNREFUSED`, `57P03`, `53300`, …). */
  code?: string;
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
  // The server went away mid-request (a failover): the pool is already moving to the next host.
  connection_lost: 1,
};

const MESSAGES: Readonly<Record<PoolUnavailableCondition, (pool: string) => string>> = {
  pool_timeout: (pool) => `No database connection became free in time (pool "${pool}"); retry later.`,
  overloaded: (pool) => `The database pool is overloaded (pool "${pool}"); the request was shed at once. Retry later.`,
  deadline_exceeded: (pool) =>
    `The request's deadline passed before the database answered (pool "${pool}"); the statement was cancelled. Retry later.`,
  database_unreachable: (pool) => `The database cannot be reached (pool "${pool}"); retry later.`,
  shutting_down: () => 'The service is shutting down; retry later.',
  connection_lost: () =>
    'The database connection was lost during the request (a server restart or failover); a write may or may not have been applied. Retry if it is safe to.',
};

/** SQLSTATEs and socket codes of a connection that died under a statement. */
const LOST_CODES = new Set(['57P01', '57P02', '57P03', '08000', '08003', '08006', 'ECONNRESET', 'EPIPE']);
/** pg's messages for a connection that ended under a query (they carry no code). */
const LOST_MESSAGES = new Set([
  'Connection terminated unexpectedly',
  'Connection terminated',
  'Client has encountered a connection error and is not queryable',
]);

/** A TypeORM query failure whose cause is the connection dying, not the statement. */
export function isConnectionLost(error: unknown): boolean {
  if (!(error instanceof QueryFailedError)) return false;
  const driverError = (error as QueryFailedError & { driverError?: { code?: unknown; message?: unknown } }).driverError;
  return LOST_CODES.has(String(driverError?.code ?? '')) || LOST_MESSAGES.has(String(driverError?.message ?? ''));
}

/**
 * Answers a request whose connection could not be acquired with `503 Service Unavailable`, a
 * `Retry-After` header and a JSON body naming the condition, instead of Nest's `500`. For a
 * {@link PoolAcquireError} nothing of the request reached the database, so a retry is safe. A
 * TypeORM query that failed because its connection died under it (a server shutdown or
 * failover: `57P01`, "Connection terminated unexpectedly") is answered 503 `connection_lost`:
 * the server is going away, and whether a write was applied is unknown. Every other error goes
 * to Nest's default handling, unchanged. Register it globally (`{ provide: APP_FILTER, useClass: DbPoolExceptionFilter }`
 * or `app.useGlobalFilters(new DbPoolExceptionFilter(app.get(HttpAdapterHost)))`).
 *
 * The body never carries the driver's message (it can name hosts): the condition, the pool
 * and the driver's code only.
 */
@Catch(PoolAcquireError, PoolDeadlineError, QueryFailedError)
@Injectable()
export class DbPoolExceptionFilter implements ExceptionFilter<PoolAcquireError | PoolDeadlineError | QueryFailedError> {
  private readonly logger = new Logger('DbPool');
  /** Per condition: when its last line was written, and how many 503s were not logged since. */
  private readonly logged = new Map<PoolUnavailableCondition, { at: number; quiet: number }>();

  constructor(private readonly adapterHost: HttpAdapterHost) {}

  catch(caught: PoolAcquireError | PoolDeadlineError | QueryFailedError, host: ArgumentsHost): void {
    if (host.getType() !== 'http') throw caught;
    // TypeORM wraps what the driver (the lease) threw: a deadline is a deadline however it is wrapped.
    const deadline = deadlineOf(caught);
    if (deadline) return this.reply(deadline, 'deadline_exceeded', deadline.poolName, undefined, host);
    const error = caught as PoolAcquireError | QueryFailedError;
    if (!(error instanceof PoolAcquireError) && !isConnectionLost(error)) {
      // Not ours: Nest's own answer (500, logged), as without this filter.
      return new BaseExceptionFilter(this.adapterHost.httpAdapter).catch(error, host);
    }
    const condition = error instanceof PoolAcquireError ? conditionOf(error) : 'connection_lost';
    const code =
      error instanceof PoolConnectError ? codeOf(error.cause) : error instanceof PoolAcquireError ? undefined : codeOf(error.driverError);
    const pool = error instanceof PoolAcquireError ? error.poolName : undefined;
    this.reply(error, condition, pool, code, host);
  }

  private log(condition: PoolUnavailableCondition, error: Error): void {
    const now = Date.now();
    const last = this.logged.get(condition);
    if (last && now - last.at < LOG_EVERY_MS) {
      last.quiet++;
      return;
    }
    const more = last && last.quiet > 0 ? ` (and ${last.quiet} more 503 ${condition} since the last line)` : '';
    this.logged.set(condition, { at: now, quiet: 0 });
    this.logger.warn(`503 ${condition}: ${error.message}${more}`);
  }

  private reply(
    error: Error,
    condition: PoolUnavailableCondition,
    pool: string | undefined,
    code: string | undefined,
    host: ArgumentsHost,
  ): void {
    const retryAfter = RETRY_AFTER_SECONDS[condition];
    const body: PoolUnavailableBody = {
      statusCode: HttpStatus.SERVICE_UNAVAILABLE,
      error: 'Service Unavailable',
      condition,
      message: MESSAGES[condition](pool ?? ''),
      ...(pool !== undefined ? { pool } : {}),
      retry_after: retryAfter,
      ...(code ? { code } : {}),
    };
    this.log(condition, error);
    const adapter = this.adapterHost.httpAdapter;
    const response: unknown = host.switchToHttp().getResponse();
    if (adapter.isHeadersSent(response)) return void adapter.end(response);
    adapter.setHeader(response, 'Retry-After', String(retryAfter));
    adapter.reply(response, body, HttpStatus.SERVICE_UNAVAILABLE);
  }
}

/** Shedding answers hundreds of 503s a second: one line per condition per second, with the count of the others. */
const LOG_EVERY_MS = 1_000;

function deadlineOf(error: unknown): PoolDeadlineError | undefined {
  if (error instanceof PoolDeadlineError) return error;
  const driverError = (error as { driverError?: unknown } | null)?.driverError;
  return driverError instanceof PoolDeadlineError ? driverError : undefined;
}

function conditionOf(error: PoolAcquireError): PoolUnavailableCondition {
  if (error instanceof PoolClosedError) return 'shutting_down';
  if (error instanceof PoolTimeoutError) return 'pool_timeout';
  if (error instanceof PoolOverloadedError) return 'overloaded';
  return 'database_unreachable';
}
