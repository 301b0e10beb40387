import 'reflect-metadata';
import { AsyncLocalStorage } from 'node:async_hooks';
import pg from 'pg';
// Read-your-writes by WAL position (DB_REPLICA_CONSISTENCY=read-your-writes) against a real
// primary and a real streaming standby of their own (tools/replica-set.mjs), the standby's replay
// paused where a test needs it behind: a write's position is noted in its scope, and the scope's
// reads (or a later scope's, through the token) go to the primary until the standby has replayed it.
import { Test } from '@nestjs/testing';
import { getDataSourceToken } from '@nestjs/typeorm';
import { type DataSource, EntitySchema } from 'typeorm';
import {
  ConsistencyTokenError,
  dbPoolConsistency,
  createDbPool,
  createDbPoolDataSource,
  DbPoolMetrics,
  DbPoolModule,
  DbPoolRegistry,
  getDbPoolReplicasToken,
  type DbPoolOptions,
  readYourWritesToken,
  withReadYourWrites,
} from '../src/index.js';
import { createReplicaRouter } from '../src/create-db-pool.js';
import type { DbPool } from '../src/pool/db-pool.js';
import { POSITION_READ_INTERVAL_MS } from '../src/pool/lag-sampler.js';
import type { ReadReason, ReplicaRouter } from '../src/pool/replicas.js';
import { poolOf } from '../src/pool/typeorm-options.js';
import { currentConsistencyScope, reportWaiterErrors } from '../src/pool/consistency.js';
import { startReplicaSet, type ReplicaSet } from '../../../tools/replica-set.mjs';
import { eventually } from './support/db.js';

let rs: ReplicaSet;
beforeAll(async () => {
  rs = await startReplicaSet();
  await rs.primary.query('CREATE TABLE ryw (id serial PRIMARY KEY, name text NOT NULL)');
  await rs.caughtUp();
});
afterAll(async () => {
  await rs?.stop();
});

const ends: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  await Promise.all(ends.splice(0).map((end) => end()));
  await rs.standby.query('SELECT pg_wal_replay_resume()');
});

const options = (consistency: 'eventual' | 'read-your-writes', more: DbPoolOptions = {}): DbPoolOptions => ({
  url: rs.primary.url,
  replicaUrls: rs.standby.url,
  poolSize: 1,
  maxOverflow: 2,
  connectTimeoutSeconds: 2,
  headroomIntervalSeconds: 0,
  replicaConsistency: consistency,
  env: {},
  ...more,
});

interface Rig {
  primary: DbPool;
  router: ReplicaRouter;
}

async function rig(consistency: 'eventual' | 'read-your-writes'): Promise<Rig> {
  const primary = await createDbPool(options(consistency));
  const router = (await createReplicaRouter(options(consistency), primary))!;
  ends.push(
    () => router.end(),
    () => primary.end(),
  );
  return { primary, router };
}

/** A read through the router: whether it ran on the standby, and the row's name if it saw `id`. */
async function read(router: ReplicaRouter, id: number): Promise<{ standby: boolean; name: string | undefined }> {
  const client = await router.connect();
  try {
    const { rows } = await client.query<{ standby: boolean; name: string | null }>(
      'SELECT pg_is_in_recovery() AS standby, (SELECT name FROM ryw WHERE id = $1) AS name',
      [id],
    );
    return { standby: rows[0].standby, name: rows[0].name ?? undefined };
  } finally {
    client.release();
  }
}

/** A write in a transaction of its own on the primary, as TypeORM sends one (`START TRANSACTION`, the write, `COMMIT`). */
async function writeInTransaction(primary: DbPool, name: string): Promise<number> {
  const client = await primary.connect();
  try {
    await client.query('START TRANSACTION');
    const { rows } = await client.query<{ id: number }>('INSERT INTO ryw (name) VALUES ($1) RETURNING id', [name]);
    const commit = await client.query('COMMIT');
    expect(commit.command).toBe('COMMIT'); // the caller gets its own statement's answer, not the position's
    return rows[0].id;
  } finally {
    client.release();
  }
}

