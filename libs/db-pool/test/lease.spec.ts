import { EventEmitter } from 'node:events';
import type pg from 'pg';
import { PoolLeaseError, PoolReleaseError } from '../src/index.js';
import { adminClient, poolFixture } from './support/db.js';

type TxClient = pg.PoolClient & { getTransactionStatus(): string | null };

describe('a lease per checkout: what a caller gets is valid for its checkout only', () => {
  const { admin, pool } = poolFixture();
  const table = `lease_${process.pid}`;
  beforeAll(async () => {
    const client = await adminClient();
    await client.query(`CREATE TABLE IF NOT EXISTS ${table} (id int)`);
    await client.end();
  });
  afterAll(async () => {
    const client = await adminClient();
    await client.query(`DROP TABLE IF EXISTS ${table}`);
    await client.end();
  });

  it("a released client used again — query, then release — throws PoolLeaseError and never touches the next caller's transaction", async () => {
    // One connection: the second caller gets the very connection the first one released.
    const p = await pool({ poolSize: 1, maxOverflow: 0 });
    const first = await p.connect();
    const firstPid = (await first.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0].pid;
    first.release();

    const second = (await p.connect()) as TxClient;
    expect((await second.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0].pid).toBe(firstPid);
    await second.query('BEGIN');
    await second.query(`INSERT INTO ${table} VALUES (1)`);

    // The stale lease: neither call reaches the connection the second caller holds now.
    await expect(async () => first.query(`INSERT INTO ${table} VALUES (2)`)).rejects.toThrow(PoolLeaseError);
    expect(() => first.query('ROLLBACK')).toThrow(
      `db-pool "${p.name}": query called on a client that was released to the pool; check out another one`,
    );
    expect(() => first.release()).toThrow(PoolReleaseError);
    expect(() => first.release()).toThrow(PoolLeaseError);

    expect(second.getTransactionStatus()).toBe('T'); // still inside its transaction
    await second.query(`INSERT INTO ${table} VALUES (3)`);
    await second.query('COMMIT');
    second.release();
    const { rows } = await admin().query<{ id: number }>(`SELECT id FROM ${table} ORDER BY id`);
    expect(rows.map((r) => r.id)).toEqual([1, 3]);
    expect(p.counters.resets).toBe(0); // nothing was rolled back
  });

  it("every other method of a released client throws too, naming it (escapeLiteral; on once the connection is checked out again), and so does a write of a field; a read of one (processID) still answers, as the pool's events need", async () => {
    const p = await pool({ poolSize: 1, maxOverflow: 0 });
    const client = await p.connect();
    expect(client.escapeLiteral("it's")).toBe("'it''s'");
    const pid = (client as unknown as { processID: number }).processID;
    expect(typeof pid).toBe('number');
    client.release();
    expect(() => client.escapeLiteral('x')).toThrow(/escapeLiteral called on a client that was released/);
    expect(() => ((client as unknown as { database: string }).database = 'other')).toThrow(/database called on a client that was released/);
    // The 'remove' and 'error' listeners get the lease that held the connection last, and read its fields.
    expect((client as unknown as { processID: number }).processID).toBe(pid);
    const next = await p.connect(); // the same connection, another checkout: the old lease's event methods end too
    expect(() => client.on('notice', () => {})).toThrow(/on called on a client that was released/);
    expect(() => client.emit('error', new Error('x'))).toThrow(/emit called on a client that was released/);
    next.release();
  });

  it("a released client's event methods reach its connection while it sits idle, as pg.Pool's do: an error emitted on it removes the connection (the pool's 'error' names the lease); a listener added then is gone at the next checkout", async () => {
    const p = await pool({ poolSize: 1, maxOverflow: 0 });
    const released = await p.connect();
    released.release();
    const heard: string[] = [];
    released.on('notice', (msg: { message?: string }) => heard.push(`released: ${msg.message}`));
    const next = await p.connect();
    next.on('notice', (msg: { message?: string }) => heard.push(`next: ${msg.message}`));
    await next.query("DO $$ BEGIN RAISE NOTICE 'hello'; END $$");
    expect(heard).toEqual(['next: hello']);
    next.release();

    const poolErrors: [Error, unknown][] = [];
    p.on('error', (err: Error, client: unknown) => poolErrors.push([err, client]));
    const clientErrors: Error[] = [];
    next.once('error', (err: Error) => clientErrors.push(err));
    expect(next.emit('error', new Error('in the background'))).toBe(true);
    expect(clientErrors.map((e) => e.message)).toEqual(['in the background']);
    expect(poolErrors).toHaveLength(1);
    expect(poolErrors[0][0].message).toBe('in the background');
    expect(poolErrors[0][1]).toBe(next);
    expect(p.totalCount).toBe(0);
  });

  it('listeners added through a lease are removed at release: the next borrower hears none of them', async () => {
    const p = await pool({ poolSize: 1, maxOverflow: 0 });
    const first = await p.connect();
    const heard: string[] = [];
    first.on('notification', (msg: pg.Notification) => heard.push(`first: ${msg.payload}`));
    first.release();

    const second = await p.connect();
    const channel = `lease_${process.pid}`;
    await second.query(`LISTEN ${channel}`);
    const got = new Promise<void>((resolve) => second.once('notification', () => resolve()));
    await admin().query(`NOTIFY ${channel}, 'for the second borrower'`);
    await got;
    expect(heard).toEqual([]);
    second.release();
  });

  it('the pool keeps its own listeners: removeAllListeners on a lease removes only what the lease added', async () => {
    const p = await pool({ poolSize: 1, maxOverflow: 0 });
    const client = await p.connect();
    const raw = client as unknown as EventEmitter;
    const before = raw.listenerCount('error');
    client.on('error', () => {});
    expect(raw.listenerCount('error')).toBe(before + 1);
    client.removeAllListeners('error');
    expect(raw.listenerCount('error')).toBe(before);
    client.release();
  });
});
