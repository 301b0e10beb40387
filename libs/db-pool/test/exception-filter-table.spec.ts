import 'reflect-metadata';
import { Controller, Get, Param, ServiceUnavailableException } from '@nestjs/common';
import { InjectDataSource } from '@nestjs/typeorm';
import pg from 'pg';
import { type DataSource, QueryFailedError } from 'typeorm';
import {
  DbPoolConfigError,
  NoHostError,
  PoolClosedError,
  PoolConnectError,
  PoolDeadlineError,
  PoolFailoverError,
  PoolLeaseError,
  PoolOutcomeUnknownError,
  PoolOverloadedError,
  PoolReleaseError,
  PoolTimeoutError,
  PoolUnavailableError,
} from '../src/index.js';
import { filteredAppFixture } from './support/filtered-app.js';

// Every error the pool raises (and the driver's errors for a connection that died under a
// statement), as the pool and pg build them: the filter's input, not a stand-in for the pool.
const state = { total: 2, active: 2, idle: 0, waiting: 1 };
const refused = () =>
  Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:1'), { code: 'ECONNREFUSED', errno: -111, syscall: 'connect' });
const terminated = () =>
  Object.assign(new pg.DatabaseError('terminating connection due to administrator command', 0, 'error'), {
    code: '57P01',
    severity: 'FATAL',
  });
const reset = () => Object.assign(new Error('read ECONNRESET'), { code: 'ECONNRESET', errno: -104, syscall: 'read' });
/** What node hands pg for a socket that died under a statement (keepalive or TCP timeout, a partition, an ICMP error). */
const socketError = (code: string, syscall = 'read') => Object.assign(new Error(`${syscall} ${code}`), { code, syscall });
/** The server's answer to a statement it cancelled: statement_timeout, or a cancel request (the pool's, or an operator's). */
const cancelled = (why: string) =>
  Object.assign(new pg.DatabaseError(`canceling statement due to ${why}`, 0, 'error'), { code: '57014', severity: 'ERROR' });
/** pg's query_timeout (DB_QUERY_TIMEOUT_MS): pg's own error, no code. */
const readTimeout = () => new Error('Query read timeout');

interface Expected {
  status: number;
  /** The body's condition (absent: Nest's own 500). */
  condition?: string;
  /** The Retry-After header (null: none). */
  retryAfter: string | null;
  pool?: string;
  code?: string;
  committed?: true;
  /** What the message must say (the part a client acts on). */
  says?: RegExp;
}

/**
 * A row of the table: what the error answers, and — for an error that only the driver's place
 * makes the database's (a socket code, pg's message-only errors) — what it answers where no
 * TypeORM `QueryFailedError` holds it as its `driverError`: another service's error looks the same.
 */
interface Row {
  make: () => Error;
  expected: Expected;
  outsideDriver?: Expected;
}

