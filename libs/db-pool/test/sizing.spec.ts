import type { DbPool } from '../src/index.js';
import { backendPids, eventually, poolFixture } from './support/db.js';

describe('pool sizing (QueuePool semantics)', () => {
  const fixture = poolFixture();
  const admin = () => fixture.admin();
  let pool: DbPool;

  it('warms DB_POOL_SIZE connections at start-up, all checked in', async () => {
    pool = await fixture.pool({ poolSize: 5, maxOverflow: 5 }); // createDbPool resolves once they are open
    expect(pool.state()).toEqual({ total: 5, active: 0, idle: 5, waiting: 0 });
    expect(await backendPids(admin(), pool.settings.name)).toHaveLength(5);
  });

  it('grows to size + overflow under 3x concurrency and never beyond', async () => {
    pool = await fixture.pool({ poolSize: 3, maxOverflow: 4 });
    await pool.warmUp();
    const capacity = 7;
    let peakTotal = 0;
    let peakActive = 0;
    let failures = 0;
    const sample = setInterval(() => {
      peakTotal = Math.max(peakTotal, pool.totalCount);
      peakActive = Math.max(peakActive, pool.totalCount - pool.idleCount);
    }, 2);
    const p = pool;
    await Promise.all(
      Array.from({ length: capacity * 3 }, () =>
        p.query('SELECT pg_sleep(0.15)').catch(() => {
          failures++;
        }),
      ),
    );
    clearInterval(sample);
    expect(failures).toBe(0);
    expect(peakTotal).toBe(capacity);
    expect(peakActive).toBe(capacity);
    expect((await backendPids(admin(), pool.settings.name)).length).toBeLessThanOrEqual(capacity);
  });

  // Also the load suite's test 5, test_pool_overflow_behavior (see apps/loadtest/test/load.spec.ts).
  it('closes overflow connections after the overflow idle timeout, back down to DB_POOL_SIZE', async () => {
    pool = await fixture.pool({ poolSize: 2, maxOverflow: 4, overflowIdleTimeoutSeconds: 1 });
    await pool.warmUp();
    const p = pool;
    await Promise.all(Array.from({ length: 6 }, () => p.query('SELECT pg_sleep(0.1)')));
    expect(pool.totalCount).toBe(6);
    const idleFrom = performance.now();
    expect(await eventually(() => p.totalCount === 2, 3_000)).toBe(true);
    expect(performance.now() - idleFrom).toBeGreaterThanOrEqual(900); // not before the idle time
    expect(pool.state()).toEqual({ total: 2, active: 0, idle: 2, waiting: 0 });
    expect(await eventually(async () => (await backendPids(admin(), p.settings.name)).length === 2, 2_000)).toBe(true);
  });

  it('tops the pool back up to DB_POOL_SIZE when connections are lost', async () => {
    pool = await fixture.pool({ poolSize: 3, maxOverflow: 0 });
    await pool.warmUp();
    await admin().query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1', [pool.settings.name]);
    const p = pool;
    expect(await eventually(() => p.counters.removed >= 3 && p.totalCount === 3 && p.idleCount === 3, 5_000)).toBe(true);
    // A terminated backend sends its FATAL before it exits and leaves pg_stat_activity: wait for those to go.
    expect(await eventually(async () => (await backendPids(admin(), p.settings.name)).length === 3)).toBe(true);
  });
});
