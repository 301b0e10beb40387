/**
 * Wiring: the layers of one pool, built from its settings — the Postgres connection layer and
 * failover (./connection.ts, ./return-path.ts, ./failover.ts) beside the generic core
 * (./core: the resource pool and its admission gate), with the leak tracker, the OpenTelemetry
 * binding and the refill. The facade (./db-pool.ts) holds them.
 */
import type { EventEmitter } from 'node:events';
import type pg from 'pg';
import type { Acquire } from './checkout.js';
import { FixedLimit, GradientLimit } from './concurrency-limit.js';
import { Connections } from './connection.js';
import { Connector } from './connector.js';
import { REAL_CLOCK } from './core/clock.js';
import { AdmissionGate } from './core/gate.js';
import { ResourcePool } from './core/resource-pool.js';
import { Failover } from './failover.js';
import { CheckoutLeakTracker, type LeakTracker } from './leak-tracker.js';
import { Refill } from './lifetime.js';
import { bindOtelMetricsWhenRegistered } from './otel.js';
import { hideSecrets } from './pg-api.js';
import type { PoolEntry } from './pool-entry.js';
import { ReturnPath } from './return-path.js';
import type { DbPoolSettings, PgPoolOptions } from './settings.js';
import type { PoolState } from '../errors.js';
import type { PoolStats, RemovalReason } from './tracker.js';

/** What pg.Pool's `log` hears when it closes a connection, by the pool's reason. */
const PG_POOL_WORDS: Record<string, string> = {
  'max-uses': 'remove expended client',
  recycled: 'remove expired client',
  idle: 'remove idle client',
};

export interface Layers {
  connector: Connector;
  connections: Connections;
  returnPath: ReturnPath;
  gate: AdmissionGate;
  core: ResourcePool<PoolEntry, Acquire>;
  leaks: LeakTracker | undefined;
  /**
   * The shutdown behind `end()`: the refill, leak tracking and telemetry stop, the core ends (see
   * ResourcePool.end), and after the grace what is left is closed; `done` once all has closed.
   */
  shutdown(done: () => void): void;
}

/** What the layers call back on the facade. */
export interface LayersOwner extends EventEmitter {
  readonly Client: typeof pg.Client;
  state(): PoolState;
  /** Every host failed twice in a row (the connect circuit breaker opened). */
  breakerOpened(err: Error): void;
  /** Opens one connection for the idle list (the refill). */
  openIdle(done: (err?: Error) => void): void;
}

export function wireLayers(pool: LayersOwner, options: PgPoolOptions, settings: DbPoolSettings, stats: PoolStats): Layers {
  const { name, poolSize, maxOverflow, overflowIdleTimeoutMs, logger } = settings;
  const capacity = poolSize + maxOverflow;
  const clientConfig = hideSecrets({ ...options, connectionTimeoutMillis: settings.connectTimeoutMs }, options);
  const connector = new Connector({ Client: pool.Client, clientConfig, lost: () => stats.failover() });
  const failover = new Failover({ name, logger, connector, stats });
  const connections = new Connections({
    settings,
    // The hooks alone: the options hold the connection string, which no inspect of the pool may show.
    hooks: { onConnect: options.onConnect, verify: options.verify },
    Client: pool.Client,
    Promise: (options.Promise ?? Promise) as PromiseConstructor,
    connector,
    stats,
    failover,
    events: pool,
  });
  const gate: AdmissionGate = new AdmissionGate({
    capacity,
    limit: settings.adaptive ? new GradientLimit({ floor: settings.adaptiveMin, ceiling: capacity }) : new FixedLimit(capacity),
    maxWaiting: settings.maxWaiting,
    clock: REAL_CLOCK,
    probe: () => core.probe(),
    breakerOpened: (err) => pool.breakerOpened(err),
    raised: () => core.match(),
  });
  // The pool's size as it is now (`DbPool.resize` changes it).
  const refill = new Refill({ name, logger, missing: () => settings.poolSize - core.total, openOne: (done) => pool.openIdle(done) });
  const core: ResourcePool<PoolEntry, Acquire> = new ResourcePool<PoolEntry, Acquire>({
    min: poolSize,
    idleTimeoutMs: overflowIdleTimeoutMs,
    gate,
    driver: connections,
    clock: REAL_CLOCK,
    events: {
      opened: (_entry, ms) => stats.connectionCreated(ms),
      openFailed: (err) => stats.connectionFailed(err),
      removed: (_entry, reason) => {
        stats.connectionRemoved(reason as RemovalReason);
        if (settings.trace && reason in PG_POOL_WORDS) settings.trace(PG_POOL_WORDS[reason]);
      },
      // The drop-in's `min`, as pg.Pool's, is a floor for idle closes, not a size kept open.
      belowMin: settings.dropIn ? undefined : () => refill.schedule(),
    },
  });
  failover.attach(core);
  connections.attach(core);
  const returnPath = new ReturnPath({
    settings,
    stats,
    connector,
    failover,
    core,
    cancel: (entry, done) => connections.cancelStatement(entry, done),
  });
  const { leakThresholdMs, leakStackRate } = settings;
  const leaks =
    leakThresholdMs > 0
      ? new CheckoutLeakTracker({
          poolName: name,
          thresholdMs: leakThresholdMs,
          stackRate: leakStackRate,
          logger,
          records: () => core.slots(),
        })
      : undefined;
  const otel = bindOtelMetricsWhenRegistered({
    name,
    timings: stats.timings,
    state: () => pool.state(),
    waiting: () => core.waiting,
    counters: stats.counters,
    capacity: {
      get min() {
        return settings.poolSize;
      },
      get max() {
        return settings.poolSize + settings.maxOverflow;
      },
    },
  });
  const shutdown = (done: () => void) => {
    refill.stop();
    leaks?.stop();
    otel.unbind();
    // Not unref'd: a shutdown under way keeps the process alive until it has finished.
    const grace = setTimeout(() => {
      if (core.ended) return;
      const left = core.closeAll((entry) => connections.abort(entry));
      if (left.length > 0)
        logger.warn(
          `db-pool "${name}": closing ${left.length} connection(s) still checked out or being opened ${settings.shutdownGraceMs / 1000} s after shutdown began`,
        );
    }, settings.shutdownGraceMs);
    core.end(() => {
      clearTimeout(grace);
      done();
    });
  };
  return { connector, connections, returnPath, gate, core, leaks, shutdown };
}
