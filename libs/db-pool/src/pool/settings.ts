import type pg from 'pg';
import type { DbPoolConfig } from '../config/db-pool.options.js';
import { DbPoolConfigError } from '../errors.js';
import { pgSslModeProblem } from './connection-string.js';
import { connectTargetOf, HostListError } from './hosts.js';
import { type DbPoolLogger, SILENT } from './logger.js';

/**
 * The fields of the resolved configuration ({@link DbPoolConfig}) that the pool itself reads: one
 * list, from which both the type and {@link settingsOf} come, so a pool setting is named and
 * documented once, in `DbPoolConfig`.
 */
export const SETTING_KEYS = [
  'name',
  'poolSize',
  'maxOverflow',
  'poolTimeoutMs',
  'connectTimeoutMs',
  'overflowIdleTimeoutMs',
  'recycleMs',
  'recycleJitter',
  'prePing',
  'prePingBypassMs',
  'validationTimeoutMs',
  'resetSession',
  'leakThresholdMs',
  'leakStackRate',
  'shutdownGraceMs',
  'maxWaiting',
  'adaptive',
  'adaptiveMin',
] as const satisfies readonly (keyof DbPoolConfig)[];

/** How a pool behaves: its part of the resolved configuration, plus pg's own that have no environment key. Durations in ms. */
export type DbPoolSettings = Pick<DbPoolConfig, (typeof SETTING_KEYS)[number]> & {
  /** pg's `maxUses`: checkouts after which a connection is replaced. @default Infinity */
  maxUses: number;
  /** pg's `allowExitOnIdle`: idle connections do not keep the process alive. @default false */
  allowExitOnIdle: boolean;
  logger: DbPoolLogger;
  /**
   * Built as pg.Pool's drop-in (`new DbPool(pgOptions)`): where pg.Pool's users can tell, it
   * behaves as pg.Pool does — a failed connect rejects with the driver's own error, not a
   * PoolConnectError. `createDbPool` and the module set it false. @default true
   */
  dropIn: boolean;
  /** pg.Pool's `log` option: told what the pool does, in pg.Pool's own words ('connecting new client', 'remove idle client', …). */
  trace?: (message: string) => void;
};

/** The pool's part of a resolved configuration (its connection and secrets stay out: they go to pg). */
export function settingsOf(config: DbPoolConfig, logger: DbPoolLogger): Partial<DbPoolSettings> {
  const settings: Partial<DbPoolSettings> = { logger, dropIn: false };
  for (const key of SETTING_KEYS) (settings as Record<string, unknown>)[key] = config[key];
  return settings;
}

/** The pool-only keys of pg.Pool's options (the rest are each client's). */
export const PG_POOL_KEYS = [
  'max',
  'min',
  'poolSize',
  'idleTimeoutMillis',
  'connectionTimeoutMillis',
  'maxLifetimeSeconds',
  'maxUses',
  'allowExitOnIdle',
  'log',
  'Promise',
  'Client',
  'onConnect',
  'verify',
] as const;

/** pg.Pool's options, and the two hooks pg-pool takes beyond its typings. */
export type PgPoolOptions = pg.PoolConfig & {
  poolSize?: number;
  onConnect?: (client: pg.PoolClient) => unknown;
  verify?: (client: pg.PoolClient, done: (err?: Error) => void) => void;
};

/**
 * Settings from pg.Pool's options alone, with pg's defaults (max 10, min 0, idle clients closed
 * after 10 s, no acquire deadline, no lifetime) and db-pool's safety on top (reset on return,
 * leases, a shutdown grace of 10 s; pre-ping off, as pg has none). Nonsense is refused, naming
 * the option (a connection string by what is wrong with it, never by its text); nothing is dropped.
 */
export function settingsFromPg(options: PgPoolOptions, overrides: Partial<DbPoolSettings> = {}): DbPoolSettings {
  const problems: string[] = [];
  const count = (key: keyof PgPoolOptions, fallback: number, min: number): number => {
    const value = options[key];
    if (value === undefined || value === null) return fallback;
    if (typeof value !== 'number' || Number.isNaN(value) || value < min || (!Number.isInteger(value) && value !== Infinity)) {
      problems.push(`${key}=${JSON.stringify(value)}: must be an integer of at least ${min}`);
      return fallback;
    }
    return value;
  };
  const max = count('max', count('poolSize', 10, 1), 1);
  const min = count('min', 0, 0);
  if (min > max) problems.push(`min=${min} is more than max=${max}`);
  const connectionTimeout = count('connectionTimeoutMillis', 0, 0);
  const idleTimeout = count('idleTimeoutMillis', 10_000, 0);
  const lifetime = count('maxLifetimeSeconds', 0, 0);
  const maxUses = count('maxUses', Infinity, 1);
  for (const hook of ['Client', 'onConnect', 'verify', 'log'] as const) {
    if (options[hook] !== undefined && typeof options[hook] !== 'function') problems.push(`${hook}: must be a function`);
  }
  // Where connections go: a connection string pg would read otherwise (or not at all), a bad
  // host list or port; the problem never quotes what may be the password.
  try {
    connectTargetOf(options);
  } catch (err) {
    if (!(err instanceof HostListError)) throw err;
    problems.push(options.connectionString ? `connectionString: ${err.message}` : err.message);
  }
  const sslMode = pgSslModeProblem(options);
  if (sslMode) problems.push(sslMode);
  if (problems.length > 0) throw new DbPoolConfigError(overrides.name ?? 'default', problems);
  const log = options.log;
  return {
    name: 'default',
    poolSize: min,
    maxOverflow: max - min,
    poolTimeoutMs: connectionTimeout > 0 ? connectionTimeout : Infinity,
    connectTimeoutMs: connectionTimeout,
    overflowIdleTimeoutMs: idleTimeout,
    recycleMs: lifetime * 1000,
    recycleJitter: 0,
    prePing: false,
    prePingBypassMs: 500,
    validationTimeoutMs: 5_000,
    resetSession: 'auto',
    leakThresholdMs: 0,
    leakStackRate: 100,
    shutdownGraceMs: 10_000,
    maxWaiting: 0,
    adaptive: false,
    adaptiveMin: 2,
    maxUses,
    allowExitOnIdle: options.allowExitOnIdle === true,
    dropIn: true,
    trace: log,
    logger: log ? { log: () => {}, warn: (m) => log(m), debug: (m) => log(m) } : SILENT,
    ...overrides,
  };
}
