import { Module } from '@nestjs/common';
import { TerminusModule } from '@nestjs/terminus';
import { HealthController } from './health.controller.js';
import { MetricsController } from './metrics.controller.js';

@Module({
  // During SHUTDOWN_DELAY_MS after a SIGTERM the health routes answer 503 ("shutting_down")
  // while requests are still served, so a load balancer stops sending before the server closes.
  imports: [TerminusModule.forRoot({ gracefulShutdownTimeoutMs: Number(process.env.SHUTDOWN_DELAY_MS || 0) })],
  controllers: [HealthController, MetricsController],
})
export class HealthModule {}
