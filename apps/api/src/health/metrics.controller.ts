import { Controller, Get, Header } from '@nestjs/common';
import { DbPoolMetrics } from '@db-pool/db-pool';
import { Registry } from 'prom-client';

@Controller()
export class MetricsController {
  constructor(private readonly metrics: DbPoolMetrics) {}

  /** Prometheus text format; read from the pools' counters, never waits on a pool. */
  @Get('metrics')
  @Header('Content-Type', Registry.PROMETHEUS_CONTENT_TYPE)
  @Header('Cache-Control', 'no-store')
  scrape(): Promise<string> {
    return this.metrics.metrics();
  }
}
