import { Injectable } from '@nestjs/common';
import { Registry } from 'prom-client';
import type { PoolMonitor } from '../monitor/pool-monitor.js';
import { DbPoolRegistry } from '../monitor/pool-registry.js';
import type { Histogram } from '../pool/histogram.js';
import type { BudgetDecision } from '../monitor/budget.js';
import { READ_ROUTES, type ReadReason, REPLICA_OUT_OF_ROTATION } from '../pool/replicas.js';
import { POSITION_READ_INTERVAL_MS } from '../pool/lag-sampler.js';

type Labels = Record<string, string | number>;
interface Sample {
  metricName?: string;
  labels: Labels;
  value: number;
}

/**
 * A metric whose values are read from the pools when Prometheus scrapes, so recording stays
 * plain arithmetic on the pool's own counters and arrays.
 */
class PoolCollector {
  readonly aggregator = 'sum' as const;

  constructor(
    readonly name: string,
    readonly help: string,
    readonly type: 'gauge' | 'counter' | 'histogram',
    private readonly read: (monitor: PoolMonitor) => Sample[],
    private readonly monitors: () => PoolMonitor[],
  ) {}

  get() {
    const values = this.monitors().flatMap((m) => this.read(m).map((s) => ({ ...s, labels: { pool_name: m.name, ...s.labels } })));
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values };
  }

  reset(): void {}
}

function histogramSamples(name: string, histogram: Histogram): Sample[] {
  return [
    ...histogram
      .cumulative()
      .map((b) => ({ metricName: `${name}_bucket`, labels: { le: b.le === Infinity ? '+Inf' : b.le }, value: b.count })),
    { metricName: `${name}_sum`, labels: {}, value: histogram.sum },
    { metricName: `${name}_count`, labels: {}, value: histogram.count },
  ];
}

/**
 * Prometheus metrics of every pool, named after OpenTelemetry's database-client connection
 * conventions (`db.client.connection.*`), labelled `pool_name`.
 */
@Injectable()
export class DbPoolMetrics {
  /** The registry /metrics serves; merge it with your own (`Registry.merge`) if you have one. */
  readonly registry = new Registry();

