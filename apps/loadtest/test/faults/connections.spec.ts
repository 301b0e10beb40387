/** Fault scenarios on the connections themselves: kills, restarts, refused, blackholed and frozen paths. */
import type pg from 'pg';
import { DbPoolMetrics, DbPoolRegistry, PoolConnectError, PoolMonitor, PoolTimeoutError } from '@db-pool/db-pool';
import { faultRig } from './support.js';
import { eventually, sleep } from '../../../../tools/wait.mjs';

describe('fault scenarios: connections', () => {
  const rig = faultRig();

  it('idle backends killed with pg_terminate_backend: the next queries succeed, nothing crashes', async () => {
    const { pool, config } = await rig().pool({ poolSize: 4, maxOverflow: 0 });
    await pool.warmUp();
    const killed = await rig().backends(config.applicationName);
    await (
      await rig().admin()
    ).query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1', [config.applicationName]);
    // The server's FATAL reaches each idle connection, which the pool drops (and replaces).
    expect(await eventually(() => pool.counters.removed === 4)).toBe(true);
    const results = await Promise.allSettled(
      Array.from({ length: 20 }, () => pool.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')),
    );
    expect(results.filter((r) => r.status === 'rejected')).toEqual([]);
    for (const r of results) expect(killed).not.toContain((r as PromiseFulfilledResult<pg.QueryResult<{ pid: number }>>).value.rows[0].pid);
    expect(await eventually(() => pool.totalCount === 4)).toBe(true);
  });

  it("the backend of an in-flight query killed: that query rejects with the server's error; the client is discarded, not reused", async () => {
    const { pool } = await rig().pool({ poolSize: 1, maxOverflow: 0 });
    const client = await pool.connect();
    const pid = (await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0].pid;
    const running = client.query('SELECT pg_sleep(10)');
    const admin = await rig().admin();
    expect(
      await eventually(
        async () => (await admin.query("SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND state = 'active'", [pid])).rowCount === 1,
      ),
    ).toBe(true);
    await admin.query('SELECT pg_terminate_backend($1)', [pid]);
    await expect(running).rejects.toThrow('terminating connection due to administrator command');
    client.release();
    const { rows } = await pool.query<{ pid: number }>('SELECT pg_backend_pid() AS pid');
    expect(rows[0].pid).not.toBe(pid);
  });

  it('server stopped and restarted under load: failures only during the outage, each within DB_POOL_TIMEOUT; full service within 2 s after; no stale connection', async () => {
    const { pool } = await rig().pool({ poolSize: 4, maxOverflow: 4, poolTimeoutSeconds: 2, connectTimeoutSeconds: 1 }, true);
    await pool.warmUp();
    const WORKERS = 8;
    const failures: { at: number; ms: number }[] = [];
    const successes: number[] = [];
    /** Each worker's first success after the restart. */
    const back = new Map<number, number>();
    let startedAt = Infinity;
    let running = true;
    const worker = async (w: number) => {
      while (running) {
        const t = Date.now();
        try {
          await pool.query('SELECT 1');
          successes.push(Date.now());
          if (t >= startedAt && !back.has(w)) back.set(w, Date.now());
        } catch {
          failures.push({ at: t, ms: Date.now() - t });
          await sleep(20); // a retry's pace
        }
      }
    };
    const workers = Array.from({ length: WORKERS }, (_, w) => worker(w));
    expect(await eventually(() => successes.length >= 100)).toBe(true); // the load is on
    const stoppedAt = Date.now();
    await rig().db.server.stop();
    expect(await eventually(() => failures.length >= WORKERS, 10_000)).toBe(true); // the callers see the outage
    await rig().db.server.start();
    startedAt = Date.now();
    // Full service: every worker has been answered since the restart.
    expect(await eventually(() => back.size === WORKERS, 10_000)).toBe(true);
    const served = successes.length;
    expect(await eventually(() => successes.length >= served + 50)).toBe(true);
    running = false;
    await Promise.all(workers);

    for (const f of failures) {
      expect(f.at).toBeGreaterThanOrEqual(stoppedAt - 50);
      expect(f.at).toBeLessThan(startedAt + 2_000);
      expect(f.ms).toBeLessThanOrEqual(2_000 + 200);
    }
    expect(Math.max(...back.values()) - startedAt).toBeLessThan(2_000);
    // no stale connection afterwards: every connection answers
    const after = await Promise.allSettled(Array.from({ length: 8 }, () => pool.query('SELECT 1')));
    expect(after.filter((r) => r.status === 'rejected')).toEqual([]);
  });

  it('connection refused: the acquire fails fast with the typed error', async () => {
    const { pool } = await rig().pool({ poolSize: 1, maxOverflow: 1, poolTimeoutSeconds: 5 });
    const held = await pool.connect(); // the warm connection: the next acquire must open one
    await rig().proxy.setMode('refuse');
    const started = Date.now();
    const err = await pool.connect().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PoolConnectError);
    expect((err as PoolConnectError).code).toBe('ECONNREFUSED');
    expect((err as Error).message).toMatch(/could not open a connection: .*ECONNREFUSED/);
    expect(Date.now() - started).toBeLessThan(500);
    held.release();
    await rig().proxy.setMode('pass');
    await expect(pool.query('SELECT 1')).resolves.toBeDefined();
  });

  it('connect blackholed: the connect timeout fires; no backend is left behind', async () => {
    const { pool, config } = await rig().pool({ poolSize: 1, maxOverflow: 1, poolTimeoutSeconds: 3, connectTimeoutSeconds: 1 });
    const held = await pool.connect(); // the warm connection: the next acquire must open one
    const heldBackends = await rig().backends(config.applicationName);
    await rig().proxy.setMode('blackhole');
    const started = Date.now();
    const err = await pool.connect().catch((e: unknown) => e);
    const elapsed = Date.now() - started;
    expect(err).toBeInstanceOf(PoolConnectError);
    expect((err as Error).message).toMatch(/could not open a connection: .*timeout/i);
    expect(elapsed).toBeGreaterThanOrEqual(950);
    expect(elapsed).toBeLessThan(1_600);
    expect(pool.totalCount).toBe(1); // the held one only
    expect(await rig().backends(config.applicationName)).toEqual(heldBackends);
    held.release();
  });

  it('socket frozen mid-query: the query fails within DB_QUERY_TIMEOUT_MS; the client is discarded; later queries succeed', async () => {
    const { pool } = await rig().pool({ poolSize: 1, maxOverflow: 0, queryTimeoutMs: 500, validationTimeoutMs: 300 });
    await pool.warmUp();
    const client = await pool.connect();
    const pid = (await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0].pid;
    await rig().proxy.setMode('freeze');
    const started = Date.now();
    await expect(client.query('SELECT 1')).rejects.toThrow('Query read timeout');
    expect(Date.now() - started).toBeLessThan(900);
    client.release();
    await rig().proxy.setMode('pass');
    const { rows } = await pool.query<{ pid: number }>('SELECT pg_backend_pid() AS pid');
    expect(rows[0].pid).not.toBe(pid);
  });

  it('max-lifetime rotation under load: backend pids rotate, zero errors', async () => {
    const { pool } = await rig().pool({ poolSize: 3, maxOverflow: 1, recycleSeconds: 1, recycleJitterPercent: 30 });
    await pool.warmUp();
    const pids = new Set<number>();
    let errors = 0;
    const end = Date.now() + 2_500;
    await Promise.all(
      Array.from({ length: 4 }, async () => {
        while (Date.now() < end) {
          try {
            pids.add((await pool.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0].pid);
          } catch {
            errors++;
          }
        }
      }),
    );
    expect(errors).toBe(0);
    expect(pids.size).toBeGreaterThanOrEqual(6);
  });

  it("server-side reaping (idle_session_timeout shorter than the pool's idle time): a start-up warning; queries recover transparently", async () => {
    const admin = await rig().admin();
    await admin.query("ALTER SYSTEM SET idle_session_timeout = '300ms'");
    await admin.query('SELECT pg_reload_conf()');
    try {
      const { pool, config } = await rig().pool({ poolSize: 2, maxOverflow: 0, headroomIntervalSeconds: 60 });
      await pool.warmUp();
      const { PoolMonitor } = await import('@db-pool/db-pool');
      const warnings: string[] = [];
      const monitor = new PoolMonitor(pool, config, { log() {}, warn: (m) => warnings.push(m) });
      await monitor.start();
      monitor.stop();
      expect(warnings.join('\n')).toMatch(/idle_session_timeout=300ms closes connections idle longer than that/);
      expect(await eventually(() => pool.counters.removed >= 2, 3_000)).toBe(true); // the server closed both idle connections
      const results = await Promise.allSettled(Array.from({ length: 10 }, () => pool.query('SELECT 1')));
      expect(results.filter((r) => r.status === 'rejected')).toEqual([]);
    } finally {
      await admin.query('ALTER SYSTEM RESET idle_session_timeout');
      await admin.query('SELECT pg_reload_conf()');
    }
  });

  it('a frozen server while the pool holds idle sockets: readiness fails within its timeout, not a stale success, and timed-out probes hold nothing', async () => {
    const { pool } = await rig().pool({ poolSize: 2, maxOverflow: 0, healthTimeoutMs: 300, connectTimeoutSeconds: 1 });
    await pool.warmUp();
    await rig().proxy.setMode('freeze');
    for (let i = 0; i < 20; i++) {
      const started = Date.now();
      const err = await pool.ping(300).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(Error);
      expect(Date.now() - started).toBeLessThan(700);
    }
    expect(pool.state().active).toBe(0);
    await rig().proxy.setMode('pass');
    // Connects begun while frozen end at DB_CONNECT_TIMEOUT; then the pool is back.
    await expect(pool.ping(3_000)).resolves.toBeUndefined();
    expect(pool.state().active).toBe(0);
  });

  it('shutdown with a checked-out connection to a server that stopped answering still finishes after the grace', async () => {
    const { pool } = await rig().pool({ poolSize: 2, maxOverflow: 0, shutdownGraceSeconds: 1 });
    await pool.warmUp();
    const stuck = await pool.connect();
    await rig().proxy.setMode('freeze');
    const started = Date.now();
    await pool.end();
    expect(Date.now() - started).toBeLessThan(2_500);
    expect(pool.totalCount).toBe(0);
    expect(await eventually(() => pool.counters.removed === 2, 2_000)).toBe(true); // the socket closes a moment later
    expect(() => stuck.release()).not.toThrow(); // a late release is harmless…
    expect(pool.counters.removed).toBe(2); // …and not counted twice (the release is synchronous)
  });

  it('exhaustion at 10x capacity: waiters get the typed timeout; metrics show pending and timeouts; full recovery after release', async () => {
    const { pool, config } = await rig().pool({ poolSize: 2, maxOverflow: 1, poolTimeoutSeconds: 1 });
    const registry = new DbPoolRegistry();
    registry.add(new PoolMonitor(pool, config, { log() {}, warn() {} }));
    const metrics = new DbPoolMetrics(registry);
    const held = await Promise.all([pool.connect(), pool.connect(), pool.connect()]);
    const pending = Array.from({ length: 30 }, () => pool.connect());
    expect(await eventually(() => pool.waitingCount === 30)).toBe(true);
    expect(await metrics.metrics()).toMatch(/^db_client_connection_pending_requests\{pool_name="fault-\d+"\} 30$/m);
    const waiters = await Promise.allSettled(pending);
    expect(waiters.every((w) => w.status === 'rejected' && w.reason instanceof PoolTimeoutError)).toBe(true);
    expect(pool.counters.timeouts).toBe(30);
    const scraped = await metrics.metrics();
    expect(scraped).toMatch(/^db_client_connection_timeouts_total\{pool_name="fault-\d+"\} 30$/m);
    expect(scraped).toMatch(/^db_client_connection_pending_requests\{pool_name="fault-\d+"\} 0$/m);
    expect(pool.waitingCount).toBe(0);
    held.forEach((c) => c.release());
    const after = await Promise.allSettled(Array.from({ length: 30 }, () => pool.query('SELECT 1')));
    expect(after.filter((r) => r.status === 'rejected')).toEqual([]);
  });
});
