import { performance } from 'node:perf_hooks';
import { currentDeadline, type Deadline, DbPoolDeadline, PoolDeadlineError, PoolTimeoutError, withDeadline } from '../src/index.js';
import { backendPids, eventually, poolFixture, proxyFixture } from './support/db.js';

describe('a passed deadline is final', () => {
  const { proxy, url } = proxyFixture();
  const { admin, pool } = poolFixture();

  it('a readiness probe against a server answering in 1.2 s times out, and leaves every idle connection open', async () => {
    // Every checkout is pre-pinged (bypass 0), as after a quiet minute.
    const p = await pool({ url: url(), poolSize: 3, maxOverflow: 0, prePingBypassMs: 0, validationTimeoutMs: 5_000 });
    await p.warmUp();
    const name = p.settings.name;
    const before = await backendPids(admin(), name);
    expect(before).toHaveLength(3);

    await proxy().setMode('latency', { latencyMs: 600 }); // 600 ms each way: every answer 1.2 s after its question
    const err = await p.ping(1_000).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PoolTimeoutError);
    expect(p.counters).toMatchObject({ probeTimeouts: 1, timeouts: 0 });

    // The probe's pre-ping goes on within DB_VALIDATION_TIMEOUT_MS and puts the connection back.
    expect(await eventually(() => p.idleCount === 3, 10_000)).toBe(true);
    expect(p.counters).toMatchObject({ prePings: 1, prePingFailures: 0, removed: 0 });
    await proxy().setMode('pass');
    expect(await backendPids(admin(), name)).toEqual(before);
    await p.query('SELECT 1');
  });

  it('an acquire whose deadline passes during a slow pre-ping fails then, and takes no other idle connection', async () => {
    const p = await pool({ url: url(), poolSize: 2, maxOverflow: 0, prePingBypassMs: 0, validationTimeoutMs: 5_000 });
    await p.warmUp();
    await proxy().setMode('latency', { latencyMs: 600 });
    const err = await p.connectWithin(300).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PoolTimeoutError);
    // Failed at its deadline, while the pre-ping was still out (its connection not back yet),
    // and without taking the other idle connection.
    expect(p.idleCount).toBe(1);
    expect(p.counters.prePings).toBe(1);
    expect(await eventually(() => p.idleCount === 2, 10_000)).toBe(true);
    expect(p.counters).toMatchObject({ prePings: 1, prePingFailures: 0 });
  });
});

