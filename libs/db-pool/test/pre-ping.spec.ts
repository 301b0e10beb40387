import type pg from 'pg';
import type { DbPool } from '../src/index.js';
import { backendPids, poolFixture, sleep } from './support/db.js';

describe('pre-ping (DB_POOL_PRE_PING) with a bypass window', () => {
  const fixture = poolFixture();
  const admin = () => fixture.admin();
  let pool: DbPool;

  it('replaces connections killed with pg_terminate_backend while idle, with zero failed queries', async () => {
    pool = await fixture.pool({ poolSize: 4, maxOverflow: 2, prePingBypassMs: 0 });
    await pool.warmUp();
    const before = await backendPids(admin(), pool.settings.name);
    expect(before).toHaveLength(4);

    await admin().query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1', [pool.settings.name]);

    const p = pool;
    const results = await Promise.allSettled(Array.from({ length: 20 }, () => p.query('SELECT pg_backend_pid() AS pid')));
    const failed = results.filter((r) => r.status === 'rejected');
    expect(failed).toEqual([]);
    const pids = new Set(results.map((r) => (r as PromiseFulfilledResult<pg.QueryResult<{ pid: number }>>).value.rows[0].pid));
    for (const pid of before) expect(pids.has(pid)).toBe(false);
  });

  it('discards a connection that stopped answering and retries the acquire within the same deadline', async () => {
    pool = await fixture.pool({ poolSize: 1, maxOverflow: 0, prePingBypassMs: 0, validationTimeoutMs: 200, poolTimeoutSeconds: 3 });
    await pool.warmUp();
    const client = await pool.connect();
    const frozenPid = (await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0].pid;
    // Stop reading the socket: the connection looks open but will never answer, as after a
    // network partition. Only a round trip can tell.
    const stream = (client as unknown as { connection: { stream: NodeJS.ReadableStream & { destroy(): void } } }).connection.stream;
    stream.pause();
    client.release();

    const started = Date.now();
    const { rows } = await pool.query<{ pid: number }>('SELECT pg_backend_pid() AS pid');
    const elapsed = Date.now() - started;
    expect(rows[0].pid).not.toBe(frozenPid);
    // With a bypass window of 0 a replacement opened by the refill is validated too.
    expect(pool.counters.prePings).toBeGreaterThanOrEqual(1);
    expect(pool.counters.prePingFailures).toBe(1);
    expect(elapsed).toBeGreaterThanOrEqual(190);
    expect(elapsed).toBeLessThan(2_000);
    expect(pool.totalCount).toBe(1);
    stream.destroy();
  });

  it('makes no pre-ping round trip for a connection used within the bypass window', async () => {
    pool = await fixture.pool({ poolSize: 1, maxOverflow: 0, prePingBypassMs: 500 });
    await pool.warmUp();
    await sleep(600); // the scenario itself: time passes beyond the window (not a wait for an event)
    await pool.query('SELECT 1');
    expect(pool.counters.prePings).toBe(1);

    for (let i = 0; i < 50; i++) await pool.query('SELECT 1');
    expect(pool.counters.prePings).toBe(1); // each checkout came within 500 ms of the last use

    await sleep(600);
    await pool.query('SELECT 1');
    expect(pool.counters.prePings).toBe(2);
  });

  it('makes no pre-ping round trip at all when DB_POOL_PRE_PING is off', async () => {
    pool = await fixture.pool({ poolSize: 1, maxOverflow: 0, prePing: false, prePingBypassMs: 0 });
    for (let i = 0; i < 5; i++) await pool.query('SELECT 1');
    expect(pool.counters.prePings).toBe(0);
  });
});
