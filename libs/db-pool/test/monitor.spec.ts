import type pg from 'pg';
import { DbPool, PoolMonitor, resolveDbPoolConfig, type DbPoolOptions } from '../src/index.js';
import { RECOMMENDATIONS } from '../src/monitor/messages.constant.js';
import { toPgPoolOptions } from '../src/pool/pg-options.js';
import { settingsOf } from '../src/pool/settings.js';
import { eventually, poolFixture, proxyFixture, sleep, testOptions } from './support/db.js';

describe('PoolMonitor', () => {
  const { proxy, url: proxied } = proxyFixture();
  const fixture = poolFixture();
  const monitors: PoolMonitor[] = [];
  const logs: string[] = [];
  const logger = { log: (m: string) => logs.push(`log ${m}`), warn: (m: string) => logs.push(`warn ${m}`) };

  async function monitored(options: Omit<DbPoolOptions, 'env'>, monitorOptions = {}) {
    const named = testOptions(options);
    const config = resolveDbPoolConfig(named);
    const pool = await fixture.pool(named);
    const monitor = new PoolMonitor(pool, config, logger, monitorOptions);
    monitors.push(monitor);
    return { pool, monitor };
  }
  const holdAll = async (pool: { connect(): Promise<pg.PoolClient> }, n: number) => {
    const held: pg.PoolClient[] = [];
    for (let i = 0; i < n; i++) held.push(await pool.connect());
    return () => held.forEach((c) => c.release());
  };

  afterEach(() => {
    monitors.splice(0).forEach((m) => m.stop());
    logs.length = 0;
  });

  it("reports the pool status fields (size, checked_out, checked_in, overflow, utilization, health) from the pool's counters", async () => {
    const { pool, monitor } = await monitored({ poolSize: 3, maxOverflow: 2 });
    await pool.warmUp();
    const release = await holdAll(pool, 4);
    expect(monitor.getPoolStatus()).toEqual({
      size: 3,
      checked_out: 4,
      checked_in: 0,
      overflow: 1,
      max_overflow: 2,
      utilization: 80,
      health: 'warning',
      total_capacity: 5,
      waiting: 0,
      connect_failing: false,
      consecutive_connect_failures: 0,
      last_connect_error: null,
      concurrency_limit: 5,
      shed_recently: 0,
    });
    expect(monitor.getConfiguration()).toEqual({ pool_size: 3, max_overflow: 2, timeout: 5, recycle: 3600, pre_ping: true });
    expect(monitor.isPoolHealthy()).toBe(true);
    release();
  });

  it('uses the configured thresholds for warning and critical', async () => {
    const { pool, monitor } = await monitored({ poolSize: 4, maxOverflow: 0, warnUtilizationPercent: 20, criticalUtilizationPercent: 60 });
    const release = await holdAll(pool, 1);
    expect(monitor.getPoolStatus().health).toBe('warning'); // 25 % > 20 %
    const more = await holdAll(pool, 2);
    expect(monitor.getPoolStatus().health).toBe('critical'); // 75 % > 60 %
    expect(monitor.isPoolHealthy()).toBe(false);
    expect(monitor.getRecommendations()[0]).toBe(RECOMMENDATIONS.CRITICAL(75));
    release();
    more();
  });

  it('suspects a leak only when the pool stays exhausted and a connection is held through the whole window', async () => {
    const { pool, monitor } = await monitored({ poolSize: 2, maxOverflow: 1 }, { leakWindowMs: 800, tickMs: 100 });
    await monitor.start();
    const release = await holdAll(pool, 3);
    const exhaustedAt = performance.now();
    expect(monitor.checkConnectionLeaks()).toBe(false);
    expect(await eventually(() => monitor.checkConnectionLeaks(), 5_000)).toBe(true);
    expect(performance.now() - exhaustedAt).toBeGreaterThanOrEqual(800); // not before the window has passed
    expect(monitor.getRecommendations()).toContain(RECOMMENDATIONS.LEAK);
    expect(logs.filter((l) => l.includes('potential connection leak detected! Pool exhausted: 3 connections in use'))).toHaveLength(1);
    release();
    expect(await eventually(() => !monitor.checkConnectionLeaks())).toBe(true);
  });

  it('suspects a leak when every connection is held and the server refuses more, below the configured capacity', async () => {
    const { pool, monitor } = await monitored(
      { url: proxied(), poolSize: 2, maxOverflow: 2, poolTimeoutSeconds: 1, connectTimeoutSeconds: 1 },
      { leakWindowMs: 300, tickMs: 50 },
    );
    await monitor.start();
    const release = await holdAll(pool, 2);
    await proxy().setMode('refuse'); // a full server, a role's CONNECTION LIMIT
    await expect(pool.connect()).rejects.toThrow(/could not open a connection/);
    expect(monitor.getPoolStatus()).toMatchObject({
      checked_out: 2,
      checked_in: 0,
      utilization: 50,
      health: 'critical',
      connect_failing: true,
    });
    expect(await eventually(() => monitor.checkConnectionLeaks(), 3_000)).toBe(true);
    release();
  });

  it('does not suspect a leak in a pool that is saturated but keeps turning connections over', async () => {
    const { pool, monitor } = await monitored({ poolSize: 2, maxOverflow: 1 }, { leakWindowMs: 800, tickMs: 100 });
    await monitor.start();
    const end = Date.now() + 1_500;
    let saturated = 0;
    const worker = async () => {
      while (Date.now() < end) {
        await pool.query('SELECT pg_sleep(0.02)');
        if (monitor.getPoolStatus().utilization === 100) saturated++;
        expect(monitor.checkConnectionLeaks()).toBe(false);
      }
    };
    await Promise.all(Array.from({ length: 9 }, worker));
    expect(saturated).toBeGreaterThan(20);
  });

  it('recommends a pool size from measured wait and use times when waits are frequent', async () => {
    const { pool, monitor } = await monitored(
      { poolSize: 2, maxOverflow: 0, poolTimeoutSeconds: 10 },
      { tickMs: 200, adviceWindowMs: 1_000 },
    );
    await monitor.start();
    const end = Date.now() + 1_400;
    await Promise.all(
      Array.from({ length: 8 }, async () => {
        while (Date.now() < end) await pool.query('SELECT pg_sleep(0.01)');
      }),
    );
    const advice = monitor.getRecommendations().find((r) => r.startsWith('Acquires waited'));
    expect(advice).toMatch(
      /^Acquires waited \d+% of the time \(mean wait [\d.]+ ms, mean use [\d.]+ ms at \d+ checkouts\/s\): this load keeps about \d+ connections busy; consider DB_POOL_SIZE=(\d+) \(now 2\)\.$/,
    );
    expect(Number(/DB_POOL_SIZE=(\d+)/.exec(advice!)![1])).toBeGreaterThanOrEqual(3);
  });

  it('samples the server: headroom, and connections left idle in transaction for 5 s (not a transaction between two statements)', async () => {
    const { pool, monitor } = await monitored({ poolSize: 2, maxOverflow: 0, expectedReplicas: 1 });
    await pool.warmUp();
    const client = await pool.connect();
    await client.query('BEGIN');
    await client.query('SELECT 1');
    expect(await monitor.sampleHeadroom()).toMatchObject({ in_use_by_pool: 2, idle_in_transaction: 0 });
    expect(monitor.getRecommendations().join('\n')).not.toContain('idle in transaction');
    expect(await eventually(async () => (await monitor.sampleHeadroom())!.idle_in_transaction === 1, 10_000, 250)).toBe(true);
    const headroom = monitor.getServerHeadroom();
    expect(headroom).toMatchObject({ in_use_by_pool: 2, idle_in_transaction: 1 });
    expect(headroom!.available).toBe(headroom!.max_connections - headroom!.superuser_reserved_connections);
    expect(monitor.getRecommendations()).toContain(RECOMMENDATIONS.IDLE_IN_TRANSACTION(1, pool.settings.name));
    client.release();
  });

  it("finds the pool's own connections by the application_name the server reports, not the one configured", async () => {
    const named = testOptions({ poolSize: 2, maxOverflow: 0 });
    const config = resolveDbPoolConfig(named);
    // The connections carry another name than the configuration says (as pg does when the URL has one).
    const pool = await fixture.pool({ ...named, applicationName: `${config.applicationName}-server` });
    const monitor = new PoolMonitor(pool, config, logger);
    monitors.push(monitor);
    await pool.warmUp();
    expect(await monitor.sampleHeadroom()).toMatchObject({ in_use_by_pool: 2 });
  });

  it('the headroom sampler skips a turn while its previous sample is still out: its acquires never pile up', async () => {
    const { pool, monitor } = await monitored({ poolSize: 1, maxOverflow: 0, headroomIntervalSeconds: 1, healthTimeoutMs: 1_500 });
    const release = await holdAll(pool, 1);
    let mostWaiting = 0;
    let watching = true;
    const watcher = (async () => {
      while (watching) {
        mostWaiting = Math.max(mostWaiting, pool.waitingCount);
        await sleep(25);
      }
    })();
    await monitor.start(); // the first sample times out after 1.5 s; then one is due every second
    expect(await eventually(() => pool.counters.probeTimeouts >= 2, 15_000)).toBe(true);
    watching = false;
    await watcher;
    expect(mostWaiting).toBe(1);
    release();
  }, 30_000);

  it('describes a connect error by its code, not its message (getaddrinfo ENOTFOUND names the host), unless DB_POOL_HEALTH_DETAIL', async () => {
    const url = new URL(process.env.DATABASE_URL!);
    url.hostname = 'db-primary.invalid';
    for (const healthDetail of [false, true]) {
      // createDbPool would refuse to start against it: a pool built from the same configuration, not warmed.
      const config = resolveDbPoolConfig(testOptions({ url: url.toString(), poolSize: 1, maxOverflow: 0, healthDetail }));
      const pool = new DbPool(toPgPoolOptions(config), settingsOf(config, logger));
      const monitor = new PoolMonitor(pool, config, logger);
      monitors.push(monitor);
      const err = (await pool.ping(2_000).catch((e: unknown) => e)) as Error;
      const shown = monitor.describeError(err);
      const status = monitor.getPoolStatus();
      if (healthDetail) {
        expect(shown).toContain('db-primary.invalid');
      } else {
        expect(shown).toMatch(/^could not open a connection: (ENOTFOUND|EAI_AGAIN) \(total=0, active=0, idle=0, waiting=0\)$/);
        expect(JSON.stringify(status)).not.toContain('db-primary');
      }
      expect(status).toMatchObject({ connect_failing: true, health: 'critical' });
      await pool.end();
    }
  });

  it('reads status from an exhausted pool with callers queued, and reading changes nothing', async () => {
    const { pool, monitor } = await monitored({ poolSize: 1, maxOverflow: 0, poolTimeoutSeconds: 30 });
    const release = await holdAll(pool, 1);
    const waiters = Array.from({ length: 3 }, () => pool.connect().then((c) => c.release()));
    expect(await eventually(() => pool.waitingCount === 3)).toBe(true);
    // getHealthReport is synchronous: it cannot wait on the pool. Reading it twice gives the same.
    const report = monitor.getHealthReport();
    expect(report.pool_status).toMatchObject({ checked_out: 1, waiting: 3, health: 'critical' });
    expect({ ...monitor.getHealthReport(), timestamp: report.timestamp }).toEqual(report);
    expect(pool.waitingCount).toBe(3);
    release();
    await Promise.all(waiters);
  });
});
