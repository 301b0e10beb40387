/**
 * #19 item 5: pg's configuration sources are the pool's. A server on a port of its own, named
 * only the way pg reads it — PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, or pg.defaults — is
 * the server the pool names, cancels on and reports: a request deadline stops the statement on
 * that server, and health and metrics show its address.
 */
import { performance } from 'node:perf_hooks';
import pg from 'pg';
import {
  createDbPool,
  DbPool,
  DbPoolConfigError,
  DbPoolMetrics,
  DbPoolRegistry,
  PoolDeadlineError,
  PoolMonitor,
  resolveDbPoolConfig,
  withDeadline,
} from '../src/index.js';
import type { PgPoolOptions } from '../src/pool/settings.js';
import { startEmbeddedPostgres, type EmbeddedPostgres } from '../../../tools/embedded-db.mjs';
import { capturingLogger, eventually, endPools } from './support/db.js';

const ENV_KEYS = ['PGHOST', 'PGPORT', 'PGUSER', 'PGPASSWORD', 'PGDATABASE', 'PGSSLMODE', 'DATABASE_URL'] as const;
const DEFAULT_KEYS = ['host', 'port', 'user', 'password', 'database'] as const;

let db: EmbeddedPostgres;
let admin: pg.Client;
let savedEnv: Record<string, string | undefined>;
let savedDefaults: Record<string, unknown>;
const pools: DbPool[] = [];

beforeAll(async () => {
  db = await startEmbeddedPostgres();
  admin = new pg.Client({ connectionString: db.url });
  await admin.connect();
});
afterAll(async () => {
  await admin?.end();
  await db?.stop();
});
beforeEach(() => {
  savedEnv = Object.fromEntries(ENV_KEYS.map((k) => [k, process.env[k]]));
  savedDefaults = Object.fromEntries(DEFAULT_KEYS.map((k) => [k, pg.defaults[k]]));
  for (const key of ENV_KEYS) delete process.env[key];
});
afterEach(async () => {
  await endPools(pools);
  for (const key of ENV_KEYS) {
    if (savedEnv[key] === undefined) delete process.env[key];
    else process.env[key] = savedEnv[key];
  }
  Object.assign(pg.defaults, savedDefaults);
});

/** The embedded server, named only by pg's variables (DATABASE_URL unset). */
function serverInEnvironment(): void {
  Object.assign(process.env, {
    PGHOST: '127.0.0.1',
    PGPORT: String(db.port),
    PGUSER: db.user,
    PGPASSWORD: db.password,
    PGDATABASE: db.database,
  });
}

function track<T extends DbPool>(pool: T): T {
  pools.push(pool);
  return pool;
}

/** Statements of this test still running on the embedded server. */
async function running(tag: string): Promise<number> {
  const { rows } = await admin.query<{ n: number }>(
    "SELECT count(*)::int AS n FROM pg_stat_activity WHERE state = 'active' AND pid <> pg_backend_pid() AND query LIKE $1",
    [`%${tag}%`],
  );
  return rows[0].n;
}

