import { Controller, Get } from '@nestjs/common';
import { HealthCheck, HealthCheckService } from '@nestjs/terminus';

@Controller('health')
export class HealthController {
  constructor(private readonly health: HealthCheckService) {}

  /** Liveness: the process answers. Never touches the database, so an outage restarts no pod. */
  @Get('live')
  @HealthCheck()
  live() {
    return this.health.check([]);
  }
}
