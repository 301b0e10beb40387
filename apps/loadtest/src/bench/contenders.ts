import { performance } from 'node:perf_hooks';
import { createDbPool, createDbPoolDataSource, DbPool, type DbPoolOptions } from '@db-pool/db-pool';
import pg from 'pg';
import postgres from 'postgres';
import { DataSource } from 'typeorm';
import { closedLoop, type Operation, type SliceResult } from './measure.js';

/** Every pooled contender gets the same capacity, so the sweep compares queues, not sizes. */
export const CAPACITY = 20;
export const SQL = 'SELECT 1';

/** One way of running `SELECT 1`, measured slice by slice. */
export interface Contender {
  readonly name: string;
  /** Shown next to the name in reports. */
  readonly note?: string;
  /** How its acquire wait is known: timed around `connect()`, read from the pool's histogram, or not at all. */
  readonly waitSource: 'connect' | 'histogram' | 'none';
  /** db-pool contenders expose their pool, for state sampling. */
  readonly pool?: DbPool;
  run(callers: number, durationMs: number): Promise<SliceResult>;
}

/** What a phase opened, closed in reverse order when it ends (pools of 20 must not pile up on the server). */
export class Resources {
  private readonly closers: (() => Promise<unknown>)[] = [];

  add(close: () => Promise<unknown>): void {
    this.closers.push(close);
  }

  async closeAll(): Promise<void> {
    const errors: unknown[] = [];
    for (const close of this.closers.splice(0).reverse()) await close().catch((err: unknown) => errors.push(err));
    if (errors.length > 0) throw new AggregateError(errors, 'closing benchmark pools failed');
  }
}

/** Runs `n` overlapping queries so a lazily growing pool opens all its connections before it is timed. */
async function openConnections(n: number, query: (sql: string) => Promise<unknown>): Promise<void> {
  await Promise.all(Array.from({ length: n }, () => query('SELECT pg_sleep(0.02)')));
}

export type DbPoolFeatures = Pick<
  DbPoolOptions,
  'prePing' | 'prePingBypassMs' | 'leakThresholdSeconds' | 'leakStacksPerSecond' | 'adaptive'
>;

/**
 * What the headline db-pool contenders run with: every feature that costs nothing it does not
 * say. Pre-ping (500 ms bypass), leak tracking with checkout stacks (at the default
 * DB_POOL_LEAK_STACK_RATE); reset on return, high availability's checks, deadline shedding and
 * the metrics' histograms and counters are always on. The adaptive limit (`DB_POOL_ADAPTIVE`, off
 * by default) is not among them: it is an overload control that holds hand-outs to the
 * concurrency it learns, and so trades throughput at the knee for latency under overload. It
 * is measured apart: beside the headline pool in the sweep (`adaptive_throughput_vs_pg_pool`),
 * and in the overload scenario.
 */
export const ALL_FEATURES = {
  prePing: true,
  prePingBypassMs: 500,
  leakThresholdSeconds: 30,
  adaptive: false,
} as const satisfies DbPoolFeatures;
/** The headline features with the adaptive concurrency limit on. */
export const WITH_ADAPTIVE = { ...ALL_FEATURES, adaptive: true } as const satisfies DbPoolFeatures;
/** Pre-ping and leak tracking off: the baseline of the features comparison. */
export const FEATURES_OFF = { prePing: false, leakThresholdSeconds: 0 } as const satisfies DbPoolFeatures;
/** Every feature on, with the stack rate out of reach: a stack for every checkout. */
export const EVERY_STACK = { ...ALL_FEATURES, leakStacksPerSecond: 1_000_000 } as const satisfies DbPoolFeatures;

/** A db-pool pool as an app would build it without Nest: capacity 20, no overflow. */
export async function openDbPool(res: Resources, url: string, name: string, features: DbPoolFeatures = ALL_FEATURES): Promise<DbPool> {
  const pool = await createDbPool({ url, name, poolSize: CAPACITY, maxOverflow: 0, applicationName: name, env: {}, ...features });
  res.add(() => pool.end());
  return pool;
}

/** A TypeORM DataSource whose pool is db-pool's, built by the lib's own mapping. */
export async function openDbPoolDataSource(
  res: Resources,
  url: string,
  name: string,
  features: DbPoolFeatures = ALL_FEATURES,
): Promise<DataSource> {
  const ds = await createDbPoolDataSource({ url, name, poolSize: CAPACITY, maxOverflow: 0, applicationName: name, env: {}, ...features });
  res.add(() => ds.destroy());
  return ds;
}

