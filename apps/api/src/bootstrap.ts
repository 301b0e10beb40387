import type { INestApplication, LoggerService } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import type { DbPoolOptions } from '@db-pool/db-pool';
import { AppModule } from './app.module.js';

/** Builds the api (not listening yet). Shared by main.ts and the e2e tests. */
export async function createApp(
  overrides: DbPoolOptions = {},
  options: { logger?: false | LoggerService; extraPools?: DbPoolOptions[] } = {},
): Promise<INestApplication> {
  return NestFactory.create(AppModule.register(overrides, options.extraPools), {
    abortOnError: false,
    ...(options.logger !== undefined ? { logger: options.logger } : {}),
  });
}

/**
 * Stops accepting connections, lets in-flight requests finish, then runs the shutdown hooks
 * (TypeORM destroys the DataSource, which drains and ends the pool).
 */
export function closeOnSignals(app: INestApplication, onClosed: (code: number) => void): void {
  let closing = false;
  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    process.once(signal, () => {
      if (closing) return;
      closing = true;
      // Nest's close() takes the signal (its typings don't say so); Terminus needs it to hold
      // readiness at 503 for SHUTDOWN_DELAY_MS before the server closes.
      (app as unknown as { close(signal?: string): Promise<void> }).close(signal).then(
        () => onClosed(0),
        () => onClosed(1),
      );
    });
  }
}
