import { type Attributes, type BatchObservableCallback, createNoopMeter, type Meter, metrics, type Observable } from '@opentelemetry/api';
import { CREATE_TIME_BUCKETS, type PoolTimings, USE_TIME_BUCKETS, WAIT_TIME_BUCKETS } from './histogram.js';

/** The instrumentation scope db-pool's instruments and span events carry. */
export const OTEL_SCOPE = '@db-pool/db-pool';

/** OpenTelemetry's attribute names for a connection pool (semantic conventions, database client metrics). */
export const POOL_NAME_ATTRIBUTE = 'db.client.connection.pool.name';
export const STATE_ATTRIBUTE = 'db.client.connection.state';

/** The no-op API's histogram: what every meter returns while no SDK is registered. */
const NOOP_HISTOGRAM = createNoopMeter().createHistogram('db-pool.noop');

/** What the OpenTelemetry instruments read from a pool: the same counters `/metrics` reads. */
export interface OtelPoolSource {
  readonly name: string;
  readonly timings: PoolTimings;
  state(): { idle: number; active: number };
  waiting(): number;
  readonly counters: { timeouts: number };
  /** DB_POOL_SIZE and DB_POOL_SIZE + DB_MAX_OVERFLOW. */
  readonly capacity: { min: number; max: number };
}

/** The instruments of one pool, bound while it lives. */
export interface OtelBinding {
  unbind(): void;
}

/**
 * Reports a pool through `@opentelemetry/api`, by the database-client connection-pool semantic
 * conventions (`db.client.connection.*`): `count` (by `db.client.connection.state`, `idle` |
 * `used`), `idle.max`, `idle.min`, `max`, `pending_requests` and `timeouts` as observable
 * instruments read at collection time from the pool's own counters, and `create_time`,
 * `wait_time` and `use_time` as histograms fed from the pool's own histograms' observations (the
 * same values, and the same bucket bounds, as `/metrics`). Every instrument carries
 * `db.client.connection.pool.name`.
 *
 * When the application has registered no MeterProvider (the API is a no-op), nothing is bound and
 * nothing is added to the pool's hot path ({@link bindOtelMetricsWhenRegistered} binds later).
 */
export function bindOtelMetrics(pool: OtelPoolSource, meter: Meter = metrics.getMeter(OTEL_SCOPE)): OtelBinding | undefined {
  const histogram = (name: string, description: string, bounds: number[]) =>
    meter.createHistogram(name, { unit: 's', description, advice: { explicitBucketBoundaries: bounds } });
  const wait = histogram(
    'db.client.connection.wait_time',
    'The time it took to obtain an open connection from the pool.',
    WAIT_TIME_BUCKETS,
  );
  if (wait === NOOP_HISTOGRAM) return undefined;
  const use = histogram(
    'db.client.connection.use_time',
    'The time between borrowing a connection and returning it to the pool.',
    USE_TIME_BUCKETS,
  );
  const create = histogram('db.client.connection.create_time', 'The time it took to create a new connection.', CREATE_TIME_BUCKETS);
  const attributes: Attributes = { [POOL_NAME_ATTRIBUTE]: pool.name };
  const idleAttributes: Attributes = { ...attributes, [STATE_ATTRIBUTE]: 'idle' };
  const usedAttributes: Attributes = { ...attributes, [STATE_ATTRIBUTE]: 'used' };
  pool.timings.wait.mirror = (seconds) => wait.record(seconds, attributes);
  pool.timings.use.mirror = (seconds) => use.record(seconds, attributes);
  pool.timings.create.mirror = (seconds) => create.record(seconds, attributes);

  const connections = { unit: '{connection}' };
  const count = meter.createObservableUpDownCounter('db.client.connection.count', {
    ...connections,
    description: 'The number of connections that are currently in state described by the state attribute.',
  });
  const idleMax = meter.createObservableUpDownCounter('db.client.connection.idle.max', {
    ...connections,
    description: 'The maximum number of idle open connections allowed.',
  });
  const idleMin = meter.createObservableUpDownCounter('db.client.connection.idle.min', {
    ...connections,
    description: 'The minimum number of idle open connections allowed.',
  });
  const max = meter.createObservableUpDownCounter('db.client.connection.max', {
    ...connections,
    description: 'The maximum number of open connections allowed.',
  });
  const pending = meter.createObservableUpDownCounter('db.client.connection.pending_requests', {
    unit: '{request}',
    description: 'The number of current pending requests for an open connection.',
  });
  const timeouts = meter.createObservableCounter('db.client.connection.timeouts', {
    unit: '{timeout}',
    description: 'The number of connection timeouts that have occurred trying to obtain a connection from the pool.',
  });
  const observables: Observable[] = [count, idleMax, idleMin, max, pending, timeouts];
  const observe: BatchObservableCallback = (result) => {
    const { idle, active } = pool.state();
    result.observe(count, idle, idleAttributes);
    result.observe(count, active, usedAttributes);
    // Idle connections above DB_POOL_SIZE are overflow, closed after DB_POOL_OVERFLOW_IDLE_TIMEOUT:
    // all of the capacity may sit idle until then.
    result.observe(idleMax, pool.capacity.max, attributes);
    result.observe(idleMin, pool.capacity.min, attributes);
    result.observe(max, pool.capacity.max, attributes);
    result.observe(pending, pool.waiting(), attributes);
    result.observe(timeouts, pool.counters.timeouts, attributes);
  };
  meter.addBatchObservableCallback(observe, observables);
  return {
    unbind() {
      meter.removeBatchObservableCallback(observe, observables);
      pool.timings.wait.mirror = pool.timings.use.mirror = pool.timings.create.mirror = undefined;
    },
  };
}

/** How often a pool built before any MeterProvider was registered looks for one (ms). */
export const OTEL_LOOKUP_INTERVAL_MS = 1_000;

/**
 * Binds a pool's instruments to the global MeterProvider: now, if one is registered, else as soon
 * as one is. OpenTelemetry's metrics API hands out no-op meters until a provider is registered and
 * does not tell anyone when one is, so until then the pool looks once every
 * {@link OTEL_LOOKUP_INTERVAL_MS} (an unref'd timer, off the hot path), and stops when it has
 * bound or the pool ends. Values recorded before the binding are not replayed: the observable
 * instruments read the pool's counters and state at collection, the histograms start then.
 */
export function bindOtelMetricsWhenRegistered(pool: OtelPoolSource, intervalMs = OTEL_LOOKUP_INTERVAL_MS): OtelBinding {
  let bound = bindOtelMetrics(pool);
  let timer: NodeJS.Timeout | undefined;
  if (!bound) {
    timer = setInterval(() => {
      bound = bindOtelMetrics(pool);
      if (bound) clearInterval(timer);
    }, intervalMs);
    timer.unref();
  }
  return {
    unbind() {
      clearInterval(timer);
      bound?.unbind();
    },
  };
}
