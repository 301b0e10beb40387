import { AsyncLocalStorage } from 'node:async_hooks';
import type pg from 'pg';
import { type DbPool, PoolTimeoutError } from '../src/index.js';
import { eventually, poolFixture } from './support/db.js';

describe('connect(callback), the form TypeORM uses', () => {
  const fixture = poolFixture();
  let pool: DbPool;

  it('hands out a client and a release function, like pg.Pool', async () => {
    pool = await fixture.pool({ poolSize: 1, maxOverflow: 0 });
    const { client, release } = await new Promise<{ client: pg.PoolClient; release: (err?: Error | boolean) => void }>((resolve, reject) =>
      pool.connect((err, client, release) => (err ? reject(err) : resolve({ client: client!, release: release! }))),
    );
    expect((await client.query<{ one: number }>('SELECT 1 AS one')).rows[0].one).toBe(1);
    expect(release).toBe(client.release);
    expect(pool.state()).toEqual({ total: 1, active: 1, idle: 0, waiting: 0 });
    release();
    expect(pool.state()).toEqual({ total: 1, active: 0, idle: 1, waiting: 0 });
  });

  it('passes the typed timeout error to the callback', async () => {
    pool = await fixture.pool({ poolSize: 1, maxOverflow: 0, poolTimeoutSeconds: 1 });
    const held = await pool.connect();
    const err = await new Promise<Error | undefined>((resolve) => pool.connect((e) => resolve(e)));
    expect(err).toBeInstanceOf(PoolTimeoutError);
    held.release();
  });

  it('keeps pool.query working through the same acquire path', async () => {
    pool = await fixture.pool({ poolSize: 1, maxOverflow: 0 });
    const rows = await new Promise<unknown[]>((resolve, reject) =>
      pool.query('SELECT 2 AS two', [], (err, res) => (err ? reject(err) : resolve(res.rows))),
    );
    expect(rows).toEqual([{ two: 2 }]);
    expect(pool.counters.acquired).toBe(1);
  });
});

describe("callbacks run in the caller's async context, not the releaser's", () => {
  const fixture = poolFixture();
  const context = new AsyncLocalStorage<string>();

  /** One connection, held in the releaser's context; the callback's acquire waits for it. */
  async function heldByReleaser(): Promise<{ pool: DbPool; releaseInItsContext: () => void }> {
    const pool = await fixture.pool({ poolSize: 1, maxOverflow: 0 });
    const held = await context.run('releaser', () => pool.connect());
    return { pool, releaseInItsContext: () => context.run('releaser', () => held.release()) };
  }

  it('connect(callback)', async () => {
    const { pool, releaseInItsContext } = await heldByReleaser();
    const seen = new Promise<string | undefined>((resolve) =>
      context.run('caller', () =>
        pool.connect((err, _client, release) => {
          resolve(context.getStore());
          release();
        }),
      ),
    );
    await eventually(() => pool.waitingCount === 1);
    releaseInItsContext();
    expect(await seen).toBe('caller');
  });

  it('connect(callback) served at once by an idle connection, or after a pre-ping answered from the socket', async () => {
    const connectIn = (pool: DbPool, store: string) =>
      new Promise<string | undefined>((resolve) =>
        context.run(store, () =>
          pool.connect((err, _client, release) => {
            resolve(context.getStore());
            release();
          }),
        ),
      );
    const quick = await fixture.pool({ poolSize: 1, maxOverflow: 0 });
    await connectIn(quick, 'warm');
    const pingsBefore = quick.counters.prePings;
    expect(await connectIn(quick, 'at once')).toBe('at once'); // used just now: handed out unpinged, on the spot
    expect(quick.counters.prePings).toBe(pingsBefore);
    const pinged = await fixture.pool({ poolSize: 1, maxOverflow: 0, prePingBypassMs: 0 });
    await connectIn(pinged, 'warm');
    expect(await connectIn(pinged, 'after a ping')).toBe('after a ping');
    expect(pinged.counters.prePings).toBeGreaterThan(0);
  });

  it('query(text, callback) and query(text, values, callback)', async () => {
    const { pool, releaseInItsContext } = await heldByReleaser();
    const seen = Promise.all([
      new Promise<string | undefined>((resolve) => context.run('caller', () => pool.query('SELECT 1', () => resolve(context.getStore())))),
      new Promise<string | undefined>((resolve) =>
        context.run('second caller', () => pool.query('SELECT $1::int', [1], () => resolve(context.getStore()))),
      ),
    ]);
    await eventually(() => pool.waitingCount === 2);
    releaseInItsContext();
    expect(await seen).toEqual(['caller', 'second caller']);
  });
});
