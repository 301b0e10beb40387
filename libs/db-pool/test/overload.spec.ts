// Overload control: a bounded queue, shedding an acquire whose expected wait is past its
// deadline, and cancelling on the server a query whose caller has left.
import { performance } from 'node:perf_hooks';
import type pg from 'pg';
import { PoolDeadlineError, PoolOverloadedError, PoolTimeoutError, withDeadline } from '../src/index.js';
import { eventually, poolFixture } from './support/db.js';

describe('overload control', () => {
  const { admin, pool } = poolFixture();

  it('with DB_POOL_MAX_WAITING=2, the third waiter fails at once with PoolOverloadedError; the two queued are served', async () => {
    const p = await pool({ poolSize: 1, maxOverflow: 0, maxWaiting: 2, poolTimeoutSeconds: 10 });
    const held = await p.connect();
    const queued = [p.connect(), p.connect()];
    expect(p.waitingCount).toBe(2);
    const err = await p.connect().then(
      () => undefined,
      (e: Error) => e,
    );
    // At once: refused while nothing could have moved the queue (the connection is still held, the
    // two ahead still wait), and not by its 10 s deadline, which would be a PoolTimeoutError.
    expect(err).toBeInstanceOf(PoolOverloadedError);
    expect(err!.message).toMatch(/overloaded, not queued: 2 caller\(s\) already waiting \(DB_POOL_MAX_WAITING=2\)/);
    expect(p.state()).toMatchObject({ active: 1, waiting: 2 });
    expect(p.counters).toMatchObject({ overloaded: 1, timeouts: 0 });
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
      const err = await p.connect().then(
        (c) => (c.release(), undefined),
        (e: Error) => e,
      );
      // At once: refused while all four are held and the three ahead still wait; a caller that had
      // queued would have waited out its 1 s deadline (PoolTimeoutError) instead.
      expect(err).toBeInstanceOf(PoolOverloadedError);
      expect(p.state()).toMatchObject({ active: 4, waiting: 3 });
      expect(p.counters.timeouts).toBe(0);
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

/** A query that costs the server's CPU (tens of ms on one core): latency rises with concurrency past the cores. */
const CPU_QUERY = 'SELECT sum(i) FROM generate_series(1, 200000) i';

describe('adaptive concurrency limit (DB_POOL_ADAPTIVE)', () => {
  const { pool } = poolFixture();

  it('hands out fewer connections than its capacity to a saturated server, never more than the limit, and grows back when the server keeps up', async () => {
    const p = await pool({ poolSize: 2, maxOverflow: 10, adaptive: true, adaptiveMin: 1, poolTimeoutSeconds: 30 });
    expect(p.concurrencyLimit()).toMatchObject({ adaptive: true, floor: 1, ceiling: 12 });
    let stop = false;
    let overLimit = 0;
    const onAcquire = () => {
      if (p.state().active > p.concurrencyLimit().limit) overLimit++;
    };
    p.on('acquire', onAcquire);
    const callers = (sql: string) =>
      Array.from({ length: 12 }, async () => {
        while (!stop) await p.query(sql);
      });
    // 12 callers of a CPU-bound query on a 2-core machine: more than a few at once only queue in the server.
    let running = callers(CPU_QUERY);
    expect(await eventually(() => p.counters.acquired > 40 && p.concurrencyLimit().limit <= 8, 30_000)).toBe(true);
    stop = true;
    await Promise.all(running);
    expect(p.state().waiting).toBe(0);
    // pg_sleep: latency does not rise with concurrency, so the limit climbs back to the capacity.
    stop = false;
    running = callers('SELECT pg_sleep(0.05)');
    expect(await eventually(() => p.concurrencyLimit().limit === 12, 30_000)).toBe(true);
    stop = true;
    await Promise.all(running);
    p.off('acquire', onAcquire);
    expect(overLimit).toBe(0);
  }, 90_000);

  it('never strands the queue: with the limit filled by a connection held long (a LISTEN, a report), it is raised until a caller is served', async () => {
    // The limit starts at its floor (1): the one connection held fills it, and nothing comes back.
    const p = await pool({ poolSize: 1, maxOverflow: 3, adaptive: true, adaptiveMin: 1, poolTimeoutSeconds: 10 });
    const held = await p.connect();
    try {
      expect(p.concurrencyLimit().limit).toBe(1);
      // Served (after the stall guard's wait, 100 ms–1 s): a stranded caller would fail with
      // PoolTimeoutError at DB_POOL_TIMEOUT instead.
      const second = await p.connect();
      expect(p.concurrencyLimit().limit).toBeGreaterThanOrEqual(2);
      expect(p.counters.timeouts).toBe(0);
      second.release();
    } finally {
      held.release();
    }
  });

  it('a readiness probe held back by the limit, with no idle connection, gets a connection of its own within capacity', async () => {
    const p = await pool({ poolSize: 1, maxOverflow: 2, adaptive: true, adaptiveMin: 1, poolTimeoutSeconds: 10 });
    const held = await p.connect();
    try {
      expect(p.concurrencyLimit().limit).toBe(1);
      // Answered within its 1 s (a probe held back until then would reject), on a connection of its own.
      await p.ping(1_000);
      expect(p.counters.probeTimeouts).toBe(0);
      expect(p.state().total).toBe(2);
    } finally {
      held.release();
    }
  });

  it('is off by default: the limit is the capacity', async () => {
    const p = await pool({ poolSize: 2, maxOverflow: 3 });
    expect(p.concurrencyLimit()).toMatchObject({ adaptive: false, limit: 5, floor: 5, ceiling: 5 });
  });
});

describe('request deadlines (withDeadline)', () => {
  const { admin, pool } = poolFixture();
  const activeQueries = async (pid: number) =>
    (await admin().query<{ n: number }>(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE pid = $1 AND state = 'active'`, [pid]))
      .rows[0].n;

  it('a statement still running at the deadline fails at once with PoolDeadlineError, is cancelled on the server, and its connection is reused', async () => {
    const p = await pool({ poolSize: 1, maxOverflow: 0 });
    const pid = (await p.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0].pid;
    const started = performance.now();
    const err = await withDeadline(300, () => p.query('SELECT pg_sleep(30)')).catch((e: unknown) => e);
    expect(performance.now() - started).toBeLessThan(1_000);
    expect(err).toBeInstanceOf(PoolDeadlineError);
    expect(err).toMatchObject({ sent: true, budgetMs: 300, code: 'DB_POOL_DEADLINE' });
    expect(await eventually(async () => (await activeQueries(pid)) === 0, 3_000)).toBe(true);
    expect(p.counters.cancels).toBe(1);
    expect((await p.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0].pid).toBe(pid);
    expect(p.counters.created).toBe(1);
  });

  it('inside a checkout: the statement at the deadline is cancelled at once (not at release), later ones are not sent, and the connection comes back clean', async () => {
    const p = await pool({ poolSize: 1, maxOverflow: 0 });
    const pid = (await p.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0].pid;
    const errors = await withDeadline(300, async () => {
      const client = await p.connect();
      try {
        await client.query('BEGIN');
        const first = await client.query('SELECT pg_sleep(30)').catch((e: unknown) => e);
        // Still checked out: the server has already stopped the statement.
        expect(await eventually(async () => (await activeQueries(pid)) === 0, 3_000)).toBe(true);
        const second = await client.query('SELECT 1').catch((e: unknown) => e);
        return [first, second];
      } finally {
        client.release();
      }
    });
    expect(errors[0]).toMatchObject({ name: 'PoolDeadlineError', sent: true });
    expect(errors[1]).toMatchObject({ name: 'PoolDeadlineError', sent: false });
    // Rolled back and handed out again: same backend, no transaction.
    const after = await p.query<{ pid: number; xact: string | null }>('SELECT pg_backend_pid() AS pid, now()::text AS xact');
    expect(after.rows[0].pid).toBe(pid);
    expect(p.counters).toMatchObject({ cancels: 1, resets: 1, created: 1 });
  });

  it('bounds the acquire: a caller with 200 ms left waits 200 ms, not DB_POOL_TIMEOUT, and fails with PoolDeadlineError (not a pool timeout)', async () => {
    const p = await pool({ poolSize: 1, maxOverflow: 0, poolTimeoutSeconds: 30 });
    const held = await p.connect();
    try {
      const started = performance.now();
      const err = await withDeadline(200, () => p.connect()).catch((e: unknown) => e);
      const waited = performance.now() - started;
      expect(err).toBeInstanceOf(PoolDeadlineError);
      expect(err).toMatchObject({ sent: false, budgetMs: 200 });
      expect(waited).toBeGreaterThanOrEqual(190);
      expect(waited).toBeLessThan(1_000);
      expect(p.counters).toMatchObject({ timeouts: 0, deadlines: 1 });
    } finally {
      held.release();
    }
  });

  it('sheds at once a caller whose wait and use would not fit in its deadline, with a margin; a nested deadline only shortens', async () => {
    const p = await pool({ poolSize: 2, maxOverflow: 0, poolTimeoutSeconds: 30 });
    for (let round = 0; round < 8; round++) await Promise.all([p.query('SELECT pg_sleep(0.1)'), p.query('SELECT pg_sleep(0.1)')]);
    const held = await Promise.all([p.connect(), p.connect()]);
    try {
      // Mean use ~100 ms, 2 connections: the first in line is served in ~50 ms and needs 100 ms more.
      // Shed, not queued: a queued caller would have failed at its deadline with PoolDeadlineError.
      const shed = await withDeadline(150, () => p.connect()).catch((e: unknown) => e);
      expect(shed).toBeInstanceOf(PoolOverloadedError);
      expect(p.counters.deadlines).toBe(0);
      expect((shed as Error).message).toMatch(/expected wait \d+ ms and use \d+ ms \(0 ahead, 2 connections held \d+ ms on average\)/);
      // An outer 5 s deadline does not lengthen an inner 150 ms one.
      const nested = await withDeadline(5_000, () => withDeadline(150, () => p.connect())).catch((e: unknown) => e);
      expect(nested).toBeInstanceOf(PoolOverloadedError);
      // With room for both, it queues and is served.
      const queued = withDeadline(5_000, () => p.connect());
      held[0].release();
      (await queued).release();
    } finally {
      held.forEach((c) => {
        try {
          c.release();
        } catch {
          // released above
        }
      });
    }
  });

  it('refuses a budget that is not a positive number', () => {
    expect(() => withDeadline(0, () => 1)).toThrow(/positive number of ms, got 0/);
    expect(() => withDeadline(Number.NaN, () => 1)).toThrow(RangeError);
  });
});
