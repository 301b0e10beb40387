import { Controller, Get } from '@nestjs/common';
import { HealthCheck, HealthCheckService } from '@nestjs/terminus';
import { DbPoolHealthIndicator } from '@db-pool/db-pool';

@Controller('health')
export class HealthController {
  constructor(
    private readonly health: HealthCheckService,
    private readonly pools: DbPoolHealthIndicator,
  ) {}

  /** Liveness: the process answers. Never touches the database, so an outage restarts no pod. */
  @Get('live')
  @HealthCheck()
  live() {
    return this.health.check([]);
  }

  /** Readiness: every pool reaches its database within DB_POOL_HEALTH_TIMEOUT_MS and is not critical; 503 otherwise. */
  @Get('ready')
  @HealthCheck()
  ready() {
    return this.health.check(this.pools.readiness());
  }

  /** The seed's pool report for every pool: 200 while healthy (up) or warning (degraded), 503 when critical. */
  @Get('db_pool')
  @HealthCheck()
  dbPool() {
    return this.health.check(this.pools.pools());
  }
}
