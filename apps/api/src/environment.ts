import { DbPoolConfigError, type EnvKey, lookalikeKeys, OPTION_KEYS, readEnvKeys, resolveDbPoolConfig } from '@db-pool/db-pool';

/** The api's own variables, read by the same rules as the pool's. */
export const API_KEYS: readonly EnvKey[] = [
  { env: 'PORT', kind: 'int', min: 1, max: 65_535, default: 3_000, meaning: 'port the api listens on' },
  { env: 'HOST', kind: 'text', min: 1, max: 255, default: '0.0.0.0', meaning: 'address the api listens on' },
  {
    env: 'SHUTDOWN_DELAY_MS',
    kind: 'int',
    min: 0,
    max: 600_000,
    default: 0,
    meaning: 'after a SIGTERM, how long readiness answers 503 before the server stops accepting',
  },
  {
    env: 'SHUTDOWN_TIMEOUT_MS',
    kind: 'int',
    min: 0,
    max: 600_000,
    default: 10_000,
    meaning: 'then how long in-flight requests may take before their connections are closed',
  },
];

/** Every environment variable the api understands (NODE_ENV is read by libraries, not by the api). */
export const ACCEPTED_ENV_KEYS: readonly string[] = [...API_KEYS.map((k) => k.env), 'NODE_ENV', ...OPTION_KEYS.map((k) => k.env)];

/** The api's environment, validated, read once. */
export interface ApiEnvironment {
  port: number;
  host: string;
  /** After a SIGTERM, how long readiness answers 503 before the server stops accepting. */
  shutdownDelayMs: number;
  /** Then how long in-flight requests may take before their connections are closed. */
  shutdownTimeoutMs: number;
  /** The variables the pool reads, as they were when the api started (the pool reads nothing else). */
  dbPoolEnv: Record<string, string | undefined>;
}

/**
 * Reads and checks the whole environment before Nest starts, so a bad value stops the process
 * before it listens with one message listing every bad key: the api's own keys and the pool's,
 * by the lib's rules.
 */
export function readEnvironment(env: NodeJS.ProcessEnv): ApiEnvironment {
  const { values, problems } = readEnvKeys(API_KEYS, env);
  // The pool's keys, and those that look like them (DB_POOL_MAX_OVERFLOW), which the pool names in a start-up warning.
  const dbPoolKeys = [...OPTION_KEYS.map((k) => k.env), ...lookalikeKeys(env, '').map((l) => l.key)];
  const dbPoolEnv = Object.fromEntries(dbPoolKeys.map((key) => [key, env[key]]));
  try {
    resolveDbPoolConfig({ env: dbPoolEnv });
  } catch (err) {
    if (!(err instanceof DbPoolConfigError)) throw err;
    problems.push(...err.problems);
  }
  if (problems.length > 0) {
    throw new Error(
      `Invalid configuration (${problems.length} problem${problems.length === 1 ? '' : 's'}):\n${problems.map((p) => `  - ${p}`).join('\n')}`,
    );
  }
  return {
    port: values.PORT as number,
    host: values.HOST as string,
    shutdownDelayMs: values.SHUTDOWN_DELAY_MS as number,
    shutdownTimeoutMs: values.SHUTDOWN_TIMEOUT_MS as number,
    dbPoolEnv,
  };
}
