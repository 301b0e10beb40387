import type { INestApplication, LoggerService } from '@nestjs/common';
import type { AddressInfo } from 'node:net';
import type { DbPoolOptions } from '@db-pool/db-pool';
import { createApp } from '../../src/bootstrap.js';

/** Collects every log line the application writes, for assertions (and keeps the output quiet). */
export class CapturingLogger implements LoggerService {
  readonly lines: { level: string; text: string }[] = [];
  private add(level: string, message: unknown, rest: unknown[]) {
    this.lines.push({
      level,
      text: [message, ...rest].map((p) => (p instanceof Error ? `${p.message}\n${p.stack}` : String(p))).join(' '),
    });
  }
  log(message: unknown, ...rest: unknown[]) {
    this.add('log', message, rest);
  }
  error(message: unknown, ...rest: unknown[]) {
    this.add('error', message, rest);
  }
  warn(message: unknown, ...rest: unknown[]) {
    this.add('warn', message, rest);
  }
  debug(message: unknown, ...rest: unknown[]) {
    this.add('debug', message, rest);
  }
  verbose(message: unknown, ...rest: unknown[]) {
    this.add('verbose', message, rest);
  }
  text(): string {
    return this.lines.map((l) => `${l.level} ${l.text}`).join('\n');
  }
}

export interface RunningApp {
  app: INestApplication;
  base: string;
  logger: CapturingLogger;
  get(path: string): Promise<{ status: number; body: any; text: string; ms: number }>; // eslint-disable-line @typescript-eslint/no-explicit-any
  close(): Promise<void>;
}

/** Starts the api in this process on a free port, with a capturing logger. */
export async function startApi(overrides: DbPoolOptions, extraPools: DbPoolOptions[] = []): Promise<RunningApp> {
  const logger = new CapturingLogger();
  const app = await createApp({ env: {}, ...overrides }, { logger, extraPools });
  await app.listen(0, '127.0.0.1');
  const base = `http://127.0.0.1:${(app.getHttpServer().address() as AddressInfo).port}`;
  return {
    app,
    base,
    logger,
    async get(path: string) {
      const started = performance.now();
      const res = await fetch(`${base}${path}`);
      const text = await res.text();
      const ms = performance.now() - started;
      let body: unknown;
      try {
        body = JSON.parse(text);
      } catch {
        // not JSON: `text` has it
      }
      return { status: res.status, body, text, ms };
    },
    close: () => app.close(),
  };
}
