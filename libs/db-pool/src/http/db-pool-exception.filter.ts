import { type ArgumentsHost, Catch, type ExceptionFilter, HttpStatus, Injectable, Logger } from '@nestjs/common';
import { HttpAdapterHost } from '@nestjs/core';
import { codeOf, PoolAcquireError, PoolClosedError, PoolConnectError, PoolTimeoutError } from '../errors.js';

/** What a 503 from {@link DbPoolExceptionFilter} says went wrong. */
export type PoolUnavailableCondition = 'pool_timeout' | 'database_unreachable' | 'shutting_down';

/** The JSON body of that 503. */
export interface PoolUnavailableBody {
  statusCode: 503;
  error: 'Service Unavailable';
  condition: PoolUnavailableCondition;
  message: string;
  /** The pool that could not serve the request. */
  pool: string;
  /** Seconds, as in the Retry-After header. */
  retry_after: number;
  /** The driver's code for an unreachable server (`ECONNREFUSED`, `57P03`, `53300`, …). */
  code?: string;
}

/** Seconds a client is told to wait (Retry-After), per condition. */
export const RETRY_AFTER_SECONDS: Readonly<Record<PoolUnavailableCondition, number>> = {
  // Connections come back as requests finish: soon.
  pool_timeout: 1,
  // A server restart or failover takes seconds.
  database_unreachable: 5,
  // This process is going away; another replica may answer.
  shutting_down: 5,
};

const MESSAGES: Readonly<Record<PoolUnavailableCondition, (pool: string) => string>> = {
  pool_timeout: (pool) => `No database connection became free in time (pool "${pool}"); retry later.`,
  database_unreachable: (pool) => `The database cannot be reached (pool "${pool}"); retry later.`,
  shutting_down: () => 'The service is shutting down; retry later.',
};

/**
 * Answers a request whose connection could not be acquired with `503 Service Unavailable`, a
 * `Retry-After` header and a JSON body naming the condition, instead of Nest's `500`. It
 * catches only {@link PoolAcquireError}s: nothing of the request reached the database, so a
 * retry is safe. Register it globally (`{ provide: APP_FILTER, useClass: DbPoolExceptionFilter }`
 * or `app.useGlobalFilters(new DbPoolExceptionFilter(app.get(HttpAdapterHost)))`).
 *
 * The body never carries the driver's message (it can name hosts): the condition, the pool
 * and the driver's code only.
 */
@Catch(PoolAcquireError)
@Injectable()
export class DbPoolExceptionFilter implements ExceptionFilter<PoolAcquireError> {
  private readonly logger = new Logger('DbPool');

  constructor(private readonly adapterHost: HttpAdapterHost) {}

  catch(error: PoolAcquireError, host: ArgumentsHost): void {
    if (host.getType() !== 'http') throw error;
    const condition = conditionOf(error);
    const retryAfter = RETRY_AFTER_SECONDS[condition];
    const code = error instanceof PoolConnectError ? codeOf(error.cause) : undefined;
    const body: PoolUnavailableBody = {
      statusCode: HttpStatus.SERVICE_UNAVAILABLE,
      error: 'Service Unavailable',
      condition,
      message: MESSAGES[condition](error.poolName),
      pool: error.poolName,
      retry_after: retryAfter,
      ...(code ? { code } : {}),
    };
    this.logger.warn(`503 ${condition}: ${error.message}`);
    const adapter = this.adapterHost.httpAdapter;
    const response: unknown = host.switchToHttp().getResponse();
    if (adapter.isHeadersSent(response)) return void adapter.end(response);
    adapter.setHeader(response, 'Retry-After', String(retryAfter));
    adapter.reply(response, body, HttpStatus.SERVICE_UNAVAILABLE);
  }
}

function conditionOf(error: PoolAcquireError): PoolUnavailableCondition {
  if (error instanceof PoolClosedError) return 'shutting_down';
  if (error instanceof PoolTimeoutError) return 'pool_timeout';
  return 'database_unreachable';
}