interface RywRow {
  id: number;
  name: string;
}
const Ryw = new EntitySchema<RywRow>({
  name: 'ryw',
  columns: { id: { type: Number, primary: true, generated: true }, name: { type: String } },
});
const router = (ds: DataSource) => (ds.driver as unknown as { slaves: ReplicaRouter[] }).slaves[0];

const pause = async () => {
  await rs.caughtUp();
  // Requested is enough: the startup process checks for the request before it applies each record,
  // and it has applied everything so far (caughtUp).
  await rs.standby.query('SELECT pg_wal_replay_pause()');
};

const delta = (before: Record<ReadReason, number>, after: Record<ReadReason, number>) =>
  Object.fromEntries(Object.entries(after).flatMap(([k, v]) => (v === before[k as ReadReason] ? [] : [[k, v - before[k as ReadReason]]])));

describe('read-your-writes on a paused standby', () => {
  it("a write's own scope reads it from the primary; a scope without it reads the standby, stale", async () => {
    const { primary, router } = await rig('read-your-writes');
    await pause();
    const before = router.readCounts();

    const { id, token, own } = await withReadYourWrites(async () => {
      const id = await writeInTransaction(primary, 'mine');
      return { id, own: await read(router, id), token: await readYourWritesToken() };
    });
    expect(own).toEqual({ standby: false, name: 'mine' });
    expect(token).toMatch(/^[0-9A-F]+\/[0-9A-F]+$/);

    // Another scope, no token: the standby, which has not replayed the write (as documented).
    expect(await withReadYourWrites(() => read(router, id))).toEqual({ standby: true, name: undefined });
    // Outside any scope: the same.
    expect(await read(router, id)).toEqual({ standby: true, name: undefined });
    // A later scope carrying the token: the primary again.
    expect(await withReadYourWrites(() => read(router, id), { token })).toEqual({ standby: false, name: 'mine' });

    // The write came after the standby's last sample, so the first read asked it again; the token's
    // scope may have been opened before or after the next sample.
    const counts = delta(before, router.readCounts());
    expect(counts.eventual).toBe(2);
    expect(counts.replica_behind).toBe(2);
    expect(counts.replayed ?? 0).toBe(0);
  });

  it('after replay resumes, reads carrying the token go back to the standby once it has replayed the write', async () => {
    const { primary, router } = await rig('read-your-writes');
    await pause();
    const { id, token } = await withReadYourWrites(async () => ({
      id: await writeInTransaction(primary, 'later'),
      token: (await readYourWritesToken())!,
    }));
    expect(await withReadYourWrites(() => read(router, id), { token })).toEqual({ standby: false, name: 'later' });

    await rs.standby.query('SELECT pg_wal_replay_resume()');
    // Every read carries the token and sees the write; the first ones may still come from the primary.
    const onStandby = await eventually(async () => {
      const got = await withReadYourWrites(() => read(router, id), { token });
      expect(got.name).toBe('later');
      return got.standby;
    });
    expect(onStandby).toBe(true);
    const counts = router.readCounts();
    expect(counts.replayed + counts.replayed_on_check).toBeGreaterThan(0);
  });

  it('reads alone note nothing; every commit counts, a read-only transaction too; a write outside a transaction, parameterized, counts', async () => {
    const { primary, router } = await rig('read-your-writes');
    await pause();
    // Statements outside a transaction that only read: no position, reads on the standby.
    await withReadYourWrites(async () => {
      await primary.query('SELECT count(*) FROM ryw');
      expect(await readYourWritesToken()).toBeUndefined();
      expect((await read(router, 1)).standby).toBe(true);
    });
    // A transaction that committed, even one that only read (a SELECT may call a function that
    // writes): the primary's position after it, which the paused standby has not replayed.
    await withReadYourWrites(async () => {
      const client = await primary.connect();
      try {
        await client.query('BEGIN');
        await client.query('SELECT count(*) FROM ryw');
        await client.query('COMMIT');
      } finally {
        client.release();
      }
      expect(await readYourWritesToken()).toBeDefined();
    });
    await withReadYourWrites(async () => {
      const client = await primary.connect();
      try {
        const { rows } = await client.query<{ id: number }>('INSERT INTO ryw (name) VALUES ($1) RETURNING id', ['autocommit']);
        expect(await readYourWritesToken()).toBeDefined();
        client.release();
        expect(await read(router, rows[0].id)).toEqual({ standby: false, name: 'autocommit' });
      } catch (err) {
        client.release(err as Error);
        throw err;
      }
    });
    // pool.query (a checkout of its own), a pg.Query object and the callback form note it too.
    await withReadYourWrites(async () => {
      const client = await primary.connect();
      try {
        const query = client.query(new pg.Query('INSERT INTO ryw (name) VALUES ($1) RETURNING id', ['pg.Query']));
        const id = await new Promise<number>((resolve, reject) => {
          let got: number | undefined;
          query.on('row', (row: { id: number }) => (got = row.id));
          query.on('error', reject);
          query.on('end', () => resolve(got!));
        });
        expect(await readYourWritesToken()).toBeDefined();
        expect(await read(router, id)).toEqual({ standby: false, name: 'pg.Query' });
      } finally {
        client.release();
      }
    });
    await withReadYourWrites(async () => {
      const { rows } = await primary.query<{ id: number }>('INSERT INTO ryw (name) VALUES ($1) RETURNING id', ['pool.query']);
      expect(await read(router, rows[0].id)).toEqual({ standby: false, name: 'pool.query' });
    });
    await withReadYourWrites(async () => {
      const client = await primary.connect();
      await new Promise<void>((resolve, reject) =>
        client.query('BEGIN', (err) => {
          if (err) return reject(err);
          client.query("INSERT INTO ryw (name) VALUES ('callback')", (err2) => {
            if (err2) return reject(err2);
            client.query('COMMIT', (err3, result) => {
              if (err3) return reject(err3);
              expect((result as { command: string }).command).toBe('COMMIT');
              resolve();
            });
          });
        }),
      );
      client.release();
      expect(await readYourWritesToken()).toBeDefined();
    });
  });

  it('TypeORM: a save then a find in one scope reads the primary; a find in a fresh scope reads the standby, stale', async () => {
    const ds: DataSource = await createDbPoolDataSource(options('read-your-writes', { typeorm: { entities: [Ryw] } }));
    ends.push(() => ds.destroy());
    expect(poolOf(ds).positionSource).toBe(router(ds));
    await pause();
    const repo = ds.getRepository<RywRow>(Ryw);
    const before = router(ds).readCounts();
    // save: a transaction (START TRANSACTION, INSERT … RETURNING, COMMIT); find: TypeORM's read runner (the router).
    const { id, found } = await withReadYourWrites(async () => {
      const saved = await repo.save({ name: 'typeorm' });
      return { id: saved.id, found: await repo.findOneBy({ id: saved.id }) };
    });
    expect(found).toEqual({ id, name: 'typeorm' });
    expect(delta(before, router(ds).readCounts())).toEqual({ replica_behind: 1 });
    // A fresh scope, no token: the standby, which has not replayed the save.
    expect(await withReadYourWrites(() => repo.findOneBy({ id }))).toBeNull();
    expect(delta(before, router(ds).readCounts())).toEqual({ replica_behind: 1, eventual: 1 });
  });
});

