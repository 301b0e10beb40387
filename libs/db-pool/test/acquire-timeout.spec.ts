import type pg from 'pg';
import { DbPool, PoolAcquireError, PoolConnectError, PoolTimeoutError } from '../src/index.js';
import { createTestPool } from './support/db.js';

describe('acquire timeout (DB_POOL_TIMEOUT)', () => {
  let pool: DbPool | undefined;
  const held: pg.PoolClient[] = [];

  afterEach(async () => {
    for (const client of held.splice(0)) client.release();
    await pool?.end();
    pool = undefined;
  });

  // Also the load suite's test 6, test_pool_exhaustion_timeout (see apps/loadtest/test/load.spec.ts).
  it('rejects the first caller past capacity with PoolTimeoutError after the deadline, naming the pool and its state', async () => {
    pool = await createTestPool({ name: 'orders', poolSize: 2, maxOverflow: 1, poolTimeoutSeconds: 1 });
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
    // pg-pool's own words stay in the message: code in the wild matches on them.
    expect(timeout.message).toBe(
      'db-pool "orders": timeout exceeded when trying to connect: no connection within 1000 ms (total=3, active=3, idle=0, waiting=1)',
    );
    expect(elapsed).toBeGreaterThanOrEqual(990);
    expect(elapsed).toBeLessThan(1_400);
    expect(pool.waitingCount).toBe(0);
    expect(pool.counters.timeouts).toBe(1);
  });

  it('serves a waiter that a release frees before the deadline, and leaves no timer behind', async () => {
    pool = await createTestPool({ poolSize: 1, maxOverflow: 0, poolTimeoutSeconds: 2 });
    await pool.warmUp();
    const first = await pool.connect();
    const waiting = pool.connect();
    setTimeout(() => first.release(), 200);
    const second = await waiting;
    expect(pool.state()).toEqual({ total: 1, active: 1, idle: 0, waiting: 0 });
    second.release();
    expect(pool.counters.timeouts).toBe(0);
  });

  it('a refused connect fails the acquire at once with PoolConnectError, keeping the driver code and cause', async () => {
    // A pool that does not warm up, so the acquire is what opens the connection, with db-pool's
    // errors as createDbPool builds it (the drop-in gives pg's own: pg-pool-contract.spec).
    pool = new DbPool(
      { connectionString: 'postgres://nobody:secret@127.0.0.1:1/none', max: 1, connectionTimeoutMillis: 5_000 },
      { name: 'refused', dropIn: false },
    );
    const started = Date.now();
    const err = (await pool.connect().catch((e: unknown) => e)) as PoolConnectError;
    expect(err).toBeInstanceOf(PoolConnectError);
    expect(Date.now() - started).toBeLessThan(1_000);
    expect(err.code).toBe('ECONNREFUSED');
    expect((err.cause as { code?: string }).code).toBe('ECONNREFUSED');
    expect(err.message).toMatch(
      /^db-pool "refused": could not open a connection: .*ECONNREFUSED.* \(total=0, active=0, idle=0, waiting=0\)$/,
    );
    expect(err.message).not.toContain('secret');
  });

  it('createDbPool against a server that refuses rejects with the same PoolConnectError, and leaves nothing open', async () => {
    const err = (await createTestPool({ url: 'postgres://nobody:secret@127.0.0.1:1/none', poolSize: 2, maxOverflow: 0 }).catch(
      (e: unknown) => e,
    )) as PoolConnectError;
    expect(err).toBeInstanceOf(PoolConnectError);
    expect(err.code).toBe('ECONNREFUSED');
    expect(err.message).not.toContain('secret');
  });
});