const internal: Expected = { status: 500, retryAfter: null };
const ERRORS: Record<string, Row> = {
  PoolTimeoutError: {
    make: () => new PoolTimeoutError('default', 5_000, state),
    expected: { status: 503, condition: 'pool_timeout', retryAfter: '1', pool: 'default' },
  },
  PoolConnectError: {
    make: () => new PoolConnectError('default', state, 'connect ECONNREFUSED', { cause: refused() }),
    expected: { status: 503, condition: 'database_unreachable', retryAfter: '5', pool: 'default', code: 'ECONNREFUSED' },
  },
  PoolUnavailableError: {
    make: () => new PoolUnavailableError('default', state, Date.now() + 1_000, { cause: refused() }),
    expected: { status: 503, condition: 'database_unreachable', retryAfter: '5', pool: 'default', code: 'ECONNREFUSED' },
  },
  NoHostError: {
    make: () => new NoHostError('no host gave a read-write session', [{ address: '127.0.0.1:1', error: refused() }]),
    expected: { status: 503, condition: 'database_unreachable', retryAfter: '5', code: 'ECONNREFUSED' },
  },
  PoolOverloadedError: {
    make: () => new PoolOverloadedError('default', state, 'the queue is full'),
    expected: { status: 503, condition: 'overloaded', retryAfter: '1', pool: 'default' },
  },
  PoolFailoverError: {
    make: () => new PoolFailoverError('default', state, '127.0.0.1:5432', 'in_hot_standby is now on'),
    expected: { status: 503, condition: 'failover', retryAfter: '1', pool: 'default', says: /was not sent.*safe to retry/ },
  },
  PoolClosedError: {
    make: () => new PoolClosedError('default', state),
    expected: { status: 503, condition: 'shutting_down', retryAfter: '5', pool: 'default' },
  },
  'PoolDeadlineError (not sent)': {
    make: () => new PoolDeadlineError('default', 300, false),
    expected: { status: 503, condition: 'deadline_exceeded', retryAfter: '1', pool: 'default', says: /before the statement was sent/ },
  },
  'PoolDeadlineError (sent: cancelled on the server)': {
    make: () => new PoolDeadlineError('default', 300, true, { cause: new Error('Query read timeout') }),
    expected: {
      status: 503,
      condition: 'deadline_exceeded',
      retryAfter: '1',
      pool: 'default',
      says: /cancelled on the server and rolled back/,
    },
  },
  'PoolOutcomeUnknownError (outcome unknown)': {
    make: () => new PoolOutcomeUnknownError('default', 'COMMIT', 'connection_lost', undefined, { cause: terminated() }),
    expected: {
      status: 504,
      condition: 'outcome_unknown',
      retryAfter: null,
      pool: 'default',
      says: /may have been applied.*same Idempotency-Key/,
    },
  },
  'PoolOutcomeUnknownError (committed, replication unconfirmed)': {
    make: () => new PoolOutcomeUnknownError('default', 'COMMIT', 'deadline', true),
    expected: {
      status: 504,
      condition: 'outcome_unknown',
      retryAfter: null,
      pool: 'default',
      committed: true,
      says: /was committed.*same Idempotency-Key/,
    },
  },
  'connection lost under a statement (57P01)': {
    make: terminated,
    expected: { status: 503, condition: 'connection_lost', retryAfter: '1', code: '57P01', says: /rolled .*back/ },
  },
  'connection lost under a statement (ECONNRESET)': {
    make: reset,
    expected: { status: 503, condition: 'connection_lost', retryAfter: '1', code: 'ECONNRESET', says: /rolled .*back/ },
    outsideDriver: internal,
  },
  'connection lost under a statement (pg: Connection terminated unexpectedly)': {
    make: () => new Error('Connection terminated unexpectedly'),
    expected: { status: 503, condition: 'connection_lost', retryAfter: '1', says: /rolled .*back/ },
    outsideDriver: internal,
  },
  'connection lost under a statement (EPIPE)': {
    make: () => socketError('EPIPE', 'write'),
    expected: { status: 503, condition: 'connection_lost', retryAfter: '1', code: 'EPIPE', says: /rolled .*back/ },
    outsideDriver: internal,
  },
  'connection lost under a statement (pg: Connection terminated)': {
    make: () => new Error('Connection terminated'),
    expected: { status: 503, condition: 'connection_lost', retryAfter: '1', says: /rolled .*back/ },
    outsideDriver: internal,
  },
  // A dead socket says more than ECONNRESET: a keepalive or TCP timeout, a partition, a route gone.
  ...Object.fromEntries(
    ['ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'ENETDOWN', 'EHOSTDOWN', 'ECONNABORTED'].map((code) => [
      `connection lost under a statement (${code})`,
      {
        make: () => socketError(code),
        expected: { status: 503, condition: 'connection_lost', retryAfter: '1', code, says: /rolled .*back/ },
        outsideDriver: internal,
      } satisfies Row,
    ]),
  ),
  // Timeouts the pool sets (DB_STATEMENT_TIMEOUT_MS, DB_QUERY_TIMEOUT_MS) and the cancel it sends
  // at release: the statement was stopped, and its transaction can only roll back.
  'statement_timeout (57014)': {
    make: () => cancelled('statement timeout'),
    expected: { status: 503, condition: 'statement_timeout', retryAfter: '1', code: '57014', says: /nothing was applied/ },
  },
  'a cancel request (57014: the pool cancels at release, or an operator)': {
    make: () => cancelled('user request'),
    expected: { status: 503, condition: 'statement_timeout', retryAfter: '1', code: '57014', says: /nothing was applied/ },
  },
  "pg's query_timeout (Query read timeout)": {
    make: readTimeout,
    expected: { status: 503, condition: 'statement_timeout', retryAfter: '1', says: /nothing was applied/ },
    outsideDriver: internal,
  },
  // The server answered the COMMIT with an error: the transaction was rolled back.
  'statement_timeout under COMMIT (TypeORM names the statement)': {
    make: () => new QueryFailedError('COMMIT', undefined, cancelled('statement timeout')),
    expected: { status: 503, condition: 'statement_timeout', retryAfter: '1', code: '57014', says: /nothing was applied/ },
  },
  // No answer came to the COMMIT: it may have committed, whichever pool sent it.
  'query_timeout under COMMIT (TypeORM names the statement)': {
    make: () => new QueryFailedError('COMMIT', undefined, readTimeout()),
    expected: { status: 504, condition: 'outcome_unknown', retryAfter: null, says: /may have been applied/ },
  },
  // Not the database's: a route whose call to another service failed after that service acted
  // (a payment charged, then the socket reset) must not be told "nothing was applied, retry".
  "another service's socket reset (fetch failed, caused by ECONNRESET)": {
    make: () => new TypeError('fetch failed', { cause: reset() }),
    expected: internal,
  },
  // TypeORM names the statement: a COMMIT whose connection died may have committed, whatever pool sent it.
  'connection lost under COMMIT (TypeORM names the statement)': {
    make: () => new QueryFailedError('COMMIT', undefined, terminated()),
    expected: { status: 504, condition: 'outcome_unknown', retryAfter: null, code: '57P01', says: /may have been applied/ },
  },
  'connection lost under PREPARE TRANSACTION': {
    make: () => new QueryFailedError("PREPARE TRANSACTION 'tx-1'", undefined, new Error('Connection terminated unexpectedly')),
    expected: { status: 504, condition: 'outcome_unknown', retryAfter: null, says: /may have been applied/ },
  },
  // The application's own bugs: a client used after release, or released twice; a bad
  // configuration. Nothing to retry: Nest's 500, logged with the stack that finds the bug.
  PoolLeaseError: { make: () => new PoolLeaseError('default', 'query'), expected: internal },
  PoolReleaseError: { make: () => new PoolReleaseError('default'), expected: internal },
  DbPoolConfigError: { make: () => new DbPoolConfigError('default', ['DB_POOL_SIZE: must be an integer']), expected: internal },
};

