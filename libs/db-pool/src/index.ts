export type { DbPoolConfig, DbPoolOptions } from './config/db-pool.options.js';
export { OPTION_KEYS, type OptionKey } from './config/option-keys.js';
export { DEFAULT_POOL_NAME, describeConfig, resolveDbPoolConfig } from './config/resolve-config.js';
export { dbPoolConfig } from './config/db-pool.config.js';
export { DbPoolModule } from './db-pool.module.js';
export { DB_POOL_MODULE_OPTIONS } from './db-pool.module-definition.js';
export {
  DbPoolConfigError,
  PoolAcquireError,
  PoolClosedError,
  PoolConnectError,
  PoolReleaseError,
  PoolTimeoutError,
  type PoolState,
} from './errors.js';
export { DbPool, type ConnectHealth, type DbPoolCounters, type DbPoolLogger, type DbPoolSettings } from './pool/db-pool.js';
export { CheckoutLeakTracker, type LeakTrackerOptions, type StackCaptureStats } from './pool/leak-tracker.js';
export { createPgDriver, poolOf, toPgClientOptions, toPoolSettings, toTypeOrmOptions } from './pool/typeorm-options.js';
export { REDACTED, redactUrl } from './redact.js';
export { InjectDbPool, InjectDbPoolConfig, InjectPoolMonitor, getDbPoolConfigToken, getDbPoolToken, getPoolMonitorToken } from './tokens.js';
export { DbPoolCoreModule } from './db-pool-core.module.js';
export { DbPoolHealthIndicator } from './health/db-pool.health.js';
export { DbPoolExceptionFilter, RETRY_AFTER_SECONDS, type PoolUnavailableBody, type PoolUnavailableCondition } from './http/db-pool-exception.filter.js';
export { DbPoolMetrics } from './metrics/db-pool.metrics.js';
export { RECOMMENDATIONS } from './monitor/messages.constant.js';
export {
  PoolMonitor,
  type PoolConfiguration,
  type PoolHealth,
  type PoolHealthReport,
  type PoolMonitorOptions,
  type PoolStatus,
} from './monitor/pool-monitor.js';
export { DbPoolRegistry } from './monitor/pool-registry.js';
export type { ServerHeadroom } from './monitor/server-headroom.js';
export type { PgBouncerStats } from './monitor/pgbouncer-stats.js';
export { Histogram, type PoolTimings } from './pool/histogram.js';
