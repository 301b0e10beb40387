// Cursors and streams (pg-cursor, pg-query-stream, pg-copy-streams) follow the lease: one still open at release is
// refused and its connection closed, never read by the next borrower; a request deadline stops
// one and cancels its statement on the server.
import { getEventListeners } from 'node:events';
import { performance } from 'node:perf_hooks';
import pg from 'pg';
import { from as copyFrom, to as copyTo } from 'pg-copy-streams';
import Cursor from 'pg-cursor';
import QueryStream from 'pg-query-stream';
import { PoolAbortedError, PoolDeadlineError, PoolLeaseError, withDeadline, withSignal } from '../src/index.js';
import { backendPids, eventually, poolFixture } from './support/db.js';

const { admin, pool } = poolFixture();

type Row = { n: number };
const pidOf = async (client: { query<R>(text: string): Promise<{ rows: R[] }> }) =>
  (await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0].pid;

/** Statements of this pool's backends still running on the server. */
async function running(applicationName: string): Promise<number> {
  const { rows } = await admin().query<{ n: number }>(
    "SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = $1 AND state = 'active'",
    [applicationName],
  );
  return rows[0].n;
}

/** Reads an iterator to its end: what it failed with, if it did. */
async function readToEnd(items: AsyncIterator<unknown>): Promise<unknown> {
  try {
    for (;;) if ((await items.next()).done) return undefined;
  } catch (err) {
    return err;
  }
}

/** Reads what `open` streams on a checkout taken under a 300 ms deadline, to its end; what it failed with, or how many chunks. */
async function streamUnderDeadline(p: Awaited<ReturnType<typeof pool>>, open: (client: pg.PoolClient) => AsyncIterable<unknown>) {
  return withDeadline(300, async () => {
    const client = await p.connect();
    try {
      let seen = 0;
      for await (const _chunk of open(client)) seen++;
      return seen;
    } finally {
      client.release();
    }
  }).then(
    (seen) => seen,
    (e: unknown) => e,
  );
}

