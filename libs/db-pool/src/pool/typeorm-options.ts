import type { TypeOrmModuleOptions } from '@nestjs/typeorm';
import pg from 'pg';
import type { DataSource } from 'typeorm';
import type { DbPoolConfig } from '../config/db-pool.options.js';
import { DbPool } from './db-pool.js';
import { firstHostUrl } from './hosts.js';
import { typeOrmPoolsOf } from './pg-internals.js';

/**
 * TypeORM DataSource options for a pool built from the same configuration (a pure function).
 * TypeORM reaches the pool through its `driver` option: the `pg` module with `Pool` standing for
 * the given pool, so TypeORM's `new Pool(...)` gets it — its own connection options are not used,
 * and the password never enters TypeORM's options.
 */
export function toTypeOrmOptions(config: DbPoolConfig, pool: DbPool): TypeOrmModuleOptions & { type: 'postgres' } {
  return {
    retryAttempts: 1,
    ...config.typeorm,
    type: 'postgres',
    name: config.name,
    url: config.url === undefined ? undefined : withoutPassword(config.url),
    host: config.host,
    port: config.port,
    username: config.username,
    database: config.database,
    applicationName: config.applicationName,
    poolSize: config.poolSize + config.maxOverflow,
    connectTimeoutMS: config.connectTimeoutMs,
    driver: pgWith(pool),
    extra: {},
  };
}

/** The `pg` module as TypeORM should see it: everything of pg's, with `Pool` answering with `pool`. */
function pgWith(pool: DbPool): typeof pg {
  function ExistingPool(): DbPool {
    return pool;
  }
  return Object.create(pg, { Pool: { value: ExistingPool, enumerable: true } }) as typeof pg;
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
    return url; // validated before; never reached
  }
}
