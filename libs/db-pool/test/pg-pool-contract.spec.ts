/**
 * The drop-in contract: `new DbPool(options)` with pg.Pool's options alone behaves as pg.Pool
 * does (plus db-pool's safety), each option honoured or refused. One test per option or promise,
 * against a real PostgreSQL.
 */
import { execFileSync } from 'node:child_process';
import { EventEmitter } from 'node:events';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { DbPool, DbPoolConfigError, PoolConnectError, PoolTimeoutError } from '../src/index.js';
import { databaseUrl, dropInFixture, eventually, poolFixture } from './support/db.js';

const root = fileURLToPath(new URL('../../../', import.meta.url));

/** True when the client's socket has TCP keep-alive on (`ss` shows its keepalive timer). */
function keepAliveOn(client: pg.PoolClient): boolean {
  const port = (client as unknown as { connection: { stream: { localPort: number } } }).connection.stream.localPort;
  return execFileSync('ss', ['-tnoH', 'sport', '=', `:${port}`], { encoding: 'utf8' }).includes('keepalive');
}

const pid = async (client: pg.PoolClient) => (await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0].pid;

describe('a drop-in for pg.Pool', () => {
  const { pool: created } = poolFixture();
  const dropIn = dropInFixture();

  it("goes wherever a pg.Pool is expected (its type), and works with pg.Pool's options alone", async () => {
    const asPg: pg.Pool = dropIn({ max: 2 });
    const { rows } = await asPg.query<{ two: number }>('SELECT 2 AS two');
    expect(rows[0].two).toBe(2);
    expect(asPg.options.max).toBe(2);
    expect([asPg.totalCount, asPg.idleCount, asPg.waitingCount, asPg.expiredCount]).toEqual([1, 1, 0, 0]);
  });

  it('Client: the given class is used for every connection', async () => {
    const made: pg.Client[] = [];
    class CountingClient extends pg.Client {
      constructor(config?: pg.ClientConfig) {
        super(config);
        made.push(this);
      }
    }
    const pool = dropIn({ Client: CountingClient as unknown as typeof pg.Client });
    const connected: unknown[] = [];
    pool.on('connect', (client) => connected.push(client));
    await pool.query('SELECT 1');
    expect(made).toHaveLength(1);
    expect(connected[0]).toBeInstanceOf(CountingClient);
  });

  it("a connect error is the driver's own, as pg.Pool gives it (createDbPool's is a PoolConnectError); the callback form gets a release function", async () => {
    const url = new URL(databaseUrl());
    url.pathname = '/no_such_database_for_db_pool';
    const pool = dropIn({ connectionString: url.toString(), max: 1 });
    const err = (await pool.connect().catch((e: unknown) => e)) as pg.DatabaseError;
    expect(err).toBeInstanceOf(pg.DatabaseError);
    expect(err).not.toBeInstanceOf(PoolConnectError);
    expect(err.code).toBe('3D000'); // invalid_catalog_name
    expect(err.severity).toBe('FATAL');
    expect(err.message).toBe('database "no_such_database_for_db_pool" does not exist');
    const wrapped = (await created({ url: url.toString(), poolSize: 1, maxOverflow: 0 }).catch((e: unknown) => e)) as PoolConnectError;
    expect(wrapped).toBeInstanceOf(PoolConnectError);
    expect(wrapped.code).toBe('3D000');
    expect((wrapped.cause as { code?: string }).code).toBe('3D000');
    // A pool of its own: two failed connects in a row open the connect circuit breaker, and an
    // acquire it refuses gets PoolUnavailableError (its cause the driver's error).
    const another = dropIn({ connectionString: url.toString(), max: 1 });
    const viaCallback = await new Promise<{ err: Error | undefined; release: unknown }>((resolve) =>
      another.connect((e, _client, release) => resolve({ err: e, release })),
    );
    expect(viaCallback.err).toBeInstanceOf(pg.DatabaseError);
    expect(typeof viaCallback.release).toBe('function');
    expect(() => (viaCallback.release as () => void)()).not.toThrow();
  });

  it("connectionTimeoutMillis: the acquire deadline, and the message keeps pg-pool's words", async () => {
    const pool = dropIn({ max: 1, connectionTimeoutMillis: 300 });
    const held = await pool.connect();
    const err = (await pool.connect().catch((e: unknown) => e)) as PoolTimeoutError;
    expect(err).toBeInstanceOf(PoolTimeoutError);
    expect(err.message).toContain('timeout exceeded when trying to connect');
    expect(err.timeoutMs).toBe(300);
    held.release();
  });

  it('keepAlive: reaches the socket (TCP keep-alive on), and is off when not asked for', async () => {
    const withKeepAlive = dropIn({ keepAlive: true });
    const on = await withKeepAlive.connect();
    expect(keepAliveOn(on)).toBe(true);
    on.release();
    const without = dropIn();
    const off = await without.connect();
    expect(keepAliveOn(off)).toBe(false);
    off.release();
  });

  it('maxUses: a connection is retired after that many checkouts', async () => {
    const pool = dropIn({ max: 1, maxUses: 2 });
    const pids: number[] = [];
    for (let i = 0; i < 3; i++) {
      const client = await pool.connect();
      pids.push(await pid(client));
      client.release();
    }
    expect(pids[0]).toBe(pids[1]);
    expect(pids[2]).not.toBe(pids[0]);
  });

  it('idleTimeoutMillis: idle connections above min are closed; min stays open', async () => {
    const pool = dropIn({ max: 3, min: 1, idleTimeoutMillis: 100 });
    const clients = await Promise.all([pool.connect(), pool.connect(), pool.connect()]);
    clients.forEach((c) => c.release());
    expect(pool.totalCount).toBe(3);
    expect(await eventually(() => pool.totalCount === 1, 3_000)).toBe(true);
  });

  it('maxLifetimeSeconds: a connection is replaced once it is that old', async () => {
    const pool = dropIn({ max: 1, maxLifetimeSeconds: 1 });
    const first = await pool.connect();
    const before = await pid(first);
    first.release();
    expect(await eventually(() => pool.counters.recycled === 1, 3_000)).toBe(true);
    const next = await pool.connect();
    expect(await pid(next)).not.toBe(before);
    next.release();
  });

  it('events: connect, acquire, release and remove, as pg.Pool emits them', async () => {
    const pool = dropIn({ max: 1 });
    const events: string[] = [];
    for (const name of ['connect', 'acquire', 'release', 'remove'] as const) pool.on(name, () => events.push(name));
    const client = await pool.connect();
    client.release(true); // discard it
    await eventually(() => events.includes('remove'));
    expect(events).toEqual(['connect', 'acquire', 'release', 'remove']);
  });

  it('allowExitOnIdle: idle connections do not keep the process alive', () => {
    execFileSync(process.execPath, [`${root}node_modules/typescript/bin/tsc`, '-b', `${root}libs/db-pool/tsconfig.lib.json`]);
    const script = `
      import { DbPool } from '${root}libs/db-pool/dist/index.js';
      const pool = new DbPool({ connectionString: process.env.DATABASE_URL, allowExitOnIdle: true });
      await pool.query('SELECT 1');
      console.log('idle, not ended');
    `;
    // Returns only when the process has exited by itself (the test times out otherwise).
    const out = execFileSync(process.execPath, ['--input-type=module', '-e', script], {
      cwd: root,
      env: { ...process.env },
      encoding: 'utf8',
      timeout: 20_000,
    });
    expect(out).toContain('idle, not ended');
  }, 60_000);

  it('pg.Pool options that make no sense are refused, naming the option; none is silently dropped', () => {
    expect(() => new DbPool({ max: 0 })).toThrow(DbPoolConfigError);
    expect(() => new DbPool({ max: 0 })).toThrow('max=0: must be an integer of at least 1');
    expect(() => new DbPool({ min: 5, max: 2 })).toThrow('min=5 is more than max=2');
    expect(() => new DbPool({ idleTimeoutMillis: -1 })).toThrow('idleTimeoutMillis=-1: must be an integer of at least 0');
    expect(() => new DbPool({ Client: 'pg' as never })).toThrow('Client: must be a function');
  });

  it('pool.query: a failed statement closes its connection on the drop-in, as pg.Pool does; createDbPool keeps it (an SQL error is not a broken connection)', async () => {
    const pool = dropIn({ max: 1 });
    const first = await pool.connect();
    const before = await pid(first);
    first.release();
    await expect(pool.query('SELECT * FROM no_such_table_for_db_pool')).rejects.toThrow(/does not exist/);
    expect(pool.totalCount).toBe(0);
    const again = await pool.connect();
    expect(await pid(again)).not.toBe(before);
    again.release();

    const configured = await created({ poolSize: 1, maxOverflow: 0 });
    const held = await configured.connect();
    const kept = await pid(held);
    held.release();
    await expect(configured.query('SELECT * FROM no_such_table_for_db_pool')).rejects.toThrow(/does not exist/);
    const reused = await configured.connect();
    expect(await pid(reused)).toBe(kept);
    reused.release();
  });

  it('end(): callers already queued finish, as pg.Pool lets them (20 queries in flight at end(), 20 answered)', async () => {
    const pool = dropIn({ max: 20 });
    let completed = 0;
    const queries = Array.from({ length: 20 }, () => pool.query('SELECT 1').then(() => completed++));
    await pool.end();
    expect(completed).toBe(20);
    await Promise.all(queries);
  });

  it("a Client class that implements only pg.Client's public API works; what needs pg's internals is off, and the log says so once", async () => {
    // Composition over pg's client, as a wrapper (tracing, a proxy driver) would be: no pg internals show.
    class Wrapped extends EventEmitter {
      readonly #inner: pg.Client;
      constructor(config: pg.ClientConfig) {
        super();
        this.#inner = new pg.Client(config);
        const inner = this.#inner as unknown as EventEmitter;
        for (const event of ['error', 'end', 'notice', 'notification']) inner.on(event, (...args: unknown[]) => this.emit(event, ...args));
      }
      connect(callback?: (err?: Error) => void) {
        return callback ? this.#inner.connect(callback) : this.#inner.connect();
      }
      query(...args: unknown[]) {
        return (this.#inner.query as (...a: unknown[]) => unknown)(...args);
      }
      end() {
        return this.#inner.end();
      }
      getTransactionStatus() {
        return this.#inner.getTransactionStatus();
      }
    }
    const logged: string[] = [];
    const pool = dropIn({ max: 1, Client: Wrapped as never, log: (m: string) => logged.push(m) });
    const first = await pool.connect();
    await first.query('BEGIN');
    await first.query('CREATE TEMP TABLE wrapped_client_left_open (x int)');
    first.release(); // inside its transaction: rolled back (and reset), as with pg's own client
    const next = await pool.connect();
    expect(
      (await next.query<{ t: string | null }>("SELECT to_regclass('pg_temp.wrapped_client_left_open')::text AS t")).rows[0].t,
    ).toBeNull();
    next.release(true); // discarded: the next connection is a second one of the class
    expect((await pool.query<{ n: number }>('SELECT 1 AS n')).rows[0].n).toBe(1);
    expect(pool.counters.created).toBe(2);
    expect(logged.filter((m) => m.includes("the Client class is not pg's"))).toHaveLength(1);
  });

  it('onConnect and verify: what they put on the connection reads through each of its leases; their errors reach the caller as they were thrown', async () => {
    const pool = dropIn({
      max: 1,
      onConnect: (client: pg.ClientBase) => {
        (client as unknown as { tag: string }).tag = 'set up once';
      },
    });
    for (let i = 0; i < 2; i++) {
      const client = await pool.connect();
      expect((client as unknown as { tag: string }).tag).toBe('set up once');
      client.release();
    }
    const hookError = new Error('connect hook error');
    const failing = dropIn({
      max: 1,
      onConnect: () => {
        throw hookError;
      },
    });
    await expect(failing.connect()).rejects.toBe(hookError);
    expect(failing.totalCount).toBe(0);
    const verifyError = new Error('verify says no');
    const verified = dropIn({ max: 1, verify: (_client: pg.PoolClient, done: (err?: Error) => void) => done(verifyError) });
    await expect(verified.connect()).rejects.toBe(verifyError);
  });

  it("log: hears what the pool does, in pg.Pool's words", async () => {
    const heard: string[] = [];
    const pool = dropIn({ max: 1, maxUses: 1, log: (m: string) => heard.push(m) });
    await pool.query('SELECT 1');
    expect(heard).toEqual(
      expect.arrayContaining(['connecting new client', 'new client connected', 'dispatching query', 'remove expended client']),
    );
  });

  it('idleTimeoutMillis: an idle connection closes when its time is up, not at the next sweep', async () => {
    const pool = dropIn({ idleTimeoutMillis: 50 });
    const client = await pool.connect();
    const removed = new Promise<number>((resolve) => pool.once('remove', () => resolve(performance.now())));
    client.release();
    const releasedAt = performance.now();
    expect((await removed) - releasedAt).toBeGreaterThanOrEqual(48); // not before its time (1 ms of clock slack)
    expect(pool.totalCount).toBe(0);
  });

  it('maxUses at min: the connection is retired, and the drop-in opens no other until asked (min is a floor for idle closes, as in pg.Pool)', async () => {
    const pool = dropIn({ max: 1, min: 1, maxUses: 1 });
    const client = await pool.connect();
    client.release();
    expect(pool.totalCount).toBe(0);
    expect(pool.idleCount).toBe(0);
    // createDbPool's pool refills to its size instead (refill.spec).
  });

  it('pool.query(null) rejects (pg throws), and the connection goes back', async () => {
    const pool = dropIn({ max: 1 });
    await expect(pool.query(null as never)).rejects.toThrow(/null or undefined/);
    expect(pool.totalCount).toBe(1);
    expect(pool.idleCount).toBe(1);
  });

  it("listenerCount counts the application's listeners, not the pool's own", async () => {
    const pool = dropIn({ max: 1 });
    const client = await pool.connect();
    expect(client.listenerCount('error')).toBe(0);
    const onError = () => {};
    client.on('error', onError);
    expect(client.listenerCount('error')).toBe(1);
    client.removeListener('error', onError);
    expect(client.listenerCount('error')).toBe(0);
    client.release();
  });

  it("events: 'release', 'remove' and 'error' name the client the caller had (its lease), and 'error' sets err.client", async () => {
    const pool = dropIn({ max: 2, idleTimeoutMillis: 30 });
    const client = await pool.connect();
    const released = new Promise<unknown>((resolve) => pool.once('release', (_err: unknown, c: unknown) => resolve(c)));
    const removed = new Promise<unknown>((resolve) => pool.once('remove', (c: unknown) => resolve(c)));
    client.release();
    expect(await released).toBe(client);
    expect(await removed).toBe(client); // closed idle
    const second = await pool.connect();
    const backend = await pid(second);
    second.release();
    const failed = new Promise<{ err: Error & { client?: unknown }; c: unknown }>((resolve) =>
      pool.once('error', (err: Error, c: unknown) => resolve({ err, c })),
    );
    const admin = new pg.Client(databaseUrl());
    await admin.connect();
    try {
      await admin.query('SELECT pg_terminate_backend($1)', [backend]);
    } finally {
      await admin.end();
    }
    const { err, c } = await failed;
    expect(c).toBe(second);
    expect(err.client).toBe(second);
  });

  it("createDbPool: typeorm.extra reaches pg (keepAlive, maxUses), db-pool's own keys winning", async () => {
    const pool = await created({
      poolSize: 1,
      maxOverflow: 0,
      typeorm: { extra: { keepAlive: true, maxUses: 1, max: 50, application_name: 'not-this' } },
    });
    const first = await pool.connect();
    expect(keepAliveOn(first)).toBe(true);
    const firstPid = await pid(first);
    const name = (await first.query<{ name: string }>("SELECT current_setting('application_name') AS name")).rows[0].name;
    first.release();
    expect(name).toBe(pool.name); // DB_APPLICATION_NAME (the test's pool name), not extra's
    expect(pool.options.max).toBe(1); // DB_POOL_SIZE + DB_MAX_OVERFLOW, not extra's 50
    const second = await pool.connect();
    expect(await pid(second)).not.toBe(firstPid); // maxUses: 1
    second.release();
  });
});
