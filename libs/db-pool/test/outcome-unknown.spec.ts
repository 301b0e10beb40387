// A statement whose outcome is unknown is never answered as if it had not happened: a COMMIT (or
// a write in a transaction of its own) whose answer never came is a PoolOutcomeUnknownError, and
// where the server says it committed locally the caller learns that. Against a real primary whose
// synchronous standby never confirms (tools/replica-set.mjs, the standby stopped), and the test
// server for what must stay as it was.
import { once } from 'node:events';
import { performance } from 'node:perf_hooks';
import pg from 'pg';
import { QueryFailedError } from 'typeorm';
import { type DbPool, PoolDeadlineError, PoolOutcomeUnknownError, withDeadline } from '../src/index.js';
import { poolErrorResponse } from '../src/http/pool-error-response.js';
import { commitsBeforeLast, outcomeSensitive, sensitiveCommand } from '../src/pool/outcome.js';
import { startReplicaSet, type ReplicaSet } from '../../../tools/replica-set.mjs';
import { eventually, poolFixture, proxyFixture, endPools } from './support/db.js';

const { admin, pool: testPool } = poolFixture();
const { proxy, url: proxiedUrl } = proxyFixture();
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
  await endPools(pools);
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
    // Inside a transaction only C, E and P go on to be read: each of them either way.
    ['/* done */ end', 'T', 'END'],
    ["prepare transaction 'tx2'", 'T', 'PREPARE TRANSACTION'],
    ['PREPARE q AS SELECT 1', 'T', undefined],
    ['CREATE TABLE t2 (a int)', 'T', undefined],
    ['EXECUTE q', 'T', undefined],
    ['-- a note\nUPDATE t SET a = 1', 'T', undefined],
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
    // Comments as PostgreSQL's lexer reads them: block comments nest, a carriage return ends a -- comment.
    ['/* outer /* inner */ still a comment */ INSERT INTO t VALUES (1)', 'I', 'INSERT'],
    ['/*/ INSERT */ SELECT 1', 'I', undefined],
    ['-- audit: create item\rINSERT INTO t VALUES (1)', 'I', 'INSERT'],
    ['-- audit\r\nUPDATE t SET a = 1', 'I', 'UPDATE'],
    // EXPLAIN ANALYZE runs its statement; EXPLAIN alone does not.
    ['EXPLAIN ANALYZE INSERT INTO t VALUES (1)', 'I', 'EXPLAIN ANALYZE INSERT'],
    ['explain analyse verbose DELETE FROM t', 'I', 'EXPLAIN ANALYZE DELETE'],
    ['EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) UPDATE t SET a = 1', 'I', 'EXPLAIN ANALYZE UPDATE'],
    ['EXPLAIN (FORMAT JSON, ANALYZE true) WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d', 'I', 'EXPLAIN ANALYZE WITH'],
    ['EXPLAIN (ANALYZE false) DELETE FROM t', 'I', undefined],
    ['EXPLAIN DELETE FROM t', 'I', undefined],
    ['EXPLAIN ANALYZE SELECT 1', 'I', undefined],
    ['EXPLAIN ANALYZE INSERT INTO t VALUES (1)', 'T', undefined],
    // A ; in a string, a quoted identifier or a dollar-quoted body ends no statement.
    ["SELECT '; --'; INSERT INTO t VALUES (1)", 'I', 'INSERT'],
    ["SELECT 'x; COMMIT'", 'T', undefined],
    ["SELECT E'it\\'s; COMMIT'", 'T', undefined],
    ['SELECT "a;b" FROM t; COMMIT', 'T', 'COMMIT'],
    ['SELECT $$;$$; COMMIT', 'T', 'COMMIT'],
    ['SELECT $fn$ ; COMMIT $fn$', 'T', undefined],
    ['SELECT a$b FROM t WHERE c = $1; COMMIT', 'T', 'COMMIT'],
    // Several statements, followed as the server runs them.
    ['BEGIN; SELECT 1; ROLLBACK; INSERT INTO t VALUES (1)', 'I', 'INSERT'],
    ['BEGIN; SELECT 1; ROLLBACK TO SAVEPOINT s; INSERT INTO t VALUES (1)', 'I', undefined],
    ['ROLLBACK; INSERT INTO t VALUES (1)', 'E', 'INSERT'],
    ['SELECT 1; INSERT INTO t VALUES (1)', 'E', undefined], // refused, with the rest of the text
    ['INSERT INTO t VALUES (1); SELECT pg_sleep(2)', 'I', 'INSERT'],
  ])('%j with transaction status %s → %s', (text, tx, expected) => {
    expect(outcomeSensitive(text, status(tx))).toBe(expected);
  });

  it.each([
    [{ name: 'add_item', values: [1] }, 'I', 'EXECUTE add_item'],
    [{ name: 'add_item', values: [1] }, null, 'EXECUTE add_item'],
    [{ name: 'add_item', values: [1] }, 'T', undefined],
    [{ name: 'get_item', text: 'SELECT * FROM t WHERE id = $1', values: [1] }, 'I', undefined],
    [{ text: 'INSERT INTO t VALUES ($1)', values: [1] }, 'I', 'INSERT'],
  ])('a query config %j with transaction status %s → %s (run by its name only: taken as a write)', (config, tx, expected) => {
    expect(sensitiveCommand(config, status(tx))).toBe(expected);
  });

  it.each([
    ['BEGIN; INSERT INTO t VALUES (1); COMMIT; SELECT pg_sleep(2)', true],
    ['INSERT INTO t VALUES (1); COMMIT; SELECT pg_sleep(2)', true],
    ["BEGIN; PREPARE TRANSACTION 'x'; SELECT 1", true],
    ['BEGIN; INSERT INTO t VALUES (1); COMMIT', false],
    ['BEGIN; INSERT INTO t VALUES (1); COMMIT;', false],
    ['INSERT INTO t VALUES (1); SELECT pg_sleep(2)', false],
    ["SELECT 'COMMIT; x'", false],
    ['COMMIT', false],
  ])('%j: a cancel proves a rollback only without a commit before its last statement (%s)', (text, expected) => {
    expect(commitsBeforeLast(text)).toBe(expected);
  });
});

