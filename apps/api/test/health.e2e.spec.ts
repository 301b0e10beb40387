import 'reflect-metadata';
import { execFileSync, spawnSync } from 'node:child_process';
import type pg from 'pg';
import { DataSource } from 'typeorm';
import { type DbPool, getDbPoolToken } from '@db-pool/db-pool';
import { startEmbeddedPostgres, type EmbeddedPostgres } from '../../../tools/embedded-db.mjs';
import { eventually, sleep } from '../../../tools/wait.mjs';
import { startApi, type RunningApp } from './support/http.js';

// A server of this file's own, with real password authentication and a password full of
// characters that need care, so that the test can look for it everywhere and stop the server.
const PASSWORD = `pä ss"w@rd:/?#'%`;
const hasPromtool = spawnSync('promtool', ['--version']).status === 0;

describe('health routes and metrics over real HTTP', () => {
  let db: EmbeddedPostgres;
  const everything: string[] = []; // every body and log line of the file, searched for the password at the end
  const apps: RunningApp[] = [];

  const start = async (options: Parameters<typeof startApi>[0], extra: Parameters<typeof startApi>[1] = []) => {
    const running = await startApi({ url: db.url, ...options }, extra);
    apps.push(running);
    const get = running.get.bind(running);
    running.get = async (path: string) => {
      const res = await get(path);
      everything.push(res.text);
      return res;
    };
    return running;
  };
  const hold = async (running: RunningApp, n: number, name?: string) => {
    const pool = running.app.get<DbPool>(getDbPoolToken(name));
    const held: pg.PoolClient[] = [];
    for (let i = 0; i < n; i++) held.push(await pool.connect());
    return { pool, release: () => held.splice(0).forEach((c) => c.release()) };
  };

  beforeAll(async () => {
    db = await startEmbeddedPostgres({ authMethod: 'scram-sha-256', password: PASSWORD });
  });
  afterAll(async () => {
    for (const running of apps) await running.close().catch(() => {});
    for (const running of apps) everything.push(running.logger.text());
    await db?.stop();
    const all = everything.join('\n');
    expect(all.length).toBeGreaterThan(1_000);
    expect(all).not.toContain(PASSWORD);
    expect(all).not.toContain(encodeURIComponent(PASSWORD));
    expect(all).not.toContain('ss"w@rd');
  });

  it('GET /health/db_pool: healthy, with every pool-report field, for each named pool', async () => {
    const running = await start({ poolSize: 4, maxOverflow: 4 }, [
      { name: 'reporting', url: db.url, poolSize: 2, maxOverflow: 0, env: {} },
    ]);
    const res = await running.get('/health/db_pool');
    expect(res.status).toBe(200);
    expect(res.body.status).toBe('ok');
    const report = res.body.details.default;
    expect(report.status).toBe('up');
    expect(Date.parse(report.timestamp)).not.toBeNaN();
    expect(report.pool_status).toEqual({
      size: 4,
      checked_out: 0,
      checked_in: 4,
      overflow: 0,
      max_overflow: 4,
      utilization: 0,
      health: 'healthy',
      total_capacity: 8,
      waiting: 0,
      connect_failing: false,
      consecutive_connect_failures: 0,
      last_connect_error: null,
      concurrency_limit: 8,
      shed_recently: 0,
    });
    expect(report.recommendations).toEqual(['Pool is healthy. No action needed.']);
    expect(report.leak_detected).toBe(false);
    // The URL names the host: shown only with DB_POOL_HEALTH_DETAIL (see "discloses no more than it must").
    expect(report.configuration).toEqual({ pool_size: 4, max_overflow: 4, timeout: 30, recycle: 3600, pre_ping: true });
    expect(res.body.details.reporting.pool_status).toMatchObject({ size: 2, checked_in: 2, total_capacity: 2, health: 'healthy' });
    // Operators' commands (`jq '.pool_status'`, `jq '.leak_detected'`) read the default pool's report at the top level too.
    expect(res.body.pool_status).toEqual(report.pool_status);
    expect(res.body.leak_detected).toBe(false);
    expect(res.body.recommendations).toEqual(report.recommendations);
    expect(res.body.configuration).toEqual(report.configuration);
    expect(res.body.timestamp).toBe(report.timestamp);
    expect(res.body.details.reporting.configuration.pool_size).toBe(2);

    const metrics = await running.get('/metrics');
    expect(metrics.text).toContain('db_client_connections_usage{pool_name="default",state="idle"} 4');
    expect(metrics.text).toContain('db_client_connections_usage{pool_name="reporting",state="idle"} 2');
    expect(metrics.text).toContain('db_client_connection_max{pool_name="reporting"} 2');
    await running.close();
  });

  it('~75 % of capacity held: warning, Terminus "degraded", 200', async () => {
    const running = await start({ poolSize: 4, maxOverflow: 4 });
    const held = await hold(running, 6);
    const res = await running.get('/health/db_pool');
    expect(res.status).toBe(200);
    expect(res.body.status).toBe('degraded');
    expect(res.body.details.default.status).toBe('degraded');
    expect(res.body.details.default.pool_status).toMatchObject({ checked_out: 6, utilization: 75, health: 'warning', overflow: 2 });
    expect(res.body.details.default.recommendations).toEqual(['Pool utilization is high (75%). Monitor for bottlenecks.']);
    held.release();
    await running.close();
  });

  it('> 90 % held: critical, 503; readiness 503 within its timeout; /health/db_pool and /metrics answer in < 100 ms with callers queued', async () => {
    const running = await start({ poolSize: 4, maxOverflow: 4, poolTimeoutSeconds: 30, healthTimeoutMs: 300 });
    const held = await hold(running, 8);
    const queued = Array.from({ length: 5 }, () => held.pool.connect().then((c) => c.release()));
    expect(await eventually(() => held.pool.waitingCount === 5)).toBe(true);

    const health = await running.get('/health/db_pool');
    expect(health.status).toBe(503);
    expect(health.body.status).toBe('error');
    expect(health.body.error.default.pool_status).toMatchObject({ checked_out: 8, utilization: 100, health: 'critical', waiting: 5 });
    expect(health.body.error.default.recommendations).toContain('5 caller(s) are queued for a connection right now.');
    // 503 too: the pool report's fields at the top level, beside Terminus' envelope.
    expect(health.body.pool_status).toEqual(health.body.error.default.pool_status);
    expect(health.body.status).toBe('error');
    expect(health.ms).toBeLessThan(100);

    const metrics = await running.get('/metrics');
    expect(metrics.status).toBe(200);
    expect(metrics.ms).toBeLessThan(100);
    expect(metrics.text).toContain('db_client_connection_pending_requests{pool_name="default"} 5');
    expect(metrics.text).toContain('db_client_connections_usage{pool_name="default",state="used"} 8');
    expect(metrics.text).toContain('db_client_connection_utilization_ratio{pool_name="default"} 1');

    // The probe waits its turn behind the queued callers, never longer than its timeout.
    const ready = await running.get('/health/ready');
    expect(ready.status).toBe(503);
    expect(ready.body.error.default.message).toMatch(
      /^database not reachable within 300 ms: db-pool "default": timeout exceeded when trying to connect: no connection within 300 ms \(total=8, active=8, idle=0, waiting=6\)$/,
    );
    expect(held.pool.counters).toMatchObject({ probeTimeouts: 1, timeouts: 0 });

    held.release();
    await Promise.all(queued);
    expect((await running.get('/health/db_pool')).status).toBe(200);
    await running.close();
  });

  it('/metrics passes promtool check metrics', async () => {
    if (!hasPromtool && process.env.CI) throw new Error('promtool is not installed (Debian package prometheus); .ci/run installs it');
    const running = await start({ poolSize: 2, maxOverflow: 2 });
    await running.get('/items?limit=1');
    const metrics = await running.get('/metrics');
    for (const name of [
      'db_client_connection_max',
      'db_client_connection_idle_min',
      'db_client_connection_pending_requests',
      'db_client_connection_timeouts_total',
      'db_client_connection_create_time_seconds_bucket',
      'db_client_connection_wait_time_seconds_count',
      'db_client_connection_use_time_seconds_sum',
      'db_client_connection_utilization_ratio',
    ]) {
      expect(metrics.text).toContain(`${name}{pool_name="default"`);
    }
    if (hasPromtool) execFileSync('promtool', ['check', 'metrics'], { input: metrics.text });
    await running.close();
  });

  it('logs a checkout held past DB_POOL_LEAK_THRESHOLD with the stack that took it, and its return', async () => {
    const running = await start({ poolSize: 2, maxOverflow: 0, leakThresholdSeconds: 2 });
    const dataSource = running.app.get(DataSource);
    const runner = dataSource.createQueryRunner();
    await runner.connect(); // this line's stack is what the warning must show
    const leakWarning = () => running.logger.lines.find((l) => l.level === 'warn' && l.text.includes('possible connection leak'));
    expect(await eventually(() => leakWarning() !== undefined, 6_000)).toBe(true);
    const warning = leakWarning();
    expect(warning?.text).toMatch(
      /^db-pool "default": possible connection leak: a connection has been checked out for [23]\.\d s \(DB_POOL_LEAK_THRESHOLD=2 s\)/,
    );
    expect(warning?.text).toContain('health.e2e.spec.ts');
    const res = await running.get('/health/db_pool');
    expect(res.body.details.default.leak_detected).toBe(true);
    expect(res.body.details.default.recommendations.join(' ')).toContain('checked out for longer than DB_POOL_LEAK_THRESHOLD (2 s)');
    await runner.release();
    const returned = running.logger.lines.find((l) => l.text.includes('the connection reported as possibly leaked was returned after'));
    expect(returned?.level).toBe('log');
    expect((await running.get('/health/db_pool')).body.details.default.leak_detected).toBe(false);
    expect(warning!.text.split('\n').filter((l) => l.trim().startsWith('at ')).length).toBeGreaterThan(2);
    await running.close();
  });

  it('flags no leak during a sustained 50-concurrency run that saturates the pool', async () => {
    const running = await start({ poolSize: 5, maxOverflow: 5, leakThresholdSeconds: 5 });
    const end = Date.now() + 12_000; // longer than the 10 s leak window
    let ok = 0;
    let failed = 0;
    let sawCritical = false;
    let sawLeak = false;
    const worker = async (i: number) => {
      while (Date.now() < end) {
        const res = await fetch(`${running.base}/items`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ name: `load-${i}` }),
        });
        if (res.status === 201) ok++;
        else failed++;
        await res.arrayBuffer();
      }
    };
    const watcher = (async () => {
      while (Date.now() < end) {
        const res = await running.get('/health/db_pool');
        sawCritical ||= res.body.details.default.pool_status.health === 'critical';
        sawLeak ||= res.body.details.default.leak_detected;
        await sleep(500); // the watcher's pace
      }
    })();
    await Promise.all([...Array.from({ length: 50 }, (_, i) => worker(i)), watcher]);
    expect(failed).toBe(0);
    expect(ok).toBeGreaterThan(500);
    expect(sawCritical).toBe(true); // the load really kept the pool saturated…
    expect(sawLeak).toBe(false); // …and yet no leak was flagged
    expect(running.logger.text()).not.toMatch(/possible connection leak|potential connection leak/i);
    await running.close();
  });

  it('recommends fewer connections when replicas × capacity exceeds what the server can give', async () => {
    const running = await start({ poolSize: 6, maxOverflow: 6, expectedReplicas: 10, applicationName: 'headroom-test' });
    const res = await running.get('/health/db_pool');
    const report = res.body.details.default;
    expect(report.server_headroom).toMatchObject({
      max_connections: 100,
      superuser_reserved_connections: 3,
      available: 97,
      in_use_by_pool: 6,
    });
    expect(report.recommendations.join('\n')).toMatch(
      /Server headroom: 10 replica\(s\) × 12 connections = 120, more than the \d+ the server can give \(max_connections=100, superuser_reserved_connections=3/,
    );
    expect(running.logger.lines.some((l) => l.level === 'warn' && l.text.includes('Server headroom: 10 replica(s)'))).toBe(true);
    const metrics = await running.get('/metrics');
    expect(metrics.text).toMatch(/db_pool_server_headroom_connections\{pool_name="default"\} \d+/);
    await running.close();
  });

  it('saturated but turning over (more callers than connections, every request served): readiness stays 200', async () => {
    const running = await start({ poolSize: 2, maxOverflow: 0, healthTimeoutMs: 500 });
    const pool = running.app.get<DbPool>(getDbPoolToken());
    let stop = false;
    const workers = Array.from({ length: 8 }, async () => {
      while (!stop) await pool.query('SELECT pg_sleep(0.005)');
    });
    expect(await eventually(() => pool.waitingCount > 0)).toBe(true);
    const statuses: number[] = [];
    for (let i = 0; i < 10; i++) statuses.push((await running.get('/health/ready')).status);
    stop = true;
    await Promise.all(workers);
    expect(statuses).toEqual(Array(10).fill(200));
    await running.close();
  });

  it('with the database stopped: /health/live stays 200, /health/ready is 503, and no timed-out probe holds a connection', async () => {
    const running = await start({ poolSize: 3, maxOverflow: 0, healthTimeoutMs: 500 });
    expect((await running.get('/health/ready')).status).toBe(200);
    const pool = running.app.get<DbPool>(getDbPoolToken());
    await db.server.stop();
    try {
      for (let i = 0; i < 20; i++) {
        const ready = await running.get('/health/ready');
        expect(ready.status).toBe(503);
        expect(ready.ms).toBeLessThan(1_500);
        expect(ready.body.error.default.message).toMatch(/^database not reachable within 500 ms: /);
      }
      const live = await running.get('/health/live');
      expect(live.status).toBe(200);
      expect(pool.state().active).toBe(0);
    } finally {
      await db.server.start();
    }
    // And back: the pool recovers once the server is.
    expect(await eventually(async () => (await running.get('/health/ready')).status === 200, 10_000, 250)).toBe(true);
    expect(pool.state().active).toBe(0);
    await running.close();
  });
});
