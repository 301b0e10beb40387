import 'reflect-metadata';
import type pg from 'pg';
import { type DbPool, getDbPoolToken } from '@db-pool/db-pool';
import { startFaultProxy, type FaultProxy } from '../../../tools/fault-proxy.mjs';
import { eventually } from '../../../tools/wait.mjs';
import { startApi, type RunningApp } from './support/http.js';

/** The api through a fault proxy: an exhausted pool, an unreachable server, and what HTTP says about them. */
describe('overload and outage over HTTP', () => {
  let proxy: FaultProxy;
  const apps: RunningApp[] = [];
  const url = () => proxy.url(process.env.DATABASE_URL!);
  const start = async (options: Parameters<typeof startApi>[0]) => {
    const running = await startApi({ url: url(), poolSize: 2, maxOverflow: 0, ...options });
    apps.push(running);
    return running;
  };
  /** Every connection dies and no new one can be opened (the server is gone). */
  const serverGone = async () => {
    await proxy.setMode('reset');
    await proxy.setMode('refuse');
  };

  beforeAll(async () => {
    const target = new URL(process.env.DATABASE_URL!);
    proxy = await startFaultProxy({ host: target.hostname, port: Number(target.port || 5432) });
  });
  afterEach(async () => {
    await proxy.setMode('pass');
    for (const running of apps.splice(0)) await running.close().catch(() => {});
  });
  afterAll(async () => {
    await proxy?.close();
  });

  it('an exhausted pool: a request answers 503 with Retry-After and a body naming the condition, not 500', async () => {
    const running = await start({ poolTimeoutSeconds: 1, connectTimeoutSeconds: 1 });
    const pool = running.app.get<DbPool>(getDbPoolToken());
    const held: pg.PoolClient[] = [await pool.connect(), await pool.connect()];
    try {
      const res = await fetch(`${running.base}/items?limit=1`);
      expect(res.status).toBe(503);
      expect(res.headers.get('retry-after')).toBe('1');
      expect(await res.json()).toEqual({
        statusCode: 503,
        error: 'Service Unavailable',
        condition: 'pool_timeout',
        message: 'No database connection became free in time (pool "default"); retry later.',
        pool: 'default',
        retry_after: 1,
      });
      const write = await fetch(`${running.base}/items`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: '{"name":"never"}',
      });
      expect(write.status).toBe(503);
      expect(running.logger.text()).toContain(
        '503 pool_timeout: db-pool "default": timeout exceeded when trying to connect: no connection within 1000 ms',
      );
    } finally {
      held.forEach((c) => c.release());
    }
    expect((await fetch(`${running.base}/items?limit=1`)).status).toBe(200);
  });

  it('an unreachable server: requests answer 503 database_unreachable, /health/db_pool turns critical, both recover', async () => {
    const running = await start({ poolTimeoutSeconds: 2, connectTimeoutSeconds: 1 });
    expect((await running.get('/health/db_pool')).status).toBe(200);
    await serverGone();

    const res = await fetch(`${running.base}/items?limit=1`);
    expect(res.status).toBe(503);
    expect(res.headers.get('retry-after')).toBe('5');
    expect(await res.json()).toMatchObject({ condition: 'database_unreachable', pool: 'default', code: 'ECONNREFUSED', retry_after: 5 });

    // The refill's failed attempts and no open connection: critical, and it says why.
    expect(await eventually(async () => (await running.get('/health/db_pool')).status === 503, 10_000)).toBe(true);
    const health = await running.get('/health/db_pool');
    const report = health.body.error.default;
    expect(report.status).toBe('down');
    expect(report.pool_status).toMatchObject({
      health: 'critical',
      checked_out: 0,
      checked_in: 0,
      connect_failing: true,
      last_connect_error: 'ECONNREFUSED',
    });
    expect(report.pool_status.consecutive_connect_failures).toBeGreaterThan(0);
    expect(report.recommendations.join('\n')).toContain('New connections are failing');
    expect((await running.get('/health/ready')).status).toBe(503);
    expect((await running.get('/metrics')).text).toContain('db_pool_connect_failing{pool_name="default"} 1');

    await proxy.setMode('pass');
    expect(await eventually(async () => (await running.get('/health/db_pool')).status === 200, 15_000)).toBe(true);
    expect((await running.get('/health/ready')).status).toBe(200);
    expect((await fetch(`${running.base}/items?limit=1`)).status).toBe(200);
  });

  it('every connection in use and the server refusing more, below the configured capacity: critical, not healthy', async () => {
    const running = await start({ poolSize: 2, maxOverflow: 2, poolTimeoutSeconds: 2, connectTimeoutSeconds: 1 });
    const pool = running.app.get<DbPool>(getDbPoolToken());
    const held: pg.PoolClient[] = [await pool.connect(), await pool.connect()];
    try {
      await proxy.setMode('refuse'); // open connections keep working; the server gives no more
      expect((await fetch(`${running.base}/items?limit=1`)).status).toBe(503);
      const health = await running.get('/health/db_pool');
      expect(health.status).toBe(503);
      expect(health.body.error.default.pool_status).toMatchObject({
        checked_out: 2,
        checked_in: 0,
        utilization: 50,
        health: 'critical',
        connect_failing: true,
      });
    } finally {
      held.forEach((c) => c.release());
    }
  });

  it('health discloses no more than it must: no other applications, no host or address, unless DB_POOL_HEALTH_DETAIL', async () => {
    const target = new URL(process.env.DATABASE_URL!);
    const quiet = await start({ healthTimeoutMs: 500 });
    const detailed = await start({ healthTimeoutMs: 500, healthDetail: true, name: undefined });
    const headroom = async (running: RunningApp) => {
      expect(await eventually(async () => (await running.get('/health/db_pool')).body.details.default.server_headroom !== null)).toBe(true);
      return (await running.get('/health/db_pool')).body.details.default;
    };
    const quietReport = await headroom(quiet);
    expect(quietReport.server_headroom.by_application).toBeUndefined();
    expect(quietReport.server_headroom.in_use_by_pool).toBeGreaterThan(0);
    expect(quietReport.configuration.url).toBeUndefined();
    const detailedReport = await headroom(detailed);
    expect(detailedReport.server_headroom.by_application).toEqual(
      expect.arrayContaining([expect.objectContaining({ application_name: 'db-pool' })]),
    );
    expect(detailedReport.configuration.url).toContain(`@127.0.0.1:${proxy.port}/`);

    await serverGone();
    const quietReady = await quiet.get('/health/ready');
    const detailedReady = await detailed.get('/health/ready');
    expect(quietReady.status).toBe(503);
    expect(detailedReady.status).toBe(503);
    for (const text of [quietReady.text, (await quiet.get('/health/db_pool')).text]) {
      expect(text).not.toContain('127.0.0.1');
      expect(text).not.toContain(String(proxy.port));
      expect(text).not.toContain(target.hostname);
    }
    expect(quietReady.body.error.default.message).toMatch(/^database not reachable within 500 ms: /);
    expect(detailedReady.body.error.default.message).toContain(`127.0.0.1:${proxy.port}`);
  });
});
