// A MeterProvider registered after the pool was built still gets the pool's instruments: the
// pool looks for one once a second until it finds it (OpenTelemetry's metrics API says nothing
// when one is registered).
import { metrics } from '@opentelemetry/api';
import { DataPointType, type HistogramMetricData, MeterProvider } from '@opentelemetry/sdk-metrics';
import { OTEL_LOOKUP_INTERVAL_MS } from '../src/pool/otel.js';
import { createTestPool, eventually } from './support/db.js';
import { InMemoryReader } from './support/otel.js';

afterAll(() => metrics.disable());

it('a MeterProvider registered after the pool was built receives its db.client.connection.* instruments within a second', async () => {
  const pool = await createTestPool({ name: 'otel-late', poolSize: 1, maxOverflow: 0 });
  const reader = new InMemoryReader();
  const provider = new MeterProvider({ readers: [reader] });
  try {
    // Built with no SDK registered: nothing bound yet.
    expect(pool.timings.wait.mirror).toBeUndefined();
    expect(metrics.setGlobalMeterProvider(provider)).toBe(true);
    const registeredAt = Date.now();
    expect(await eventually(() => pool.timings.wait.mirror !== undefined, 3 * OTEL_LOOKUP_INTERVAL_MS)).toBe(true);
    expect(Date.now() - registeredAt).toBeLessThanOrEqual(OTEL_LOOKUP_INTERVAL_MS + 500);
    await pool.query('SELECT 1');
    const { resourceMetrics } = await reader.collect();
    const byName = new Map(resourceMetrics.scopeMetrics.flatMap((s) => s.metrics).map((m) => [m.descriptor.name, m]));
    const count = byName.get('db.client.connection.count');
    expect(count?.dataPoints.map((p) => [p.attributes['db.client.connection.state'], p.value])).toEqual(
      expect.arrayContaining([
        ['idle', 1],
        ['used', 0],
      ]),
    );
    expect(count?.dataPoints.every((p) => p.attributes['db.client.connection.pool.name'] === 'otel-late')).toBe(true);
    const wait = byName.get('db.client.connection.wait_time') as HistogramMetricData | undefined;
    expect(wait?.dataPointType).toBe(DataPointType.HISTOGRAM);
    expect(wait?.dataPoints[0].value.count).toBe(1);
  } finally {
    await pool.end();
    await provider.shutdown();
  }
});
