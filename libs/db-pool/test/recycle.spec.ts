import type { DbPool } from '../src/index.js';
import { backendPids, eventually, poolFixture } from './support/db.js';

describe('recycling (DB_POOL_RECYCLE) with jitter', () => {
  const fixture = poolFixture();
  const admin = () => fixture.admin();
  let pool: DbPool;

  // Also the load suite's test 7, test_connection_recycling (see apps/loadtest/test/load.spec.ts).
  it('rotates backend pids under steady load with zero failed queries', async () => {
    pool = await fixture.pool({ poolSize: 3, maxOverflow: 2, recycleSeconds: 1, recycleJitterPercent: 50 });
    await pool.warmUp();
    const p = pool;
    const seen = new Set<number>();
    const firstPids = new Set<number>();
    let failures = 0;
    let queries = 0;
    const end = Date.now() + 3_000;
    const worker = async () => {
      while (Date.now() < end) {
        try {
          const { rows } = await p.query<{ pid: number }>('SELECT pg_backend_pid() AS pid, pg_sleep(0.005)');
          if (Date.now() < end - 2_600) firstPids.add(rows[0].pid);
          seen.add(rows[0].pid);
          queries++;
        } catch {
          failures++;
        }
      }
    };
    await Promise.all([worker(), worker(), worker()]);

    expect(failures).toBe(0);
    expect(queries).toBeGreaterThan(100);
    expect(pool.counters.recycled).toBeGreaterThanOrEqual(3);
    // Every connection of the first moments has been replaced at least once.
    expect(seen.size).toBeGreaterThanOrEqual(firstPids.size + 3);
    expect(pool.totalCount).toBeLessThanOrEqual(5);
  });

  it('never retires a connection while it is checked out', async () => {
    pool = await fixture.pool({ poolSize: 1, maxOverflow: 0, recycleSeconds: 1, recycleJitterPercent: 0 });
    await pool.warmUp();
    const client = await pool.connect();
    const pid = (await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0].pid;
    const p = pool;
    expect(await eventually(() => p.counters.recycled === 1)).toBe(true); // its lifetime is over, while checked out
    expect((await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0].pid).toBe(pid);
    expect(pool.totalCount).toBe(1);
    client.release();
    const { rows } = await pool.query<{ pid: number }>('SELECT pg_backend_pid() AS pid');
    expect(rows[0].pid).not.toBe(pid);
  });

  it('spreads lifetimes with jitter so a pool does not reconnect all at once', async () => {
    const started = Date.now();
    pool = await fixture.pool({ poolSize: 6, maxOverflow: 0, recycleSeconds: 2, recycleJitterPercent: 50 });
    const p = pool;
    const originals = new Set(await backendPids(admin(), pool.settings.name));
    expect(originals.size).toBe(6);
    const retiredAt: number[] = [];
    // Only the first six: their replacements start lifetimes of their own.
    pool.on('remove', (client) => originals.has(client.processID!) && retiredAt.push(Date.now() - started));
    expect(await eventually(() => retiredAt.length === 6, 5_000)).toBe(true);
    const spread = Math.max(...retiredAt) - Math.min(...retiredAt);
    expect(spread).toBeGreaterThan(100);
    expect(Math.min(...retiredAt)).toBeGreaterThanOrEqual(900); // 2 s less at most 50 %
    expect(await eventually(() => p.totalCount === 6 && p.idleCount === 6)).toBe(true);
  });
});
