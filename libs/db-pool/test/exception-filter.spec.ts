import 'reflect-metadata';
import { Controller, Get, type INestApplication, type LoggerService } from '@nestjs/common';
import { InjectDataSource } from '@nestjs/typeorm';
import { inspect } from 'node:util';
import type { DataSource } from 'typeorm';
import { type DbPool, DbPoolDeadline, getDbPoolToken } from '../src/index.js';
import { adminClient, eventually } from './support/db.js';
import { filteredAppFixture } from './support/filtered-app.js';

/** Values only a request carried: in the bind parameters, and in the row the server's error describes. */
const PRIVATE_NAME = 'private-name-7f3a9c';
const PRIVATE_KEY = 'SECRET-IDEMPOTENCY-KEY-5b81e2d4';

@Controller()
class ProbeController {
  constructor(@InjectDataSource() private readonly ds: DataSource) {}

  /** A statement that fails on its own merits: not the filter's business. */
  @Get('division')
  division(): Promise<unknown> {
    return this.ds.query('SELECT 1/0');
  }

  /** Holds a connection for a while (fills the pool). */
  @Get('slow')
  slow(): Promise<unknown> {
    return this.ds.query('SELECT pg_sleep(0.5)');
  }

  /** A report that takes 5 s, with a route deadline of 300 ms. */
  @Get('report')
  @DbPoolDeadline(300)
  report(): Promise<unknown> {
    return this.ds.query("SELECT pg_sleep(5), 'report' AS r");
  }

  /** The same with a generous route deadline: the client's header shortens it. */
  @Get('report-long')
  @DbPoolDeadline(60_000)
  reportLong(): Promise<unknown> {
    return this.ds.query("SELECT pg_sleep(5), 'report-long' AS r");
  }

  /** The connection dies under the statement (its backend terminated: 57P01), as in a server shutdown or failover. */
  @Get('lost')
  lost(): Promise<unknown> {
    return this.ds.query('SELECT pg_terminate_backend(pg_backend_pid())');
  }

  /** A statement in a transaction that runs until the test cuts its socket. */
  @Get('socket-dies')
  socketDies(): Promise<unknown> {
    return this.ds.transaction((manager) => manager.query("SELECT pg_sleep(30), 'socket-dies' AS r"));
  }

  /** A write a constraint refuses: the bind parameters are the request's, and the server's detail shows the row. */
  @Get('refused-row')
  refusedRow(): Promise<unknown> {
    return this.ds.transaction(async (manager) => {
      await manager.query("CREATE TEMP TABLE refused_row (name text, key text, CHECK (name NOT LIKE 'private-%')) ON COMMIT DROP");
      return manager.query('INSERT INTO refused_row (name, key) VALUES ($1, $2)', [PRIVATE_NAME, PRIVATE_KEY]);
    });
  }
}

/** Nest's log as its ConsoleLogger would print it (util.inspect of each argument), and as JSON. */
const nestLog: LoggerService & { printed: string[] } = {
  printed: [],
  log() {},
  warn() {},
  debug() {},
  verbose() {},
  error(...args: unknown[]) {
    for (const arg of args) this.printed.push(typeof arg === 'string' ? arg : `${inspect(arg, { depth: 10 })}\n${JSON.stringify(arg)}`);
  },
};

