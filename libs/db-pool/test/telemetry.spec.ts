// OpenTelemetry: the semantic-convention instruments read from the same counters as /metrics,
// span events for acquires that waited or validated, and leak reports that name the trace.
import 'reflect-metadata';
import { context, createNoopMeter, metrics, trace } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { DataPointType, type HistogramMetricData, MeterProvider, type MetricData } from '@opentelemetry/sdk-metrics';
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';
import { Test, type TestingModule } from '@nestjs/testing';
import type pg from 'pg';
import { type DbPool, DbPoolMetrics, DbPoolModule, getDbPoolToken } from '../src/index.js';
import { createPoolTimings } from '../src/pool/histogram.js';
import { bindOtelMetrics } from '../src/pool/otel.js';
import { capturingLogger, createTestPool, eventually, testOptions } from './support/db.js';
import { InMemoryReader } from './support/otel.js';

const POOL = 'otel';
const NAME_ATTRIBUTE = 'db.client.connection.pool.name';

describe('OpenTelemetry', () => {
  const reader = new InMemoryReader();
  const meterProvider = new MeterProvider({ readers: [reader] });
  const spans = new InMemorySpanExporter();
  const tracerProvider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(spans)] });
  const contextManager = new AsyncLocalStorageContextManager();
  let moduleRef: TestingModule;

  beforeAll(async () => {
    // A pool made before any SDK is registered binds nothing: the API is a no-op.
    const early = await createTestPool({ name: 'before-sdk', poolSize: 1, maxOverflow: 0 });
    expect(early.timings.wait.mirror).toBeUndefined();
    await early.end();

    expect(metrics.setGlobalMeterProvider(meterProvider)).toBe(true);
    expect(trace.setGlobalTracerProvider(tracerProvider)).toBe(true);
    expect(context.setGlobalContextManager(contextManager.enable())).toBe(true);
    moduleRef = await Test.createTestingModule({
      imports: [DbPoolModule.forRoot(testOptions({ name: POOL, poolSize: 2, maxOverflow: 1, poolTimeoutSeconds: 1, envPrefix: 'OTEL_' }))],
    }).compile();
    await moduleRef.init();
  });

  afterAll(async () => {
    await moduleRef?.close();
    await meterProvider.shutdown();
    await tracerProvider.shutdown();
    contextManager.disable();
    metrics.disable();
    trace.disable();
    context.disable();
  });

  it('reports every db.client.connection.* instrument by the convention, agreeing with /metrics at the same moment', async () => {
    const pool = moduleRef.get<DbPool>(getDbPoolToken(POOL));
    // Some history: queries, a connection opened past the pool size, a timeout.
    for (let i = 0; i < 5; i++) await pool.query('SELECT 1');
    const held = await Promise.all([pool.connect(), pool.connect(), pool.connect()]);
    await expect(pool.connect()).rejects.toThrow(/timeout exceeded/);
    held[2].release();
    // Two checked out, one idle, nobody waiting; then one waiting.
    const waiting = pool.connect();
    await eventually(() => pool.waitingCount === 0 || pool.state().idle === 0);
    held[0].release();
    (await waiting).release();
    const stillHeld: pg.PoolClient[] = [held[1]];

    // Both read now, with nothing moving in between.
    const { resourceMetrics, errors } = await reader.collect();
    const prom = await moduleRef.get(DbPoolMetrics).registry.getMetricsAsJSON();
    stillHeld.forEach((c) => c.release());
    expect(errors).toEqual([]);

    const otel = new Map<string, MetricData>();
    for (const scope of resourceMetrics.scopeMetrics) {
      expect(scope.scope.name).toBe('@db-pool/db-pool');
      for (const m of scope.metrics) otel.set(m.descriptor.name, m);
    }
    const promValue = (name: string, labels: Record<string, string> = {}) => {
      const metric = prom.find((m) => m.name === name);
      const sample = metric?.values.find(
        (v) => v.labels.pool_name === POOL && Object.entries(labels).every(([k, value]) => String(v.labels[k]) === value),
      );
      if (!sample) throw new Error(`no ${name} ${JSON.stringify(labels)} for pool ${POOL} in /metrics`);
      return sample.value;
    };
    const point = (name: string, unit: string, extra: Record<string, string> = {}) => {
      const metric = otel.get(name);
      expect([name, metric?.descriptor.unit]).toEqual([name, unit]);
      const found = metric!.dataPoints.find(
        (p) => p.attributes[NAME_ATTRIBUTE] === POOL && Object.entries(extra).every(([k, v]) => p.attributes[k] === v),
      );
      expect([name, Boolean(found)]).toEqual([name, true]);
      return { metric: metric!, value: found!.value };
    };
    const sum = (name: string, unit: string, monotonic: boolean, extra: Record<string, string> = {}) => {
      const { metric, value } = point(name, unit, extra);
      expect([name, metric.dataPointType, (metric as { isMonotonic?: boolean }).isMonotonic]).toEqual([name, DataPointType.SUM, monotonic]);
      return value as number;
    };

    expect(sum('db.client.connection.count', '{connection}', false, { 'db.client.connection.state': 'idle' })).toBe(
      promValue('db_client_connections_usage', { state: 'idle' }),
    );
    expect(sum('db.client.connection.count', '{connection}', false, { 'db.client.connection.state': 'used' })).toBe(
      promValue('db_client_connections_usage', { state: 'used' }),
    );
    expect(promValue('db_client_connections_usage', { state: 'used' })).toBe(1);
    expect(sum('db.client.connection.idle.max', '{connection}', false)).toBe(promValue('db_client_connection_idle_max'));
    expect(sum('db.client.connection.idle.min', '{connection}', false)).toBe(promValue('db_client_connection_idle_min'));
    expect(sum('db.client.connection.max', '{connection}', false)).toBe(promValue('db_client_connection_max'));
    expect(sum('db.client.connection.pending_requests', '{request}', false)).toBe(promValue('db_client_connection_pending_requests'));
    const timeouts = sum('db.client.connection.timeouts', '{timeout}', true);
    expect(timeouts).toBe(promValue('db_client_connection_timeouts_total'));
    expect(timeouts).toBe(1);

    for (const [otelName, promName] of [
      ['db.client.connection.create_time', 'db_client_connection_create_time_seconds'],
      ['db.client.connection.wait_time', 'db_client_connection_wait_time_seconds'],
      ['db.client.connection.use_time', 'db_client_connection_use_time_seconds'],
    ] as const) {
      const { metric, value } = point(otelName, 's');
      expect([otelName, metric.dataPointType]).toEqual([otelName, DataPointType.HISTOGRAM]);
      const h = value as HistogramMetricData['dataPoints'][number]['value'];
      const promSamples = prom.find((m) => m.name === promName)!.values.filter((v) => v.labels.pool_name === POOL);
      const count = promSamples.find((v) => (v as { metricName?: string }).metricName === `${promName}_count`)!.value;
      const total = promSamples.find((v) => (v as { metricName?: string }).metricName === `${promName}_sum`)!.value;
      expect([otelName, h.count]).toEqual([otelName, count]);
      expect(h.count).toBeGreaterThan(0);
      expect(h.sum).toBeCloseTo(total, 9);
      // The same bucket bounds, and the same count in each (Prometheus' are cumulative).
      const cumulative = promSamples
        .filter((v) => (v as { metricName?: string }).metricName === `${promName}_bucket` && v.labels.le !== '+Inf')
        .map((v) => [Number(v.labels.le), v.value]);
      expect(h.buckets.boundaries).toEqual(cumulative.map(([le]) => le));
      let running = 0;
      expect(h.buckets.counts.slice(0, -1).map((c) => (running += c))).toEqual(cumulative.map(([, n]) => n));
    }
  });

  it('records an acquire that waited or validated on the active span, and nothing for one that took an idle connection at once', async () => {
    const pool = await createTestPool({ name: 'otel-spans', poolSize: 1, maxOverflow: 0, prePingBypassMs: 0 });
    try {
      const tracer = trace.getTracer('test');
      spans.reset();
      await tracer.startActiveSpan('quick', async (span) => {
        // Pre-pinged (bypass 0): one event, no wait to speak of.
        (await pool.connect()).release();
        span.end();
      });
      const held = await pool.connect();
      await tracer.startActiveSpan('queued', async (span) => {
        const waiting = pool.connect();
        await eventually(() => pool.waitingCount === 1);
        setTimeout(() => held.release(), 50);
        (await waiting).release();
        span.end();
      });
      const byName = new Map(spans.getFinishedSpans().map((s) => [s.name, s]));
      const quick = byName.get('quick')!.events.filter((e) => e.name === 'db_pool.acquire');
      expect(quick).toHaveLength(1);
      expect(quick[0].attributes).toMatchObject({
        'db.client.connection.pool.name': 'otel-spans',
        'db_pool.pre_pings': 1,
        'db_pool.retries': 0,
      });
      const queued = byName.get('queued')!.events.filter((e) => e.name === 'db_pool.acquire');
      expect(queued).toHaveLength(1);
      expect(queued[0].attributes!['db_pool.wait_ms']).toBeGreaterThanOrEqual(40);
      // Outside any span: nothing to record on, nothing recorded.
      spans.reset();
      (await pool.connect()).release();
      expect(spans.getFinishedSpans()).toEqual([]);
    } finally {
      await pool.end();
    }
  });

  it('names the trace and span that were active at checkout in a leak report', async () => {
    const logger = capturingLogger();
    const pool = await createTestPool({ name: 'otel-leak', poolSize: 1, maxOverflow: 0, leakThresholdSeconds: 2 }, logger);
    try {
      const tracer = trace.getTracer('test');
      let ids: { traceId: string; spanId: string } | undefined;
      const client = await tracer.startActiveSpan('leaky request', async (span) => {
        ids = span.spanContext();
        const c = await pool.connect();
        span.end();
        return c;
      });
      expect(await eventually(() => logger.lines.some((l) => l.includes('possible connection leak')), 5_000)).toBe(true);
      const line = logger.lines.find((l) => l.includes('possible connection leak'))!;
      expect(line).toContain(`trace_id=${ids!.traceId} span_id=${ids!.spanId}`);
      client.release();
    } finally {
      await pool.end();
    }
  });

  it('binds nothing on the no-op meter (no SDK registered): no mirror on the hot path', () => {
    const pool = { name: 'noop', timings: createPoolTimings(), state: () => ({ idle: 0, active: 0 }), waiting: () => 0 };
    const binding = bindOtelMetrics({ ...pool, counters: { timeouts: 0 }, capacity: { min: 1, max: 1 } }, createNoopMeter());
    expect(binding).toBeUndefined();
    expect(pool.timings.wait.mirror).toBeUndefined();
  });
});
