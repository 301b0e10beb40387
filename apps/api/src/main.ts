import 'reflect-metadata';
import { Logger } from '@nestjs/common';
import { DbPoolConfigError, resolveDbPoolConfig } from '@db-pool/db-pool';
import { closeOnSignals, createApp } from './bootstrap.js';

const logger = new Logger('api');

/**
 * Checks the whole environment before Nest starts, so a bad value stops the process before it
 * listens with one message listing every bad key (the module checks its keys again when it
 * builds the pool).
 */
function readEnvironment(env: NodeJS.ProcessEnv): { port: number } {
  const problems: string[] = [];
  const raw = env.PORT;
  let port = 3000;
  if (raw !== undefined && raw !== '') {
    port = Number(raw);
    if (!/^\d+$/.test(raw.trim()) || port < 1 || port > 65_535) problems.push(`PORT=${JSON.stringify(raw)}: must be an integer from 1 to 65535`);
  }
  const delay = env.SHUTDOWN_DELAY_MS;
  if (delay !== undefined && delay !== '' && (!/^\d+$/.test(delay.trim()) || Number(delay) > 600_000)) {
    problems.push(`SHUTDOWN_DELAY_MS=${JSON.stringify(delay)}: must be an integer from 0 to 600000`);
  }
  try {
    resolveDbPoolConfig({ env });
  } catch (err) {
    if (!(err instanceof DbPoolConfigError)) throw err;
    problems.push(...err.problems);
  }
  if (problems.length > 0) {
    throw new Error(`Invalid configuration (${problems.length} problem${problems.length === 1 ? '' : 's'}):\n${problems.map((p) => `  - ${p}`).join('\n')}`);
  }
  return { port };
}

async function main(): Promise<void> {
  const { port } = readEnvironment(process.env);
  const app = await createApp();
  closeOnSignals(app, (code) => {
    logger.log('shut down');
    process.exit(code);
  });
  await app.listen(port, process.env.HOST ?? '0.0.0.0');
  logger.log(`API listening on http://localhost:${port} (health: /health/live, items: /items)`);
}

main().catch((err: unknown) => {
  // Configuration errors already name every bad key; print the message, not a stack.
  const message = err instanceof Error ? err.message : String(err);
  process.stderr.write(`api failed to start: ${message}\n`);
  process.exit(1);
});
