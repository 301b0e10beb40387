// A statement whose outcome is unknown is never answered as if it had not happened: a COMMIT (or
// a write in a transaction of its own) whose answer never came is a PoolOutcomeUnknownError, and
// where the server says it committed locally the caller learns that. Against a real primary whose
// synchronous standby never confirms (tools/replica-set.mjs, the standby stopped), and the test
// server for what must stay as it was.
import { performance } from 'node:perf_hooks';
import pg from 'pg';
import { type DbPool, PoolDeadlineError, PoolOutcomeUnknownError, withDeadline } from '../src/index.js';
import { outcomeSensitive } from '../src/pool/outcome.js';
import { startReplicaSet, type ReplicaSet } from '../../../tools/replica-set.mjs';
import { eventually, poolFixture } from './support/db.js';

const { pool: testPool } = poolFixture();
let rs: ReplicaSet;
const pools: DbPool[] = [];

beforeAll(async () => {
  rs = await startReplicaSet({ synchronous: true });
  await rs.primary.query('CREATE TABLE outcome (id serial PRIMARY KEY, note text NOT NULL)');
  await rs.caughtUp();
  // From here on no commit on the primary is ever confirmed: each waits for a standby that is gone.
  await rs.standby.stop('fast');
});
afterAll(async () => {
  await rs?.stop();
});
afterEach(async () => {
  await Promise.all(pools.splice(0).map((p) => (p.ending ? undefined : p.end())));
});

async function primaryPool(): Promise<DbPool> {
  const p = await testPool({ url: rs.primary.url, poolSize: 1, maxOverflow: 3, validationTimeoutMs: 1_000 });
  pools.push(p);
  return p;
}

/** Rows with this note, read on the primary with synchronous_commit off (a read waits for nothing). */
async function rowsNoted(note: string): Promise<number> {
  const { rows } = await rs.primary.query<{ n: number }>('SELECT count(*)::int AS n FROM outcome WHERE note = $1', [note]);
  return rows[0].n;
}

/** Whether a backend of the primary is waiting for synchronous replication (its COMMIT is on the server). */
async function waitingForStandby(): Promise<boolean> {
  const { rows } = await rs.primary.query<{ n: number }>("SELECT count(*)::int AS n FROM pg_stat_activity WHERE wait_event = 'SyncRep'");
  return rows[0].n > 0;
}

describe('a transaction-ending statement whose answer never came', () => {
  it('COMMIT under a request deadline, its synchronous replication never confirmed: the caller learns it committed, never "cancelled"', async () => {
    const p = await primaryPool();
    let started = 0;
    // The request's deadline bounds every statement of the checkout taken inside it.
    const err = await withDeadline(300, async () => {
      started = performance.now();
      const client = await p.connect();
      try {
        await client.query('BEGIN');
        await client.query('INSERT INTO outcome (note) VALUES ($1)', ['commit under a deadline']);
        await client.query('COMMIT');
      } finally {
        client.release();
      }
    }).then(
      () => undefined,
      (e: unknown) => e,
    );
    const tookMs = performance.now() - started;
    expect(err).toBeInstanceOf(PoolOutcomeUnknownError);
    expect(err).toMatchObject({ command: 'COMMIT', reason: 'deadline', committed: true, code: 'DB_POOL_OUTCOME_UNKNOWN' });
    expect((err as Error).message).toMatch(/COMMIT committed on the server, but its synchronous replication was not confirmed/);
    // It answered once the server had answered the cancel: soon after the deadline.
    expect(tookMs).toBeGreaterThanOrEqual(295);
    expect(tookMs).toBeLessThan(300 + 1_000);
    expect(await rowsNoted('commit under a deadline')).toBe(1);
  });

  it('an INSERT in a transaction of its own (pool.query) under a deadline: the same', async () => {
    const p = await primaryPool();
    const err = await withDeadline(300, () => p.query('INSERT INTO outcome (note) VALUES ($1)', ['insert under a deadline'])).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(PoolOutcomeUnknownError);
    expect(err).toMatchObject({ command: 'INSERT', reason: 'deadline', committed: true });
    expect(await rowsNoted('insert under a deadline')).toBe(1);
  });

  it('COMMIT whose connection is lost before the answer: outcome unknown (connection_lost), not a connection error that invites a retry', async () => {
    const p = await primaryPool();
    const client = await p.connect();
    await client.query('BEGIN');
    await client.query('INSERT INTO outcome (note) VALUES ($1)', ['commit, connection lost']);
    const pending = client.query('COMMIT').then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(await eventually(waitingForStandby)).toBe(true);
    // The connection is cut while the COMMIT waits (a reset, a partition): no answer will come.
    (client as unknown as { connection: { stream: { destroy(): void } } }).connection.stream.destroy();
    const err = await pending;
    client.release();
    expect(err).toBeInstanceOf(PoolOutcomeUnknownError);
    expect(err).toMatchObject({ command: 'COMMIT', reason: 'connection_lost', committed: undefined });
    expect((err as Error).message).toMatch(/the outcome of COMMIT is unknown \(the connection was lost after it was sent\)/);
    expect(((err as Error).cause as Error).message).toMatch(/Connection terminated/);
  });

  it("COMMIT past pg's own query_timeout: outcome unknown (query_timeout)", async () => {
    const p = await primaryPool();
    const client = await p.connect();
    await client.query('BEGIN');
    await client.query('INSERT INTO outcome (note) VALUES ($1)', ['commit past query_timeout']);
    const err = await client.query({ text: 'COMMIT', query_timeout: 200 } as pg.QueryConfig).then(
      () => undefined,
      (e: unknown) => e,
    );
    client.release();
    expect(err).toBeInstanceOf(PoolOutcomeUnknownError);
    expect(err).toMatchObject({ command: 'COMMIT', reason: 'query_timeout', committed: undefined });
  });
});

