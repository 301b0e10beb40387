import type { INestApplication, LoggerService } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import { dbPoolConsistency, dbPoolDeadlines, type DbPoolOptions } from '@db-pool/db-pool';
import { AppModule } from './app.module.js';
import type { ApiEnvironment } from './environment.js';

/** Builds the api (not listening yet). Shared by main.ts and the e2e tests. */
export async function createApp(
  overrides: DbPoolOptions = {},
  options: { logger?: false | LoggerService; extraPools?: DbPoolOptions[]; environment?: ApiEnvironment } = {},
): Promise<INestApplication> {
  const app = await NestFactory.create(AppModule.register(overrides, options.extraPools, options.environment), {
    abortOnError: false,
    ...(options.logger !== undefined ? { logger: options.logger } : {}),
  });
  // `X-Request-Deadline-Ms` bounds a request's acquires and statements on every route. A plain
  // function before the routes: a request without the header pays one header read, with no Nest
  // middleware wrapper around it and no interceptor (so no RxJS).
  app.use(dbPoolDeadlines());
  // With DB_REPLICA_CONSISTENCY=read-your-writes: each request reads its own writes, returns
  // their position as X-Db-Lsn, and honours one it carries. Otherwise requests pass through.
  app.use(dbPoolConsistency());
  return app;
}

/**
 * On SIGTERM or SIGINT: readiness turns 503 for `shutdownDelayMs` (Terminus; liveness stays 200), then the server
 * stops accepting, in-flight requests finish, and the shutdown hooks run (TypeORM destroys the
 * DataSource, which drains and ends the pool). Responses from then on say `Connection: close`,
 * so keep-alive clients move on; requests still running `shutdownTimeoutMs` after the server
 * stopped accepting (a client that stalls mid-body, a query on a server that stopped answering)
 * have their connections closed, so shutdown always finishes. Further signals are ignored.
 */
export function closeOnSignals(
  app: INestApplication,
  onClosed: (code: number) => void,
  options: { shutdownDelayMs: number; shutdownTimeoutMs: number } = { shutdownDelayMs: 0, shutdownTimeoutMs: 10_000 },
): void {
  let closing = false;
  const onSignal = (signal: NodeJS.Signals) => {
    if (closing) return; // not `once`: a second signal would otherwise get Node's default, an abrupt exit
    closing = true;
    const server = app.getHttpServer() as Server;
    // Ahead of the app's own handler, and only from now on: until a signal comes, a request pays
    // nothing for it (a middleware asking "closing yet?" cost every request a layer of the router).
    server.prependListener('request', (_req: IncomingMessage, res: ServerResponse) => res.setHeader('Connection', 'close'));
    const force = setTimeout(() => server.closeAllConnections(), options.shutdownDelayMs + options.shutdownTimeoutMs);
    force.unref();
    // Nest's close() takes the signal (its typings don't say so); Terminus needs it to hold
    // readiness at 503 for SHUTDOWN_DELAY_MS before the server closes.
    (app as unknown as { close(signal?: string): Promise<void> }).close(signal).then(
      () => onClosed(0),
      () => onClosed(1),
    );
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
}