describe('read-your-writes, replay running', () => {
  it('a read right after a write sees it wherever it goes, 20 scopes at once, and the token of each is its own position or later', async () => {
    const { primary, router } = await rig('read-your-writes');
    const got = await Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        withReadYourWrites(async () => {
          // The insert position inside the transaction, before its COMMIT: the commit record comes after it.
          const client = await primary.connect();
          let id: number;
          let before: string;
          try {
            await client.query('BEGIN');
            id = (await client.query<{ id: number }>('INSERT INTO ryw (name) VALUES ($1) RETURNING id', [`running-${i}`])).rows[0].id;
            before = (await client.query<{ lsn: string }>('SELECT pg_current_wal_insert_lsn()::text AS lsn')).rows[0].lsn;
            await client.query('COMMIT');
          } finally {
            client.release();
          }
          const seen = await read(router, id);
          const token = (await readYourWritesToken())!;
          const { rows } = await rs.primary.query<{ passed: boolean }>('SELECT $1::pg_lsn > $2::pg_lsn AS passed', [token, before]);
          return { name: seen.name, passed: rows[0].passed };
        }),
      ),
    );
    expect(got).toEqual(Array.from({ length: 20 }, (_, i) => ({ name: `running-${i}`, passed: true })));
    const counts = router.readCounts();
    expect(counts.replayed_on_check + counts.replica_behind + counts.replayed).toBe(20);
  });

  it("writes' positions are read once for every write before the read, at most once every POSITION_READ_INTERVAL_MS", async () => {
    const { primary, router } = await rig('read-your-writes');
    const before = router.positionReads();
    const started = performance.now();
    // 30 scopes, each writing and taking its token four times in a row, on three connections.
    const tokens = await Promise.all(
      Array.from({ length: 30 }, (_, i) =>
        withReadYourWrites(async () => {
          const mine: string[] = [];
          for (let n = 0; n < 4; n++) {
            await writeInTransaction(primary, `shared-${i}-${n}`);
            mine.push((await readYourWritesToken())!);
          }
          return mine;
        }),
      ),
    );
    const elapsed = performance.now() - started;
    const reads = router.positionReads() - before;
    expect(tokens.flat().every((t) => /^[0-9A-F]+\/[0-9A-F]+$/.test(t))).toBe(true);
    expect(reads).toBeGreaterThan(0);
    expect(reads).toBeLessThan(120);
    expect(reads).toBeLessThanOrEqual(Math.floor(elapsed / POSITION_READ_INTERVAL_MS) + 1);
  });

  it("a write's position counts as reached when the primary answered its read, not at the commit (a replica sampled in between is asked again)", async () => {
    const { primary } = await rig('read-your-writes');
    await withReadYourWrites(async () => {
      await writeInTransaction(primary, 'reached');
      // No I/O has run since the commit's answer: the position is read from here on.
      const asked = performance.now();
      const token = await readYourWritesToken();
      const answered = performance.now();
      const scope = currentConsistencyScope()!;
      expect(token).toMatch(/^[0-9A-F]+\/[0-9A-F]+$/);
      // Taken from the commit's time, `since` would be before `asked`, and a replica sampled while
      // the read waited its turn would be taken as behind the write without being asked again.
      expect(scope.since).toBeGreaterThanOrEqual(asked);
      expect(scope.since).toBeLessThanOrEqual(answered);
    });
  });

  it('a waiter that throws costs the others sharing its position read nothing; its error is thrown again', async () => {
    const { primary } = await rig('read-your-writes');
    const uncaught: unknown[] = [];
    const restore = reportWaiterErrors((err) => uncaught.push(err));
    try {
      const tokens = await Promise.all(
        [0, 1, 2].map((i) =>
          withReadYourWrites(async () => {
            await writeInTransaction(primary, `thrower-${i}`);
            // The first scope's own waiter throws (a response's end that throws, say): the others' still answer.
            if (i === 0)
              currentConsistencyScope()!.whenSettled(() => {
                throw new Error('a waiter failed');
              });
            return readYourWritesToken();
          }),
        ),
      );
      expect(tokens.every((t) => t !== undefined)).toBe(true);
      expect(uncaught).toEqual([new Error('a waiter failed')]);
    } finally {
      restore();
    }
  });

  it("responses that wait for a shared position read each end in their own request's async context", async () => {
    const { primary } = await rig('read-your-writes');
    const context = new AsyncLocalStorage<string>();
    const perRequest = dbPoolConsistency();
    const ended: { request: string; context: string | undefined; token: string | undefined }[] = [];
    // Every request has written before any ends: their ends wait on one read, started by the first.
    let wrote = 0;
    let allWrote!: () => void;
    const barrier = new Promise<void>((resolve) => (allWrote = resolve));
    const request = (name: string) =>
      context.run(
        name,
        () =>
          new Promise<void>((resolve, reject) => {
            const headers = new Map<string, string>();
            const res = {
              headersSent: false,
              setHeader(key: string, value: string) {
                headers.set(key.toLowerCase(), value);
              },
              writeHead() {
                this.headersSent = true;
                return this;
              },
              end() {
                this.writeHead();
                ended.push({ request: name, context: context.getStore(), token: headers.get('x-db-lsn') });
                resolve();
                return this;
              },
            };
            perRequest({ headers: {} } as never, res, () => {
              writeInTransaction(primary, `context-${name}`)
                .then(() => {
                  if (++wrote === 3) allWrote();
                  return barrier;
                })
                .then(() => res.end(), reject);
            });
          }),
      );
    await Promise.all(['a', 'b', 'c'].map(request));
    expect(ended.map((e) => [e.request, e.context, /^[0-9A-F]+\/[0-9A-F]+$/.test(e.token ?? '')]).sort()).toEqual([
      ['a', 'a', true],
      ['b', 'b', true],
      ['c', 'c', true],
    ]);
  });

  it('a write whose position cannot be read (the router has ended) leaves its scope without a token, at once, nothing counted as sent', async () => {
    const { primary, router } = await rig('read-your-writes');
    const token = await withReadYourWrites(async () => {
      await writeInTransaction(primary, 'after-end');
      await router.end();
      return readYourWritesToken();
    });
    expect(token).toBeUndefined();
    expect(router.positionReads()).toBe(0);
  });

  it('eventual: writes note nothing and reads go to the standby', async () => {
    const { primary, router } = await rig('eventual');
    expect(primary.positionSource).toBeUndefined();
    await pause();
    await withReadYourWrites(async () => {
      const id = await writeInTransaction(primary, 'eventual');
      expect(await readYourWritesToken()).toBeUndefined();
      expect(await read(router, id)).toEqual({ standby: true, name: undefined });
    });
    expect(router.readCounts().eventual).toBe(1);
  });

  it('a malformed token is refused, naming what to send', async () => {
    for (const bad of ['', 'nope', '0/', '1/2/3', 'G/1', '123456789/1', `${'A'.repeat(20)}/1`])
      expect(() => withReadYourWrites(() => 1, { token: bad })).toThrow(ConsistencyTokenError);
    expect(() => withReadYourWrites(() => 1, { token: 'nope' })).toThrow(
      /malformed read-your-writes token "nope": pass back the X-Db-Lsn value/,
    );
    expect(await withReadYourWrites(() => readYourWritesToken(), { token: '0/16B3748' })).toBe('0/16B3748');
  });

  it('status, health and metrics say where reads went and why', async () => {
    const app = await Test.createTestingModule({ imports: [DbPoolModule.forRoot(options('read-your-writes'))] })
      .setLogger({ log: () => {}, error: () => {}, warn: () => {}, debug: () => {}, verbose: () => {} })
      .compile();
    await app.init();
    ends.push(() => app.close());
    const registry = app.get(DbPoolRegistry);
    const router = app.get<ReplicaRouter>(getDbPoolReplicasToken());
    await pause();
    // Whatever TypeORM read at start-up is counted too: the test reads from there.
    const before = registry.get('default').getReads()!;
    await withReadYourWrites(async () => read(router, await writeInTransaction(poolOf(app.get(getDataSourceToken())), 'metrics')));
    await read(router, 1);

    const e = before.replica.eventual;
    const reads = {
      consistency: 'read-your-writes',
      replica: { total: e + 1, eventual: e + 1, replayed: 0, replayed_on_check: 0 },
      primary: { total: 1, replica_behind: 1, position_unknown: 0, no_replica: 0 },
      position_reads: router.positionReads(),
    };
    // The write's position: one read, unless a sample of the primary sent after the write served it.
    expect(reads.position_reads - before.position_reads).toBeLessThanOrEqual(1);
    const monitor = registry.get('default');
    expect(monitor.getReads()).toEqual(reads);
    expect(monitor.getHealthReport().reads).toEqual(reads);
    // A replica's own pool reports no reads of its own: the primary's router routes them.
    expect(registry.get('default-replica-1').getHealthReport().reads).toBeUndefined();
    const text = await new DbPoolMetrics(registry).metrics();
    expect(text).toContain(`db_pool_replica_reads_total{pool_name="default",served_by="replica",reason="eventual"} ${e + 1}`);
    expect(text).toContain('db_pool_replica_reads_total{pool_name="default",served_by="primary",reason="replica_behind"} 1');
    expect(text).toContain('db_pool_replica_reads_total{pool_name="default",served_by="replica",reason="replayed_on_check"} 0');
    expect(text).toContain(`db_pool_replica_position_reads_total{pool_name="default"} ${reads.position_reads}`);
    expect(text).not.toMatch(/db_pool_replica_reads_total\{pool_name="default-replica-1"/);
  });
});