describe('statements whose outcome is known stay as they were', () => {
  it('a write cancelled at its deadline was rolled back by the server: PoolDeadlineError (safe to retry), and nothing was written', async () => {
    const p = await testPool();
    const table = `outcome_${process.pid}`;
    await p.query(`CREATE TABLE IF NOT EXISTS ${table} (note text)`);
    try {
      const started = performance.now();
      const err = await withDeadline(300, () => p.query(`INSERT INTO ${table} (note) SELECT 'slow' FROM pg_sleep(3)`)).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(PoolDeadlineError);
      expect(err).toMatchObject({ sent: true });
      expect(((err as Error).cause as { code?: string }).code).toBe('57014');
      expect(performance.now() - started).toBeLessThan(300 + 1_000);
      expect((await p.query(`SELECT count(*)::int AS n FROM ${table}`)).rows[0].n).toBe(0);
    } finally {
      await p.query(`DROP TABLE ${table}`);
    }
  });

  it('a read past its deadline fails at the deadline, as before', async () => {
    const p = await testPool();
    const started = performance.now();
    await expect(withDeadline(200, () => p.query('SELECT pg_sleep(3)'))).rejects.toBeInstanceOf(PoolDeadlineError);
    expect(performance.now() - started).toBeLessThan(200 + 150);
  });
});

describe('which statements count', () => {
  const status = (s: string | null) => ({ getTransactionStatus: () => s });
  it.each([
    ['COMMIT', 'T', 'COMMIT'],
    ['commit', 'T', 'COMMIT'],
    ['  END', 'T', 'END'],
    ['COMMIT', 'E', undefined], // a failed transaction commits nothing
    ["PREPARE TRANSACTION 'tx1'", 'T', 'PREPARE TRANSACTION'],
    ["COMMIT PREPARED 'tx1'", 'I', 'COMMIT'],
    ['PREPARE get_item AS SELECT 1', 'I', undefined],
    ['INSERT INTO t VALUES (1)', 'I', 'INSERT'],
    ['INSERT INTO t VALUES (1)', 'T', undefined], // inside a transaction: rolled back if the connection ends
    ['/* sqlcommenter */ UPDATE t SET a = 1', 'I', 'UPDATE'],
    ['-- note\nDELETE FROM t', 'I', 'DELETE'],
    ['WITH moved AS (DELETE FROM a RETURNING *) INSERT INTO b SELECT * FROM moved', 'I', 'WITH'],
    ['WITH x AS (SELECT 1) SELECT * FROM x', 'I', undefined],
    ['SELECT 1', 'I', undefined],
    ['SELECT 1; COMMIT', 'T', 'COMMIT'],
    ['BEGIN; INSERT INTO t VALUES (1); COMMIT', 'I', 'COMMIT'],
    ['BEGIN', 'I', undefined],
    ['ROLLBACK', 'T', undefined],
    ['CREATE TABLE t (id int)', 'I', 'CREATE'],
    ['COPY t FROM STDIN', 'I', 'COPY'],
    ['SET search_path = app', 'I', undefined],
  ])('%j with transaction status %s → %s', (text, tx, expected) => {
    expect(outcomeSensitive(text, status(tx))).toBe(expected);
  });
});
