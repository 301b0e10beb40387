export type { DbPoolConfig, DbPoolOptions } from './config/db-pool.options.js';
export { OPTION_KEYS, type OptionKey } from './config/option-keys.js';
export { DEFAULT_POOL_NAME, describeConfig, resolveDbPoolConfig } from './config/resolve-config.js';
export { dbPoolConfig } from './config/db-pool.config.js';
export { DbPoolModule } from './db-pool.module.js';
export { DB_POOL_MODULE_OPTIONS } from './db-pool.module-definition.js';
export {
  DbPoolConfigError,
  PoolAcquireError,
  PoolConnectError,
  PoolReleaseError,
  PoolTimeoutError,
  type PoolState,
} from './errors.js';
export { DbPool, type DbPoolCounters, type DbPoolLogger, type DbPoolSettings } from './pool/db-pool.js';
export { createPgDriver, poolOf, toPoolSettings, toTypeOrmOptions } from './pool/typeorm-options.js';
export { REDACTED, redactUrl } from './redact.js';
export { InjectDbPool, InjectDbPoolConfig, getDbPoolConfigToken, getDbPoolToken } from './tokens.js';
