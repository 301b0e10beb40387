import type { INestApplication, LoggerService, Type } from '@nestjs/common';
import { APP_FILTER } from '@nestjs/core';
import { Test } from '@nestjs/testing';
import type { AddressInfo } from 'node:net';
import { DbPoolExceptionFilter, DbPoolModule, type DbPoolOptions } from '../../src/index.js';
import { testOptions } from './db.js';

const silent: LoggerService = { log: () => {}, error: () => {}, warn: () => {}, debug: () => {}, verbose: () => {} };

/**
 * For the file: a Nest app over real HTTP with the default pool against the test server,
 * `DbPoolExceptionFilter` registered globally (as the README says) and the given controllers.
 * `base()` is its URL; `app()` the application. Nest logs to `logger` (by default nowhere).
 */
export function filteredAppFixture(
  controllers: Type[],
  options: Omit<DbPoolOptions, 'env'>,
  logger: LoggerService = silent,
): { app: () => INestApplication; base: () => string } {
  let app: INestApplication | undefined;
  let base = '';
  beforeAll(async () => {
    const moduleRef = await Test.createTestingModule({
      imports: [DbPoolModule.forRoot(testOptions({ name: 'default', ...options }))],
      controllers,
      providers: [{ provide: APP_FILTER, useClass: DbPoolExceptionFilter }],
    })
      .setLogger(logger)
      .compile();
    app = moduleRef.createNestApplication();
    await app.listen(0, '127.0.0.1');
    base = `http://127.0.0.1:${(app.getHttpServer().address() as AddressInfo).port}`;
  });
  afterAll(async () => {
    await app?.close();
  });
  return { app: () => app!, base: () => base };
}
