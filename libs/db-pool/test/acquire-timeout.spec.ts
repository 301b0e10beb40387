import type pg from 'pg';
import { PoolAcquireError, PoolConnectError, PoolTimeoutError, type DbPool } from '../src/index.js';
import { createTestPool } from './support/db.js';

describe('acquire timeout (DB_POOL_TIMEOUT)', () => {
  let pool: DbPool | undefined;
  const held: pg.PoolClient[] = [];

  afterEach(async () => {
    for (const client of held.splice(0)) client.release();
    await pool?.end();
    pool = undefined;
  });

  it('rejects the first caller past capacity with PoolTimeoutError after the deadline, naming the pool and its state', async () => {
    pool = createTestPool({ name: 'orders', poolSize: 2, maxOverflow: 1, poolTimeout: 1 });
    await pool.warmUp();
    for (let i = 0; i < 3; i++) held.push(await pool.connect());

    const started = Date.now();
    const err = await pool.connect().then(
      () => undefined,
      (e: unknown) => e,
    );
    const elapsed = Date.now() - started;

    expect(err).toBeInstanceOf(PoolTimeoutError);
    expect(err).toBeInstanceOf(PoolAcquireError);
    const timeout = err as PoolTimeoutError;
    expect(timeout.poolName).toBe('orders');
    expect(timeout.timeoutMs).toBe(1000);
    expect(timeout.state).toEqual({ total: 3, active: 3, idle: 0, waiting: 1 });
    expect(timeout.message).toBe('db-pool "orders": timed out after 1000 ms waiting for a connection (total=3, active=3, idle=0, waiting=1)');
    expect(elapsed).toBeGreaterThanOrEqual(990);
    expect(elapsed).toBeLessThan(1_400);
    expect(pool.waitingCount).toBe(0);
    expect(pool.counters.timeouts).toBe(1);
  });

  it('serves a waiter that a release frees before the deadline, and leaves no timer behind', async () => {
    pool = createTestPool({ poolSize: 1, maxOverflow: 0, poolTimeout: 2 });
    await pool.warmUp();
    const first = await pool.connect();
    const waiting = pool.connect();
    setTimeout(() => first.release(), 200);
    const second = await waiting;
    expect(pool.state()).toEqual({ total: 1, active: 1, idle: 0, waiting: 0 });
    second.release();
    expect(pool.counters.timeouts).toBe(0);
  });

  it('keeps the cause when every connection attempt fails: a refused connect is a PoolConnectError, at once', async () => {
    pool = createTestPool({ url: 'postgres://nobody:secret@127.0.0.1:1/none', poolSize: 1, maxOverflow: 0, poolTimeout: 5 });
    const started = Date.now();
    const err = (await pool.connect().catch((e: unknown) => e)) as PoolConnectError;
    expect(err).toBeInstanceOf(PoolConnectError);
    expect(Date.now() - started).toBeLessThan(1_000);
    expect((err.cause as { code?: string }).code).toBe('ECONNREFUSED');
    expect(err.message).toMatch(/^db-pool "test-[\w-]+": could not open a connection: .*ECONNREFUSED.* \(total=0, active=0, idle=0, waiting=0\)$/);
    expect(err.message).not.toContain('secret');
  });
});
