/**
 * Fault scenarios of use: leaks, transactions handed back, a failed BEGIN. (Double release and
 * role limits are proven once, in libs/db-pool/test: client-errors, lease and module.)
 */
import 'reflect-metadata';
import type pg from 'pg';
import { createDbPoolDataSource, poolOf } from '@db-pool/db-pool';
import { faultRig } from './support.js';
import { eventually } from '../../../../tools/wait.mjs';

type TxClient = pg.PoolClient & { getTransactionStatus(): string };

describe('fault scenarios: use and misuse', () => {
  const rig = faultRig();

  async function dataSource(options: Record<string, unknown>, logs: string[]) {
    const logger = { log: (m: string) => logs.push(`log ${m}`), warn: (m: string) => logs.push(`warn ${m}`) };
    return createDbPoolDataSource({ url: rig().url, poolSize: 2, maxOverflow: 0, env: {}, logger, ...options });
  }

  it('a query runner never released: a leak warning with the checkout stack at the threshold', async () => {
    const logs: string[] = [];
    const ds = await dataSource({ leakThresholdSeconds: 2 }, logs);
    try {
      const runner = ds.createQueryRunner();
      const checkedOutAt = Date.now();
      await runner.connect(); // never released in time
      const leakWarning = () => logs.find((l) => l.startsWith('warn') && l.includes('possible connection leak'));
      expect(await eventually(() => leakWarning() !== undefined, 6_000)).toBe(true);
      expect(Date.now() - checkedOutAt).toBeGreaterThanOrEqual(2_000); // at the threshold, not before
      const warning = leakWarning()!;
      expect(warning).toMatch(/checked out for [23]\.\d s \(DB_POOL_LEAK_THRESHOLD=2 s\); it was checked out at:/);
      expect(warning).toContain('pool.spec.ts');
      await runner.release();
      expect(logs.some((l) => l.includes('possibly leaked was returned after'))).toBe(true);
    } finally {
      await ds.destroy();
    }
  });

  it('released inside an open and inside an aborted transaction: the next borrower is idle; uncommitted work is not visible', async () => {
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

  it('BEGIN fails right after checkout: pool counts return to their baseline', async () => {
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
});
