/**
 * Listeners a library installs for a connection's life keep working through db-pool: TypeORM's
 * `logNotifications` (which, on pg.Pool, adds its listeners to one connection in one checkout, and
 * which a lease would drop at release), and the supported way for any library, a 'connect' listener.
 */
import type { Logger } from 'typeorm';
import { createDbPoolDataSource, poolOf } from '../src/index.js';
import { databaseUrl, eventually } from './support/db.js';

/** A TypeORM logger that keeps its 'info' lines. */
function keepingLogger(lines: string[]): Logger {
  const none = () => {};
  return {
    logQuery: none,
    logQueryError: none,
    logQuerySlow: none,
    logSchemaBuild: none,
    logMigration: none,
    log: (level, message) => {
      if (level === 'info') lines.push(String(message));
    },
  };
}

describe("TypeORM's logNotifications through db-pool", () => {
  it('logs the notices and notifications of every connection of the pool, through the DataSource logger, checkout after checkout', async () => {
    const lines: string[] = [];
    const ds = await createDbPoolDataSource({
      url: databaseUrl(),
      name: 'notifications',
      poolSize: 2,
      maxOverflow: 0,
      env: {},
      typeorm: { logNotifications: true, logger: keepingLogger(lines) },
    });
    try {
      // Two query runners at once: two connections, each raising a notice, twice over.
      for (let round = 0; round < 2; round++) {
        const runners = [ds.createQueryRunner(), ds.createQueryRunner()];
        await Promise.all(runners.map((r) => r.connect()));
        await Promise.all(runners.map((r, i) => r.query(`DO $$ BEGIN RAISE NOTICE 'notice ${round}.${i} from db-pool'; END $$`)));
        await Promise.all(runners.map((r) => r.release()));
      }
      expect(lines).toEqual(
        expect.arrayContaining([
          'notice 0.0 from db-pool',
          'notice 0.1 from db-pool',
          'notice 1.0 from db-pool',
          'notice 1.1 from db-pool',
        ]),
      );
      // A notification to a session that listens (its LISTEN undone at release, by the session reset).
      const runner = ds.createQueryRunner();
      await runner.connect();
      await runner.query('LISTEN db_pool_typeorm_channel');
      await runner.query("NOTIFY db_pool_typeorm_channel, 'hello'");
      expect(await eventually(() => lines.includes('NOTIFY on db_pool_typeorm_channel: hello'))).toBe(true);
      await runner.release();
      expect(poolOf(ds).totalCount).toBe(2);
    } finally {
      await ds.destroy();
    }
  });
});