describe('a cursor or stream still open at release', () => {
  it('a pg-cursor is refused after release, and its connection is closed: the next borrower gets another backend, undisturbed', async () => {
    const p = await pool({ poolSize: 1, maxOverflow: 0 });
    const first = await p.connect();
    const firstPid = await pidOf(first);
    const cursor = first.query(new Cursor<Row>('SELECT n FROM generate_series(1, 1000) AS n'));
    expect((await cursor.read(10)).map((r) => r.n)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    first.release();
    // The cursor reads no more: not the old connection, not whoever's it is now.
    await expect(cursor.read(10)).rejects.toBeInstanceOf(PoolLeaseError);
    const next = await p.connect();
    try {
      expect(await pidOf(next)).not.toBe(firstPid);
      await cursor.close().catch(() => undefined);
      expect((await next.query<{ v: number }>('SELECT 42 AS v')).rows).toEqual([{ v: 42 }]);
    } finally {
      next.release();
    }
    // The server ends the session when it next reads or writes the closed socket: soon, not at once.
    expect(await eventually(async () => !(await backendPids(admin(), p.name)).includes(firstPid))).toBe(true);
  });

  it('a QueryStream released mid-stream fails with PoolLeaseError and is destroyed with its connection', async () => {
    const p = await pool({ poolSize: 1, maxOverflow: 0 });
    const client = await p.connect();
    const stream = client.query(new QueryStream('SELECT n FROM generate_series(1, 100000) AS n', [], { batchSize: 100 }));
    const rows = stream[Symbol.asyncIterator]();
    expect(((await rows.next()).value as Row).n).toBe(1);
    client.release();
    expect(await readToEnd(rows)).toBeInstanceOf(PoolLeaseError);
    expect(stream.destroyed).toBe(true);
    expect((await p.query<{ v: number }>('SELECT 7 AS v')).rows).toEqual([{ v: 7 }]);
  });

  it('a cursor read to its end and closed before release keeps its connection', async () => {
    const p = await pool({ poolSize: 1, maxOverflow: 0 });
    const client = await p.connect();
    const pid = await pidOf(client);
    const cursor = client.query(new Cursor<Row>('SELECT n FROM generate_series(1, 5) AS n'));
    expect(await cursor.read(10)).toHaveLength(5);
    await cursor.close();
    client.release();
    const again = await p.connect();
    try {
      expect(await pidOf(again)).toBe(pid);
    } finally {
      again.release();
    }
  });
});

describe('a COPY stream still open at release', () => {
  it('a COPY TO STDOUT released mid-copy fails with PoolLeaseError, and its connection is closed, not handed on', async () => {
    const p = await pool({ poolSize: 1, maxOverflow: 0 });
    const client = await p.connect();
    const firstPid = await pidOf(client);
    const stream = client.query(copyTo('COPY (SELECT n FROM generate_series(1, 2000000) AS n) TO STDOUT'));
    const chunks = stream[Symbol.asyncIterator]();
    expect((await chunks.next()).done).toBe(false);
    client.release();
    expect(await readToEnd(chunks)).toBeInstanceOf(PoolLeaseError);
    expect((await p.query<{ v: number }>('SELECT 7 AS v')).rows).toEqual([{ v: 7 }]);
    // The server ends the session when it next reads or writes the closed socket: soon, not at once.
    expect(await eventually(async () => !(await backendPids(admin(), p.name)).includes(firstPid))).toBe(true);
  });

  it('a COPY FROM STDIN released before its end writes nothing, and its stream fails with PoolLeaseError', async () => {
    const table = `copy_released_${process.pid}`;
    await admin().query(`CREATE TABLE IF NOT EXISTS ${table} (n int)`);
    try {
      const p = await pool({ poolSize: 1, maxOverflow: 0 });
      const client = await p.connect();
      const stream = client.query(copyFrom(`COPY ${table} (n) FROM STDIN`));
      const failed = new Promise<unknown>((resolve) => stream.on('error', resolve));
      await new Promise<void>((resolve, reject) => stream.write('1\n2\n3\n', (err) => (err ? reject(err) : resolve())));
      client.release();
      expect(await failed).toBeInstanceOf(PoolLeaseError);
      // The server saw the COPY's connection end before its end: nothing of it is in the table.
      expect((await p.query<{ n: number }>('SELECT 1 AS n')).rows).toEqual([{ n: 1 }]);
      expect((await admin().query<{ n: number }>(`SELECT count(*)::int AS n FROM ${table}`)).rows[0].n).toBe(0);
    } finally {
      await admin().query(`DROP TABLE IF EXISTS ${table}`);
    }
  });

  it('a COPY FROM STDIN released at once, before the server answered it, writes nothing and its connection is gone within DB_VALIDATION_TIMEOUT_MS', async () => {
    const table = `copy_at_once_${process.pid}`;
    await admin().query(`CREATE TABLE IF NOT EXISTS ${table} (n int)`);
    try {
      const p = await pool({ poolSize: 1, maxOverflow: 0, validationTimeoutMs: 1_000 });
      const client = await p.connect();
      const stream = client.query(copyFrom(`COPY ${table} (n) FROM STDIN`));
      const failed = new Promise<unknown>((resolve) => stream.on('error', resolve));
      client.release();
      expect(await failed).toBeInstanceOf(PoolLeaseError);
      const started = performance.now();
      expect((await p.query<{ n: number }>('SELECT 1 AS n')).rows).toEqual([{ n: 1 }]);
      expect(performance.now() - started).toBeLessThan(1_000 + 1_000);
      expect((await admin().query<{ n: number }>(`SELECT count(*)::int AS n FROM ${table}`)).rows[0].n).toBe(0);
    } finally {
      await admin().query(`DROP TABLE IF EXISTS ${table}`);
    }
  });

  it('a COPY TO STDOUT still running at a request deadline fails with PoolDeadlineError, cancelled on the server', async () => {
    const p = await pool({ poolSize: 1, maxOverflow: 0 });
    const err = await streamUnderDeadline(p, (client) =>
      client.query(copyTo('COPY (SELECT pg_sleep(0.05), n FROM generate_series(1, 200) AS n) TO STDOUT')),
    );
    expect(err).toBeInstanceOf(PoolDeadlineError);
    expect(await eventually(async () => (await running(p.name)) === 0, 2_000)).toBe(true);
  });
});

describe("a cursor or stream under a caller's signal (withSignal)", () => {
  it('a cursor whose read runs at the abort fails with PoolAbortedError (sent), its statement cancelled on the server', async () => {
    const p = await pool({ poolSize: 1, maxOverflow: 0 });
    const controller = new AbortController();
    const result = withSignal(controller.signal, async () => {
      const client = await p.connect();
      try {
        return await client.query(new Cursor('SELECT pg_sleep(5) FROM generate_series(1, 2)')).read(1);
      } finally {
        client.release();
      }
    }).catch((e: unknown) => e);
    expect(await eventually(async () => (await running(p.name)) === 1)).toBe(true);
    controller.abort(new Error('job cancelled'));
    const err = await result;
    expect(err).toBeInstanceOf(PoolAbortedError);
    expect(err).toMatchObject({ sent: true, reason: new Error('job cancelled') });
    expect(await eventually(async () => (await running(p.name)) === 0, 2_000)).toBe(true);
    expect((await p.query<{ v: number }>('SELECT 1 AS v')).rows).toEqual([{ v: 1 }]);
  });

  it('a long-lived signal keeps no listener for the cursors and streams that are over, and still stops the next one', async () => {
    const p = await pool({ poolSize: 1, maxOverflow: 0 });
    const controller = new AbortController();
    const signal = controller.signal;
    const result = withSignal(signal, async () => {
      const client = await p.connect();
      const before = getEventListeners(signal, 'abort').length;
      try {
        for (let i = 0; i < 20; i++) {
          const cursor = client.query(new Cursor<Row>('SELECT n FROM generate_series(1, 3) AS n'));
          expect(await cursor.read(10)).toHaveLength(3);
          await cursor.close();
          const stream = client.query(new QueryStream('SELECT n FROM generate_series(1, 3) AS n'));
          let rows = 0;
          for await (const _row of stream) rows++;
          expect(rows).toBe(3);
          const copy = client.query(copyTo('COPY (SELECT n FROM generate_series(1, 3) AS n) TO STDOUT'));
          for await (const _chunk of copy);
          // One that fails on the server, and a stream its reader leaves early.
          const failing = client.query(new Cursor('SELECT 1 / (n - n) FROM generate_series(1, 2) AS n'));
          await expect(failing.read(1)).rejects.toMatchObject({ code: '22012' });
          await failing.close().catch(() => undefined);
          const left = client.query(new QueryStream('SELECT n FROM generate_series(1, 100000) AS n', [], { batchSize: 10 }));
          for await (const _row of left) break;
          expect(await eventually(() => left.destroyed)).toBe(true);
          expect((await client.query<{ v: number }>('SELECT 1 AS v')).rows).toEqual([{ v: 1 }]);
        }
        // 100 submittables over: none of them still listens to the signal.
        const after = getEventListeners(signal, 'abort').length;
        // The signal still stops the one running now.
        const last = client.query(new Cursor('SELECT pg_sleep(5) FROM generate_series(1, 2)'));
        const read = last.read(1).catch((e: unknown) => e);
        expect(await eventually(async () => (await running(p.name)) === 1)).toBe(true);
        controller.abort(new Error('worker stopping'));
        return { before, after, err: await read };
      } finally {
        client.release();
      }
    });
    const { before, after, err } = await result;
    expect(after).toBe(before);
    expect(err).toBeInstanceOf(PoolAbortedError);
    expect(await eventually(async () => (await running(p.name)) === 0, 2_000)).toBe(true);
  });
});

describe('a cursor or stream under a request deadline', () => {
  it('a cursor whose read runs at the deadline fails with PoolDeadlineError, its statement cancelled on the server', async () => {
    const p = await pool({ poolSize: 1, maxOverflow: 0 });
    const started = Date.now();
    const err = await withDeadline(300, async () => {
      const client = await p.connect();
      try {
        const cursor = client.query(new Cursor('SELECT pg_sleep(5) FROM generate_series(1, 2)'));
        return await cursor.read(1);
      } finally {
        client.release();
      }
    }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(PoolDeadlineError);
    expect(err).toMatchObject({ sent: true });
    expect(Date.now() - started).toBeLessThan(300 + 500);
    // Cancelled on the server, not left to sleep out its 5 s.
    expect(await eventually(async () => (await running(p.name)) === 0, 2_000)).toBe(true);
    expect((await p.query<{ v: number }>('SELECT 1 AS v')).rows).toEqual([{ v: 1 }]);
  });

  it('a QueryStream still streaming at the deadline fails with PoolDeadlineError', async () => {
    const p = await pool({ poolSize: 1, maxOverflow: 0 });
    const err = await streamUnderDeadline(p, (client) =>
      client.query(new QueryStream('SELECT pg_sleep(0.05), n FROM generate_series(1, 200) AS n', [], { batchSize: 5 })),
    );
    expect(err).toBeInstanceOf(PoolDeadlineError);
    expect(await eventually(async () => (await running(p.name)) === 0, 2_000)).toBe(true);
  });
});

describe("pg's own Query object under a request deadline (#19 item 13)", () => {
  /** Runs a pg.Query on a checkout taken under a 300 ms deadline; its answer, how long it took, and the connection's pid. */
  async function underDeadline(p: Awaited<ReturnType<typeof pool>>, text: string, withCallback: boolean) {
    const started = performance.now();
    const answer = await withDeadline(300, async () => {
      const client = await p.connect();
      try {
        return await new Promise<unknown>((resolve) => {
          if (withCallback) client.query(new pg.Query(text, [], (err: Error | undefined) => resolve(err ?? 'done')) as never);
          else {
            const query = client.query(new pg.Query(text) as never) as unknown as pg.Query;
            query.on('end', () => resolve('done'));
            query.on('error', resolve);
          }
        });
      } finally {
        client.release();
      }
    });
    return { answer, tookMs: performance.now() - started };
  }

  it.each([
    ['with events', false],
    ['with a callback', true],
  ])(
    'a pg.Query (%s) still running at the deadline fails with PoolDeadlineError then, its statement cancelled on the server',
    async (_, withCallback) => {
      const p = await pool({ poolSize: 1, maxOverflow: 0 });
      const { answer, tookMs } = await underDeadline(p, 'SELECT pg_sleep(5)', withCallback);
      expect(answer).toBeInstanceOf(PoolDeadlineError);
      expect(answer).toMatchObject({ sent: true });
      expect(tookMs).toBeLessThan(300 + 500);
      expect(await eventually(async () => (await running(p.name)) === 0, 2_000)).toBe(true);
      // The connection was cleaned up, not lost: the next checkout gets it and it answers.
      expect((await p.query<{ v: number }>('SELECT 1 AS v')).rows).toEqual([{ v: 1 }]);
    },
  );

  it('a pg.Query that ends before the deadline answers as usual, once', async () => {
    const p = await pool({ poolSize: 1, maxOverflow: 0 });
    const seen: string[] = [];
    await withDeadline(2_000, async () => {
      const client = await p.connect();
      try {
        const query = client.query(new pg.Query('SELECT n FROM generate_series(1, 3) AS n') as never) as unknown as pg.Query;
        await new Promise<void>((resolve, reject) => {
          query.on('row', (row: Row) => seen.push(`row ${row.n}`));
          query.on('end', () => resolve());
          query.on('error', reject);
        });
      } finally {
        client.release();
      }
    });
    expect(seen).toEqual(['row 1', 'row 2', 'row 3']);
  });

  it('a pg.Query queued behind a statement that outlives the deadline is never sent', async () => {
    const p = await pool({ poolSize: 1, maxOverflow: 0 });
    const table = `never_sent_${process.pid}`;
    await p.query(`CREATE TABLE IF NOT EXISTS ${table} (x int)`);
    try {
      const answers = await withDeadline(300, async () => {
        const client = await p.connect();
        try {
          const slow = client.query('SELECT pg_sleep(5)').catch((e: unknown) => e);
          const queued = new Promise<unknown>((resolve) => {
            const query = client.query(new pg.Query(`INSERT INTO ${table} VALUES (1)`) as never) as unknown as pg.Query;
            query.on('end', () => resolve('done'));
            query.on('error', resolve);
          });
          return await Promise.all([slow, queued]);
        } finally {
          client.release();
        }
      });
      expect(answers[0]).toBeInstanceOf(PoolDeadlineError);
      expect(answers[1]).toBeInstanceOf(PoolDeadlineError);
      expect(answers[1]).toMatchObject({ sent: false });
      expect(await eventually(async () => (await running(p.name)) === 0, 2_000)).toBe(true);
      expect((await p.query<{ n: number }>(`SELECT count(*)::int AS n FROM ${table}`)).rows[0].n).toBe(0);
    } finally {
      await p.query(`DROP TABLE ${table}`);
    }
  });
});
