/**
 * The load suite of the SQLAlchemy service this pool reproduces (its
 * tests/performance/test_db_pool_load.py, 11 tests), against a real PostgreSQL, with that suite's
 * numbers: 20 + 40 connections, 50 sequential queries, 10 and 50 concurrent callers. Three of its
 * tests are behaviours the lib's own suite proves in the file named for each, so they live there:
 * 5 (test_pool_overflow_behavior) in libs/db-pool/test/sizing.spec.ts, 6
 * (test_pool_exhaustion_timeout) in acquire-timeout.spec.ts, 7 (test_connection_recycling) in
 * recycle.spec.ts.
 */
import 'reflect-metadata';
import pg from 'pg';
import {
  createDbPool,
  createDbPoolDataSource,
  type DbPool,
  PoolMonitor,
  poolOf,
  resolveDbPoolConfig,
  type DbPoolOptions,
} from '@db-pool/db-pool';
import { startEmbeddedPostgres } from '../../../tools/embedded-db.mjs';
import { eventually } from '../../../tools/wait.mjs';

const url = () => process.env.DATABASE_URL!;
let counter = 0;

async function build(options: Omit<DbPoolOptions, 'env'> = {}) {
  const name = `load-${process.pid}-${++counter}`;
  const all = { url: url(), applicationName: name, env: {}, ...options, name };
  return { pool: await createDbPool(all), config: resolveDbPoolConfig(all) };
}

