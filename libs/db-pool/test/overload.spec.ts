// Overload control: a bounded queue, shedding an acquire whose expected wait is past its
// deadline, and cancelling on the server a query whose caller has left.
import { performance } from 'node:perf_hooks';
import type pg from 'pg';
import { PoolOverloadedError, PoolTimeoutError } from '../src/index.js';
import { eventually, poolFixture } from './support/db.js';

describe('overload control', () => {
  const { admin, pool } = poolFixture();

  it('with DB_POOL_MAX_WAITING=2, the third waiter fails at once with PoolOverloadedError; the two queued are served', async () => {
    const p = await pool({ poolSize: 1, maxOverflow: 0, maxWaiting: 2, poolTimeoutSeconds: 10 });
    const held = await p.connect();
    const queued = [p.connect(), p.connect()];
    expect(p.waitingCount).toBe(2);
    const started = performance.now();
    const err = await p.connect().then(
      () => undefined,
      (e: Error) => e,
    );
    expect(performance.now() - started).toBeLessThan(50);
    expect(err).toBeInstanceOf(PoolOverloadedError);
    expect(err!.message).toMatch(/overloaded, not queued: 2 caller\(s\) already waiting \(DB_POOL_MAX_WAITING=2\)/);
    expect(p.counters.overloaded).toBe(1);
    held.release();
    const [a, b] = await Promise.all(queued.map((q) => q.then((c) => (c.release(), c))));
    expect(a).toBeDefined();
    expect(b).toBeDefined();
  });

  it('sheds at once an acquire whose expected wait (its place in the queue × the measured use time ÷ capacity) is past its deadline', async () => {
    const p = await pool({ poolSize: 4, maxOverflow: 0, poolTimeoutSeconds: 1 });
    // Sixteen checkouts held 1.2 s each: the measured use time.
    for (let round = 0; round < 4; round++) {
      await Promise.all(Array.from({ length: 4 }, () => p.query('SELECT pg_sleep(1.2)')));
    }
    const held = await Promise.all(Array.from({ length: 4 }, () => p.connect()));
    try {
      // 4 connections coming back every ~1.2 s: one caller every ~300 ms. With 1 s to wait, the
      // first three can be served in time and queue; the fourth cannot.
      const waiting = [p.connect(), p.connect(), p.connect()].map((c) =>
        c.then(
          (client) => (client.release(), 'served'),
          (e: Error) => e.name,
        ),
      );
      expect(p.waitingCount).toBe(3);
      const started = performance.now();
      const err = await p.connect().then(
        (c) => (c.release(), undefined),
        (e: Error) => e,
      );
      expect(performance.now() - started).toBeLessThan(50);
      expect(err).toBeInstanceOf(PoolOverloadedError);
      expect(err!.message).toMatch(/expected wait \d+ ms \(3 ahead, 4 connections held \d+ ms on average\) is past the deadline/);
      held.forEach((c) => c.release());
      expect(await Promise.all(waiting)).toEqual(['served', 'served', 'served']);
    } finally {
      held.forEach((c) => {
        try {
          c.release();
        } catch {
          // released above
        }
      });
    }
  }, 30_000);

  it('without a measured use time (fewer than 16 checkouts), an acquire waits out its deadline as before', async () => {
    const p = await pool({ poolSize: 1, maxOverflow: 0, poolTimeoutSeconds: 1 });
    const held = await p.connect();
    try {
      await expect(p.connect()).rejects.toBeInstanceOf(PoolTimeoutError);
    } finally {
      held.release();
    }
  });

  it('a caller whose deadline passes mid-query leaves no query running on the server, and the connection is reused', async () => {
    const p = await pool({ poolSize: 1, maxOverflow: 0, queryTimeoutMs: 300 });
    const pid = (await p.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0].pid;
    const started = performance.now();
    await expect(p.query('SELECT pg_sleep(30)')).rejects.toThrow(/timeout/i);
    expect(performance.now() - started).toBeLessThan(1_000);
    const running = async () =>
      (await admin().query<{ n: number }>(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE pid = $1 AND state = 'active'`, [pid]))
        .rows[0].n;
    // Cancelled on the server: the backend is idle again well before pg_sleep(30) would end.
    expect(await eventually(async () => (await running()) === 0, 3_000)).toBe(true);
    expect(p.counters.cancels).toBe(1);
    // The same connection serves the next query.
    const client: pg.PoolClient = await p.connect();
    try {
      expect((await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0].pid).toBe(pid);
    } finally {
      client.release();
    }
    expect(p.counters.created).toBe(1);
  });
});
