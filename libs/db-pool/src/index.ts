// The public surface: what a user of the Nest module, of createDbPool or of the pg.Pool drop-in
// needs. Everything else is internal; the lib's own tests import it by path. The README's
// "Public API" lists these names: change both together.

// The module, the factories and the pool
export { DbPoolModule } from './db-pool.module.js';
export { dbPoolConfig } from './config/db-pool.config.js';
export { createDbPool, createDbPoolDataSource, createReplicaRouter } from './create-db-pool.js';
export { DbPool } from './pool/db-pool.js';
export { DbPoolDataSource, poolOf } from './pool/typeorm-options.js';

// Configuration
export type { DbPoolConfig, DbPoolOptions } from './config/db-pool.options.js';
export type { DbPoolLogger } from './pool/logger.js';
export { OPTION_KEYS, type EnvKey } from './config/option-keys.js';
export { DEFAULT_POOL_NAME, lookalikeKeys, readEnvKeys, resolveDbPoolConfig } from './config/resolve-config.js';

// Errors
export {
  DbPoolConfigError,
  PoolAcquireError,
  PoolClosedError,
  PoolConnectError,
  PoolAbortedError,
  PoolDeadlineError,
  PoolFailoverError,
  PoolLeaseError,
  PoolOutcomeUnknownError,
  PoolOverloadedError,
  PoolReleaseError,
  PoolTimeoutError,
  PoolUnavailableError,
  type PoolState,
} from './errors.js';
export { NoHostError } from './pool/connector.js';

// Request deadlines and HTTP
export { currentDeadline, withDeadline, withSignal, type Deadline } from './pool/deadline.js';
export { DbPoolDeadline, DbPoolDeadlineInterceptor, DbPoolDeadlineMiddleware, dbPoolDeadlines } from './http/db-pool-deadline.js';
export { DbPoolExceptionFilter } from './http/db-pool-exception.filter.js';
export { hideQueryValues, poolErrorResponse, type DbPoolErrorResponse } from './http/pool-error-response.js';

// Read-your-writes on replicas
export { ConsistencyTokenError, readYourWritesToken, withReadYourWrites } from './pool/consistency.js';
export { CONSISTENCY_HEADER, DbPoolConsistencyMiddleware, dbPoolConsistency } from './http/db-pool-consistency.js';

// Health, metrics and the monitor
export { DbPoolHealthIndicator } from './health/db-pool.health.js';
export { DbPoolMetrics } from './metrics/db-pool.metrics.js';
export { PoolMonitor, type PoolHealthReport, type PoolStatus } from './monitor/pool-monitor.js';
export { DbPoolRegistry } from './monitor/pool-registry.js';
export type { BudgetDecision, BudgetInputs } from './monitor/budget.js';

// Injection
export {
  InjectDbPool,
  InjectDbPoolConfig,
  InjectPoolMonitor,
  getDbPoolConfigToken,
  getDbPoolReplicasToken,
  getDbPoolToken,
  getPoolMonitorToken,
} from './tokens.js';
export type { ReadReason, ReplicaRouter } from './pool/replicas.js';

// Redaction
export { redactUrl } from './redact.js';