  constructor(pools: DbPoolRegistry) {
    const all = () => pools.all();
    const gauge = (name: string, help: string, read: (m: PoolMonitor) => number | Sample[]) =>
      new PoolCollector(
        name,
        help,
        'gauge',
        (m) => {
          const v = read(m);
          return typeof v === 'number' ? [{ labels: {}, value: v }] : v;
        },
        all,
      );
    const histogram = (name: string, help: string, pick: (m: PoolMonitor) => Histogram) =>
      new PoolCollector(name, help, 'histogram', (m) => histogramSamples(name, pick(m)), all);

    for (const metric of [
      // OTel's `db.client.connection.count` would be `db_client_connection_count`, but Prometheus
      // keeps `_count` for histograms and summaries (promtool rejects it); this is the name of
      // the same instrument in the previous OTel convention (`db.client.connections.usage`).
      gauge('db_client_connections_usage', 'Connections open, by state (idle or used).', (m) => {
        const { idle, active } = m.pool.state();
        return [
          { labels: { state: 'idle' }, value: idle },
          { labels: { state: 'used' }, value: active },
        ];
      }),
      gauge(
        'db_client_connection_max',
        'Most connections the pool may open (DB_POOL_SIZE + DB_MAX_OVERFLOW).',
        (m) => m.pool.settings.poolSize + m.pool.settings.maxOverflow,
      ),
      gauge('db_client_connection_idle_min', 'Connections the pool keeps open (DB_POOL_SIZE).', (m) => m.pool.settings.poolSize),
      gauge(
        'db_client_connection_idle_max',
        'Most connections that may sit idle (DB_POOL_SIZE + DB_MAX_OVERFLOW: overflow ones close after DB_POOL_OVERFLOW_IDLE_TIMEOUT).',
        (m) => m.pool.settings.poolSize + m.pool.settings.maxOverflow,
      ),
      gauge('db_client_connection_pending_requests', 'Callers queued for a connection.', (m) => m.pool.waitingCount),
      new PoolCollector(
        'db_client_connection_timeouts_total',
        'Acquires that waited DB_POOL_TIMEOUT and timed out.',
        'counter',
        (m) => [{ labels: {}, value: m.pool.counters.timeouts }],
        all,
      ),
      new PoolCollector(
        'db_pool_probe_timeouts_total',
        'Short-deadline acquires (readiness probe, headroom sampler) that timed out; counted apart from db_client_connection_timeouts_total.',
        'counter',
        (m) => [{ labels: {}, value: m.pool.counters.probeTimeouts }],
        all,
      ),
      new PoolCollector(
        'db_pool_connect_failures_total',
        'Connection attempts that failed (acquires, warm-up and refill).',
        'counter',
        (m) => [{ labels: {}, value: m.pool.counters.connectFailures }],
        all,
      ),
      new PoolCollector(
        'db_pool_failovers_total',
        'Times a database host the pool used went away or changed role (promotion, demotion, made read-only).',
        'counter',
        (m) => [{ labels: {}, value: m.pool.counters.failovers }],
        all,
      ),
      new PoolCollector(
        'db_pool_evictions_total',
        'Connections closed, or refused further statements, because their host went away or changed role.',
        'counter',
        (m) => [{ labels: {}, value: m.pool.counters.evictions }],
        all,
      ),
      gauge(
        'db_pool_connect_breaker_open',
        '1 while the connect circuit breaker holds new connections back (every host failed), else 0.',
        (m) => (m.pool.breakerState().state === 'closed' ? 0 : 1),
      ),
      new PoolCollector(
        'db_pool_connect_breaker_refusals_total',
        'Acquires failed at once (PoolUnavailableError) while the connect circuit breaker was open.',
        'counter',
        (m) => [{ labels: {}, value: m.pool.counters.breakerRefusals }],
        all,
      ),
      gauge(
        'db_pool_concurrency_limit',
        'Connections the pool hands out at once at most: the capacity, or the limit learnt from checkout latency (DB_POOL_ADAPTIVE).',
        (m) => m.pool.concurrencyLimit().limit,
      ),
      new PoolCollector(
        'db_pool_overloaded_total',
        'Acquires shed at once with PoolOverloadedError (DB_POOL_MAX_WAITING, or an expected wait past the deadline).',
        'counter',
        (m) => [{ labels: {}, value: m.pool.counters.overloaded }],
        all,
      ),
      new PoolCollector(
        'db_pool_cancels_total',
        'Statements cancelled on the server because their caller had left (a deadline, DB_QUERY_TIMEOUT_MS, a release mid-query).',
        'counter',
        (m) => [{ labels: {}, value: m.pool.counters.cancels }],
        all,
      ),
      gauge('db_pool_host_up', 'Per host of a host list: 1 while the pool can use it (up), else 0; labelled with its role.', (m) =>
        m.pool.highAvailability
          ? m.pool.hosts().map((h) => ({ labels: { host: h.address, role: h.role }, value: h.state === 'up' ? 1 : 0 }))
          : [],
      ),
      gauge(
        'db_pool_replica_lag_seconds',
        "A read replica's replay lag at the last sample (DB_REPLICA_URLS), on the pool's clock: the time since the primary passed the replica's replay position. Absent while unknown.",
        (m) => {
          const r = m.getReplicaStatus();
          return r && r.lagMs !== null ? [{ labels: {}, value: r.lagMs / 1000 }] : [];
        },
      ),
      gauge(
        'db_pool_replica_lag_bytes',
        "WAL bytes from a read replica's replay position to the primary's last sampled position. Absent while unknown.",
        (m) => {
          const r = m.getReplicaStatus();
          return r && r.lagBytes !== null ? [{ labels: {}, value: r.lagBytes }] : [];
        },
      ),
      gauge(
        'db_pool_replica_in_rotation',
        '1 while reads go to this replica, 0 while it is out of rotation (db_pool_replica_out_of_rotation says why).',
        (m) => {
          const r = m.getReplicaStatus();
          return r ? [{ labels: {}, value: r.inRotation ? 1 : 0 }] : [];
        },
      ),
      gauge(
        'db_pool_replica_out_of_rotation',
        'Per reason a read replica can be out of rotation, 1 for the current one, else 0: lagging (lag above DB_REPLICA_MAX_LAG_MS), lag_unknown, unreachable, not_sampled, promoted (not a standby), timeline_mismatch, system_mismatch.',
        (m) => {
          const r = m.getReplicaStatus();
          return r ? REPLICA_OUT_OF_ROTATION.map((reason) => ({ labels: { reason }, value: r.outOfRotation === reason ? 1 : 0 })) : [];
        },
      ),
      new PoolCollector(
        'db_pool_replica_reads_total',
        "Reads of a primary with read replicas (DB_REPLICA_URLS), by where they went (served_by: replica, primary) and why: eventual (no write position to see), replayed (the replica had passed the read's write position at its last sample), replayed_on_check (when asked for the read), replica_behind (every replica in rotation was behind it: DB_REPLICA_CONSISTENCY=read-your-writes), position_unknown (the position of the read's write could not be read from the primary), no_replica (none in rotation).",
        'counter',
        (m) => {
          const counts = m.getReads();
          if (!counts) return [];
          return (Object.keys(READ_ROUTES) as ReadReason[]).map((reason) => {
            const servedBy = READ_ROUTES[reason];
            return { labels: { served_by: servedBy, reason }, value: (counts[servedBy] as Record<string, number>)[reason] };
          });
        },
        all,
      ),
      new PoolCollector(
        'db_pool_replica_position_reads_total',
        `Statements sent on the primary to read writes' WAL positions (DB_REPLICA_CONSISTENCY=read-your-writes): each is shared by every write that committed before it was sent, at most one every ${POSITION_READ_INTERVAL_MS} ms.`,
        'counter',
        (m) => {
          const reads = m.getReads();
          return reads ? [{ labels: {}, value: reads.position_reads }] : [];
        },
        all,
      ),
      histogram('db_client_connection_create_time_seconds', 'Time to open a new connection.', (m) => m.pool.timings.create),
      histogram('db_client_connection_wait_time_seconds', 'Time from the start of an acquire to the hand-out.', (m) => m.pool.timings.wait),
      histogram('db_client_connection_use_time_seconds', 'Time from hand-out to release.', (m) => m.pool.timings.use),
      gauge(
        'db_client_connection_utilization_ratio',
        'Connections in use / most connections the pool may open (0 to 1; the pool report gives it as a percentage).',
        (m) => m.getPoolStatus().utilization / 100,
      ),
      gauge('db_pool_connect_failing', '1 while opening connections fails (the last attempt failed, within 30 s), else 0.', (m) =>
        m.getPoolStatus().connect_failing ? 1 : 0,
      ),
      gauge('db_pool_leak_suspected', '1 while a connection leak is suspected (heuristic or DB_POOL_LEAK_THRESHOLD), else 0.', (m) =>
        m.checkConnectionLeaks() ? 1 : 0,
      ),
      gauge(
        'db_pool_budget_capacity',
        'DB_POOL_SIZE=auto: the capacity the connection budget gave this process at its last sample (DB_POOL_SIZE + DB_MAX_OVERFLOW as they are now).',
        (m) => {
          const b = m.getBudget();
          return b ? [{ labels: { limited_by: b.limited_by }, value: b.capacity }] : [];
        },
      ),
      ...(
        [
          [
            'db_pool_budget_fair_share',
            "DB_POOL_SIZE=auto: the fair share at the last sample: (max_connections - reserved - other applications' connections - 2) / processes - 1.",
            (b) => b.fair_share,
          ],
          [
            'db_pool_budget_processes',
            "DB_POOL_SIZE=auto: the application's live processes the server counted at the last sample (their presence connections).",
            (b) => b.inputs.processes,
          ],
          [
            'db_pool_budget_other_connections',
            "DB_POOL_SIZE=auto: other applications' client connections on the server at the last sample.",
            (b) => b.inputs.other_connections,
          ],
        ] as [string, string, (b: BudgetDecision) => number][]
      ).map(([name, help, pick]) =>
        gauge(name, help, (m) => {
          const b = m.getBudget();
          return b ? [{ labels: {}, value: pick(b) }] : [];
        }),
      ),
      gauge(
        'db_pool_server_headroom_connections',
        'Connections the server could still accept (max_connections - reserved - in use), from the last sample.',
        (m) => {
          const h = m.getServerHeadroom();
          return h ? [{ labels: {}, value: h.headroom }] : [];
        },
      ),
      gauge(
        'db_pool_pgbouncer_clients',
        "PgBouncer's client connections for this pool's database, by state (DB_PGBOUNCER_ADMIN_URL).",
        (m) => {
          const b = m.getPgBouncerStats();
          return b
            ? [
                { labels: { state: 'active' }, value: b.cl_active },
                { labels: { state: 'waiting' }, value: b.cl_waiting },
              ]
            : [];
        },
      ),
      gauge('db_pool_pgbouncer_servers', "PgBouncer's server connections for this pool's database, by state.", (m) => {
        const b = m.getPgBouncerStats();
        return b
          ? [
              { labels: { state: 'active' }, value: b.sv_active },
              { labels: { state: 'idle' }, value: b.sv_idle },
            ]
          : [];
      }),
      gauge('db_pool_pgbouncer_maxwait_seconds', 'Age of the oldest client waiting in PgBouncer.', (m) => {
        const b = m.getPgBouncerStats();
        return b ? [{ labels: {}, value: b.maxwait }] : [];
      }),
    ]) {
      this.registry.registerMetric(metric as never);
    }
  }

  /** The metrics in Prometheus text format. */
  metrics(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}
