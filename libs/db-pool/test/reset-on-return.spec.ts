import type pg from 'pg';
import type { DbPool } from '../src/index.js';
import { adminClient, createTestPool, eventually } from './support/db.js';

type TxClient = pg.PoolClient & { getTransactionStatus(): string | null };

describe('reset on return', () => {
  let admin: pg.Client;
  let pool: DbPool | undefined;
  const table = `reset_on_return_${process.pid}`;

  beforeAll(async () => {
    admin = await adminClient();
    await admin.query(`CREATE TABLE IF NOT EXISTS ${table} (id int)`);
  });
  beforeEach(async () => {
    await admin.query(`TRUNCATE ${table}`);
    // One connection, so the next borrower gets the very connection that was handed back.
    pool = await createTestPool({ poolSize: 1, maxOverflow: 0 });
    await pool.warmUp();
  });
  afterEach(async () => {
    await pool?.end();
  });
  afterAll(async () => {
    await admin.query(`DROP TABLE IF EXISTS ${table}`);
    await admin.end();
  });

  it('rolls back a connection released inside an open transaction: the next borrower is idle and the row is not there', async () => {
    const first = (await pool!.connect()) as TxClient;
    const pid = (await first.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0].pid;
    await first.query('BEGIN');
    await first.query(`INSERT INTO ${table} VALUES (1)`);
    expect(first.getTransactionStatus()).toBe('T');
    first.release();

    const next = (await pool!.connect()) as TxClient;
    expect((await next.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0].pid).toBe(pid);
    expect(next.getTransactionStatus()).toBe('I');
    expect((await next.query(`SELECT * FROM ${table}`)).rowCount).toBe(0);
    next.release();
    expect((await admin.query(`SELECT * FROM ${table}`)).rowCount).toBe(0);
    expect(pool!.counters.resets).toBe(1);
  });

  it('rolls back an aborted transaction before the connection is borrowed again', async () => {
    const first = (await pool!.connect()) as TxClient;
    await first.query('BEGIN');
    await first.query(`INSERT INTO ${table} VALUES (2)`);
    await expect(first.query('SELECT * FROM no_such_table')).rejects.toThrow(/no_such_table/);
    // pg rejects on the error message; the status arrives with the ReadyForQuery after it.
    expect(await eventually(() => first.getTransactionStatus() === 'E', 1_000)).toBe(true);
    first.release();

    const next = (await pool!.connect()) as TxClient;
    expect(next.getTransactionStatus()).toBe('I');
    await expect(next.query('SELECT 1')).resolves.toBeDefined();
    next.release();
    expect((await admin.query(`SELECT * FROM ${table}`)).rowCount).toBe(0);
  });

  it('does not let a waiter borrow the connection before the rollback is done', async () => {
    const first = (await pool!.connect()) as TxClient;
    await first.query('BEGIN');
    await first.query(`INSERT INTO ${table} VALUES (3)`);
    const waiter = pool!.connect() as Promise<TxClient>;
    first.release();
    const next = await waiter;
    expect(next.getTransactionStatus()).toBe('I');
    expect((await next.query(`SELECT * FROM ${table}`)).rowCount).toBe(0);
    next.release();
  });

  it('hands a committed transaction back as it is, without an extra round trip', async () => {
    const first = (await pool!.connect()) as TxClient;
    await first.query('BEGIN');
    await first.query(`INSERT INTO ${table} VALUES (4)`);
    await first.query('COMMIT');
    first.release();
    expect(pool!.counters.resets).toBe(0);
    expect((await admin.query(`SELECT * FROM ${table}`)).rowCount).toBe(1);
  });

  it("a query queued on the client before release never runs in the next borrower's checkout", async () => {
    const first = await pool!.connect();
    const next = pool!.connect(); // waits for the only connection
    await new Promise<void>((resolve) => {
      first.query('SELECT 1', () => {
        first.release(); // done with it… but a BEGIN is still queued behind this query
        resolve();
      });
      first.query('BEGIN').catch(() => {}); // fails with the connection it was queued on
    });
    const second = (await next) as TxClient;
    await second.query(`INSERT INTO ${table} VALUES (1)`);
    expect(second.getTransactionStatus()).toBe('I'); // autocommit, as the second borrower meant
    second.release();
    expect((await admin.query(`SELECT * FROM ${table}`)).rowCount).toBe(1);
    expect(pool!.counters.resets).toBe(0);
  });
});
