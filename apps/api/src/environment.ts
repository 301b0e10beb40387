import { DbPoolConfigError, OPTION_KEYS, resolveDbPoolConfig } from '@db-pool/db-pool';

/** The api's own variables; with the pool's (OPTION_KEYS) these are every key it reads. */
export const API_ENV_KEYS = ['PORT', 'HOST', 'SHUTDOWN_DELAY_MS', 'SHUTDOWN_TIMEOUT_MS', 'NODE_ENV'] as const;

/** Every environment variable the api understands. */
export const ACCEPTED_ENV_KEYS: readonly string[] = [...API_ENV_KEYS, ...OPTION_KEYS.map((k) => k.env)];

/**
 * Checks the whole environment before Nest starts, so a bad value stops the process before it
 * listens with one message listing every bad key (the module checks its keys again when it
 * builds the pool).
 */
export interface ApiEnvironment {
  port: number;
  host: string;
  /** After a SIGTERM, how long readiness answers 503 before the server stops accepting. */
  shutdownDelayMs: number;
  /** Then how long in-flight requests may take before their connections are closed. */
  shutdownTimeoutMs: number;
}

export function readEnvironment(env: NodeJS.ProcessEnv): ApiEnvironment {
  const problems: string[] = [];
  const raw = env.PORT;
  let port = 3000;
  if (raw !== undefined && raw !== '') {
    port = Number(raw);
    if (!/^\d+$/.test(raw.trim()) || port < 1 || port > 65_535)
      problems.push(`PORT=${JSON.stringify(raw)}: must be an integer from 1 to 65535`);
  }
  const millis = (key: 'SHUTDOWN_DELAY_MS' | 'SHUTDOWN_TIMEOUT_MS', fallback: number): number => {
    const raw = env[key];
    if (raw === undefined || raw === '') return fallback;
    if (!/^\d+$/.test(raw.trim()) || Number(raw) > 600_000)
      problems.push(`${key}=${JSON.stringify(raw)}: must be an integer from 0 to 600000`);
    return Number(raw);
  };
  const shutdownDelayMs = millis('SHUTDOWN_DELAY_MS', 0);
  const shutdownTimeoutMs = millis('SHUTDOWN_TIMEOUT_MS', 10_000);
  try {
    resolveDbPoolConfig({ env });
  } catch (err) {
    if (!(err instanceof DbPoolConfigError)) throw err;
    problems.push(...err.problems);
  }
  if (problems.length > 0) {
    throw new Error(
      `Invalid configuration (${problems.length} problem${problems.length === 1 ? '' : 's'}):\n${problems.map((p) => `  - ${p}`).join('\n')}`,
    );
  }
  return { port, host: env.HOST || '0.0.0.0', shutdownDelayMs, shutdownTimeoutMs };
}
