import { DataSource, type DataSourceOptions } from 'typeorm';
import type { DbPoolOptions } from './config/db-pool.options.js';
import { resolveDbPoolConfig } from './config/resolve-config.js';
import { codeOf, PoolConnectError } from './errors.js';
import { DbPool } from './pool/db-pool.js';
import { SILENT } from './pool/logger.js';
import { toPgPoolOptions, toPoolSettings } from './pool/pg-options.js';
import { ReplicaRouter } from './pool/replicas.js';
import { toTypeOrmOptions } from './pool/typeorm-options.js';
import type { DbPoolConfig } from './config/db-pool.options.js';
import { scrubSecrets } from './redact.js';

/** SQLSTATEs of a server that is up but cannot take a connection right now: too_many_connections, cannot_connect_now. */
const TRANSIENT = new Set(['53300', '57P03']);

/**
 * Builds a running pool from db-pool's options — the same as `DbPoolModule.forRoot` takes,
 * each falling back to its environment variable, then its default — validated at once
 * ({@link DbPoolConfigError} lists every bad key). Resolves once `DB_POOL_SIZE` connections are
 * open; when the server gives only some, or none because it is full (a role's CONNECTION LIMIT,
 * `too many clients`), it starts with those and warns; when it cannot be reached or refuses the
 * login, it rejects with a {@link PoolConnectError}.
 *
 * ```ts
 * const pool = await createDbPool({ url: process.env.DATABASE_URL, poolSize: 5 });
 * const { rows } = await pool.query('SELECT now()');
 * await pool.end();
 * ```
 */
export async function createDbPool(options: DbPoolOptions = {}): Promise<DbPool> {
  const config = resolveDbPoolConfig(options);
  const logger = options.logger ?? SILENT;
  const pool = new DbPool(toPgPoolOptions(config), toPoolSettings(config, logger));
  try {
    await pool.warmUp();
  } catch (err) {
    // A server that is full or starting (too many clients, cannot connect now) is there, and
    // the pool opens more on demand; anything else — unreachable, auth, no such database — is a
    // configuration to fix before starting.
    if (pool.totalCount === 0 && !TRANSIENT.has(codeOf(err) ?? '')) {
      await pool.end().catch(() => {});
      const reason = scrubSecrets((err as Error).message);
      throw new PoolConnectError(config.name, pool.state(), reason, { cause: err });
    }
    logger.warn(
      `db-pool "${config.name}": warmed ${pool.totalCount} of ${config.poolSize} connections: ${scrubSecrets((err as Error).message)}; ` +
        `the pool opens more on demand, up to ${config.poolSize + config.maxOverflow}`,
    );
  }
  return pool;
}

/** The options of the pool of read replica `index` (from 1): the primary's, with the replica's URL and a name of its own. */
export function replicaOptions(options: DbPoolOptions, config: DbPoolConfig, index: number): DbPoolOptions {
  return {
    ...options,
    name: `${config.name}-replica-${index}`,
    url: config.replicaUrls[index - 1],
    replicaUrls: undefined,
    host: undefined,
  };
}

/**
 * The pools of `DB_REPLICA_URLS` and the router TypeORM's reads go through, its first lag sample
 * taken; undefined when there are no replicas. A replica that cannot be reached at start-up is a
 * configuration error, as the primary is.
 */
export async function createReplicaRouter(options: DbPoolOptions, primary: DbPool): Promise<ReplicaRouter | undefined> {
  const config = resolveDbPoolConfig(options);
  if (config.replicaUrls.length === 0) return undefined;
  const logger = options.logger ?? SILENT;
  const replicas: DbPool[] = [];
  const configs: DbPoolConfig[] = [];
  try {
    for (let i = 1; i <= config.replicaUrls.length; i++) {
      configs.push(resolveDbPoolConfig(replicaOptions(options, config, i)));
      replicas.push(await createDbPool(replicaOptions(options, config, i)));
    }
  } catch (err) {
    await Promise.all(replicas.map((r) => r.end().catch(() => {})));
    throw err;
  }
  const router = new ReplicaRouter({
    primary,
    primaryConfig: config,
    replicas,
    configs,
    maxLagMs: config.replicaMaxLagMs,
    sampleTimeoutMs: config.healthTimeoutMs,
    logger,
  });
  await router.start();
  return router;
}

/**
 * A TypeORM DataSource on a pool from {@link createDbPool}, initialized — for an application that
 * uses TypeORM without Nest. `dataSource.destroy()` ends the pool; `poolOf(dataSource)` is it.
 */
export async function createDbPoolDataSource(options: DbPoolOptions = {}): Promise<DataSource> {
  const config = resolveDbPoolConfig(options);
  const pool = await createDbPool(options);
  let replicas: ReplicaRouter | undefined;
  try {
    replicas = await createReplicaRouter(options, pool);
    return await new DataSource(toTypeOrmOptions(config, pool, replicas) as DataSourceOptions).initialize();
  } catch (err) {
    await Promise.all([pool.end().catch(() => {}), replicas?.end().catch(() => {})]);
    throw err;
  }
}
