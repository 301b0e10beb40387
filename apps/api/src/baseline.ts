/**
 * The api's items routes on plain `TypeOrmModule.forRoot` defaults, for the HTTP load
 * comparison (`nx run loadtest:http`). Not the product: `npm start` runs main.ts.
 */
import 'reflect-metadata';
import { Logger } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { AppModule } from './app.module.js';

async function main(): Promise<void> {
  const url = process.env.DATABASE_URL;
  if (!url) throw new Error('DATABASE_URL is not set');
  const port = Number(process.env.PORT ?? 3001);
  const app = await NestFactory.create(AppModule.baseline(url), { abortOnError: false, logger: ['error', 'warn'] });
  app.enableShutdownHooks();
  await app.listen(port, '127.0.0.1');
  new Logger('baseline').warn(`baseline API (plain TypeOrmModule.forRoot) listening on http://localhost:${port}`);
}

main().catch((err: unknown) => {
  process.stderr.write(`baseline failed to start: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
