import 'reflect-metadata';
import { Logger } from '@nestjs/common';
import { closeOnSignals, createApp } from './bootstrap.js';
import { readEnvironment } from './environment.js';

const logger = new Logger('api');

async function main(): Promise<void> {
  const environment = readEnvironment(process.env);
  const { port, host } = environment;
  const app = await createApp({}, { environment });
  closeOnSignals(
    app,
    (code) => {
      logger.log('shut down');
      process.exit(code);
    },
    environment,
  );
  await app.listen(port, host);
  logger.log(`API listening on http://localhost:${port} (health: /health/live, items: /items)`);
}

main().catch((err: unknown) => {
  // Configuration errors already name every bad key; print the message, not a stack.
  const message = err instanceof Error ? err.message : String(err);
  process.stderr.write(`api failed to start: ${message}\n`);
  process.exit(1);
});
