import type { DataSource, DataSourceOptions } from 'typeorm';
import type { DbPoolConfig, DbPoolOptions } from './config/db-pool.options.js';
import { budgetSplit, resolveDbPoolConfig } from './config/resolve-config.js';
import { codeOf, PoolConnectError } from './errors.js';
import { DbPool } from './pool/db-pool.js';
import { type DbPoolLogger, SILENT } from './pool/logger.js';
import { toPgPoolOptions } from './pool/pg-options.js';
import { settingsOf } from './pool/settings.js';
import { type BudgetDecision, BudgetSampler } from './monitor/budget.js';
import { SampleTimeoutError } from './pool/sample-connection.js';
import { ReplicaRouter } from './pool/replicas.js';
import { DbPoolDataSource, toTypeOrmOptions } from './pool/typeorm-options.js';
import { scrubSecrets } from './redact.js';

/** SQLSTATEs of a server that is up but cannot take a connection right now: too_many_connections, cannot_connect_now. */
const TRANSIENT = new Set(['53300', '57P03']);

/**
 * Builds a running pool from db-pool's options — the same as `DbPoolModule.forRoot` takes,
 * each falling back to its environment variable, then its default — validated at once
 * ({@link DbPoolConfigError} lists every bad key). Resolves once `DB_POOL_SIZE` connections are
 * open; when the server gives only some, or none because it is full (a role's CONNECTION LIMIT,
 * `too many clients`), it starts with those and warns; when it cannot be reached or refuses the
 * login, it rejects with a {@link PoolConnectError}.
 *
 * ```ts
 * const pool = await createDbPool({ url: process.env.DATABASE_URL, poolSize: 5 });
 * const { rows } = await pool.query('SELECT now()');
 * await pool.end();
 * ```
 */
export async function createDbPool(options: DbPoolOptions = {}): Promise<DbPool> {
  const config = resolveDbPoolConfig(options);
  const logger = options.logger ?? SILENT;
  const pool = new DbPool(toPgPoolOptions(config), settingsOf(config, logger));
  await startBudget(pool, config, logger);
  const failed = await warm(pool, config, logger);
  if (failed) {
    // Unreachable, auth, no such database: a configuration to fix before starting.
    await pool.end().catch(() => {});
    throw new PoolConnectError(config.name, pool.state(), scrubSecrets(failed.message), { cause: failed });
  }
  return pool;
}

/**
 * DB_POOL_SIZE=auto: the presence connection and the first budget sample, the pool sized to it,
 * before the warm-up, so a process that starts opens only its share (the monitor samples again
 * later). It takes no connection the server does not have: while what nobody claims is short of
 * DB_POOL_MIN (the others not yet shrunk to a share that counts this one), or the server refuses
 * the presence itself (full), it waits for the others' notices and samples again — at most two
 * headroom intervals (60 s at most), by which every process has taken an interval sample. Then it
 * starts at DB_POOL_MIN all the same, and warns.
 */
async function startBudget(pool: DbPool, config: DbPoolConfig, logger: DbPoolLogger): Promise<void> {
  const bounds = config.budget;
  if (!bounds) return;
  const sampler = (pool.budget = new BudgetSampler(config, pool.Client));
  const deadline = Date.now() + Math.min(2 * config.headroomIntervalMs, 60_000);
  let decision: BudgetDecision | undefined;
  let failure: unknown;
  let announced = false;
  /** The last sample, when the deadline passed short of DB_POOL_MIN: the pool starts at DB_POOL_MIN all the same. */
  let shortOfMin: BudgetDecision | undefined;
  const atMin = (sampled: BudgetDecision): BudgetDecision => {
    shortOfMin = sampled;
    const { poolSize, maxOverflow } = budgetSplit(bounds.min);
    return { ...sampled, capacity: bounds.min, pool_size: poolSize, max_overflow: maxOverflow, limited_by: 'min' };
  };
  const notSampled = (err: unknown) =>
    logger.warn(
      `db-pool "${config.name}": connection budget not sampled at start-up, the pool starts at DB_POOL_MIN (${bounds.min}): ${scrubSecrets((err as Error).message)}`,
    );
  for (let pause = 100; ; pause = Math.min(2 * pause, 1_000)) {
    try {
      const heard = sampler.noticesHeard;
      // The sample and the claim it decides, under the application's budget lock.
      const taken = await sampler.locked(config.healthTimeoutMs, async () => {
        const sampled = await sampler.decide(0, config.healthTimeoutMs, 'start');
        const decided = sampled.capacity >= bounds.min ? sampled : Date.now() >= deadline ? atMin(sampled) : undefined;
        // The claim before the connections: a process sampling after it counts them as taken.
        if (decided) await sampler.claim(decided.capacity, config.healthTimeoutMs, true);
        // Short of room: the others hear of this process (they shrink to the share that counts it).
        else if (!announced) await sampler.claim(0, config.healthTimeoutMs, true);
        announced = true;
        return decided;
      });
      failure = undefined;
      if (taken) {
        decision = taken;
        break;
      }
      // It samples again at the others' notices (one that came while it sampled, at once).
      await sampler.notice(Math.min(deadline - Date.now(), config.headroomIntervalMs), heard);
    } catch (err) {
      failure = err;
      // The server full (the presence refused) or slow to answer: again, after a pause; anything else is for the warm-up to report.
      const transient = TRANSIENT.has(codeOf(err) ?? '') || err instanceof SampleTimeoutError;
      if (!transient || Date.now() >= deadline) break;
      await new Promise((resolve) => setTimeout(resolve, pause * (0.5 + Math.random())));
    }
  }
  if (failure !== undefined || !decision) return notSampled(failure);
  if (shortOfMin) {
    logger.warn(
      `db-pool "${config.name}": connection budget: the server has ${shortOfMin.capacity} connection(s) nobody claims, short of DB_POOL_MIN (${bounds.min}), ` +
        `after ${Math.round(Math.min(2 * config.headroomIntervalMs, 60_000) / 1000)} s; the pool starts at DB_POOL_MIN and may be refused`,
    );
  }
  pool.resize(decision.pool_size, decision.max_overflow);
  pool.budgetDecision = decision;
}

