import pg from 'pg';
import type { TypeOrmModuleOptions } from '@nestjs/typeorm';
import type { DataSource } from 'typeorm';
import type { DbPoolConfig } from '../config/db-pool.options.js';
import { DbPool, type DbPoolLogger, type DbPoolSettings } from './db-pool.js';

export function toPoolSettings(config: DbPoolConfig, logger?: DbPoolLogger): DbPoolSettings {
  return {
    name: config.name,
    poolSize: config.poolSize,
    maxOverflow: config.maxOverflow,
    poolTimeoutMs: config.poolTimeoutMs,
    connectTimeoutMs: config.connectTimeoutMs,
    overflowIdleTimeoutMs: config.overflowIdleTimeoutMs,
    recycleMs: config.recycleMs,
    recycleJitter: config.recycleJitter,
    prePing: config.prePing,
    prePingBypassMs: config.prePingBypassMs,
    validationTimeoutMs: config.validationTimeoutMs,
    resetSession: config.resetSession,
    leakThresholdMs: config.leakThresholdMs,
    leakStackRate: config.leakStackRate,
    shutdownGraceMs: config.shutdownGraceMs,
    logger,
  };
}

/**
 * The `pg` module as TypeORM should see it: everything of pg's, with `Pool` bound to this
 * pool's settings. TypeORM calls `new driver.Pool(options)` with its own connection options.
 */
export function createPgDriver(settings: DbPoolSettings, credentials: { connectionString?: string; password?: string } = {}): typeof pg {
  class ConfiguredDbPool extends DbPool {
    constructor(options: pg.PoolConfig) {
      // The credentials travel in this closure, not in TypeORM's options, so a logged or
      // inspected DataSource never shows the password (DbPool hides it in its own options).
      super({
        ...options,
        ...(credentials.connectionString !== undefined ? { connectionString: credentials.connectionString } : {}),
        ...(credentials.password !== undefined ? { password: credentials.password } : {}),
        dbPool: settings,
      });
    }
  }
  return Object.create(pg, { Pool: { value: ConfiguredDbPool, enumerable: true } }) as typeof pg;
}

/** The pg client options db-pool sets per connection (TypeORM passes them on as `extra`). */
export function toPgClientOptions(config: DbPoolConfig): pg.ClientConfig {
  const options: pg.ClientConfig = {};
  if (config.statementTimeoutMs > 0) options.statement_timeout = config.statementTimeoutMs;
  if (config.queryTimeoutMs > 0) options.query_timeout = config.queryTimeoutMs;
  return options;
}

/** Maps the validated configuration to TypeORM DataSource options (a pure function). */
export function toTypeOrmOptions(config: DbPoolConfig, logger?: DbPoolLogger): TypeOrmModuleOptions & { type: 'postgres' } {
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
    driver: createPgDriver(toPoolSettings(config, logger), { connectionString: config.url, password: config.password }),
    extra: toPgClientOptions(config),
  };
}

/** The pool behind a DataSource built from {@link toTypeOrmOptions}. */
export function poolOf(dataSource: DataSource): DbPool {
  const pool = (dataSource.driver as unknown as { master?: unknown }).master;
  if (!(pool instanceof DbPool)) {
    throw new Error('this DataSource is not connected through db-pool (was it built by DbPoolModule and initialized?)');
  }
  return pool;
}

function withoutPassword(url: string): string {
  try {
    const parsed = new URL(url);
    parsed.password = '';
    parsed.searchParams.delete('password');
    return parsed.toString();
  } catch {
    return url; // validated before; never reached
  }
}