describe("pg's configuration sources are the pool's", () => {
  it.each([
    ['new DbPool({ max: 2 })', async () => new DbPool({ max: 2 })],
    ['createDbPool() with no URL', async () => createDbPool({ poolSize: 1, maxOverflow: 1 })],
  ])(
    '%s, configured only by PGHOST, PGPORT, PGUSER and PGDATABASE: names that server, and a request deadline cancels the statement on it',
    async (_name, build) => {
      serverInEnvironment();
      const p = track(await build());
      const { rows } = await p.query<{ port: number; db: string }>('SELECT inet_server_port() AS port, current_database() AS db');
      expect(rows[0]).toEqual({ port: db.port, db: db.database });

      const tag = `pg-sources-${process.pid}-${Math.random().toString(36).slice(2)}`;
      const started = performance.now();
      const err = await withDeadline(300, () => p.query(`SELECT pg_sleep(5) /* ${tag} */`)).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(PoolDeadlineError);
      // Stopped on that server, well before pg_sleep(5) would have ended by itself.
      expect(await eventually(async () => (await running(tag)) === 0, 3_000)).toBe(true);
      expect(performance.now() - started).toBeLessThan(4_500);
      expect(p.counters.cancels).toBe(1);
      // What health, metrics and failover read.
      expect(p.hosts()).toEqual([expect.objectContaining({ address: `127.0.0.1:${db.port}`, state: 'up' })]);
    },
  );

  it('health and metrics name the server pg connects to', async () => {
    serverInEnvironment();
    // The configuration path describes it (health's url with DB_POOL_HEALTH_DETAIL)…
    const config = resolveDbPoolConfig({ healthDetail: true });
    expect(config.redactedUrl).toBe(`postgres://${db.user}:***@127.0.0.1:${db.port}/${db.database}`);
    // …and a pool with a session requirement shows the host in health and in metrics.
    const p = track(new DbPool({ max: 2, target_session_attrs: 'read-write' } as PgPoolOptions));
    await p.query('SELECT 1');
    const monitor = new PoolMonitor(p, config, capturingLogger());
    expect(monitor.getHealthReport().configuration.url).toBe(config.redactedUrl);
    expect(monitor.getHosts()).toEqual([{ index: 1, role: 'primary', state: 'up', connections: 1, address: `127.0.0.1:${db.port}` }]);
    const registry = new DbPoolRegistry();
    registry.add(monitor);
    expect(await new DbPoolMetrics(registry).metrics()).toContain(
      `db_pool_host_up{pool_name="default",host="127.0.0.1:${db.port}",role="primary"} 1`,
    );
  });

  it('pg.defaults name the server when nothing else does', async () => {
    Object.assign(pg.defaults, { host: '127.0.0.1', port: db.port, user: db.user, password: db.password, database: db.database });
    const p = track(new DbPool({ max: 1 }));
    expect(p.hosts().map((h) => h.address)).toEqual([`127.0.0.1:${db.port}`]);
    expect((await p.query<{ port: number }>('SELECT inet_server_port() AS port')).rows[0].port).toBe(db.port);
  });

  it('a URL without a host or port takes them from PGHOST and PGPORT, as pg does', async () => {
    serverInEnvironment();
    const p = track(new DbPool({ connectionString: `postgres://${db.user}:${db.password}@/${db.database}`, max: 1 }));
    expect(p.hosts().map((h) => h.address)).toEqual([`127.0.0.1:${db.port}`]);
    expect((await p.query<{ port: number }>('SELECT inet_server_port() AS port')).rows[0].port).toBe(db.port);
    // The environment path takes it too, now that PGHOST names a server.
    expect(resolveDbPoolConfig({ env: { DATABASE_URL: `postgres://${db.user}@/${db.database}` } }).url).toBeDefined();
  });

  it('the pool leaves TLS to pg: with PGSSLMODE=require both fail alike against a server without TLS', async () => {
    serverInEnvironment();
    process.env.PGSSLMODE = 'require';
    const alone = new pg.Client({ connectionTimeoutMillis: 3_000 });
    const pgErr = await alone.connect().then(
      () => undefined,
      (e: unknown) => e as Error,
    );
    await alone.end().catch(() => {});
    const p = track(new DbPool({ max: 1, connectionTimeoutMillis: 3_000 }));
    const poolErr = (await p.query('SELECT 1').catch((e: unknown) => e)) as Error;
    expect(pgErr?.message).toBe('The server does not support SSL connections');
    expect(poolErr.message).toContain(pgErr!.message);
    delete process.env.PGSSLMODE;
    expect((await p.query<{ ok: number }>('SELECT 1 AS ok')).rows[0].ok).toBe(1);
  });

  // pg reads PGSSLMODE where the connection says nothing of TLS, and takes a value it does not
  // know as disable: a typo of require would connect without TLS, and say nothing.
  it.each(['requre', 'disabled', 'allow', 'REQUIRE'])(
    'PGSSLMODE=%j, which pg would read as no TLS at all, is refused at once by every path, naming the variable and the values pg reads',
    async (value) => {
      serverInEnvironment();
      process.env.PGSSLMODE = value;
      const problem =
        `PGSSLMODE=${JSON.stringify(value)}: must be one of disable, prefer, require, verify-ca, verify-full (libpq's and pg's) ` +
        "or no-verify (pg's): pg takes any other value, libpq's allow included, as disable (no TLS)";
      expect(() => new DbPool({ max: 1 })).toThrow(`- ${problem}`);
      expect(() => resolveDbPoolConfig({ env: {} })).toThrow(`- ${problem}`);
      expect(() => resolveDbPoolConfig({ env: { DATABASE_URL: db.url } })).toThrow(`- ${problem}`);
      await expect(createDbPool({ poolSize: 1 })).rejects.toThrow(DbPoolConfigError);
      // Where the connection sets its own TLS, pg does not read PGSSLMODE, and neither does the check.
      const own = track(new DbPool({ connectionString: `${db.url}?sslmode=disable`, max: 1 }));
      expect((await own.query<{ ok: number }>('SELECT 1 AS ok')).rows[0].ok).toBe(1);
      expect(() => track(new DbPool({ max: 1, ssl: false }))).not.toThrow();
      expect(resolveDbPoolConfig({ env: { DATABASE_URL: `${db.url}?ssl=0` } }).url).toBeDefined();
      expect(resolveDbPoolConfig({ env: {}, typeorm: { extra: { ssl: false } } }).url).toBeUndefined();
    },
  );

  // pg reads PGPORT with parseInt: '1e1' is port 1, '5432abc' and '+5432' are 5432. A URL's
  // port is digits only (`db:1e3` is refused), and so is PGPORT's.
  it.each(['fifty', '1e1', '5432abc', '+5432', ' 5432', '5432.0', '0x1538', '0', '65536'])(
    'PGPORT=%j, not a plain integer from 1 to 65535, is refused at once by every path, naming the variable and its value',
    (value) => {
      serverInEnvironment();
      process.env.PGPORT = value;
      const problem = `PGPORT=${JSON.stringify(value)}: the port must be an integer from 1 to 65535`;
      expect(() => new DbPool({ max: 1 })).toThrow(DbPoolConfigError);
      expect(() => new DbPool({ max: 1 })).toThrow(`- ${problem}`);
      // A URL without a port takes PGPORT, as pg does.
      expect(() => new DbPool({ connectionString: `postgres://${db.user}@127.0.0.1/${db.database}`, max: 1 })).toThrow(problem);
      expect(() => resolveDbPoolConfig({ env: {} })).toThrow(problem);
      expect(() => resolveDbPoolConfig({ env: { DATABASE_URL: `postgres://${db.user}@127.0.0.1/${db.database}` } })).toThrow(problem);
    },
  );

  it.each(['1e1', '5432abc', '+5432', '5432.0'])(
    'the port option %j is refused as PGPORT is, by the drop-in and by the configuration',
    (value) => {
      expect(() => new DbPool({ host: '127.0.0.1', port: value as unknown as number, max: 1 })).toThrow(
        `the port option=${JSON.stringify(value)}: the port must be an integer from 1 to 65535`,
      );
      expect(() => resolveDbPoolConfig({ host: '127.0.0.1', port: value, env: {} })).toThrow(
        `port=${JSON.stringify(value)}: must be an integer from 1 to 65535`,
      );
    },
  );

  it('without DATABASE_URL, the host option or PGHOST, the configuration is refused rather than pointed at localhost', () => {
    expect(() => resolveDbPoolConfig({ env: {} })).toThrow(
      /DATABASE_URL: not set; give a postgres:\/\/ URL such as .*, the host option, or pg's PGHOST/,
    );
    // A pool of its own (envPrefix) must name its server: PGHOST is the default pool's.
    serverInEnvironment();
    expect(() => resolveDbPoolConfig({ name: 'reporting', envPrefix: 'REPORTING_', env: {} })).toThrow(/REPORTING_DATABASE_URL: not set/);
  });
});
