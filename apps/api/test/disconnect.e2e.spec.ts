import 'reflect-metadata';
import { request } from 'node:http';
import { performance } from 'node:perf_hooks';
import pg from 'pg';
import { eventually } from '../../../tools/wait.mjs';
import { databaseUrl, itemsFixture } from './support/items-fixture.js';

/**
 * #21 item 6: a client that disconnects while `GET /items/stats` runs leaves no statement running
 * on the server. The route's deadline (1 s) would cancel it in the end; the disconnect cancels it
 * at once. Another session holds the items table locked, so the report waits on the server for as
 * long as nobody stops it.
 */
describe('api: a client that disconnects mid-request', () => {
  const applicationName = `api-disconnect-${process.pid}`;
  const fixture = itemsFixture(`disconnect-${process.pid}`, { poolSize: 1, maxOverflow: 1, applicationName });
  const active = async () =>
    (
      await fixture
        .admin()
        .query<{ query: string }>("SELECT query FROM pg_stat_activity WHERE application_name = $1 AND state = 'active'", [applicationName])
    ).rows.map((r) => r.query);

  it('GET /items/stats: the statement is cancelled on the server at the disconnect, before the route’s deadline, and the connection is reused', async () => {
    const locker = new pg.Client({ connectionString: databaseUrl() });
    await locker.connect();
    try {
      await locker.query('BEGIN');
      await locker.query('LOCK TABLE items IN ACCESS EXCLUSIVE MODE');
      const startedAt = performance.now();
      const req = request(`${fixture.base()}/items/stats`);
      const answered = new Promise<string>((resolve) => {
        req.on('response', () => resolve('response'));
        req.on('error', (err) => resolve(err.message));
      });
      req.end();
      // The report is waiting on the lock, on the server.
      expect(await eventually(async () => (await active()).some((q) => q.includes('FROM items')), 5_000, 10)).toBe(true);
      req.destroy();
      // Gone from the server while the lock is still held: cancelled, not finished.
      expect(await eventually(async () => (await active()).length === 0, 5_000, 10)).toBe(true);
      const goneAfterMs = performance.now() - startedAt;
      expect(goneAfterMs).toBeLessThan(1_000); // the route's deadline had not passed
      expect(await answered).toBe('socket hang up');
    } finally {
      await locker.query('ROLLBACK').catch(() => {});
      await locker.end();
    }
    // The pool's connection came back clean and serves the next request.
    const res = await fetch(`${fixture.base()}/items/stats`);
    expect(res.status).toBe(200);
  });
});
