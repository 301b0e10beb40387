import type { DataSourceOptions } from 'typeorm';
import type { TypeOrmModuleOptions } from '@nestjs/typeorm';
import type { DbPoolLogger } from '../pool/logger.js';
import type { PasswordSource } from './password.js';

type PostgresConnectionOptions = Extract<DataSourceOptions, { type: 'postgres' }>;

/** A value as it may arrive from the environment or from code: numbers and booleans may be strings. */
type Loose<T> = T | string;

/**
 * Options of one pool. Every option falls back to its environment variable (with `envPrefix`
 * in front), then to its default. An empty string counts as unset.
 */
export interface DbPoolOptions {
  /** Pool name; also the TypeORM DataSource name. @default 'default' */
  name?: string;
  /** Prefix of the environment variables this pool reads, e.g. `REPORTING_` → `REPORTING_DATABASE_URL`. @default '' */
  envPrefix?: string;
  /** Environment to read (tests pass their own). @default process.env */
  env?: Record<string, string | undefined>;

  /**
   * `DATABASE_URL`: `postgres://user:password@host:port/database`, a host list
   * (`postgres://h1:5432,h2:5433/db`, `postgres:///db?host=h1,h2&port=5432,5433`) or pg's
   * `socket:` form. Required unless `host` is given, or (default pool only) pg's `PGHOST`.
   */
  url?: string;
  /** Connection fields, an alternative to `url` (each overrides the URL's part). */
  host?: string;
  port?: Loose<number>;
  username?: string;
  /**
   * A password, or a function pg calls for each new connection (sync or async: a cloud IAM
   * token). A password in `url` wins over it, as in pg.
   */
  password?: string | PasswordSource;
  database?: string;
  /**
   * `DB_PASSWORD_FILE`: a file holding the password (a mounted secret), read for each new
   * connection, so a rotated secret is used without a restart. Not with `password` or a password in `url`.
   */
  passwordFile?: string;

