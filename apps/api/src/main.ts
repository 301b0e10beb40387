import 'reflect-metadata';
import { Logger } from '@nestjs/common';
import { closeOnSignals, createApp } from './bootstrap.js';

const logger = new Logger('api');

function readPort(raw: string | undefined): number {
  if (raw === undefined || raw === '') return 3000;
  const port = Number(raw);
  if (!/^\d+$/.test(raw.trim()) || port < 1 || port > 65_535) {
    throw new Error(`Invalid configuration:\n  - PORT=${JSON.stringify(raw)}: must be an integer from 1 to 65535`);
  }
  return port;
}

async function main(): Promise<void> {
  const port = readPort(process.env.PORT);
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