describe('connection pool load suite', () => {
  const open: DbPool[] = [];
  const monitors: PoolMonitor[] = [];
  const make = async (options: Omit<DbPoolOptions, 'env'> = {}) => {
    const built = await build(options);
    open.push(built.pool);
    return built;
  };
  afterEach(async () => {
    monitors.splice(0).forEach((m) => m.stop());
    await Promise.all(
      open
        .splice(0)
        .filter((p) => !p.ending)
        .map((p) => p.end()),
    );
  });

  it('1. test_single_connection: one query through the TypeORM DataSource', async () => {
    const dataSource = await createDbPoolDataSource({ url: url(), poolSize: 5, maxOverflow: 5, env: {} });
    try {
      expect(await dataSource.query('SELECT 1 AS one')).toEqual([{ one: 1 }]);
      expect(poolOf(dataSource).state()).toEqual({ total: 5, active: 0, idle: 5, waiting: 0 });
    } finally {
      await dataSource.destroy();
    }
  });

  it('2. test_sequential_connections: 50 queries reuse the warm pool, no new connection', async () => {
    const { pool } = await make({ poolSize: 20, maxOverflow: 40 });
    await pool.warmUp();
    const created = pool.counters.created;
    const started = performance.now();
    for (let i = 0; i < 50; i++) await pool.query('SELECT 1');
    const avgMs = (performance.now() - started) / 50;
    expect(pool.counters.created).toBe(created);
    expect(pool.counters.acquired).toBe(50);
    expect(avgMs).toBeLessThan(10); // the suite's "fast queries" check; a connect per query costs more
    expect(pool.state()).toEqual({ total: 20, active: 0, idle: 20, waiting: 0 });
  });

  it('3. test_concurrent_connections_light: 10 concurrent callers', async () => {
    const { pool } = await make({ poolSize: 20, maxOverflow: 40 });
    await pool.warmUp();
    const results = await Promise.all(
      Array.from({ length: 10 }, (_, i) => pool.query<{ n: number }>('SELECT $1::int AS n, pg_sleep(0.05)', [i])),
    );
    expect(results.map((r) => r.rows[0].n)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    expect(pool.totalCount).toBe(20); // served from the warm connections
  });

  it('4. test_concurrent_connections_heavy: 50 concurrent callers on 20 + 40, no errors, never past 60', async () => {
    const { pool } = await make({ poolSize: 20, maxOverflow: 40 });
    await pool.warmUp();
    let peak = 0;
    const sampler = setInterval(() => (peak = Math.max(peak, pool.totalCount - pool.idleCount)), 1);
    const results = await Promise.allSettled(Array.from({ length: 50 }, () => pool.query('SELECT pg_sleep(0.2)')));
    clearInterval(sampler);
    expect(results.filter((r) => r.status === 'rejected')).toEqual([]);
    expect(peak).toBeGreaterThan(20);
    expect(peak).toBeLessThanOrEqual(60);
    expect(pool.totalCount).toBeLessThanOrEqual(60);
  });

  it('8. test_pool_health_monitoring: healthy, warning and critical as utilization rises', async () => {
    const { pool, config } = await make({ poolSize: 4, maxOverflow: 6 });
    const monitor = new PoolMonitor(pool, config, { log() {}, warn() {} });
    const held: pg.PoolClient[] = [];
    const healthAt = async (n: number) => {
      while (held.length < n) held.push(await pool.connect());
      return monitor.getPoolStatus();
    };
    expect((await healthAt(0)).health).toBe('healthy');
    expect(await healthAt(7)).toMatchObject({ health: 'healthy', utilization: 70 });
    expect(await healthAt(8)).toMatchObject({ health: 'warning', utilization: 80 });
    expect(await healthAt(9)).toMatchObject({ health: 'warning', utilization: 90 });
    expect(await healthAt(10)).toMatchObject({ health: 'critical', utilization: 100, overflow: 6 });
    expect(monitor.isPoolHealthy()).toBe(false);
    held.forEach((c) => c.release());
    expect(monitor.getPoolStatus().health).toBe('healthy');
  });

  it('9. test_connection_leak_detection: an exhausted pool whose connections do not come back is flagged; a busy one is not', async () => {
    const { pool, config } = await make({ poolSize: 2, maxOverflow: 2 });
    const warnings: string[] = [];
    const monitor = new PoolMonitor(pool, config, { log() {}, warn: (m) => warnings.push(m) }, { leakWindowMs: 1_000, tickMs: 100 });
    monitors.push(monitor);
    await monitor.start();
    // busy: saturated, but every connection comes back
    const end = Date.now() + 1_500;
    await Promise.all(
      Array.from({ length: 8 }, async () => {
        while (Date.now() < end) await pool.query('SELECT pg_sleep(0.01)');
      }),
    );
    expect(monitor.checkConnectionLeaks()).toBe(false);
    // leaked: four connections taken and never returned
    const leaked = await Promise.all(Array.from({ length: 4 }, () => pool.connect()));
    // The monitor's own timer advances the suspicion: once the window has passed with them held.
    expect(await eventually(() => monitor.checkConnectionLeaks(), 5_000)).toBe(true);
    expect(warnings).toContain(`db-pool "${config.name}": potential connection leak detected! Pool exhausted: 4 connections in use`);
    leaked.forEach((c) => c.release());
    expect(await eventually(() => !monitor.checkConnectionLeaks())).toBe(true);
  });

  it('10. test_pool_recommendations: the advice follows the state', async () => {
    const { pool, config } = await make({ poolSize: 2, maxOverflow: 2 });
    const monitor = new PoolMonitor(pool, config, { log() {}, warn() {} });
    // The texts as an operator reads them.
    const healthy = 'Pool is healthy. No action needed.';
    expect(monitor.getRecommendations()).toEqual([healthy]);
    const held = await Promise.all(Array.from({ length: 3 }, () => pool.connect()));
    expect(monitor.getRecommendations()).toEqual(['Pool utilization is high (75%). Monitor for bottlenecks.']);
    held.push(await pool.connect());
    const waiter = pool.connect();
    expect(await eventually(() => pool.waitingCount === 1)).toBe(true);
    expect(monitor.getRecommendations()).toEqual([
      'Pool utilization is critical (100%). Increase pool_size or max_overflow, or find what holds connections.',
      '1 caller(s) are queued for a connection right now.',
    ]);
    held.forEach((c) => c.release());
    (await waiter).release();
    expect(monitor.getRecommendations()).toEqual([healthy]);
  });

  it('11. test_pool_performance_vs_no_pool: pooled queries are at least 10x faster than a connection per query (password auth)', async () => {
    const server = await startEmbeddedPostgres({ authMethod: 'scram-sha-256', password: 'load-test-secret' });
    try {
      const pool = await createDbPool({ url: server.url, poolSize: 5, maxOverflow: 0, env: {} });
      open.push(pool);
      const N = 50;
      const time = async (fn: () => Promise<unknown>) => {
        const started = performance.now();
        for (let i = 0; i < N; i++) await fn();
        return (performance.now() - started) / N;
      };
      await time(() => pool.query('SELECT 1')); // warm the JIT
      const pooled = await time(() => pool.query('SELECT 1'));
      const unpooled = await time(async () => {
        const client = new pg.Client({ connectionString: server.url });
        await client.connect();
        await client.query('SELECT 1');
        await client.end();
      });
      process.stdout.write(
        `pool vs no pool: ${pooled.toFixed(3)} ms vs ${unpooled.toFixed(3)} ms per query (${(unpooled / pooled).toFixed(1)}x)\n`,
      );
      expect(unpooled / pooled).toBeGreaterThanOrEqual(10);
      await pool.end();
    } finally {
      await server.stop();
    }
  });
});
