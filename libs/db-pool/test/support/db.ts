import pg from 'pg';
import { createDbPool, DbPool, type DbPoolConfig, type DbPoolLogger, type DbPoolOptions, resolveDbPoolConfig } from '../../src/index.js';
import { startFaultProxy, type FaultProxy } from '../../../../tools/fault-proxy.mjs';

// The wait helpers every project's tests share (tools/wait.mjs).
export { eventually, sleep } from '../../../../tools/wait.mjs';

/** The server the test run was given (tools/jest/global-setup.js makes sure there is one). */
export function databaseUrl(): string {
  const url = process.env.DATABASE_URL;
  if (!url) throw new Error('DATABASE_URL is not set: run the tests through Jest (its global setup provides one)');
  return url;
}

let poolCounter = 0;
const RUN_ID = `${process.pid}-${Math.random().toString(36).slice(2, 8)}`;

/** Options of a small pool against the test server, with a name (and application_name) of its own to find its backends by. */
export function testOptions(options: Omit<DbPoolOptions, 'env'> = {}): DbPoolOptions {
  // Jest runs the files in one process: the run id keeps names unique across files.
  const name = options.name ?? `test-${RUN_ID}-${++poolCounter}`;
  return {
    url: databaseUrl(),
    poolSize: 2,
    maxOverflow: 3,
    poolTimeoutSeconds: 5,
    shutdownGraceSeconds: 2,
    applicationName: name,
    env: {},
    ...options,
    name,
  };
}

/** The validated configuration of {@link testOptions}. */
export function createTestConfig(options: Omit<DbPoolOptions, 'env'> = {}): DbPoolConfig {
  return resolveDbPoolConfig(testOptions(options));
}

/** A running test pool, built as every pool is: by createDbPool. */
export function createTestPool(options: Omit<DbPoolOptions, 'env'> = {}, logger?: DbPoolLogger): Promise<DbPool> {
  return createDbPool({ ...testOptions(options), ...(logger ? { logger } : {}) });
}

/** A logger that keeps every line, level first (`debug refill failed …`). */
export function capturingLogger(): DbPoolLogger & { lines: string[] } {
  const lines: string[] = [];
  return { lines, log: (m) => lines.push(`log ${m}`), warn: (m) => lines.push(`warn ${m}`), debug: (m) => lines.push(`debug ${m}`) };
}

/**
 * A fault-injecting TCP proxy (tools/fault-proxy.mjs) in front of the test server for the
 * file; back to `pass` after each test. `url()` is the test server's URL through it.
 */
export function proxyFixture(): { proxy: () => FaultProxy; url: () => string } {
  let proxy: FaultProxy | undefined;
  beforeAll(async () => {
    const target = new URL(databaseUrl());
    proxy = await startFaultProxy({ host: target.hostname, port: Number(target.port || 5432) });
  });
  afterEach(async () => {
    await proxy?.setMode('pass');
  });
  afterAll(async () => {
    await proxy?.close();
  });
  return { proxy: () => proxy!, url: () => proxy!.url(databaseUrl()) };
}

/** A plain client for looking at and acting on the server from outside the pool. */
export async function adminClient(): Promise<pg.Client> {
  const client = new pg.Client({ connectionString: databaseUrl() });
  await client.connect();
  return client;
}

/** Backend pids the server has for an application_name. */
export async function backendPids(admin: pg.Client, applicationName: string): Promise<number[]> {
  const { rows } = await admin.query<{ pid: number }>('SELECT pid FROM pg_stat_activity WHERE application_name = $1 ORDER BY pid', [
    applicationName,
  ]);
  return rows.map((r) => r.pid);
}

/**
 * Registers the usual hooks of a pool test: an admin client for the file, and every pool made
 * with `pool()` ended after its test.
 */
export function poolFixture(): {
  admin: () => pg.Client;
  pool: (options?: Omit<DbPoolOptions, 'env'>, logger?: DbPoolLogger) => Promise<DbPool>;
} {
  let admin: pg.Client | undefined;
  const pools: DbPool[] = [];
  beforeAll(async () => {
    admin = await adminClient();
  });
  afterEach(() => endPools(pools));
  afterAll(async () => {
    await admin?.end();
  });
  return {
    admin: () => admin!,
    pool: async (options, logger) => {
      const created = await createTestPool(options, logger);
      pools.push(created);
      return created;
    },
  };
}

/** Ends the pools of the list not already ending, and empties it: what a test's afterEach does with the pools it made. */
export async function endPools(pools: DbPool[]): Promise<void> {
  await Promise.all(
    pools
      .splice(0)
      .filter((p) => !p.ending)
      .map((p) => p.end()),
  );
}

/** Registers the hooks of a drop-in test: `dropIn(pgOptions)` is a `new DbPool` on the test server, ended after its test. */
export function dropInFixture(): (options?: ConstructorParameters<typeof DbPool>[0]) => DbPool {
  const pools: DbPool[] = [];
  afterEach(() => endPools(pools));
  return (options = {}) => {
    const pool = new DbPool({ connectionString: databaseUrl(), ...options });
    pools.push(pool);
    return pool;
  };
}