/**
 * Opens `DB_POOL_SIZE` connections. When only some open, or none because the server is full or
 * starting (too many clients, cannot connect now) — it is there, and the pool opens more on
 * demand — it warns and resolves undefined; when none open for any other reason, it resolves
 * with that error.
 */
async function warm(pool: DbPool, config: DbPoolConfig, logger: DbPoolLogger): Promise<Error | undefined> {
  try {
    await pool.warmUp();
    return undefined;
  } catch (err) {
    // Open ones only: a refill may already be opening one in place of a connection that failed.
    const { idle, active } = pool.state();
    const open = idle + active;
    if (open === 0 && !TRANSIENT.has(codeOf(err) ?? '')) return err as Error;
    logger.warn(
      `db-pool "${config.name}": warmed ${open} of ${pool.settings.poolSize} connections: ${scrubSecrets((err as Error).message)}; ` +
        `the pool opens more on demand, up to ${pool.settings.poolSize + pool.settings.maxOverflow}`,
    );
    return undefined;
  }
}

/**
 * A read replica's pool, warmed as far as its server lets it. One that cannot be reached (or
 * refuses the login) is kept all the same, empty: the router's first sample fails on it too and
 * it starts out of rotation (`unreachable`), with one warning, until a sample finds it fit —
 * the pool reconnects on its own (its breaker's probes). A replica outage must not stop, or
 * crash-loop, an application whose primary serves its reads.
 */
async function createReplicaPool(config: DbPoolConfig, logger: DbPoolLogger): Promise<DbPool> {
  const pool = new DbPool(toPgPoolOptions(config), settingsOf(config, logger));
  // DB_POOL_SIZE=auto: a replica's pool takes its share of the replica's connections, as the primary's does of the primary's.
  await startBudget(pool, config, logger);
  await warm(pool, config, logger);
  return pool;
}

/** The options of the pool of read replica `index` (from 1): the primary's, with the replica's URL and a name of its own. */
export function replicaOptions(options: DbPoolOptions, config: DbPoolConfig, index: number): DbPoolOptions {
  return {
    ...options,
    name: `${config.name}-replica-${index}`,
    url: config.replicaUrls[index - 1],
    replicaUrls: undefined,
    host: undefined,
  };
}

/**
 * The pools of `DB_REPLICA_URLS` and the router TypeORM's reads go through, its first lag sample
 * taken; undefined when there are no replicas. A replica that cannot be reached at start-up does
 * not stop it: that replica starts out of rotation (`unreachable`), its reads go to the primary,
 * and the sampler brings it in once it answers. Its configuration errors do stop it.
 */
export async function createReplicaRouter(options: DbPoolOptions, primary: DbPool): Promise<ReplicaRouter | undefined> {
  const config = resolveDbPoolConfig(options);
  if (config.replicaUrls.length === 0) return undefined;
  const logger = options.logger ?? SILENT;
  const configs = config.replicaUrls.map((_, i) => resolveDbPoolConfig(replicaOptions(options, config, i + 1)));
  // Warmed side by side: a replica that accepts and never answers holds start-up DB_CONNECT_TIMEOUT once, not once per replica.
  const replicas = await Promise.all(configs.map((c) => createReplicaPool(c, logger)));
  const router = new ReplicaRouter({
    primary,
    primaryConfig: config,
    replicas,
    configs,
    maxLagMs: config.replicaMaxLagMs,
    sampleTimeoutMs: config.healthTimeoutMs,
    consistency: config.replicaConsistency,
    logger,
  });
  await router.start();
  return router;
}

/**
 * A TypeORM DataSource on a pool from {@link createDbPool}, initialized — for an application that
 * uses TypeORM without Nest. `dataSource.destroy()` ends the pool; `poolOf(dataSource)` is it.
 */
export async function createDbPoolDataSource(options: DbPoolOptions = {}): Promise<DataSource> {
  const config = resolveDbPoolConfig(options);
  const pool = await createDbPool(options);
  let replicas: ReplicaRouter | undefined;
  try {
    replicas = await createReplicaRouter(options, pool);
    return await new DbPoolDataSource(toTypeOrmOptions(config, pool, replicas) as DataSourceOptions).initialize();
  } catch (err) {
    await Promise.all([pool.end().catch(() => {}), replicas?.end().catch(() => {})]);
    throw err;
  }
}
