import type { DbPoolConfig } from '../config/db-pool.options.js';
import type { PgPoolOptions } from './settings.js';

/**
 * The one mapping from db-pool's validated configuration to pg's options: the connection, each
 * client's options (`application_name`, `statement_timeout`, `query_timeout`), and whatever
 * `typeorm.extra` gives pg (`keepAlive`, `maxUses`, `ssl`, …) — db-pool's own keys winning.
 */
export function toPgPoolOptions(config: DbPoolConfig): PgPoolOptions {
  const options: PgPoolOptions = { ...(config.typeorm.extra as PgPoolOptions | undefined), application_name: config.applicationName };
  if (config.host !== undefined) options.host = config.host;
  if (config.port !== undefined) options.port = config.port;
  if (config.username !== undefined) options.user = config.username;
  if (config.database !== undefined) options.database = config.database;
  if (config.statementTimeoutMs > 0) options.statement_timeout = config.statementTimeoutMs;
  if (config.queryTimeoutMs > 0) options.query_timeout = config.queryTimeoutMs;
  // Readable, not listed: logging or inspecting the options shows neither.
  if (config.url !== undefined)
    Object.defineProperty(options, 'connectionString', { value: config.url, enumerable: false, writable: true, configurable: true });
  if (config.password !== undefined)
    Object.defineProperty(options, 'password', { value: config.password, enumerable: false, writable: true, configurable: true });
  return options;
}