describe('a text of several statements that committed partway (#19 item 13)', () => {
  const table = `outcome_partway_${process.pid}`;
  beforeAll(async () => {
    await admin().query(`CREATE TABLE IF NOT EXISTS ${table} (note text)`);
  });
  afterAll(async () => {
    await admin().query(`DROP TABLE IF EXISTS ${table}`);
  });
  const rows = async (note: string) =>
    (await admin().query<{ n: number }>(`SELECT count(*)::int AS n FROM ${table} WHERE note = $1`, [note])).rows[0].n;

  it.each([
    [
      'BEGIN; INSERT …; COMMIT; SELECT pg_sleep(2)',
      'COMMIT',
      (note: string) => `BEGIN; INSERT INTO ${table} VALUES ('${note}'); COMMIT; SELECT pg_sleep(2)`,
    ],
    [
      'INSERT …; COMMIT; SELECT pg_sleep(2)',
      'INSERT',
      (note: string) => `INSERT INTO ${table} VALUES ('${note}'); COMMIT; SELECT pg_sleep(2)`,
    ],
  ])('%s cancelled at its deadline after the COMMIT: outcome unknown (504), never "rolled back, retry"', async (_, command, text) => {
    const p = await testPool();
    const note = `partway ${command}`;
    const err = await withDeadline(300, () => p.query(text(note))).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(await rows(note)).toBe(1);
    expect(err).toBeInstanceOf(PoolOutcomeUnknownError);
    expect(err).toMatchObject({ command, reason: 'deadline', committed: undefined });
    expect(((err as Error).cause as { code?: string }).code).toBe('57014');
    expect(poolErrorResponse(err)?.body).toMatchObject({ statusCode: 504, condition: 'outcome_unknown' });
  });

  it('INSERT …; SELECT pg_sleep(2), with no COMMIT between, cancelled at its deadline: rolled back with the text (PoolDeadlineError), nothing written', async () => {
    const p = await testPool();
    const err = await withDeadline(300, () => p.query(`INSERT INTO ${table} VALUES ('one implicit transaction'); SELECT pg_sleep(2)`)).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(PoolDeadlineError);
    expect(err).toMatchObject({ sent: true });
    expect(await rows('one implicit transaction')).toBe(0);
  });
});

