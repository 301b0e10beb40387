import { AggregationTemporality, MetricReader } from '@opentelemetry/sdk-metrics';

/** An in-memory reader: collect() on demand, cumulative, as Prometheus is. */
export class InMemoryReader extends MetricReader {
  constructor() {
    super({ aggregationTemporalitySelector: () => AggregationTemporality.CUMULATIVE });
  }
  protected async onForceFlush(): Promise<void> {}
  protected async onShutdown(): Promise<void> {}
}
