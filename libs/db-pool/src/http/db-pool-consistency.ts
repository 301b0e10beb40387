import { AsyncResource } from 'node:async_hooks';
import { Injectable, type NestMiddleware } from '@nestjs/common';
import {
  ConsistencyScope,
  ConsistencyTokenError,
  parseConsistencyToken,
  readYourWritesInUse,
  runInConsistencyScope,
} from '../pool/consistency.js';

/**
 * The header that carries a read-your-writes token: set on a response whose request wrote (or
 * carried one), and read from a request that carries it. Clients treat its value as opaque and
 * send back the latest one they were given.
 */
export const CONSISTENCY_HEADER = 'x-db-lsn';

type Request = { headers?: Record<string, unknown> };
type Response = {
  writeHead?: (...args: unknown[]) => unknown;
  setHeader?: (name: string, value: string) => unknown;
  headersSent?: boolean;
  end?: (...args: unknown[]) => unknown;
  statusCode?: number;
};

/**
 * Read-your-writes per request, for `DB_REPLICA_CONSISTENCY=read-your-writes`: each request runs
 * in a scope of its own, in which every write that commits notes its WAL position, and the
 * request's later reads go only to a replica that has replayed it (else to the primary). The
 * response carries the scope's token as `X-Db-Lsn`; a request carrying `X-Db-Lsn` sees the writes
 * behind it the same way; a malformed one is answered 400. While no pool of the process reads its
 * writes (`eventual`, the default, or no replicas), requests pass through untouched.
 *
 * A plain function for `app.use()` before the routes (Express, or Fastify's middie):
 *
 * ```ts
 * const app = await NestFactory.create(AppModule);
 * app.use(dbPoolConsistency());
 * ```
 */
export function dbPoolConsistency(): (request: Request, response: unknown, next: (error?: unknown) => void) => void {
  return readYourWritesPerRequest;
}

/** {@link dbPoolConsistency} as a Nest middleware (`consumer.apply(DbPoolConsistencyMiddleware).forRoutes('{*path}')`). */
@Injectable()
export class DbPoolConsistencyMiddleware implements NestMiddleware {
  use(request: Request, response: unknown, next: (error?: unknown) => void): void {
    readYourWritesPerRequest(request, response, next);
  }
}

function readYourWritesPerRequest(request: Request, response: unknown, next: (error?: unknown) => void): void {
  if (!readYourWritesInUse()) return next();
  // Express hands the ServerResponse itself; Fastify's middie its raw one.
  const res = ((response as { raw?: unknown } | undefined)?.raw ?? response) as Response;
  const raw = request.headers?.[CONSISTENCY_HEADER];
  let lsn: bigint | undefined;
  if (raw !== undefined) {
    lsn = typeof raw === 'string' ? parseConsistencyToken(raw) : undefined;
    if (lsn === undefined) return badToken(res, typeof raw === 'string' ? raw : String(raw));
  }
  const scope = new ConsistencyScope(lsn);
  const writeHead = res.writeHead;
  const end = res.end;
  if (typeof writeHead === 'function' && typeof end === 'function' && typeof res.setHeader === 'function') {
    // Every response's headers go through writeHead (an implicit one too): the token is the
    // scope's as it is then.
    res.writeHead = function (this: Response, ...args: unknown[]) {
      const token = scope.token;
      if (token !== undefined && !this.headersSent) this.setHeader!('X-Db-Lsn', token);
      return writeHead.apply(this, args);
    };
    // A response ended while the position of the request's last write is still being read waits
    // for it (one read on the primary, shared by the requests waiting), so its header carries it.
    res.end = function (this: Response, ...args: unknown[]) {
      if (!scope.pending || this.headersSent) return end.apply(this, args);
      // In the request's own async context: the read it waited on was started by another's.
      scope.whenSettled(AsyncResource.bind(() => end.apply(this, args)));
      return this;
    };
  }
  runInConsistencyScope(scope, () => next());
}

function badToken(res: Response, raw: string): void {
  const message = `X-Db-Lsn: ${new ConsistencyTokenError(raw).message}`;
  if (typeof res.end !== 'function' || typeof res.setHeader !== 'function') throw new ConsistencyTokenError(raw);
  res.statusCode = 400;
  res.setHeader('content-type', 'application/json; charset=utf-8');
  res.end(JSON.stringify({ statusCode: 400, error: 'Bad Request', message }));
}
