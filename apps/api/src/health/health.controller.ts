import { Controller, Get, ServiceUnavailableException } from '@nestjs/common';
import { HealthCheck, type HealthCheckResult, HealthCheckService } from '@nestjs/terminus';
import { DEFAULT_POOL_NAME, DbPoolHealthIndicator } from '@db-pool/db-pool';

/** The pool report's fields that also stand at the top level, copied from the default pool's entry. */
const TOP_LEVEL_FIELDS = ['timestamp', 'pool_status', 'recommendations', 'leak_detected', 'configuration'] as const;

/**
 * Terminus' envelope with the default pool's report beside it, so the operators' commands of the
 * SQLAlchemy design this api reproduces (`curl …/health/db_pool | jq '.pool_status'`,
 * `jq '.leak_detected'`) work unchanged; every pool, the default one included, stays under
 * `details` (and `info`/`error`) as Terminus puts it.
 */
function withTopLevelReport(result: HealthCheckResult): HealthCheckResult & Record<string, unknown> {
  const entry = (result.details?.[DEFAULT_POOL_NAME] ?? {}) as Record<string, unknown>;
  const report: Record<string, unknown> = {};
  for (const field of TOP_LEVEL_FIELDS) if (field in entry) report[field] = entry[field];
  return { ...result, ...report };
}

@Controller('health')
export class HealthController {
  constructor(
    private readonly health: HealthCheckService,
    private readonly pools: DbPoolHealthIndicator,
  ) {}

  /**
   * Liveness: the process answers. Never touches the database, so an outage restarts no pod, and
   * not Terminus' check either: during SHUTDOWN_DELAY_MS it answers every check 503
   * `shutting_down`, and a liveness probe would then kill a pod that is draining as designed.
   */
  @Get('live')
  @HealthCheck()
  live(): HealthCheckResult {
    return { status: 'ok', info: {}, error: {}, details: {} };
  }

  /**
   * Readiness: every pool but the read replicas' answers `SELECT 1` within DB_POOL_HEALTH_TIMEOUT_MS;
   * 503 otherwise. A replica that cannot serve leaves rotation and the primary serves its reads,
   * so it never makes the instance unready; `/health/db_pool` shows it degraded, with the reason.
   */
  @Get('ready')
  @HealthCheck()
  ready() {
    return this.health.check(this.pools.readiness());
  }

  /**
   * The pool report of every pool: 200 while healthy (up) or warning (degraded), 503 when
   * critical; the default pool's report is also at the top level (the shape operators' scripts read). A replica
   * out of rotation is warning (degraded) whatever its counters say: it takes no reads.
   */
  @Get('db_pool')
  @HealthCheck()
  async dbPool() {
    try {
      return withTopLevelReport(await this.health.check(this.pools.pools()));
    } catch (err) {
      // Terminus answers 503 by throwing, with the envelope as the response.
      if (err instanceof ServiceUnavailableException)
        throw new ServiceUnavailableException(withTopLevelReport(err.getResponse() as HealthCheckResult));
      throw err;
    }
  }
}