/**
 * How an application's code hands the error on: as thrown, as TypeORM wraps it, in `cause` chains,
 * in a transaction. `driver`: the error reaches the filter as a `QueryFailedError`'s `driverError`.
 */
const WRAPPERS: Record<string, { driver: boolean; wrap: (error: Error, ds: DataSource) => Promise<never> }> = {
  bare: {
    driver: false,
    wrap: async (error) => {
      throw error;
    },
  },
  'QueryFailedError (TypeORM)': {
    driver: true,
    wrap: async (error) => {
      throw new QueryFailedError('INSERT INTO "items"("name") VALUES ($1) RETURNING "id"', ['x'], error);
    },
  },
  'Error with cause': {
    driver: false,
    wrap: async (error) => {
      throw new Error('saving the order failed', { cause: error });
    },
  },
  'Error with cause, two levels': {
    driver: false,
    wrap: async (error) => {
      throw new Error('checkout failed', { cause: new Error('saving the order failed', { cause: error }) });
    },
  },
  'Error with cause, then QueryFailedError': {
    driver: true,
    wrap: async (error) => {
      throw new Error('saving the order failed', { cause: new QueryFailedError('SELECT 1', [], error) });
    },
  },
  AggregateError: {
    driver: false,
    wrap: async (error) => {
      throw new AggregateError([new Error('the other replica failed too'), error], 'every attempt failed');
    },
  },
  'thrown in ds.transaction()': {
    driver: false,
    wrap: async (error, ds) => {
      await ds.transaction(async (manager) => {
        await manager.query('SELECT 1');
        throw error;
      });
      throw new Error('unreachable: the transaction must rethrow');
    },
  },
  'QueryFailedError thrown in ds.transaction()': {
    driver: true,
    wrap: async (error, ds) => {
      await ds.transaction(async (manager) => {
        await manager.query('SELECT 1');
        throw new QueryFailedError('UPDATE "items" SET "name" = $1', ['x'], error);
      });
      throw new Error('unreachable: the transaction must rethrow');
    },
  },
};

