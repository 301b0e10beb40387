import 'reflect-metadata';
import { execFileSync } from 'node:child_process';
import { Test } from '@nestjs/testing';
import { getDataSourceToken } from '@nestjs/typeorm';
import type { DataSource } from 'typeorm';
import { fileURLToPath } from 'node:url';
import type pg from 'pg';
import { createDbPoolDataSource, DbPoolModule, PoolClosedError, poolOf, type DbPool } from '../src/index.js';
import { eventually, poolFixture, proxyFixture, testOptions } from './support/db.js';

const root = fileURLToPath(new URL('../../../', import.meta.url));

/** Checks out a connection and freezes its backend (SIGSTOP: a hung server, a paused VM); returns how to thaw it. */
async function frozenCheckout(pool: DbPool): Promise<{ client: pg.PoolClient; thaw: () => void }> {
  const client = await pool.connect();
  const pid = (await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0].pid;
  process.kill(pid, 'SIGSTOP');
  let thawed = false;
  return {
    client,
    thaw: () => {
      if (!thawed) process.kill(pid, 'SIGCONT');
      thawed = true;
    },
  };
}

describe('shutdown never strands a caller', () => {
  const { proxy, url } = proxyFixture();
  const { pool } = poolFixture();

  it('a caller whose connection is still being opened when the grace ends is failed then, not at its own deadline', async () => {
    // Deadlines far beyond the grace: had the caller been left to them, the test would time out.
    const p = await pool({
      url: url(),
      poolSize: 1,
      maxOverflow: 1,
      poolTimeoutSeconds: 50,
      connectTimeoutSeconds: 50,
      shutdownGraceSeconds: 1,
    });
    await p.warmUp();
    const held = await p.connect();
    await proxy().setMode('blackhole'); // new connections are accepted and never answered
    const waiting = p.connect().catch((e: unknown) => e);
    expect(await eventually(() => p.totalCount === 2)).toBe(true); // the second is being opened
    const ending = p.end();
    const err = await waiting;
    expect(err).toBeInstanceOf(PoolClosedError);
    await ending;
    expect(p.counters.connectErrors).toBe(0);
    expect(() => held.release()).not.toThrow(); // released after the end: harmless
  }, 20_000);

  it('end() finishes after the grace even when a backend never answers the close of its connection', async () => {
    const p = await pool({ poolSize: 1, maxOverflow: 0, shutdownGraceSeconds: 1, validationTimeoutMs: 500 });
    const { client, thaw } = await frozenCheckout(p);
    try {
      const ending = p.end();
      client.release(); // back within the grace; pg's polite close would wait for the server forever
      await ending;
      expect(p.ended).toBe(true);
    } finally {
      thaw();
    }
  });

  it('a waiter behind a discarded connection whose server does not answer the close is served, not timed out', async () => {
    const p = await pool({ poolSize: 1, maxOverflow: 0, poolTimeoutSeconds: 5, validationTimeoutMs: 30_000 });
    const { client, thaw } = await frozenCheckout(p);
    try {
      const waiter = p.connect();
      client.release(new Error('discard it')); // the only slot is free now
      const served = await waiter;
      expect((await served.query<{ n: number }>('SELECT 1 AS n')).rows[0].n).toBe(1);
      served.release();
    } finally {
      thaw();
    }
  });

  it('a queued callback that throws stops neither the shutdown nor the other waiters', () => {
    // In a process of its own: the throw is an uncaught exception there, as any callback's throw
    // is, and the script records it instead of dying, then reports what happened.
    execFileSync(process.execPath, [`${root}node_modules/typescript/bin/tsc`, '-b', `${root}libs/db-pool/tsconfig.lib.json`]);
    const script = `
      import { createDbPool } from '${root}libs/db-pool/dist/index.js';
      const thrown = [];
      process.on('uncaughtException', (err) => thrown.push(err.name));
      // Queued before end(), they wait for a connection until the grace ends, then fail.
      const pool = await createDbPool({ url: process.env.DATABASE_URL, poolSize: 1, maxOverflow: 0, shutdownGraceSeconds: 1, env: {} });
      const held = await pool.connect();
      const heard = [];
      pool.connect((err) => { heard.push('first: ' + err?.name); if (err) throw err; });
      const second = new Promise((resolve) => pool.connect((err) => { heard.push('second: ' + err?.name); resolve(); }));
      const ending = pool.end();
      const endingAtOnce = pool.ending;
      await second;
      held.release();
      await ending;
      console.log(JSON.stringify({ heard, thrown, endingAtOnce, ended: pool.ended }));
    `;
    const out = execFileSync(process.execPath, ['--input-type=module', '-e', script], {
      cwd: root,
      env: { ...process.env },
      encoding: 'utf8',
    });
    expect(JSON.parse(out.trim().split('\n').pop()!)).toEqual({
      heard: ['first: PoolClosedError', 'second: PoolClosedError'],
      thrown: ['PoolClosedError'],
      endingAtOnce: true,
      ended: true,
    });
  }, 60_000);
});

