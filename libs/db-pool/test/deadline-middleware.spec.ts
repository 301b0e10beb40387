import 'reflect-metadata';
import { Controller, Get, type INestApplication, type MiddlewareConsumer, Module, type NestModule } from '@nestjs/common';
import { APP_FILTER } from '@nestjs/core';
import { InjectDataSource } from '@nestjs/typeorm';
import { Test } from '@nestjs/testing';
import type { AddressInfo } from 'node:net';
import type { DataSource } from 'typeorm';
import {
  currentDeadline,
  DbPoolDeadline,
  DbPoolDeadlineMiddleware,
  dbPoolDeadlines,
  DbPoolExceptionFilter,
  DbPoolModule,
} from '../src/index.js';
import { testOptions } from './support/db.js';

/**
 * #22 item 2: `X-Request-Deadline-Ms` honoured on every route by a middleware, so that a request
 * without it (on a route without `@DbPoolDeadline`) runs with no interceptor — which Nest runs
 * without RxJS — and no deadline scope at all. The same behaviour applied both ways: as a Nest
 * middleware, and as the plain function `app.use(dbPoolDeadlines())` (no Nest wrapper around it).
 */
@Controller()
class RoutesController {
  constructor(@InjectDataSource() private readonly ds: DataSource) {}

  /** No deadline of its own: what the request brings, if anything. */
  @Get('plain')
  async plain(): Promise<{ budgetMs: number | null; slept: boolean }> {
    const budgetMs = currentDeadline()?.budgetMs ?? null;
    await this.ds.query('SELECT pg_sleep(0.3)');
    return { budgetMs, slept: true };
  }

  /** A route deadline of 60 s: the header may only shorten it. */
  @Get('own')
  @DbPoolDeadline(60_000)
  own(): { budgetMs: number | null } {
    return { budgetMs: currentDeadline()?.budgetMs ?? null };
  }
}

@Module({})
class Deadlines implements NestModule {
  configure(consumer: MiddlewareConsumer): void {
    consumer.apply(DbPoolDeadlineMiddleware).forRoutes('{*path}');
  }
}

describe.each([
  ['DbPoolDeadlineMiddleware, applied in a module', true],
  ['app.use(dbPoolDeadlines())', false],
])('%s', (_how, asNestMiddleware) => {
  let app: INestApplication;
  let base = '';
  beforeAll(async () => {
    const moduleRef = await Test.createTestingModule({
      imports: [
        DbPoolModule.forRoot(testOptions({ name: 'default', poolSize: 2, maxOverflow: 0 })),
        ...(asNestMiddleware ? [Deadlines] : []),
      ],
      controllers: [RoutesController],
      providers: [{ provide: APP_FILTER, useClass: DbPoolExceptionFilter }],
    }).compile();
    app = moduleRef.createNestApplication({ logger: false });
    if (!asNestMiddleware) app.use(dbPoolDeadlines());
    await app.listen(0, '127.0.0.1');
    base = `http://127.0.0.1:${(app.getHttpServer().address() as AddressInfo).port}`;
  });
  afterAll(async () => {
    await app?.close();
  });

  it('without the header a plain route runs with no deadline, and its statement runs to the end', async () => {
    const res = await fetch(`${base}/plain`);
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ budgetMs: null, slept: true });
  });

  it("with the header a plain route's statement is bounded by it: cancelled on the server, 503 deadline_exceeded", async () => {
    const res = await fetch(`${base}/plain`, { headers: { 'x-request-deadline-ms': '100' } });
    expect(res.status).toBe(503);
    expect(await res.json()).toMatchObject({ condition: 'deadline_exceeded' });
  });

  it("a route's own deadline stays, shortened by the header, never lengthened; a malformed header is ignored", async () => {
    const budget = async (header?: string) =>
      ((await (await fetch(`${base}/own`, { headers: header ? { 'x-request-deadline-ms': header } : {} })).json()) as { budgetMs: number })
        .budgetMs;
    expect(await budget()).toBe(60_000);
    expect(await budget('250')).toBe(250);
    expect(await budget('120000')).toBe(60_000);
    expect(await budget('soon')).toBe(60_000);
  });
});