  /**
   * `DB_POOL_SIZE`: connections kept open and warmed at start-up; `'auto'` (with `maxOverflow:
   * 'auto'`): the capacity is this process's share of the server's connections, between
   * `poolMin` and `poolMax`, re-counted at every headroom sample. @default 20
   */
  poolSize?: Loose<number> | 'auto';
  /** `DB_MAX_OVERFLOW`: extra connections opened under load, closed again when idle; `'auto'` with `poolSize: 'auto'`. @default 40 */
  maxOverflow?: Loose<number> | 'auto';
  /** `DB_POOL_MIN`: with `poolSize: 'auto'`, the least capacity the budget gives (and the capacity until the first sample). @default 2 */
  poolMin?: Loose<number>;
  /** `DB_POOL_MAX`: with `poolSize: 'auto'`, the most capacity the budget gives. @default 60 */
  poolMax?: Loose<number>;
  /** `DB_POOL_TIMEOUT`: seconds an acquire waits for a connection before it fails. @default 30 */
  poolTimeoutSeconds?: Loose<number>;
  /** `DB_POOL_RECYCLE`: seconds after which a connection is replaced (0 = never). @default 3600 */
  recycleSeconds?: Loose<number>;
  /** `DB_POOL_RECYCLE_JITTER`: percent by which each connection's lifetime is shortened at random. @default 10 */
  recycleJitterPercent?: Loose<number>;
  /** `DB_POOL_PRE_PING`: validate a connection before handing it out. @default true */
  prePing?: Loose<boolean>;
  /** `DB_POOL_PRE_PING_BYPASS_MS`: a connection used within this many ms is handed out unvalidated. @default 500 */
  prePingBypassMs?: Loose<number>;
  /** `DB_POOL_OVERFLOW_IDLE_TIMEOUT`: seconds an overflow connection may sit idle before it is closed. @default 10 */
  overflowIdleTimeoutSeconds?: Loose<number>;
  /** `DB_CONNECT_TIMEOUT`: seconds opening one new connection may take (at most `poolTimeoutSeconds`). @default 10, or `poolTimeoutSeconds` when shorter */
  connectTimeoutSeconds?: Loose<number>;
  /** `DB_VALIDATION_TIMEOUT_MS`: ms a pre-ping or a reset on return may take before the connection is discarded. @default 5000 */
  validationTimeoutMs?: Loose<number>;
  /** `DB_STATEMENT_TIMEOUT_MS`: server-side `statement_timeout` for every connection (0 = the server's own). @default 0 */
  statementTimeoutMs?: Loose<number>;
  /** `DB_QUERY_TIMEOUT_MS`: ms the client waits for a query's answer before it gives up and the connection is discarded (0 = none). @default 0 */
  queryTimeoutMs?: Loose<number>;
  /** `DB_POOL_LEAK_THRESHOLD`: seconds a checkout may be held before it is logged with its stack (0 = off, else ≥ 2). @default 0 */
  leakThresholdSeconds?: Loose<number>;
  /** `DB_POOL_LEAK_STACK_RATE`: checkout stacks captured per second at most while leak tracking is on (0 = none). @default 100 */
  leakStacksPerSecond?: Loose<number>;
  /** `DB_POOL_WARN_UTILIZATION`: % of capacity checked out above which health is "warning". @default 70 */
  warnUtilizationPercent?: Loose<number>;
  /** `DB_POOL_CRITICAL_UTILIZATION`: % above which health is "critical". @default 90 */
  criticalUtilizationPercent?: Loose<number>;
  /** `DB_POOL_EXPECTED_REPLICAS`: processes running this configuration against the same server. @default 1 */
  expectedReplicas?: Loose<number>;
  /** `DB_POOL_HEALTH_TIMEOUT_MS`: ms a readiness probe or a headroom sample may take in all. @default 1000 */
  healthTimeoutMs?: Loose<number>;
  /** `DB_POOL_HEADROOM_INTERVAL`: seconds between server-headroom samples (0 = off). @default 30 */
  headroomIntervalSeconds?: Loose<number>;
  /** `DB_POOL_SHUTDOWN_GRACE`: seconds `end()` waits for checked-out connections before closing them. @default 10 */
  shutdownGraceSeconds?: Loose<number>;
  /** `DB_POOL_MAX_WAITING`: callers allowed to queue; the next fails at once with PoolOverloadedError (0 = no bound). @default 0 */
  maxWaiting?: Loose<number>;
  /** `DB_POOL_ADAPTIVE`: learn how many connections to hand out at once from checkout latency (between `adaptiveMin` and the capacity). @default false */
  adaptive?: Loose<boolean>;
  /** `DB_POOL_ADAPTIVE_MIN`: the lowest the adaptive limit goes. @default 2 */
  adaptiveMin?: Loose<number>;
  /** `DB_REPLICA_URLS`: read replicas (comma-separated URLs, or a list); TypeORM's reads go to them, writes to `url`. */
  replicaUrls?: string | readonly string[];
  /** `DB_REPLICA_MAX_LAG_MS`: replay lag above which a replica leaves rotation until it catches up. @default 5000 */
  replicaMaxLagMs?: Loose<number>;
  /**
   * `DB_REPLICA_CONSISTENCY`: `eventual` sends reads to any replica in rotation;
   * `read-your-writes` records each write's WAL position in its scope (a request, through
   * `dbPoolConsistency()`, or `withReadYourWrites`) and sends the scope's later reads only to a
   * replica that has replayed it, else to the primary. @default 'eventual'
   */
  replicaConsistency?: 'eventual' | 'read-your-writes';
  /** `DB_PGBOUNCER_ADMIN_URL`: PgBouncer's admin console, e.g. `postgres://admin:pw@pgbouncer:6432/pgbouncer`. */
  pgbouncerAdminUrl?: string;
  /** `DB_APPLICATION_NAME`: `application_name` shown in `pg_stat_activity`; printable ASCII, at most 63 characters. @default 'db-pool' ('db-pool:<name>' for a named pool) */
  applicationName?: string;
  /**
   * `DB_POOL_RESET_SESSION`: when a returned connection's session state is reset (`RESET ALL`,
   * `RESET ROLE`, `RESET SESSION AUTHORIZATION`, `UNLISTEN *`, `pg_advisory_unlock_all()`):
   * `auto` after a checkout that ran SET, RESET or LISTEN or changed a setting the server
   * reports; `always` after every checkout (a round trip each), for code that calls
   * `set_config()` on its own settings or takes session advisory locks. @default 'auto'
   */
  resetSession?: 'auto' | 'always';
  /**
   * `DB_POOL_HEALTH_DETAIL`: health bodies show the server's connections by `application_name`,
   * the URL (password redacted) and the driver's error texts (which can name hosts and
   * addresses). Off by default: health routes are often reachable by more people than the
   * database is. @default false
   */
  healthDetail?: Loose<boolean>;

