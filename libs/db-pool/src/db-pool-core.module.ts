import { Global, Module } from '@nestjs/common';
import { TerminusModule } from '@nestjs/terminus';
import { DbPoolHealthIndicator } from './health/db-pool.health.js';
import { DbPoolMetrics } from './metrics/db-pool.metrics.js';
import { DbPoolRegistry } from './monitor/pool-registry.js';

/** What all pools of an application share: the registry, the health indicator, the metrics. */
@Global()
@Module({
  imports: [TerminusModule],
  providers: [DbPoolRegistry, DbPoolHealthIndicator, DbPoolMetrics],
  exports: [DbPoolRegistry, DbPoolHealthIndicator, DbPoolMetrics],
})
export class DbPoolCoreModule {}
