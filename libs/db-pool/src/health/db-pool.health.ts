import { Injectable } from '@nestjs/common';
import { type HealthIndicatorFunction, type HealthIndicatorResult, HealthIndicatorService } from '@nestjs/terminus';
import { DbPoolRegistry } from '../monitor/pool-registry.js';

/**
 * Terminus indicators for every pool. `pools()` reports each pool's health from its counters
 * (healthy → up, warning → degraded, critical → down) with the pool report as details;
 * `readiness()` checks that each primary pool's server answers, within DB_POOL_HEALTH_TIMEOUT_MS.
 */
@Injectable()
export class DbPoolHealthIndicator {
  constructor(
    private readonly indicators: HealthIndicatorService,
    private readonly registry: DbPoolRegistry,
  ) {}

  /** One indicator per pool (key: the pool name), for `HealthCheckService.check()`. */
  pools(): HealthIndicatorFunction[] {
    return this.registry.all().map((m) => () => this.pool(m.name));
  }

  /**
   * One readiness indicator per pool that is not a read replica's (key: the pool name). A replica
   * that cannot serve leaves rotation and the primary serves its reads, so the instance is as
   * ready as its primary pools; were replicas pinged, one replica down would take every instance
   * out of the load balancer at once. Its standing is in `pools()` (degraded, with the reason).
   */
  readiness(): HealthIndicatorFunction[] {
    return this.registry
      .all()
      .filter((m) => !m.isReplica)
      .map((m) => () => this.ready(m.name));
  }

  /** A pool's health from its counters alone: never waits on the pool. */
  pool(name: string): HealthIndicatorResult {
    const report = this.registry.get(name).getHealthReport();
    const session = this.indicators.check(name);
    switch (report.pool_status.health) {
      case 'healthy':
        return session.up({ ...report });
      case 'warning':
        return session.degraded({ ...report });
      case 'critical':
        return session.down({ ...report });
    }
  }

  /**
   * Ready when `SELECT 1` answers within the health timeout, acquire included. A busy pool is
   * not refused for its utilization: under a spike every replica would turn unready at once
   * while requests are still being served. One whose connections do not come back within the
   * timeout fails the probe, and no probe waits longer. A connection whose `SELECT 1` answers
   * late is kept only if it answers within DB_VALIDATION_TIMEOUT_MS.
   */
  async ready(name: string): Promise<HealthIndicatorResult> {
    const monitor = this.registry.get(name);
    const session = this.indicators.check(name);
    const timeoutMs = monitor.config.healthTimeoutMs;
    const started = performance.now();
    try {
      await monitor.pool.ping(timeoutMs);
      return session.up({ response_time_ms: Math.round(performance.now() - started) });
    } catch (err) {
      return session.down({
        message: `database not reachable within ${timeoutMs} ms: ${monitor.describeError(err as Error)}`,
        pool_status: monitor.getPoolStatus(),
      });
    }
  }
}
