/** Fault scenarios of use and misuse: leaks, transactions handed back, failed BEGIN, double release, role limits. */
import 'reflect-metadata';
import { Test } from '@nestjs/testing';
import type pg from 'pg';
import {
  createDbPoolDataSource,
  type DbPool,
  DbPoolModule,
  PoolConnectError,
  PoolReleaseError,
  getDbPoolToken,
  poolOf,
} from '@db-pool/db-pool';
import { eventually, faultRig, sleep } from './support.js';

type TxClient = pg.PoolClient & { getTransactionStatus(): string };

describe('fault scenarios: use and misuse', () => {
  const rig = faultRig();

  async function dataSource(options: Record<string, unknown>, logs: string[]) {
    const logger = { log: (m: string) => logs.push(`log ${m}`), warn: (m: string) => logs.push(`warn ${m}`) };
    return createDbPoolDataSource({ url: rig().url, poolSize: 2, maxOverflow: 0, env: {}, logger, ...options });
  }

  it('8. a query runner never released: a leak warning with the checkout stack at the threshold', async () => {
    const logs: string[] = [];
    const ds = await dataSource({ leakThreshold: 2 }, logs);
    try {
      const runner = ds.createQueryRunner();
      await runner.connect(); // never released in time
      await sleep(1_500);
      expect(logs.some((l) => l.includes('possible connection leak'))).toBe(false);
      await sleep(1_500);
      const warning = logs.find((l) => l.startsWith('warn') && l.includes('possible connection leak'))!;
      expect(warning).toMatch(/checked out for [23]\.\d s \(DB_POOL_LEAK_THRESHOLD=2 s\); it was checked out at:/);
      expect(warning).toContain('pool.spec.ts');
      await runner.release();
      expect(logs.some((l) => l.includes('possibly leaked was returned after'))).toBe(true);
    } finally {
      await ds.destroy();
    }
  });

  it('9. released inside an open and inside an aborted transaction: the next borrower is idle; uncommitted work is not visible', async () => {
    const { pool } = await rig().pool({ poolSize: 1, maxOverflow: 0 });
    await pool.query('CREATE TABLE IF NOT EXISTS fault_tx (v int)');
    await pool.query('TRUNCATE fault_tx');
    for (const abort of [false, true]) {
      const client = (await pool.connect()) as TxClient;
      await client.query('BEGIN');
      await client.query('INSERT INTO fault_tx VALUES (1)');
      if (abort) await client.query('SELECT no_such_column FROM fault_tx').catch(() => undefined);
      client.release();
      const next = (await pool.connect()) as TxClient;
      expect(next.getTransactionStatus()).toBe('I');
      expect((await next.query('SELECT * FROM fault_tx')).rowCount).toBe(0);
      next.release();
    }
    const admin = await rig().admin();
    expect((await admin.query('SELECT * FROM fault_tx')).rowCount).toBe(0);
  });

  it('10. BEGIN fails right after checkout: pool counts return to their baseline', async () => {
    const logs: string[] = [];
    const ds = await dataSource({ poolSize: 2 }, logs);
    try {
      const pool = poolOf(ds);
      expect(pool.state()).toEqual({ total: 2, active: 0, idle: 2, waiting: 0 });
      const runner = ds.createQueryRunner();
      await runner.connect();
      await rig().proxy.setMode('reset'); // every connection dies under the runner
      await expect(runner.startTransaction()).rejects.toThrow();
      await runner.release();
      expect(await eventually(() => pool.state().active === 0 && pool.state().idle === 2 && pool.state().total === 2, 5_000)).toBe(true);
      await expect(ds.query('SELECT 1')).resolves.toBeDefined();
    } finally {
      await ds.destroy();
    }
  });

  it('11. double release: a clear error; the counters stay consistent', async () => {
    const { pool } = await rig().pool({ poolSize: 2, maxOverflow: 0 });
    await pool.warmUp();
    const client = await pool.connect();
    client.release();
    expect(() => client.release()).toThrow(PoolReleaseError);
    expect(pool.state()).toEqual({ total: 2, active: 0, idle: 2, waiting: 0 });
    const [a, b] = [await pool.connect(), await pool.connect()];
    expect(pool.state()).toEqual({ total: 2, active: 2, idle: 0, waiting: 0 });
    a.release();
    b.release();
    expect(pool.counters.acquired).toBe(3);
  });

  it("14. too many clients (a role's CONNECTION LIMIT below the pool size): a clear acquire error, the pool not wedged, a start-up warning", async () => {
    const admin = await rig().admin();
    await admin.query('DROP ROLE IF EXISTS capped');
    await admin.query("CREATE ROLE capped LOGIN PASSWORD 'capped-pw' CONNECTION LIMIT 2");
    const url = new URL(rig().url);
    url.username = 'capped';
    url.password = 'capped-pw';
    const warnings: string[] = [];
    const app = await Test.createTestingModule({
      imports: [DbPoolModule.forRoot({ url: url.toString(), poolSize: 5, maxOverflow: 0, poolTimeout: 2, env: {} })],
    })
      .setLogger({ log() {}, error() {}, warn: (m: unknown) => warnings.push(String(m)), debug() {}, verbose() {} })
      .compile();
    await app.init();
    try {
      const pool = app.get<DbPool>(getDbPoolToken());
      // 2, or 1 while the server still counts a connection that is on its way out
      expect(warnings.join('\n')).toMatch(new RegExp(`warmed ${pool.totalCount} of 5 connections: too many connections for role "capped"`));
      expect([1, 2]).toContain(pool.totalCount);
      const held: pg.PoolClient[] = [];
      let err: unknown;
      while (!err && held.length <= 2) {
        await pool.connect().then(
          (c) => held.push(c),
          (e: unknown) => (err = e),
        );
      }
      expect(held.length).toBeLessThanOrEqual(2);
      expect(err).toBeInstanceOf(PoolConnectError);
      expect((err as Error).message).toContain('too many connections for role "capped"');
      expect(pool.waitingCount).toBe(0);
      held.forEach((c) => c.release());
      await expect(pool.query('SELECT 1')).resolves.toBeDefined();
      expect(warnings.join('\n')).not.toContain('capped-pw');
    } finally {
      await app.close();
      await admin.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'capped'");
    }
  });
});