// Pools that open connections lazily are warmed to `warm` connections: all 20 for the sweep;
// one for the sequential run, which never uses more (and five full pools would crowd the server).

/** TypeORM as its docs set it up: its own pg.Pool underneath. */
export async function openStockDataSource(res: Resources, url: string, name: string, warm = CAPACITY): Promise<DataSource> {
  const ds = await new DataSource({ type: 'postgres', url, poolSize: CAPACITY, applicationName: name }).initialize();
  res.add(() => ds.destroy());
  await openConnections(warm, (sql) => ds.query(sql));
  return ds;
}

export async function openPgPool(res: Resources, url: string, name: string, warm = CAPACITY): Promise<pg.Pool> {
  const pool = new pg.Pool({ connectionString: url, max: CAPACITY, application_name: name });
  res.add(() => pool.end());
  await openConnections(warm, (sql) => pool.query(sql));
  return pool;
}

export async function openPostgresJs(res: Resources, url: string, name: string, warm = CAPACITY): Promise<postgres.Sql> {
  const sql = postgres(url, { max: CAPACITY, connection: { application_name: name }, onnotice: () => {} });
  res.add(() => sql.end({ timeout: 5 }));
  await openConnections(warm, (text) => sql.unsafe(text));
  return sql;
}

function inProcess(
  name: string,
  op: Operation,
  extra: { waitSource?: Contender['waitSource']; pool?: DbPool; note?: string } = {},
): Contender {
  const histogram: DbPool['timings']['wait'] | undefined = extra.pool?.timings.wait;
  const waitSource = extra.waitSource ?? (histogram ? 'histogram' : 'none');
  return {
    name,
    note: extra.note,
    waitSource,
    pool: extra.pool,
    async run(callers, durationMs) {
      const before = histogram?.counts.slice();
      const result = await closedLoop(callers, durationMs, op);
      if (histogram && before && waitSource === 'histogram') {
        result.waitHistogram = { bounds: histogram.bounds, counts: histogram.counts.map((c, i) => c - before[i]) };
      }
      return result;
    },
  };
}

/** `pool.query(SQL)`: acquire, query, release inside the pool. */
export function poolQuery(name: string, pool: pg.Pool, note?: string): Contender {
  return inProcess(name, () => pool.query(SQL), { pool: pool instanceof DbPool ? pool : undefined, note });
}

/** `pool.query(SQL, callback)`: the callback form (pg's own, and TypeORM's `connect(callback)`), run in the caller's async context. */
export function poolQueryCallback(name: string, pool: pg.Pool, note?: string): Contender {
  const op: Operation = () =>
    new Promise<void>((resolve, reject) => pool.query(SQL, (err: Error | undefined) => (err ? reject(err) : resolve())));
  return inProcess(name, op, { pool: pool instanceof DbPool ? pool : undefined, note });
}

/**
 * `connect()`, query, `release()` by hand, with the acquire timed from outside: the same
 * measurement for every pool, whatever it keeps inside.
 */
export function poolCheckout(name: string, pool: pg.Pool, note?: string): Contender {
  const op: Operation = async (waits) => {
    const t0 = performance.now();
    const client = await pool.connect();
    waits.push(performance.now() - t0);
    try {
      await client.query(SQL);
    } catch (err) {
      client.release(err as Error);
      throw err;
    }
    client.release();
  };
  return inProcess(name, op, { waitSource: 'connect', pool: pool instanceof DbPool ? pool : undefined, note });
}

export function dataSourceQuery(name: string, ds: DataSource, note?: string): Contender {
  const driverPool = (ds.driver as unknown as { master?: unknown }).master;
  return inProcess(name, () => ds.query(SQL), { pool: driverPool instanceof DbPool ? driverPool : undefined, note });
}

export function postgresJsQuery(name: string, sql: postgres.Sql, note?: string): Contender {
  return inProcess(name, () => sql`SELECT 1`, { note });
}

/** A new connection per query: connect (and authenticate), query, close. */
export function noPool(name: string, url: string, note?: string): Contender {
  return inProcess(
    name,
    async () => {
      const client = new pg.Client({ connectionString: url, application_name: name });
      await client.connect();
      try {
        await client.query(SQL);
      } finally {
        await client.end();
      }
    },
    { note },
  );
}