describe("TypeORM's destroy() lets statements in flight finish within DB_POOL_SHUTDOWN_GRACE", () => {
  const fixture = poolFixture();

  /** A statement that has reached the server: active in pg_stat_activity under the pool's name. */
  const runningOn = (name: string) => async () =>
    (
      await fixture
        .admin()
        .query<{ n: number }>("SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = $1 AND state = 'active'", [name])
    ).rows[0].n > 0;

  it('a query running when destroy() is called completes, and destroy() resolves after it', async () => {
    const ds = await createDbPoolDataSource(testOptions({ poolSize: 1, maxOverflow: 0, shutdownGraceSeconds: 10 }));
    const pool = poolOf(ds);
    const query = ds.query('SELECT pg_sleep(0.8) AS slept').then(
      () => 'done',
      (e: Error) => e.message,
    );
    expect(await eventually(runningOn(pool.name))).toBe(true);
    await ds.destroy();
    expect(await query).toBe('done');
    expect(pool.counters.cancels).toBe(0);
    expect(pool.ended).toBe(true);
  });

  it("through DbPoolModule: a query running when the application closes completes before TypeORM's destroy releases it", async () => {
    const options = testOptions({ poolSize: 1, maxOverflow: 0, shutdownGraceSeconds: 10, headroomIntervalSeconds: 0 });
    const app = await Test.createTestingModule({ imports: [DbPoolModule.forRoot(options)] })
      .setLogger({ log: () => {}, error: () => {}, warn: () => {}, debug: () => {}, verbose: () => {} })
      .compile();
    await app.init();
    let closed = false;
    try {
      const ds = app.get<DataSource>(getDataSourceToken(options.name));
      const pool = poolOf(ds);
      const query = ds.query('SELECT pg_sleep(0.8) AS slept').then(
        () => 'done',
        (e: Error) => e.message,
      );
      expect(await eventually(runningOn(pool.name))).toBe(true);
      await app.close();
      closed = true;
      expect(await query).toBe('done');
      expect(pool.counters.cancels).toBe(0);
    } finally {
      if (!closed) await app.close();
    }
  });

  it('one still running when the grace ends is cancelled on the server then, not left running', async () => {
    const ds = await createDbPoolDataSource(testOptions({ poolSize: 1, maxOverflow: 0, shutdownGraceSeconds: 1 }));
    const pool = poolOf(ds);
    const query = ds.query('SELECT pg_sleep(10) AS slept').then(
      () => 'done',
      (e: Error) => e.message,
    );
    expect(await eventually(runningOn(pool.name))).toBe(true);
    const started = Date.now();
    await ds.destroy();
    expect(Date.now() - started).toBeGreaterThanOrEqual(900);
    expect(Date.now() - started).toBeLessThan(3_000);
    expect(await query).toMatch(/cancel/);
    expect(await eventually(async () => !(await runningOn(pool.name)()))).toBe(true);
  });
});
