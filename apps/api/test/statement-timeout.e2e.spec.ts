import 'reflect-metadata';
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import type { DbPoolOptions } from '@db-pool/db-pool';
import { eventually } from '../../../tools/wait.mjs';
import { databaseUrl, itemsFixture } from './support/items-fixture.js';

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- response bodies are checked by the assertions
const json = async (res: Response): Promise<any> => res.json();

/**
 * Statements stopped by the timeouts the pool sets, or by a cancel request: the statement failed
 * and its transaction rolled back, so the request is answered 503 `statement_timeout` with
 * Retry-After, not 500. Each api holds the items table's writers and readers back with an
 * ACCESS EXCLUSIVE lock taken from outside.
 */
const CASES: [string, DbPoolOptions][] = [
  ['DB_STATEMENT_TIMEOUT_MS', { statementTimeoutMs: 300 }],
  ['DB_QUERY_TIMEOUT_MS', { queryTimeoutMs: 300 }],
];

/** Runs `during` while another session holds the items table locked; the lock goes with its transaction. */
async function whileLocked<T>(during: (locker: pg.Client) => Promise<T>): Promise<T> {
  const locker = new pg.Client({ connectionString: databaseUrl() });
  await locker.connect();
  try {
    await locker.query('BEGIN');
    await locker.query('LOCK TABLE items IN ACCESS EXCLUSIVE MODE');
    return await during(locker);
  } finally {
    await locker.query('ROLLBACK').catch(() => {});
    await locker.end();
  }
}

const expectStatementTimeout = async (res: Response, code?: string) => {
  expect(res.status).toBe(503);
  expect(res.headers.get('retry-after')).toBe('1');
  const body = await json(res);
  expect(body).toEqual({
    statusCode: 503,
    error: 'Service Unavailable',
    condition: 'statement_timeout',
    message: expect.stringMatching(/nothing was applied/),
    retry_after: 1,
    ...(code ? { code } : {}),
  });
  expect(body.message).toMatch(/retry later/i);
};

describe.each(CASES)('api: a statement stopped by %s', (variable, options) => {
  const tag = `timeout-${variable}-${process.pid}-${Date.now()}`;
  const applicationName = `api-${variable}-${process.pid}`;
  const fixture = itemsFixture(tag, { poolSize: 1, maxOverflow: 1, applicationName, ...options });
  const code = variable === 'DB_STATEMENT_TIMEOUT_MS' ? '57014' : undefined;
  /** The api's sessions are all idle: no statement of its is left on the server. */
  const settled = async () =>
    (await fixture.admin().query("SELECT 1 FROM pg_stat_activity WHERE application_name = $1 AND state <> 'idle'", [applicationName]))
      .rowCount === 0;

  it(`GET /items blocked past ${variable} answers 503 statement_timeout with Retry-After 1, not 500`, async () => {
    const res = await whileLocked(() => fetch(`${fixture.base()}/items?limit=1`));
    await expectStatementTimeout(res, code);
  });

  it(`POST /items blocked past ${variable} answers 503 statement_timeout saying nothing was applied; no row is written, and the retry writes it once`, async () => {
    const key = randomUUID();
    const post = () =>
      fetch(`${fixture.base()}/items`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'idempotency-key': key },
        body: JSON.stringify({ name: `${tag}-post` }),
      });
    const res = await whileLocked(() => post());
    await expectStatementTimeout(res, code);
    expect(await eventually(settled)).toBe(true);
    const stored = async () =>
      (await fixture.admin().query('SELECT id FROM items WHERE name = $1', [`${tag}-post`])).rows.map((r: { id: number }) => r.id);
    expect(await stored()).toEqual([]);
    const retry = await post();
    expect(retry.status).toBe(201);
    expect(retry.headers.get('idempotent-replayed')).toBeNull();
    expect(await stored()).toEqual([(await json(retry)).id]);
  });
});

describe('api: a statement cancelled by a cancel request', () => {
  const tag = `cancelled-${process.pid}-${Date.now()}`;
  const applicationName = `api-cancelled-${process.pid}`;
  const fixture = itemsFixture(tag, { poolSize: 1, maxOverflow: 1, applicationName });

  it("GET /items cancelled by an operator's pg_cancel_backend answers 503 statement_timeout with Retry-After 1, not 500", async () => {
    const res = await whileLocked(async (locker) => {
      const answer = fetch(`${fixture.base()}/items?limit=1`);
      let pid = 0;
      const waiting = async () => {
        const { rows } = await locker.query<{ pid: number }>(
          "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'",
          [applicationName],
        );
        pid = rows[0]?.pid ?? 0;
        return pid !== 0;
      };
      expect(await eventually(waiting)).toBe(true);
      await locker.query('SELECT pg_cancel_backend($1)', [pid]);
      return answer;
    });
    await expectStatementTimeout(res, '57014');
  });
});
