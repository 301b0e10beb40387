import {
  type CallHandler,
  type ExecutionContext,
  Injectable,
  type NestInterceptor,
  type NestMiddleware,
  SetMetadata,
  applyDecorators,
  UseInterceptors,
} from '@nestjs/common';
import { Reflector } from '@nestjs/core';
import { Observable } from 'rxjs';
import { MAX_TIMER_MS, withDeadline } from '../pool/deadline.js';

const DEADLINE_KEY = 'db-pool:deadline-ms';
/** The request header a client may send to shorten a route's deadline (never to lengthen it). */
export const DEADLINE_HEADER = 'x-request-deadline-ms';
/** The shortest deadline the header can ask for: below it, requests would only turn into 503s and cancels. */
export const MIN_HEADER_DEADLINE_MS = 50;

/**
 * Gives the requests of a route (or of every route of a controller) a deadline of `ms` from the
 * moment the interceptor runs: every db-pool acquire they make waits at most until then, is shed
 * at once with `PoolOverloadedError` when the pool's measured wait and use would pass it, and every
 * statement is cancelled on the server when it passes (`PoolDeadlineError`; 503 through
 * {@link DbPoolExceptionFilter}). A client may send `X-Request-Deadline-Ms` to shorten it (to 50 ms at
 * the least).
 * Applies {@link DbPoolDeadlineInterceptor}; apply {@link DbPoolDeadlineMiddleware} to honour the
 * header on routes without a deadline of their own.
 */
export function DbPoolDeadline(ms: number): MethodDecorator & ClassDecorator {
  if (!Number.isInteger(ms) || ms < 1) throw new RangeError(`@DbPoolDeadline(ms): ms must be a positive integer, got ${String(ms)}`);
  if (ms > MAX_TIMER_MS)
    throw new RangeError(
      `@DbPoolDeadline(ms): ms must be at most ${MAX_TIMER_MS} (the longest Node timer); for no deadline, leave the decorator off; got ${ms}`,
    );
  return applyDecorators(SetMetadata(DEADLINE_KEY, ms), UseInterceptors(DbPoolDeadlineInterceptor));
}

/**
 * Runs the handler inside `withDeadline` (AsyncLocalStorage) when the route has a
 * `@DbPoolDeadline` or the request carries `X-Request-Deadline-Ms` (a positive integer, at most
 * the route's own), with a signal that aborts when the client disconnects first (`withSignal`'s
 * behaviour: the request's statements are cancelled on the server). Without either, it does nothing.
 */
@Injectable()
export class DbPoolDeadlineInterceptor implements NestInterceptor {
  constructor(private readonly reflector: Reflector) {}

  intercept(context: ExecutionContext, next: CallHandler): Observable<unknown> {
    const route = this.reflector.getAllAndOverride<number | undefined>(DEADLINE_KEY, [context.getHandler(), context.getClass()]);
    const asked =
      context.getType() === 'http' ? headerMs(context.switchToHttp().getRequest<{ headers?: Record<string, unknown> }>()) : undefined;
    const ms = route === undefined ? asked : asked === undefined ? route : Math.min(route, asked);
    if (ms === undefined) return next.handle();
    const signal = context.getType() === 'http' ? disconnectSignal(context.switchToHttp().getResponse()) : undefined;
    // The handler is subscribed inside the deadline's context, so everything it awaits carries it.
    return new Observable((subscriber) => withDeadline(ms, () => next.handle().subscribe(subscriber), { signal }));
  }
}

/**
 * A signal that aborts when the client goes before its response is written (it closed the
 * connection, or its proxy gave up): the request's acquire and statements stop there, and a
 * running statement is cancelled on the server, rather than run on for nobody until the deadline.
 */
function disconnectSignal(response: unknown): AbortSignal | undefined {
  // Express hands the ServerResponse itself; Fastify its reply, whose `raw` is the ServerResponse.
  const res = ((response as { raw?: unknown } | undefined)?.raw ?? response) as
    { writableFinished?: boolean; once?: (event: 'close', listener: () => void) => unknown } | undefined;
  if (typeof res?.once !== 'function') return undefined;
  const controller = new AbortController();
  res.once('close', () => {
    if (!res.writableFinished) controller.abort(new Error('the client closed the connection before its response was written'));
  });
  return controller.signal;
}

/**
 * Honours `X-Request-Deadline-Ms` on every route it is applied to, before routing: a request
 * that carries the header runs the rest of its way inside `withDeadline` (with a signal that
 * aborts when its client disconnects first); one that does not passes through untouched, with one
 * header read. `@DbPoolDeadline` routes keep their own interceptor, and the nearer deadline wins.
 *
 * The cheapest way to apply it is {@link dbPoolDeadlines}, a plain function for `app.use()`. As a
 * Nest middleware (`consumer.apply(DbPoolDeadlineMiddleware).forRoutes('{*path}')`) it does the
 * same, and Nest adds its own per-request work around it (a path match, a `WeakSet`, an async
 * wrapper); either is cheaper than a global interceptor, which puts every request of the app
 * through RxJS (4 % of the api's CPU under load).
 */
@Injectable()
export class DbPoolDeadlineMiddleware implements NestMiddleware {
  use(request: { headers?: Record<string, unknown> }, response: unknown, next: (error?: unknown) => void): void {
    honourDeadlineHeader(request, response, next);
  }
}

/**
 * {@link DbPoolDeadlineMiddleware} as a plain `(request, response, next)` function, for
 * `app.use()` (Express or Fastify's middie) before the routes: no Nest wrapper, no path to match.
 *
 * ```ts
 * const app = await NestFactory.create(AppModule);
 * app.use(dbPoolDeadlines());
 * ```
 */
export function dbPoolDeadlines(): (
  request: { headers?: Record<string, unknown> },
  response: unknown,
  next: (error?: unknown) => void,
) => void {
  return honourDeadlineHeader;
}

function honourDeadlineHeader(request: { headers?: Record<string, unknown> }, response: unknown, next: (error?: unknown) => void): void {
  const ms = headerMs(request);
  if (ms === undefined) return next();
  withDeadline(ms, () => next(), { signal: disconnectSignal(response) });
}

function headerMs(request: { headers?: Record<string, unknown> }): number | undefined {
  const raw = request.headers?.[DEADLINE_HEADER];
  if (typeof raw !== 'string' || !/^[1-9][0-9]{0,8}$/.test(raw)) return undefined;
  return Math.max(MIN_HEADER_DEADLINE_MS, Number(raw));
}
