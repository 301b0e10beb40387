// DbPool.resize against a real PostgreSQL: a pool whose size changes while it runs (the
// groundwork of a connection budget that follows autoscaling, #23). Shrinking closes idle
// connections first and fails no checkout in progress; growing serves the callers waiting.
import { DbPoolMetrics, DbPoolRegistry, PoolMonitor } from '../src/index.js';
import { backendPids, createTestConfig, eventually, poolFixture } from './support/db.js';

describe('DbPool.resize', () => {
  const fixture = poolFixture();
  const admin = () => fixture.admin();
  const backends = async (name: string, n: number) =>
    expect(await eventually(async () => (await backendPids(admin(), name)).length === n)).toBe(true);

  it('shrinking closes the idle connections above the new capacity at once, the longest idle first', async () => {
    const pool = await fixture.pool({ poolSize: 4, maxOverflow: 0 });
    expect(pool.state()).toEqual({ total: 4, active: 0, idle: 4, waiting: 0 });
    // Each used once, in turn: the last one back is the one used most recently.
    const clients = await Promise.all([pool.connect(), pool.connect(), pool.connect(), pool.connect()]);
    const pids: number[] = [];
    for (const client of clients) {
      pids.push((await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0].pid);
      client.release();
    }
    pool.resize(1, 0);
    expect(pool.state()).toEqual({ total: 1, active: 0, idle: 1, waiting: 0 });
    await backends(pool.settings.name, 1);
    expect(await backendPids(admin(), pool.settings.name)).toEqual([pids[3]]);
    expect((await pool.query<{ one: number }>('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
    expect(pool.options).toMatchObject({ min: 1, max: 1 });
  });

  it('shrinking below the connections out fails none of them, nor the callers waiting: each closes as it comes back', async () => {
    const pool = await fixture.pool({ poolSize: 3, maxOverflow: 0, poolTimeoutSeconds: 10 });
    const held = await Promise.all([pool.connect(), pool.connect(), pool.connect()]);
    const waiting = pool.query<{ n: number }>('SELECT 42 AS n');
    await eventually(() => pool.waitingCount === 1);

    pool.resize(1, 0);
    // Every checkout in progress still works.
    for (const client of held) expect((await client.query<{ one: number }>('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
    expect(pool.state()).toEqual({ total: 3, active: 3, idle: 0, waiting: 1 });

    // The first two back close (the pool is over its capacity of 1); the waiter gets the third.
    held[0].release();
    held[1].release();
    expect(pool.state()).toMatchObject({ total: 1, active: 1, waiting: 1 });
    held[2].release();
    expect((await waiting).rows).toEqual([{ n: 42 }]);
    expect(pool.state()).toEqual({ total: 1, active: 0, idle: 1, waiting: 0 });
    await backends(pool.settings.name, 1);
    expect(pool.counters.timeouts).toBe(0);
  });

  it('growing serves the callers waiting at once, and the refill keeps the new size open', async () => {
    const pool = await fixture.pool({ poolSize: 1, maxOverflow: 0, poolTimeoutSeconds: 10 });
    const held = await pool.connect();
    const waiting = pool.connect();
    await eventually(() => pool.waitingCount === 1);
    pool.resize(3, 1);
    const served = await waiting;
    expect(pool.state()).toMatchObject({ active: 2, waiting: 0 });
    held.release();
    served.release();
    // Three kept open: the refill opens the one missing.
    expect(await eventually(() => pool.state().total === 3 && pool.state().idle === 3)).toBe(true);
    await backends(pool.settings.name, 3);
  });

  it('status and metrics show the size it has now; the configuration shows what was configured', async () => {
    const pool = await fixture.pool({ poolSize: 2, maxOverflow: 2 });
    const config = createTestConfig({ name: pool.settings.name, poolSize: 2, maxOverflow: 2 });
    const registry = new DbPoolRegistry();
    const monitor = new PoolMonitor(pool, config, { log: () => {}, warn: () => {}, debug: () => {} });
    registry.add(monitor);
    pool.resize(5, 3);
    expect(monitor.getPoolStatus()).toMatchObject({ size: 5, max_overflow: 3, total_capacity: 8 });
    expect(pool.concurrencyLimit()).toMatchObject({ limit: 8, ceiling: 8 });
    const text = await new DbPoolMetrics(registry).metrics();
    expect(text).toContain(`db_client_connection_max{pool_name="${pool.settings.name}"} 8`);
    expect(text).toContain(`db_client_connection_idle_min{pool_name="${pool.settings.name}"} 5`);
    expect(monitor.getConfiguration()).toMatchObject({ pool_size: 2, max_overflow: 2 });
  });

  it('refuses a size that is not one, naming the argument', async () => {
    const pool = await fixture.pool({ poolSize: 1, maxOverflow: 0 });
    expect(() => pool.resize(-1, 0)).toThrow(/resize\(poolSize=-1: must be an integer of at least 0\)/);
    expect(() => pool.resize(1, 1.5)).toThrow(/maxOverflow=1.5: must be an integer of at least 0/);
    expect(() => pool.resize(0, 0)).toThrow(/poolSize \+ maxOverflow must be at least 1/);
    expect(pool.options).toMatchObject({ min: 1, max: 1 });
  });
});