describe('a request deadline bounds every statement made under it (#19 item 13)', () => {
  const { admin, pool } = poolFixture();

  it('withDeadline and @DbPoolDeadline refuse a budget above 2147483647 ms (the longest Node timer), naming the limit', () => {
    const refusal = (fn: () => unknown) => {
      try {
        fn();
      } catch (err) {
        return err;
      }
      return undefined;
    };
    for (const budget of [2 ** 31, 3e9, Number.MAX_SAFE_INTEGER]) {
      for (const err of [refusal(() => withDeadline(budget, () => 1)), refusal(() => DbPoolDeadline(budget))]) {
        expect(err).toBeInstanceOf(RangeError);
        expect((err as Error).message).toMatch(new RegExp(`at most 2147483647 .*got ${budget}$`));
      }
    }
    expect(withDeadline(2 ** 31 - 1, () => 1)).toBe(1);
    expect(() => DbPoolDeadline(2 ** 31 - 1)).not.toThrow();
  });

  it('under the longest budget (2147483647 ms) a SELECT and an empty COMMIT succeed: no timer overflows', async () => {
    const p = await pool({ poolSize: 1, maxOverflow: 0 });
    await withDeadline(2 ** 31 - 1, async () => {
      expect((await p.query<{ v: number }>('SELECT 1 AS v FROM pg_sleep(0.05)')).rows).toEqual([{ v: 1 }]);
      const client = await p.connect();
      try {
        await client.query('BEGIN');
        await client.query('COMMIT');
      } finally {
        client.release();
      }
    });
  });

  /** A query object whose text is a getter of its class, as sql-template-strings and sql-template-tag build them. */
  class TemplateQuery {
    constructor(
      readonly strings: readonly string[],
      readonly values: unknown[],
    ) {}
    get text(): string {
      return this.strings.reduce((text, part, i) => `${text}$${i}${part}`);
    }
  }
  const sql = (strings: TemplateStringsArray, ...values: unknown[]) => new TemplateQuery([...strings], values);

  it('a query object whose text is a getter (sql-template-strings, sql-template-tag) runs under a deadline, with or without a callback of its own', async () => {
    const p = await pool({ poolSize: 1, maxOverflow: 0 });
    const id = 7;
    const viaPool = await withDeadline(5_000, () => p.query<{ id: number }>(sql`SELECT ${id}::int AS id` as never));
    expect(viaPool.rows).toEqual([{ id: 7 }]);
    const client = await p.connect();
    try {
      const ownCallback = await withDeadline(
        5_000,
        () =>
          new Promise((resolve, reject) => {
            const query = Object.assign(sql`SELECT ${id + 1}::int AS id`, {
              callback: (err: Error | null, result?: { rows: unknown[] }) => (err ? reject(err) : resolve(result!.rows)),
            });
            void client.query(query as never);
          }),
      );
      expect(ownCallback).toEqual([{ id: 8 }]);
      await client.query('BEGIN');
      // A COMMIT as a template: its outcome matters, so it takes the guarded path, deadline or not.
      await client.query(sql`COMMIT` as never);
      expect(client.getTransactionStatus?.()).toBe('I');
    } finally {
      client.release();
    }
  });

  /** Statements of this pool's backends still running on the server. */
  const running = async (applicationName: string) =>
    (
      await admin().query<{ n: number }>(
        "SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = $1 AND state = 'active'",
        [applicationName],
      )
    ).rows[0].n;

  it('a nested, shorter withDeadline bounds a statement on a connection acquired in the outer one, and cancels it on the server', async () => {
    const p = await pool({ poolSize: 1, maxOverflow: 0 });
    let tookMs = 0;
    const err = await withDeadline(10_000, async () => {
      const client = await p.connect();
      try {
        const started = performance.now();
        return await withDeadline(200, () => client.query('SELECT pg_sleep(3)')).finally(() => (tookMs = performance.now() - started));
      } finally {
        client.release();
      }
    }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(PoolDeadlineError);
    expect(err).toMatchObject({ budgetMs: 200, sent: true });
    expect(tookMs).toBeLessThan(200 + 150);
    expect(await eventually(async () => (await running(p.name)) === 0, 2_000)).toBe(true);
  });

  it('a withDeadline bounds a statement on a connection acquired before it', async () => {
    const p = await pool({ poolSize: 1, maxOverflow: 0 });
    const client = await p.connect();
    try {
      const started = performance.now();
      const err = await withDeadline(200, () => client.query('SELECT pg_sleep(3)')).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(PoolDeadlineError);
      expect(performance.now() - started).toBeLessThan(200 + 150);
      // Outside it, the same connection is bounded by nothing again.
      expect((await client.query<{ v: number }>('SELECT 1 AS v FROM pg_sleep(0.3)')).rows).toEqual([{ v: 1 }]);
    } finally {
      client.release();
    }
  });

  it("pool.query is bounded by its caller's deadline only, never by that of the request whose release served it", async () => {
    const p = await pool({ poolSize: 1, maxOverflow: 0 });
    // A request takes the only connection, and releases it in its own context once its deadline has passed.
    let scope: Deadline | undefined;
    let releaseNow: (() => void) | undefined;
    const request = withDeadline(100, async () => {
      const client = await p.connect();
      scope = currentDeadline();
      await new Promise<void>((resolve) => (releaseNow = resolve));
      client.release();
    });
    expect(await eventually(() => releaseNow !== undefined, 2_000, 5)).toBe(true);
    // A caller without a deadline waits for that connection.
    const queued = p.query<{ v: number }>('SELECT 7 AS v FROM pg_sleep(0.2)');
    expect(await eventually(() => p.state().waiting === 1 && performance.now() > scope!.at, 2_000, 5)).toBe(true);
    releaseNow!();
    await request;
    expect((await queued).rows).toEqual([{ v: 7 }]);
  });
});
