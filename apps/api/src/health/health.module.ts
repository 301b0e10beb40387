import { type DynamicModule, Module } from '@nestjs/common';
import { TerminusModule } from '@nestjs/terminus';
import { HealthController } from './health.controller.js';
import { MetricsController } from './metrics.controller.js';

@Module({})
export class HealthModule {
  /**
   * During `shutdownDelayMs` (SHUTDOWN_DELAY_MS) after a SIGTERM readiness (and the pool report)
   * answer 503 ("shutting_down") while requests are still served, so a load balancer stops
   * sending before the server closes; liveness stays 200 while the process answers.
   */
  static register(shutdownDelayMs: number): DynamicModule {
    return {
      module: HealthModule,
      imports: [TerminusModule.forRoot({ gracefulShutdownTimeoutMs: shutdownDelayMs })],
      controllers: [HealthController, MetricsController],
    };
  }
}