describe('DbPoolExceptionFilter', () => {
  const fixture = filteredAppFixture([ProbeController], { poolSize: 1, maxOverflow: 1, maxWaiting: 1 }, nestLog);
  let app: INestApplication;
  let base: string;
  beforeAll(() => {
    app = fixture.app();
    base = fixture.base();
  });

  it('answers a connection that died under a statement before its transaction ended with 503 connection_lost and Retry-After (rolled back: safe to retry)', async () => {
    const res = await fetch(`${base}/lost`);
    expect(res.status).toBe(503);
    expect(res.headers.get('retry-after')).toBe('1');
    expect(await res.json()).toEqual({
      statusCode: 503,
      error: 'Service Unavailable',
      condition: 'connection_lost',
      message:
        'The database connection was lost during the request (a server restart or failover), before the transaction ended: the server rolled it back. Retry later.',
      retry_after: 1,
      code: '57P01',
    });
  });

  it('answers a request shed by DB_POOL_MAX_WAITING with 503 overloaded and Retry-After, at once', async () => {
    const pool = app.get<DbPool>(getDbPoolToken());
    // Settled after the previous test (its connection was terminated and refilled): all idle.
    expect(await eventually(() => pool.state().total > 0 && pool.state().idle === pool.state().total)).toBe(true);
    // Two connections busy (the second opened for its caller), one caller queued on the busy pool.
    const busy = [fetch(`${base}/slow`), fetch(`${base}/slow`), fetch(`${base}/slow`)];
    expect(await eventually(() => pool.state().active === 2 && pool.waitingCount === 1)).toBe(true);
    const started = performance.now();
    const res = await fetch(`${base}/slow`);
    expect(performance.now() - started).toBeLessThan(300);
    expect(res.status).toBe(503);
    expect(res.headers.get('retry-after')).toBe('1');
    expect(await res.json()).toMatchObject({ condition: 'overloaded', pool: 'default', retry_after: 1 });
    expect((await Promise.all(busy)).map((r) => r.status)).toEqual([200, 200, 200]);
  });

  it('a route deadline (@DbPoolDeadline) cancels the statement on the server and answers 503 deadline_exceeded; a header can shorten it', async () => {
    const admin = await adminClient();
    try {
      const running = async (r: string) =>
        (
          await admin.query<{ n: number }>(
            `SELECT count(*)::int AS n FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%pg_sleep(5), ''' || $1 || '''%' AND pid <> pg_backend_pid()`,
            [r],
          )
        ).rows[0].n;
      let started = performance.now();
      let res = await fetch(`${base}/report`);
      expect(performance.now() - started).toBeLessThan(2_000);
      expect(res.status).toBe(503);
      expect(res.headers.get('retry-after')).toBe('1');
      expect(await res.json()).toMatchObject({ condition: 'deadline_exceeded', pool: 'default', retry_after: 1 });
      expect(await eventually(async () => (await running('report')) === 0, 3_000)).toBe(true);

      started = performance.now();
      res = await fetch(`${base}/report-long`, { headers: { 'x-request-deadline-ms': '300' } });
      expect(performance.now() - started).toBeLessThan(2_000);
      expect(res.status).toBe(503);
      expect(await res.json()).toMatchObject({ condition: 'deadline_exceeded' });
      expect(await eventually(async () => (await running('report-long')) === 0, 3_000)).toBe(true);
    } finally {
      await admin.end();
    }
  });

  it("leaves every other query error to Nest's own 500", async () => {
    const res = await fetch(`${base}/division`);
    expect(res.status).toBe(500);
    expect(await res.json()).toEqual({ statusCode: 500, message: 'Internal server error' });
  });

  it.each(['ETIMEDOUT', 'EHOSTUNREACH'])(
    'answers a statement in a TypeORM transaction whose socket dies with %s (a keepalive timeout, a partition) with 503 connection_lost',
    async (code) => {
      const pool = app.get<DbPool>(getDbPoolToken());
      const leases: { processID?: number; connection: { stream: { destroy(err: Error): void } } }[] = [];
      const onAcquire = (lease: (typeof leases)[number]) => leases.push(lease);
      pool.on('acquire', onAcquire);
      const admin = await adminClient();
      let pid = 0;
      try {
        const answer = fetch(`${base}/socket-dies`);
        const running = async () => {
          const { rows } = await admin.query<{ pid: number }>(
            `SELECT pid FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%''socket-dies''%' AND pid <> pg_backend_pid()`,
          );
          pid = rows[0]?.pid ?? 0;
          return pid !== 0;
        };
        expect(await eventually(running)).toBe(true);
        const lease = leases.find((l) => l.processID === pid)!;
        // What node hands pg when the kernel gives up on the socket.
        lease.connection.stream.destroy(Object.assign(new Error(`read ${code}`), { code, errno: -1, syscall: 'read' }));
        const res = await answer;
        expect(res.status).toBe(503);
        expect(res.headers.get('retry-after')).toBe('1');
        expect(await res.json()).toMatchObject({ condition: 'connection_lost', code, retry_after: 1 });
      } finally {
        pool.off('acquire', onAcquire);
        // The server notices a vanished client only when it next writes: end the sleep now.
        if (pid !== 0) await admin.query('SELECT pg_terminate_backend($1)', [pid]);
        await admin.end();
      }
    },
  );

  it("hands a query error to Nest's log without its bind parameters or the row the server's detail shows", async () => {
    nestLog.printed.length = 0;
    const res = await fetch(`${base}/refused-row`);
    expect(res.status).toBe(500);
    const printed = nestLog.printed.join('\n');
    // Still says what failed, and where.
    expect(printed).toContain('violates check constraint');
    expect(printed).toContain('INSERT INTO refused_row (name, key) VALUES ($1, $2)');
    expect(printed).not.toContain(PRIVATE_NAME);
    expect(printed).not.toContain(PRIVATE_KEY);
  });
});
