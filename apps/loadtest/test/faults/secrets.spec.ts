/** 18. Secrets: a password with URL-special characters, quotes and spaces never shows. */
import 'reflect-metadata';
import { Test } from '@nestjs/testing';
import { inspect } from 'node:util';
import { DataSource } from 'typeorm';
import {
  createDbPool,
  DbPool,
  DbPoolHealthIndicator,
  DbPoolMetrics,
  DbPoolModule,
  getDbPoolConfigToken,
  getDbPoolToken,
  resolveDbPoolConfig,
} from '@db-pool/db-pool';
import { faultRig } from './support.js';

const PASSWORD = `s3cr@t "pa:ss" w/0rd'#?%&=é`;

describe('fault scenarios: secrets', () => {
  const rig = faultRig({ authMethod: 'scram-sha-256', password: PASSWORD });
  const seen: string[] = [];
  const logger = {
    log: (m: unknown) => seen.push(String(m)),
    error: (m: unknown, ...r: unknown[]) => seen.push([m, ...r].map(String).join(' ')),
    warn: (m: unknown) => seen.push(String(m)),
    debug: (m: unknown) => seen.push(String(m)),
    verbose: (m: unknown) => seen.push(String(m)),
  };

  afterAll(() => {
    const all = seen.join('\n');
    expect(all.length).toBeGreaterThan(2_000);
    for (const form of [PASSWORD, encodeURIComponent(PASSWORD), new URL(rig().url).password, 's3cr@t', 's3cr%40t', 'w/0rd', 'w%2F0rd']) {
      const at = all.indexOf(form);
      expect(at === -1 ? '' : all.slice(Math.max(0, at - 300), at + 50)).toBe('');
    }
  });

  async function app(options: Parameters<typeof DbPoolModule.forRoot>[0]) {
    const module = DbPoolModule.forRoot({ env: {}, poolSize: 2, maxOverflow: 1, ...options });
    seen.push(inspect(module));
    const app = await Test.createTestingModule({ imports: [module] })
      .setLogger(logger)
      .compile();
    await app.init();
    return app;
  }

  it('in the URL: absent from logs, health body, metrics, errors and util.inspect of the pool, config, DataSource and module', async () => {
    const testing = await app({ url: rig().url });
    try {
      const pool = testing.get<DbPool>(getDbPoolToken());
      await pool.query('SELECT 1');
      seen.push(inspect(pool, { depth: 6 }), inspect(testing.get(getDbPoolConfigToken()), { depth: 6 }), inspect(testing.get(DataSource)));
      seen.push(JSON.stringify(testing.get(DbPoolHealthIndicator).pool('default')));
      seen.push(JSON.stringify(await testing.get(DbPoolHealthIndicator).ready('default')));
      seen.push(await testing.get(DbPoolMetrics).metrics());
      expect(seen.join('\n')).toContain('***');
    } finally {
      await testing.close();
    }
  });

  it('as separate fields: the same', async () => {
    const testing = await app({
      host: '127.0.0.1',
      port: rig().proxy.port,
      username: 'postgres',
      password: PASSWORD,
      database: 'postgres',
    });
    try {
      const pool = testing.get<DbPool>(getDbPoolToken());
      await pool.query('SELECT 1');
      seen.push(inspect(pool, { depth: 6 }), inspect(testing.get(getDbPoolConfigToken()), { depth: 6 }), inspect(testing.get(DataSource)));
      seen.push(JSON.stringify(testing.get(DbPoolHealthIndicator).pool('default')));
    } finally {
      await testing.close();
    }
  });

  it('with a wrong password, a bad host and a bad value: the errors never echo it', async () => {
    const wrong = new URL(rig().url);
    wrong.password = encodeURIComponent(`${PASSWORD}x`);
    for (const url of [wrong.toString(), rig().url.replace('127.0.0.1', 'no-such-host.invalid')]) {
      const err = (await createDbPool({
        url,
        poolSize: 1,
        maxOverflow: 0,
        poolTimeoutSeconds: 3,
        env: {},
        logger: { log: logger.log, warn: logger.warn },
      }).catch((e: unknown) => e)) as Error;
      expect(err).toBeInstanceOf(Error);
      seen.push(err.message, String(err.stack), inspect(err, { depth: 6 }));
      // The drop-in, given the same URL: its acquire error and the pool itself.
      const pool = new DbPool({ connectionString: url, max: 1, connectionTimeoutMillis: 3_000 });
      const acquireErr = (await pool.connect().catch((e: unknown) => e)) as Error;
      seen.push(acquireErr.message, String(acquireErr.stack), inspect(acquireErr, { depth: 6 }), inspect(pool, { depth: 6 }));
      await pool.end();
    }
    try {
      resolveDbPoolConfig({ url: rig().url, poolSize: 'abc', env: {} });
    } catch (err) {
      seen.push((err as Error).message, inspect(err, { depth: 6 }));
    }
    expect(seen.join('\n')).toContain('password authentication failed');
  });
});
