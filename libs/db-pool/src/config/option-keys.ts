import type { DbPoolOptions } from './db-pool.options.js';

/** How one environment variable is read: its type, its range and its default. */
export interface EnvKey {
  env: string;
  kind: 'int' | 'bool' | 'ascii' | 'url' | 'urls' | 'enum' | 'text' | 'file';
  /** The allowed words of an `enum` key. */
  values?: readonly string[];
  /** Range of an `int`; length of an `ascii` or `text`. */
  min?: number;
  max?: number;
  default?: number | boolean | string;
  /** A value outside [min, max] that is allowed and means "off". */
  off?: number;
  /** An `int` that also takes the word `auto` (the connection budget: DB_POOL_SIZE, DB_MAX_OVERFLOW). */
  auto?: boolean;
  /** Shown in the README table. */
  meaning: string;
}

/** How one pool option is read: an {@link EnvKey} with the option it fills. */
export interface OptionKey extends EnvKey {
  option: keyof DbPoolOptions;
}

export const TRUE_WORDS = ['true', '1', 'yes', 'on'] as const;
export const FALSE_WORDS = ['false', '0', 'no', 'off'] as const;

/** Every key db-pool reads; the README table is drawn from the same list. */
export const OPTION_KEYS: readonly OptionKey[] = [
  { option: 'url', env: 'DATABASE_URL', kind: 'url', meaning: 'connection string; the password is redacted wherever it is shown' },
  {
    option: 'poolSize',
    env: 'DB_POOL_SIZE',
    kind: 'int',
    min: 1,
    max: 10_000,
    default: 20,
    auto: true,
    meaning:
      'connections kept open, warmed at start-up; `auto` (with `DB_MAX_OVERFLOW=auto`): the capacity is this process\'s share of the server\'s connections, counted in pg_stat_activity at every headroom sample, between `DB_POOL_MIN` and `DB_POOL_MAX` (see "Sizing")',
  },
  {
    option: 'maxOverflow',
    env: 'DB_MAX_OVERFLOW',
    kind: 'int',
    min: 0,
    max: 10_000,
    default: 40,
    auto: true,
    meaning: 'extra connections under load, closed again when idle; `auto` with `DB_POOL_SIZE=auto`',
  },
  {
    option: 'poolMin',
    env: 'DB_POOL_MIN',
    kind: 'int',
    min: 1,
    max: 10_000,
    default: 2,
    meaning: 'with `DB_POOL_SIZE=auto`: the least capacity the budget gives this process (and its capacity until the first sample)',
  },
  {
    option: 'poolMax',
    env: 'DB_POOL_MAX',
    kind: 'int',
    min: 1,
    max: 10_000,
    default: 60,
    meaning: 'with `DB_POOL_SIZE=auto`: the most capacity the budget gives this process',
  },
  {
    option: 'poolTimeoutSeconds',
    env: 'DB_POOL_TIMEOUT',
    kind: 'int',
    min: 1,
    max: 3_600,
    default: 30,
    meaning: 'seconds an acquire waits before it fails with PoolTimeoutError',
  },
  {
    option: 'recycleSeconds',
    env: 'DB_POOL_RECYCLE',
    kind: 'int',
    min: 0,
    max: 604_800,
    default: 3_600,
    meaning: 'seconds after which a connection is replaced (0 = never); never while checked out',
  },
  {
    option: 'recycleJitterPercent',
    env: 'DB_POOL_RECYCLE_JITTER',
    kind: 'int',
    min: 0,
    max: 50,
    default: 10,
    meaning: 'percent by which each lifetime is shortened at random, so connections do not all reconnect at once',
  },
  {
    option: 'prePing',
    env: 'DB_POOL_PRE_PING',
    kind: 'bool',
    default: true,
    meaning: 'validate a connection idle longer than the bypass window before handing it out',
  },
  {
    option: 'prePingBypassMs',
    env: 'DB_POOL_PRE_PING_BYPASS_MS',
    kind: 'int',
    min: 0,
    max: 60_000,
    default: 500,
    meaning: 'a connection used within this many ms is handed out without a round trip',
  },
  {
    option: 'overflowIdleTimeoutSeconds',
    env: 'DB_POOL_OVERFLOW_IDLE_TIMEOUT',
    kind: 'int',
    min: 1,
    max: 3_600,
    default: 10,
    meaning: 'seconds an overflow connection may stay idle before it is closed',
  },
  {
    option: 'connectTimeoutSeconds',
    env: 'DB_CONNECT_TIMEOUT',
    kind: 'int',
    min: 1,
    max: 600,
    default: 10,
    meaning: 'seconds opening one new connection may take (at most DB_POOL_TIMEOUT; by default the smaller of 10 and DB_POOL_TIMEOUT)',
  },
  {
    option: 'validationTimeoutMs',
    env: 'DB_VALIDATION_TIMEOUT_MS',
    kind: 'int',
    min: 100,
    max: 60_000,
    default: 5_000,
    meaning: 'ms a pre-ping or a rollback on return may take before the connection is discarded',
  },
  {
    option: 'statementTimeoutMs',
    env: 'DB_STATEMENT_TIMEOUT_MS',
    kind: 'int',
    min: 0,
    max: 86_400_000,
    default: 0,
    meaning: "server-side statement_timeout of every connection (0 = the server's)",
  },
  {
    option: 'queryTimeoutMs',
    env: 'DB_QUERY_TIMEOUT_MS',
    kind: 'int',
    min: 0,
    max: 86_400_000,
    default: 0,
    meaning: "client-side limit on waiting for a query's answer (pg query_timeout); the connection is then discarded (0 = none)",
  },
  {
    option: 'leakThresholdSeconds',
    env: 'DB_POOL_LEAK_THRESHOLD',
    kind: 'int',
    min: 2,
    max: 86_400,
    off: 0,
    default: 0,
    meaning: 'seconds a checkout may be held before it is logged as a possible leak, with the stack that took it (0 = off)',
  },
  {
    option: 'leakStacksPerSecond',
    env: 'DB_POOL_LEAK_STACK_RATE',
    kind: 'int',
    min: 0,
    max: 1_000_000,
    default: 100,
    meaning:
      'checkout stacks captured per second at most while leak tracking is on (capturing costs CPU); every checkout is captured once one is held past half the threshold (0 = no stacks)',
  },
  {
    option: 'warnUtilizationPercent',
    env: 'DB_POOL_WARN_UTILIZATION',
    kind: 'int',
    min: 1,
    max: 98,
    default: 70,
    meaning: 'utilization (% of capacity checked out) above which health is "warning"; below DB_POOL_CRITICAL_UTILIZATION',
  },
  {
    option: 'criticalUtilizationPercent',
    env: 'DB_POOL_CRITICAL_UTILIZATION',
    kind: 'int',
    min: 2,
    max: 99,
    default: 90,
    meaning: 'utilization above which health is "critical" (HTTP 503); at most 99, since utilization can never be above 100',
  },
  {
    option: 'expectedReplicas',
    env: 'DB_POOL_EXPECTED_REPLICAS',
    kind: 'int',
    min: 1,
    max: 10_000,
    default: 1,
    meaning: 'processes sharing the server with this configuration, for the server-headroom check (not read with DB_POOL_SIZE=auto)',
  },
  {
    option: 'healthTimeoutMs',
    env: 'DB_POOL_HEALTH_TIMEOUT_MS',
    kind: 'int',
    min: 100,
    max: 60_000,
    default: 1_000,
    meaning: 'ms the readiness probe and the headroom sampler may take, acquire included',
  },
  {
    option: 'headroomIntervalSeconds',
    env: 'DB_POOL_HEADROOM_INTERVAL',
    kind: 'int',
    min: 1,
    max: 86_400,
    off: 0,
    default: 30,
    meaning: 'seconds between samples of the server headroom (0 = off)',
  },
  {
    option: 'shutdownGraceSeconds',
    env: 'DB_POOL_SHUTDOWN_GRACE',
    kind: 'int',
    min: 0,
    max: 3_600,
    default: 10,
    meaning: 'seconds shutdown waits for checked-out connections to come back before it closes them',
  },
  {
    option: 'maxWaiting',
    env: 'DB_POOL_MAX_WAITING',
    kind: 'int',
    min: 0,
    max: 1_000_000,
    default: 0,
    meaning:
      'callers allowed to queue for a connection; the next one fails at once with `PoolOverloadedError` (503 through the api) instead of queuing. 0 = no bound',
  },
  {
    option: 'adaptive',
    env: 'DB_POOL_ADAPTIVE',
    kind: 'bool',
    default: false,
    meaning:
      'learn how many connections to hand out at once from checkout latency (a gradient limit between `DB_POOL_ADAPTIVE_MIN` and the capacity); off by default: see "Overload control"',
  },
  {
    option: 'adaptiveMin',
    env: 'DB_POOL_ADAPTIVE_MIN',
    kind: 'int',
    min: 1,
    max: 10_000,
    default: 2,
    meaning: 'the lowest the adaptive limit goes (capped at the capacity)',
  },
  {
    option: 'replicaUrls',
    env: 'DB_REPLICA_URLS',
    kind: 'urls',
    meaning:
      'read replicas, comma-separated postgres:// URLs (each may list hosts of its own); TypeORM reads go to them through its `replication` option, writes to DATABASE_URL. Each gets a pool of its own named `<pool>-replica-<n>`, sized as the primary, with its own health entry and metrics',
  },
  {
    option: 'replicaMaxLagMs',
    env: 'DB_REPLICA_MAX_LAG_MS',
    kind: 'int',
    min: 0,
    max: 86_400_000,
    default: 5_000,
    meaning:
      "replay lag above which a replica leaves rotation (its health `degraded`) until it catches up; reads go to the other replicas, or the primary when none is left. Sampled every quarter of this value (250 ms to 1 s) from the replica against the primary's WAL position",
  },
  {
    option: 'replicaConsistency',
    env: 'DB_REPLICA_CONSISTENCY',
    kind: 'enum',
    values: ['eventual', 'read-your-writes'],
    default: 'eventual',
    meaning:
      'eventual: reads go to any replica in rotation, and may miss a write made just before; read-your-writes: each write\'s WAL position is kept in its request (and returned as `X-Db-Lsn` through `dbPoolConsistency()`), and the request\'s later reads, or a request carrying that header, go only to a replica that has replayed it, else to the primary. See docs/high-availability.md, "Consistency"',
  },
  {
    option: 'passwordFile',
    env: 'DB_PASSWORD_FILE',
    kind: 'file',
    meaning:
      'a file holding the password (a mounted secret), read for each new connection: a rotated secret is used without a restart, and connections already open keep working. One trailing newline is ignored; not with a password in DATABASE_URL or the password option',
  },
  {
    option: 'pgbouncerAdminUrl',
    env: 'DB_PGBOUNCER_ADMIN_URL',
    kind: 'url',
    meaning:
      "PgBouncer's admin console (…/pgbouncer): its SHOW POOLS / SHOW STATS figures join the status, health and metrics; with DB_POOL_SIZE=auto, the processes are counted in its SHOW CLIENTS and share its server pool",
  },
  {
    option: 'applicationName',
    env: 'DB_APPLICATION_NAME',
    kind: 'ascii',
    min: 1,
    max: 63,
    meaning: "application_name in pg_stat_activity, printable ASCII of at most 63 characters (default 'db-pool', or 'db-pool:<name>')",
  },
  {
    option: 'resetSession',
    env: 'DB_POOL_RESET_SESSION',
    kind: 'enum',
    values: ['auto', 'always'],
    default: 'auto',
    meaning:
      "when a returned connection's session state is reset (RESET ALL, RESET ROLE, RESET SESSION AUTHORIZATION, UNLISTEN *, pg_advisory_unlock_all()): auto after a checkout that ran SET, RESET or LISTEN or changed a setting the server reports; always after every checkout (one more round trip each), for code that uses set_config() on its own settings or session advisory locks",
  },
  {
    option: 'healthDetail',
    env: 'DB_POOL_HEALTH_DETAIL',
    kind: 'bool',
    default: false,
    meaning:
      "health bodies show the server's connections by application_name, the connection URL (password redacted) and the driver's error texts, which can name hosts and addresses; off by default because health routes are often reachable by more people than the database",
  },
];
