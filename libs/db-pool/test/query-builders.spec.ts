/**
 * DbPool as the pool of Kysely (`PostgresDialect({ pool })`) and of Drizzle's node-postgres
 * driver, against a real PostgreSQL: queries, a transaction that commits and one that rolls
 * back, a request deadline that cancels its statement on the server, and the pool's typed errors
 * surfacing through each library (the exception filter finds them however they are wrapped).
 */
import { sql as drizzleSql } from 'drizzle-orm';
import { drizzle } from 'drizzle-orm/node-postgres';
import { type Generated, Kysely, PostgresDialect, sql } from 'kysely';
import pg from 'pg';
import { DbPool, PoolDeadlineError, PoolTimeoutError, poolErrorResponse, withDeadline } from '../src/index.js';
import { databaseUrl, dropInFixture, eventually } from './support/db.js';

interface Database {
  qb_items: { id: Generated<number>; name: string; lib: string };
}

const table = 'qb_items';

/** Whether a statement like `pattern` still runs on the server. */
async function running(admin: pg.Client, pattern: string): Promise<boolean> {
  const { rows } = await admin.query<{ n: number }>(
    "SELECT count(*)::int AS n FROM pg_stat_activity WHERE query LIKE $1 AND state = 'active' AND pid <> pg_backend_pid()",
    [pattern],
  );
  return rows[0].n > 0;
}

describe('query builders on DbPool', () => {
  let admin: pg.Client;
  const made = dropInFixture();
  const dropIn = (options: ConstructorParameters<typeof DbPool>[0] = {}) => made({ max: 2, ...options });

  beforeAll(async () => {
    admin = new pg.Client(databaseUrl());
    await admin.connect();
    await admin.query(`CREATE TABLE IF NOT EXISTS ${table} (id serial PRIMARY KEY, name text NOT NULL, lib text NOT NULL)`);
  });
  afterAll(async () => {
    await admin.query(`DROP TABLE IF EXISTS ${table}`);
    await admin.end();
  });

  describe('Kysely (PostgresDialect)', () => {
    it('queries, commits a transaction, rolls one back', async () => {
      const pool = dropIn();
      const db = new Kysely<Database>({ dialect: new PostgresDialect({ pool }) });
      await db.insertInto('qb_items').values({ name: 'kept', lib: 'kysely' }).execute();
      await db.transaction().execute(async (trx) => {
        await trx.insertInto('qb_items').values({ name: 'committed', lib: 'kysely' }).execute();
      });
      await expect(
        db.transaction().execute(async (trx) => {
          await trx.insertInto('qb_items').values({ name: 'rolled back', lib: 'kysely' }).execute();
          throw new Error('changed my mind');
        }),
      ).rejects.toThrow('changed my mind');
      const names = await db.selectFrom('qb_items').select('name').where('lib', '=', 'kysely').orderBy('id').execute();
      expect(names.map((r) => r.name)).toEqual(['kept', 'committed']);
      await db.destroy(); // ends the pool
      expect(pool.ended).toBe(true);
    });

    it("a request's deadline cancels the statement on the server, and the pool's typed errors come through", async () => {
      const pool = dropIn({ max: 1, connectionTimeoutMillis: 200 });
      const db = new Kysely<Database>({ dialect: new PostgresDialect({ pool }) });
      const late = await withDeadline(300, () => sql`SELECT pg_sleep(30) AS kysely_deadline`.execute(db)).catch((e: unknown) => e);
      expect(late).toBeInstanceOf(PoolDeadlineError);
      expect((late as PoolDeadlineError).sent).toBe(true);
      expect(await eventually(async () => !(await running(admin, '%kysely_deadline%')))).toBe(true);
      // The only connection held elsewhere: the acquire times out, typed.
      const held = await pool.connect();
      const timedOut = await db
        .selectFrom('qb_items')
        .selectAll()
        .execute()
        .catch((e: unknown) => e);
      held.release();
      expect(timedOut).toBeInstanceOf(PoolTimeoutError);
      expect(poolErrorResponse(timedOut)?.body.condition).toBe('pool_timeout');
      await db.destroy();
    });
  });

  describe('Drizzle (drizzle-orm/node-postgres)', () => {
    it('queries, commits a transaction, rolls one back', async () => {
      const db = drizzle({ client: dropIn() });
      await db.execute(drizzleSql`INSERT INTO qb_items (name, lib) VALUES ('kept', 'drizzle')`);
      await db.transaction(async (tx) => {
        await tx.execute(drizzleSql`INSERT INTO qb_items (name, lib) VALUES ('committed', 'drizzle')`);
      });
      await expect(
        db.transaction(async (tx) => {
          await tx.execute(drizzleSql`INSERT INTO qb_items (name, lib) VALUES ('rolled back', 'drizzle')`);
          throw new Error('changed my mind');
        }),
      ).rejects.toThrow('changed my mind');
      const { rows } = await db.execute<{ name: string }>(drizzleSql`SELECT name FROM qb_items WHERE lib = 'drizzle' ORDER BY id`);
      expect(rows.map((r) => r.name)).toEqual(['kept', 'committed']);
    });

    it("a request's deadline cancels the statement on the server, and the pool's typed errors come through (as the cause of Drizzle's own)", async () => {
      const pool = dropIn({ max: 1, connectionTimeoutMillis: 200 });
      const db = drizzle({ client: pool });
      // Drizzle's queries are lazy (they run when awaited): awaited inside the deadline's function.
      const late = await withDeadline(300, async () => await db.execute(drizzleSql`SELECT pg_sleep(30) AS drizzle_deadline`)).catch(
        (e: unknown) => e,
      );
      const deadline = late instanceof PoolDeadlineError ? late : (late as { cause?: unknown }).cause;
      expect(deadline).toBeInstanceOf(PoolDeadlineError);
      expect(poolErrorResponse(late)?.body.condition).toBe('deadline_exceeded');
      expect(await eventually(async () => !(await running(admin, '%drizzle_deadline%')))).toBe(true);
      const held = await pool.connect();
      const timedOut = await db.execute(drizzleSql`SELECT 1`).catch((e: unknown) => e);
      held.release();
      const cause = timedOut instanceof PoolTimeoutError ? timedOut : (timedOut as { cause?: unknown }).cause;
      expect(cause).toBeInstanceOf(PoolTimeoutError);
      expect(poolErrorResponse(timedOut)?.body.condition).toBe('pool_timeout');
    });
  });
});
