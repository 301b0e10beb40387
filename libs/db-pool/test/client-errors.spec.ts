import { rmSync, writeFileSync } from 'node:fs';
import { PoolConnectError, PoolReleaseError, type DbPool } from '../src/index.js';
import { backendPids, databaseUrl, eventually, poolFixture } from './support/db.js';

describe('connection errors and misuse never crash the process', () => {
  const fixture = poolFixture();
  const admin = () => fixture.admin();
  let pool: DbPool;

  it('absorbs the error of a checked-out connection whose backend is killed; the query rejects and the client is dropped on release', async () => {
    pool = await fixture.pool({ poolSize: 1, maxOverflow: 0 });
    const client = await pool.connect();
    const pid = (await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0].pid;
    const running = client.query('SELECT pg_sleep(5)');
    await admin().query('SELECT pg_terminate_backend($1)', [pid]);
    await expect(running).rejects.toThrow(/terminat/);
    client.release();
    const p = pool;
    expect(await eventually(() => p.counters.removed >= 1)).toBe(true);
    const { rows } = await pool.query<{ pid: number }>('SELECT pg_backend_pid() AS pid');
    expect(rows[0].pid).not.toBe(pid);
  });

  it('absorbs the error of an idle connection whose backend is killed', async () => {
    pool = await fixture.pool({ poolSize: 2, maxOverflow: 0 });
    await pool.warmUp();
    await admin().query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1', [pool.settings.name]);
    const p = pool;
    // Both idle connections are dropped: each on its own error, or the second already with the
    // first, whose 57P01 closes the host's other idle connections (a query sent before the news
    // arrives would fail: that race is what pre-ping outside the bypass window is for).
    expect(await eventually(() => p.counters.clientErrors >= 1 && p.counters.removed >= 2)).toBe(true);
    expect(p.counters.clientErrors).toBeLessThanOrEqual(2);
    await expect(pool.query('SELECT 1')).resolves.toBeDefined();
  });

  it('refuses a double release with a clear error and keeps its counts consistent', async () => {
    pool = await fixture.pool({ poolSize: 1, maxOverflow: 0 });
    const client = await pool.connect();
    client.release();
    expect(() => client.release()).toThrow(PoolReleaseError);
    expect(() => client.release()).toThrow(/release called on a client that was already released/);
    expect(pool.state()).toEqual({ total: 1, active: 0, idle: 1, waiting: 0 });
    const again = await pool.connect();
    expect(pool.state()).toEqual({ total: 1, active: 1, idle: 0, waiting: 0 });
    again.release();
  });
});

describe('shutdown with connections still checked out', () => {
  const fixture = poolFixture();

  it('closes them after the grace period, so end() always finishes', async () => {
    const pool = await fixture.pool({ poolSize: 2, maxOverflow: 1, shutdownGraceSeconds: 1 });
    await pool.warmUp();
    const leaked = await pool.connect();
    const started = Date.now();
    await pool.end();
    const elapsed = Date.now() - started;
    expect(elapsed).toBeGreaterThanOrEqual(950);
    expect(elapsed).toBeLessThan(2_500);
    expect(pool.totalCount).toBe(0);
    expect(() => leaked.release()).not.toThrow(); // a late release is harmless
    expect(await eventually(async () => (await backendPids(fixture.admin(), pool.settings.name)).length === 0, 3_000)).toBe(true);
  });

  it('finishes at once when every connection is back', async () => {
    const pool = await fixture.pool({ poolSize: 2, maxOverflow: 1, shutdownGraceSeconds: 5 });
    const client = await pool.connect();
    setTimeout(() => client.release(), 100);
    const started = Date.now();
    await pool.end();
    expect(Date.now() - started).toBeLessThan(1_000);
  });
});

describe('shutdown with callers waiting', () => {
  const fixture = poolFixture();

  it('serves a caller queued behind a busy pool when end() comes, as pg.Pool does, then ends (counters.spec: those still queued when the grace ends fail)', async () => {
    const pool = await fixture.pool({ poolSize: 1, maxOverflow: 0, poolTimeoutSeconds: 30 });
    const held = await pool.connect();
    const waiting = pool.connect(); // queued: the only connection is out
    const ended = pool.end();
    expect(pool.waitingCount).toBe(1);
    held.release();
    const client = await waiting;
    expect((await client.query<{ n: number }>('SELECT 1 AS n')).rows[0].n).toBe(1);
    client.release();
    await ended;
    expect(pool.totalCount).toBe(0);
  });

  it('a caller that asked before end() while a connection was idle gets it, and its release closes it', async () => {
    const pool = await fixture.pool({ poolSize: 1, maxOverflow: 0, poolTimeoutSeconds: 30 });
    const asked = pool.connect();
    const ended = pool.end();
    const client = await asked;
    client.release();
    await ended;
    expect(pool.totalCount).toBe(0);
  });
});

describe('a connection attempt that throws', () => {
  const fixture = poolFixture();
  const admin = () => fixture.admin();
  let pool: DbPool;

  it('a connection attempt that throws while pg builds the client fails the acquire with PoolConnectError; counts stay right; the refill backs off', async () => {
    // pg reads sslrootcert in the Client constructor, for every new connection: a file that went
    // away (rotated, EACCES, EMFILE under load) makes opening a connection throw synchronously.
    const ca = `/tmp/db-pool-test-ca-${process.pid}-${Date.now()}.pem`;
    writeFileSync(ca, 'not used with sslmode=disable\n');
    const url = new URL(databaseUrl());
    url.searchParams.set('sslmode', 'disable');
    url.searchParams.set('sslrootcert', ca);
    pool = await fixture.pool({ url: url.toString(), poolSize: 2, maxOverflow: 1 });
    await pool.warmUp();
    rmSync(ca);
    const a = await pool.connect();
    const b = await pool.connect();
    const third = await pool.connect().catch((e: unknown) => e);
    expect(third).toBeInstanceOf(PoolConnectError);
    expect((third as Error).message).toContain('ENOENT');
    a.release();
    b.release();
    expect(pool.state()).toEqual({ total: 2, active: 0, idle: 2, waiting: 0 });
    expect(pool.counters).toMatchObject({ connectErrors: 1, connectFailures: 1 });
    // Losing a connection now sends the refill into the same error: it retries, it does not throw.
    await admin().query('SELECT pg_terminate_backend(pid) FROM (SELECT pid FROM pg_stat_activity WHERE application_name = $1 LIMIT 1) x', [
      pool.settings.name,
    ]);
    const p = pool;
    expect(await eventually(() => p.counters.connectFailures >= 2)).toBe(true);
    expect(p.state().active).toBe(0);
  });
});