@Controller()
class ThrowingController {
  constructor(@InjectDataSource() private readonly ds: DataSource) {}

  @Get('throw/:error/:wrapper')
  throw(@Param('error') error: string, @Param('wrapper') wrapper: string): Promise<never> {
    return WRAPPERS[wrapper].wrap(ERRORS[error].make(), this.ds);
  }

  @Get('beside')
  beside(): never {
    throw new AggregateError(
      [new PoolTimeoutError('default', 5_000, state), new PoolOutcomeUnknownError('default', 'COMMIT', 'query_timeout', undefined)],
      'two writes, one of them unanswered',
    );
  }

  @Get('loop')
  loop(): never {
    const outer = new Error('outer');
    const inner = new Error('inner', { cause: new PoolFailoverError('default', state, '127.0.0.1:5432', 'demoted') });
    (outer as { cause?: unknown }).cause = new Error('middle', { cause: outer });
    throw new AggregateError([outer, inner], 'a chain that loops');
  }

  @Get('http-exception')
  httpException(): never {
    throw new ServiceUnavailableException('maintenance window', {
      cause: new PoolOutcomeUnknownError('default', 'COMMIT', 'deadline', undefined),
    });
  }
}

describe('DbPoolExceptionFilter: every pool error, however it is wrapped', () => {
  const { base } = filteredAppFixture([ThrowingController], { poolSize: 1, maxOverflow: 1 });

  const cases = Object.entries(ERRORS).flatMap(([error, row]) =>
    Object.entries(WRAPPERS).map(([wrapper, { driver }]) => {
      const expected = driver ? row.expected : (row.outsideDriver ?? row.expected);
      const retry = expected.retryAfter === null ? '' : `, Retry-After ${expected.retryAfter}`;
      return { error, wrapper, expected, answer: `${expected.status} ${expected.condition ?? "(Nest's own)"}${retry}` };
    }),
  );

  it.each(cases)('$error, $wrapper: answers $answer', async ({ error, wrapper, expected }) => {
    const res = await fetch(`${base()}/throw/${encodeURIComponent(error)}/${encodeURIComponent(wrapper)}`);
    const body = (await res.json()) as Record<string, unknown>;
    expect({ status: res.status, retryAfter: res.headers.get('retry-after') }).toEqual({
      status: expected.status,
      retryAfter: expected.retryAfter,
    });
    if (expected.condition === undefined) {
      expect(body).toEqual({ statusCode: 500, message: 'Internal server error' });
      return;
    }
    expect(body).toEqual({
      statusCode: expected.status,
      error: expected.status === 504 ? 'Gateway Timeout' : 'Service Unavailable',
      condition: expected.condition,
      message: expect.any(String),
      ...(expected.pool ? { pool: expected.pool } : {}),
      ...(expected.retryAfter === null ? {} : { retry_after: Number(expected.retryAfter) }),
      ...(expected.code ? { code: expected.code } : {}),
      ...(expected.committed ? { committed: true } : {}),
    });
    if (expected.says) expect(body.message).toMatch(expected.says);
    // A write that may have happened is never answered with an invitation to retry it.
    if (expected.condition === 'outcome_unknown') expect(body.message).not.toMatch(/retry later/i);
  });

  it('answers 504 outcome_unknown when one error beside a retryable one may have been applied', async () => {
    const res = await fetch(`${base()}/beside`);
    expect(res.status).toBe(504);
    expect(res.headers.get('retry-after')).toBeNull();
    expect(await res.json()).toMatchObject({ condition: 'outcome_unknown', pool: 'default' });
  });

  it('follows a cause chain that loops to its end, and finds the pool error beside it', async () => {
    const res = await fetch(`${base()}/loop`);
    expect(res.status).toBe(503);
    expect(await res.json()).toMatchObject({ condition: 'failover', retry_after: 1 });
  });

  it("keeps an application's own HttpException as it is, whatever pool error is its cause", async () => {
    const res = await fetch(`${base()}/http-exception`);
    expect(res.status).toBe(503);
    expect(res.headers.get('retry-after')).toBeNull();
    expect(await res.json()).toEqual({ statusCode: 503, message: 'maintenance window', error: 'Service Unavailable' });
  });
});