  /** Where the pool and the module write (Nest's `Logger` fits). @default silent for `createDbPool`, Nest's logger in the module */
  logger?: DbPoolLogger;

  /**
   * Further TypeORM DataSource options (entities, migrations, logging, …). `extra` is handed to
   * pg as TypeORM does (`keepAlive`, `maxUses`, `ssl`, …); db-pool's own keys win over it.
   */
  typeorm?: Omit<Partial<PostgresConnectionOptions>, 'type' | 'driver' | 'url' | 'poolSize' | 'name'> &
    Pick<TypeOrmModuleOptions, 'autoLoadEntities' | 'retryAttempts' | 'retryDelay'>;
}

/** The validated, effective configuration of one pool. Durations in milliseconds unless named otherwise. */
export interface DbPoolConfig {
  name: string;
  /** The URL as given (may hold a password); print `redactedUrl` instead. */
  url: string | undefined;
  redactedUrl: string;
  host?: string;
  port?: number;
  username?: string;
  /** The password, or the function asked for it at each new connection (`DB_PASSWORD_FILE` is one). */
  password?: string | PasswordSource;
  database?: string;
  /** Connections kept open (with a budget: at start-up, until the first sample resizes the pool). */
  poolSize: number;
  maxOverflow: number;
  /** `DB_POOL_SIZE=auto`: the capacity follows the server's connections, between these bounds; undefined when sized by hand. */
  budget: { min: number; max: number } | undefined;
  poolTimeoutMs: number;
  recycleMs: number;
  recycleJitter: number;
  prePing: boolean;
  prePingBypassMs: number;
  overflowIdleTimeoutMs: number;
  connectTimeoutMs: number;
  validationTimeoutMs: number;
  statementTimeoutMs: number;
  queryTimeoutMs: number;
  leakThresholdMs: number;
  leakStackRate: number;
  warnUtilization: number;
  criticalUtilization: number;
  expectedReplicas: number;
  healthTimeoutMs: number;
  headroomIntervalMs: number;
  shutdownGraceMs: number;
  /** The admin console URL as given (may hold a password; not enumerable). */
  pgbouncerAdminUrl: string | undefined;
  /** Callers allowed to queue (0: no bound). */
  maxWaiting: number;
  /** The concurrency limit is learnt from checkout latency. */
  adaptive: boolean;
  /** The adaptive limit's floor (at most the capacity). */
  adaptiveMin: number;
  /** Read replicas' URLs, in order (empty: none); they may hold passwords, so they are not enumerable. */
  replicaUrls: string[];
  replicaMaxLagMs: number;
  replicaConsistency: 'eventual' | 'read-your-writes';
  applicationName: string;
  resetSession: 'auto' | 'always';
  healthDetail: boolean;
  typeorm: NonNullable<DbPoolOptions['typeorm']>;
  /**
   * What a valid configuration still gets wrong: variables that look like the pool's and are not
   * read (`DB_POOL_MAX_OVERFLOW`, meant as `DB_MAX_OVERFLOW`), a URL's `connect_timeout`, which pg
   * does not read. Logged once through `options.logger`; never a value.
   */
  warnings: readonly string[];
}
