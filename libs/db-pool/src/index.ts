// The public surface: what a user of the Nest module, of createDbPool or of the pg.Pool drop-in needs.
export type { DbPoolConfig, DbPoolOptions } from './config/db-pool.options.js';
export { OPTION_KEYS, type EnvKey, type OptionKey } from './config/option-keys.js';
export { DEFAULT_POOL_NAME, describeConfig, lookalikeKeys, readEnvKeys, resolveDbPoolConfig } from './config/resolve-config.js';
export { dbPoolConfig } from './config/db-pool.config.js';
export { createDbPool, createDbPoolDataSource } from './create-db-pool.js';
export { DbPoolModule } from './db-pool.module.js';
export {
  DbPoolConfigError,
  PoolAcquireError,
  PoolClosedError,
  PoolConnectError,
  PoolDeadlineError,
  PoolFailoverError,
  PoolLeaseError,
  PoolOutcomeUnknownError,
  PoolOverloadedError,
  PoolReleaseError,
  type OutcomeUnknownReason,
  PoolTimeoutError,
  PoolUnavailableError,
  type PoolState,
} from './errors.js';
export { DbPool } from './pool/db-pool.js';
export type { BreakerState } from './pool/breaker.js';
export type { ConcurrencyLimitState } from './pool/concurrency-limit.js';
export { currentDeadline, deadlineLeftMs, withDeadline, type Deadline } from './pool/deadline.js';
export { NoHostError, type HostRole, type HostStateName, type HostStatus } from './pool/connector.js';
export type { ReplicaRouter, ReplicaStatus } from './pool/replicas.js';
export { LOAD_BALANCE_HOSTS, TARGET_SESSION_ATTRS, type LoadBalanceHosts, type TargetSessionAttrs } from './pool/hosts.js';
export type { StackCaptureStats } from './pool/leak-tracker.js';
export type { DbPoolLogger } from './pool/logger.js';
export type { DbPoolSettings, PgPoolOptions } from './pool/settings.js';
export type { ConnectHealth, DbPoolCounters } from './pool/tracker.js';
export type { PoolTimings } from './pool/histogram.js';
export { DbPoolDataSource, poolOf } from './pool/typeorm-options.js';
export { REDACTED, redactUrl } from './redact.js';
export {
  InjectDbPool,
  InjectDbPoolConfig,
  InjectPoolMonitor,
  getDbPoolConfigToken,
  getDbPoolReplicasToken,
  getDbPoolToken,
  getPoolMonitorToken,
} from './tokens.js';
export { DbPoolHealthIndicator } from './health/db-pool.health.js';
export { DbPoolDeadline, DbPoolDeadlineInterceptor, DEADLINE_HEADER } from './http/db-pool-deadline.js';
export {
  DbPoolExceptionFilter,
  RETRY_AFTER_SECONDS,
  type PoolUnavailableBody,
  type PoolUnavailableCondition,
} from './http/db-pool-exception.filter.js';
export {
  hideQueryValues,
  poolErrorResponse,
  type DbPoolErrorBody,
  type DbPoolErrorCondition,
  type DbPoolErrorResponse,
} from './http/pool-error-response.js';
export { DbPoolMetrics } from './metrics/db-pool.metrics.js';
export { RECOMMENDATIONS } from './monitor/messages.constant.js';
export {
  PoolMonitor,
  type PoolConfiguration,
  type PoolHealth,
  type PoolBreakerReport,
  type PoolHealthReport,
  type PoolHostReport,
  type PoolReplicaReport,
  type PoolMonitorOptions,
  type PoolStatus,
} from './monitor/pool-monitor.js';
export { DbPoolRegistry } from './monitor/pool-registry.js';
export type { ServerHeadroom } from './monitor/server-headroom.js';
export type { PgBouncerStats } from './monitor/pgbouncer-stats.js';
