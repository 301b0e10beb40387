import type { TypeOrmModuleOptions } from '@nestjs/typeorm';
import pg from 'pg';
import { DataSource } from 'typeorm';
import type { DbPoolConfig } from '../config/db-pool.options.js';
import { redactUrl } from '../redact.js';
import { DbPool } from './db-pool.js';
import { firstHostUrl } from './hosts.js';
import { typeOrmPoolsOf } from './pg-internals.js';
import type { ReplicaRouter } from './replicas.js';

/** The connection string TypeORM is given for its one replica pool: the driver answers it with the router. */
const REPLICAS = 'postgres://db-pool-replicas';

/**
 * TypeORM DataSource options for a pool built from the same configuration (a pure function).
 * TypeORM reaches the pool through its `driver` option: the `pg` module with `Pool` standing for
 * the given pool, so TypeORM's `new Pool(...)` gets it — its own connection options are not used,
 * and the password never enters TypeORM's options.
 */
export function toTypeOrmOptions(
  config: DbPoolConfig,
  pool: DbPool,
  replicas?: ReplicaRouter,
): TypeOrmModuleOptions & { type: 'postgres' } {
  const url = config.url === undefined ? undefined : withoutPassword(config.url);
  return {
    retryAttempts: 1,
    ...config.typeorm,
    type: 'postgres',
    name: config.name,
    url,
    host: config.host,
    port: config.port,
    username: config.username,
    database: config.database,
    applicationName: config.applicationName,
    poolSize: config.poolSize + config.maxOverflow,
    connectTimeoutMS: config.connectTimeoutMs,
    driver: pgWith(pool, replicas),
    extra: {},
    // TypeORM's read query runners (`find`, a SELECT query builder outside a transaction) use
    // the replicas, through one router that picks a replica in rotation or the primary.
    ...(replicas
      ? {
          replication: {
            master: { url, host: config.host, port: config.port, username: config.username, database: config.database },
            slaves: [{ url: `${REPLICAS}/${config.database ?? databaseOf(url)}` }],
          },
        }
      : {}),
  };
}

function databaseOf(url: string | undefined): string {
  try {
    return url ? new URL(url).pathname.slice(1) : '';
  } catch {
    return '';
  }
}

/** The `pg` module as TypeORM should see it: everything of pg's, with `Pool` answering with `pool`. */
function pgWith(pool: DbPool, replicas?: ReplicaRouter): typeof pg {
  function ExistingPool(options?: { connectionString?: string }): DbPool | ReplicaRouter {
    return replicas && options?.connectionString?.startsWith(REPLICAS) ? replicas : pool;
  }
  return Object.create(pg, { Pool: { value: ExistingPool, enumerable: true } }) as typeof pg;
}

/**
 * A TypeORM DataSource whose `destroy()` first lets the pool's checkouts come back, up to
 * DB_POOL_SHUTDOWN_GRACE: TypeORM's own destroy releases every query runner still connected,
 * which would cancel the statements of requests still being served.
 */
export class DbPoolDataSource extends DataSource {
  /**
   * With TypeORM's `logNotifications`, every connection of the pool logs its server's notices and
   * notifications through the DataSource's logger, for its whole life: TypeORM adds its listeners
   * to one connection in one checkout, which a lease removes at release.
   */
  override async initialize(): Promise<this> {
    await super.initialize();
    const pool = typeOrmPoolsOf(this.driver).master;
    if ((this.options as { logNotifications?: boolean }).logNotifications && pool instanceof DbPool) logNotifications(pool, this);
    return this;
  }

  override async destroy(): Promise<void> {
    if (this.isInitialized) {
      const pool = typeOrmPoolsOf(this.driver).master;
      if (pool instanceof DbPool) await pool.drain();
    }
    return super.destroy();
  }
}

/** TypeORM's notice and notification lines, on every connection the pool has or opens. */
function logNotifications(pool: DbPool, dataSource: DataSource): void {
  const listening = new WeakSet<pg.Client>();
  const listen = (client: pg.Client) => {
    if (listening.has(client)) return;
    listening.add(client);
    client.on('notice', (msg: { message?: string } | undefined) => {
      if (msg) dataSource.logger.log('info', msg.message);
    });
    client.on('notification', (msg: pg.Notification | undefined) => {
      if (msg) dataSource.logger.log('info', `NOTIFY on ${msg.channel}: ${msg.payload}`);
    });
  };
  pool.on('connect', listen);
  for (const client of pool._clients) listen(client);
}

/** The pool behind a DataSource built from {@link toTypeOrmOptions}. */
export function poolOf(dataSource: DataSource): DbPool {
  const pool = typeOrmPoolsOf(dataSource.driver).master;
  if (!(pool instanceof DbPool)) {
    throw new Error('this DataSource is not connected through db-pool (was it built by DbPoolModule and initialized?)');
  }
  return pool;
}

function withoutPassword(url: string): string {
  try {
    // TypeORM reads one host from its URL (for the database name); the pool walks the list.
    const parsed = new URL(firstHostUrl(url));
    parsed.password = '';
    parsed.searchParams.delete('password');
    return parsed.toString();
  } catch {
    // Validated before, so not reached; were it reached, TypeORM keeps and may print this URL.
    return redactUrl(url);
  }
}