describe('writes only a careful reading of the text shows, committed on the server and their connection lost before the answer (#19 item 13)', () => {
  const table = `outcome_lost_${process.pid}`;
  const SLOW_INSERT = `INSERT INTO ${table} (note) SELECT $1::text FROM pg_sleep(0.3)`;
  beforeAll(async () => {
    await admin().query(`CREATE TABLE IF NOT EXISTS ${table} (note text)`);
  });
  afterAll(async () => {
    await admin().query(`DROP TABLE IF EXISTS ${table}`);
  });

  const cases: [string, (c: pg.PoolClient, note: string) => Promise<unknown>][] = [
    ['a plain INSERT', (c, note) => c.query(SLOW_INSERT, [note])],
    ['a named prepared INSERT run by its name only', (c, note) => c.query({ name: 'add_note', values: [note] } as pg.QueryConfig)],
    ['an INSERT after a nested block comment', (c, note) => c.query(`/* outer /* inner */ still a comment */ ${SLOW_INSERT}`, [note])],
    ['EXPLAIN ANALYZE INSERT', (c, note) => c.query(`EXPLAIN ANALYZE ${SLOW_INSERT}`, [note])],
    ['an INSERT after a -- comment ended by \\r', (c, note) => c.query(`-- audit: create item\r${SLOW_INSERT}`, [note])],
    [
      'a pg.Query INSERT',
      (c, note) =>
        new Promise((resolve, reject) => {
          const query = c.query(new pg.Query(SLOW_INSERT, [note]) as never) as unknown as pg.Query;
          query.on('end', resolve);
          query.on('error', reject);
        }),
    ],
  ];

  it.each(cases)('%s: PoolOutcomeUnknownError (504), not connection_lost ("rolled back, retry")', async (name, run) => {
    const note = name.replace(/\W+/g, '-');
    const p = await testPool({ url: proxiedUrl(), poolSize: 1, maxOverflow: 0 });
    const client = await p.connect();
    if (name.includes('by its name')) await client.query({ name: 'add_note', text: SLOW_INSERT, values: ['prepared'] });
    const pending = run(client, note).then(
      () => undefined,
      (e: unknown) => e,
    );
    // The statement reaches the server; then nothing more passes either way; then the connection is reset.
    const active = async () =>
      (
        await admin().query(
          "SELECT 1 FROM pg_stat_activity WHERE application_name = $1 AND state = 'active' AND query LIKE '%pg_sleep(0.3)%'",
          [p.name],
        )
      ).rowCount === 1;
    expect(await eventually(active, 2_000, 5)).toBe(true);
    await proxy().setMode('freeze');
    const written = async () => (await admin().query(`SELECT 1 FROM ${table} WHERE note = $1`, [note])).rowCount === 1;
    expect(await eventually(written, 3_000)).toBe(true);
    await proxy().setMode('reset');
    const err = await pending;
    client.release();
    expect(err).toBeInstanceOf(PoolOutcomeUnknownError);
    expect(err).toMatchObject({ reason: 'connection_lost' });
    expect(poolErrorResponse(err)?.body).toMatchObject({ statusCode: 504, condition: 'outcome_unknown' });
  });
});

describe('a COMMIT on a connection already lost (#19 item 13)', () => {
  const table = `outcome_dead_${process.pid}`;
  beforeAll(async () => {
    await admin().query(`CREATE TABLE IF NOT EXISTS ${table} (x int)`);
  });
  afterAll(async () => {
    await admin().query(`DROP TABLE IF EXISTS ${table}`);
  });

  it.each(['terminated by the server', 'reset on the network'])(
    "its backend %s before the COMMIT: never sent, so pg's own error (the server rolled back with the connection), not outcome unknown",
    async (how) => {
      const p = await testPool({ url: proxiedUrl(), poolSize: 1, maxOverflow: 0 });
      const client = await p.connect();
      await client.query('BEGIN');
      await client.query(`INSERT INTO ${table} VALUES (1)`);
      const failed = once(client as unknown as NodeJS.EventEmitter, 'error');
      if (how === 'reset on the network') await proxy().setMode('reset');
      else await admin().query('SELECT pg_terminate_backend($1)', [(client as unknown as { processID: number }).processID]);
      await failed; // pg has seen the connection go
      const before = proxy().statements;
      const err = await client.query('COMMIT').then(
        () => undefined,
        (e: unknown) => e,
      );
      client.release();
      expect(proxy().statements - before).toBe(0);
      expect(err).not.toBeInstanceOf(PoolOutcomeUnknownError);
      expect((err as Error).message).toBe('Client has encountered a connection error and is not queryable');
      expect((await admin().query<{ n: number }>(`SELECT count(*)::int AS n FROM ${table}`)).rows[0].n).toBe(0);
      // Through TypeORM (which wraps it, naming the COMMIT) it is answered as not applied: 503, retry.
      expect(poolErrorResponse(new QueryFailedError('COMMIT', [], err as Error))).toMatchObject({
        status: 503,
        body: { condition: 'connection_lost' },
      });
    },
  );
});
