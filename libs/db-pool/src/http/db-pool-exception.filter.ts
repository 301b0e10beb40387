import { type ArgumentsHost, Catch, type ExceptionFilter, Injectable, Logger } from '@nestjs/common';
import { BaseExceptionFilter, HttpAdapterHost } from '@nestjs/core';
import { type DbPoolErrorCondition, hideQueryValues, poolErrorResponse } from './pool-error-response.js';

export { RETRY_AFTER_SECONDS, type PoolUnavailableBody, type PoolUnavailableCondition } from './pool-error-response.js';

/**
 * Answers a request that failed because of the pool — however the error is wrapped: bare,
 * in TypeORM's `QueryFailedError`, in a `cause` chain, rethrown by a transaction — with the
 * status, `Retry-After` and JSON body {@link poolErrorResponse} gives, instead of Nest's `500`:
 * `503` with `Retry-After` where what failed was not applied (a retry is safe), `504` without it
 * where a write may have been applied (`outcome_unknown`). Everything else — the application's
 * own errors, its `HttpException`s, a client used after release (a bug: `PoolLeaseError`), a
 * query error of its own (a constraint) — goes to Nest's default handling, the bind parameters
 * and the server's `detail` of any query error in it hidden from the log ({@link hideQueryValues}).
 * Register it globally (`{ provide: APP_FILTER, useClass:
 * DbPoolExceptionFilter }`, or `app.useGlobalFilters(new DbPoolExceptionFilter(app.get(HttpAdapterHost)))`).
 * It catches every exception, since a pool error can be wrapped in any: Nest tries the global
 * filter registered last first, so register your own catch-all filters after it, or call
 * `poolErrorResponse` from yours instead.
 *
 * The body never carries the driver's message (it can name hosts): the condition, the pool
 * and the driver's code only.
 */
@Catch()
@Injectable()
export class DbPoolExceptionFilter implements ExceptionFilter {
  private readonly logger = new Logger('DbPool');
  /** Per condition: when its last line was written, and how many answers were not logged since. */
  private readonly logged = new Map<DbPoolErrorCondition, { at: number; quiet: number }>();

  constructor(private readonly adapterHost: HttpAdapterHost) {}

  catch(caught: unknown, host: ArgumentsHost): void {
    // Not handled outside HTTP: the context's own handling runs.
    if (host.getType() !== 'http') return undefined;
    const answer = poolErrorResponse(caught);
    if (!answer) {
      // Not ours: Nest's own answer (500, logged), as without this filter, but its log line never
      // shows a query's bind parameters or the row the server's detail describes.
      hideQueryValues(caught);
      return new BaseExceptionFilter(this.adapterHost.httpAdapter).catch(caught, host);
    }
    this.log(answer.status, answer.body.condition, answer.error);
    const adapter = this.adapterHost.httpAdapter;
    const response: unknown = host.switchToHttp().getResponse();
    if (adapter.isHeadersSent(response)) return void adapter.end(response);
    if (answer.retryAfter !== undefined) adapter.setHeader(response, 'Retry-After', String(answer.retryAfter));
    adapter.reply(response, answer.body, answer.status);
  }

  private log(status: number, condition: DbPoolErrorCondition, error: Error): void {
    const now = Date.now();
    const last = this.logged.get(condition);
    if (last && now - last.at < LOG_EVERY_MS) {
      last.quiet++;
      return;
    }
    const more = last && last.quiet > 0 ? ` (and ${last.quiet} more ${status} ${condition} since the last line)` : '';
    this.logged.set(condition, { at: now, quiet: 0 });
    this.logger.warn(`${status} ${condition}: ${error.message}${more}`);
  }
}

/** Shedding answers hundreds of 503s a second: one line per condition per second, with the count of the others. */
const LOG_EVERY_MS = 1_000;
