import type pg from 'pg';
import {
  DbPoolMetrics,
  DbPoolRegistry,
  PoolClosedError,
  PoolConnectError,
  PoolMonitor,
  PoolTimeoutError,
  resolveDbPoolConfig,
} from '../src/index.js';
import { poolFixture, testOptions } from './support/db.js';

describe('counters mean what they say', () => {
  const { pool } = poolFixture();
  const held: pg.PoolClient[] = [];
  afterEach(() => held.splice(0).forEach((c) => c.release()));

  it('a readiness probe and a headroom sample that time out on a busy pool are probe timeouts, not acquire timeouts', async () => {
    const options = testOptions({ poolSize: 1, maxOverflow: 0, healthTimeoutMs: 200 });
    const config = resolveDbPoolConfig(options);
    const p = await pool(options);
    const monitor = new PoolMonitor(p, config, { log: () => {}, warn: () => {} });
    const registry = new DbPoolRegistry();
    registry.add(monitor);
    held.push(await p.connect());

    await expect(p.ping(200)).rejects.toBeInstanceOf(PoolTimeoutError);
    expect(await monitor.sampleHeadroom()).toBeNull(); // timed out too: no sample yet
    expect(p.counters).toMatchObject({ timeouts: 0, probeTimeouts: 2 });

    const text = await new DbPoolMetrics(registry).metrics();
    expect(text).toContain(`db_client_connection_timeouts_total{pool_name="${config.name}"} 0`);
    expect(text).toContain(`db_pool_probe_timeouts_total{pool_name="${config.name}"} 2`);

    // A caller that waited DB_POOL_TIMEOUT is an acquire timeout.
    const short = await pool({ poolSize: 1, maxOverflow: 0, poolTimeoutSeconds: 1 });
    held.push(await short.connect());
    await expect(short.connect()).rejects.toBeInstanceOf(PoolTimeoutError);
    expect(short.counters).toMatchObject({ timeouts: 1, probeTimeouts: 0 });
  });

  it('shutdown serves the callers already queued (as pg.Pool does); a new acquire fails with PoolClosedError, which is not a connect error and is not counted as one', async () => {
    const p = await pool({ poolSize: 1, maxOverflow: 0, shutdownGraceSeconds: 10 });
    const first = await p.connect();
    const queued = [p.connect(), p.connect()];
    const ending = p.end();
    const refused = await p.connect().catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(PoolClosedError);
    expect(refused).not.toBeInstanceOf(PoolConnectError);
    expect((refused as Error).message).toMatch(/^db-pool ".*": the pool is shutting down \(total=1, active=1, idle=0, waiting=2\)$/);
    first.release();
    for (const next of queued) {
      const client = await next;
      expect((await client.query<{ n: number }>('SELECT 1 AS n')).rows[0].n).toBe(1);
      client.release();
    }
    await ending;
    expect(p.ended).toBe(true);
    expect(p.counters).toMatchObject({ connectErrors: 0, connectFailures: 0, timeouts: 0 });
  });

  it('callers still queued when the shutdown grace ends fail with PoolClosedError', async () => {
    const p = await pool({ poolSize: 1, maxOverflow: 0, shutdownGraceSeconds: 1 });
    const first = await p.connect();
    const queued = p.connect().catch((e: unknown) => e);
    const ending = p.end();
    const err = await queued; // nothing came back within the grace
    expect(err).toBeInstanceOf(PoolClosedError);
    expect((err as Error).message).toMatch(/the pool is shutting down \(total=1, active=1, idle=0, waiting=1\)$/);
    expect(() => first.release()).not.toThrow();
    await ending;
    expect(p.counters).toMatchObject({ connectErrors: 0, connectFailures: 0, timeouts: 0 });
  });
});
