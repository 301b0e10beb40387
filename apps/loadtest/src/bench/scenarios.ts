import { performance } from 'node:perf_hooks';
import type { DbPool } from '@db-pool/db-pool';
import pg from 'pg';
import {
  ALL_FEATURES,
  CAPACITY,
  EVERY_STACK,
  FEATURES_OFF,
  dataSourceQuery,
  noPool,
  openDbPool,
  openDbPoolDataSource,
  openPgPool,
  openPostgresJs,
  openStockDataSource,
  poolCheckout,
  poolQuery,
  postgresJsQuery,
  Resources,
  WITH_ADAPTIVE,
  type Contender,
} from './contenders.js';
import { openPgbench } from './pgbench.js';
import type { Progress } from './progress.js';
import { runRounds, SETTLE_MS, type LevelResult, type RoundsOptions } from './rounds.js';

type EmbeddedDb = typeof import('../../../../tools/embedded-db.mjs');

/** Contender names, used as keys in the results. */
export const C = {
  dbPoolTypeOrm: 'db-pool via TypeORM',
  typeOrm: 'TypeORM (stock)',
  dbPool: 'db-pool',
  dbPoolAdaptive: 'db-pool + DB_POOL_ADAPTIVE',
  pgPool: 'pg.Pool',
  postgresJs: 'postgres.js',
  noPool: 'no pool',
  pgbench: 'pgbench',
  dbPoolCheckout: 'db-pool connect/release',
  pgPoolCheckout: 'pg.Pool connect/release',
  featuresOff: 'db-pool features off',
  prePingOn: 'db-pool pre-ping on',
  featuresOn: 'db-pool all features on',
  featuresEveryStack: 'db-pool all on, every stack',
  noPoolScram: 'no pool (scram)',
  dbPoolScram: 'db-pool (scram)',
} as const;

export type PhaseId = 'sequential' | 'sweep-core' | 'sweep-orm' | 'features' | 'scram';

export interface ContenderInfo {
  name: string;
  note?: string;
  waitSource: Contender['waitSource'];
  /** db-pool contenders: checkout stacks the leak tracker captured and skipped over the phase. */
  leakStacks?: ReturnType<DbPool['leakStackStats']>;
}

export interface PhaseResult {
  id: PhaseId;
  title: string;
  contenders: ContenderInfo[];
  levels: LevelResult[];
}

/** One sample of `pool.state()` during the 200-caller run. */
export interface StateSample {
  tMs: number;
  active: number;
  total: number;
  waiting: number;
}

export interface BenchSettings {
  url: string;
  rounds: number;
  durationMs: number;
  warmupMs: number;
  sweep: number[];
  pgbench: string | undefined;
  /** Callers of the pre-ping and features comparison. */
  steadyCallers: number;
}

export interface ScramServer {
  serverVersion: string;
  /** `system_user` of a pooled session, e.g. `scram-sha-256:postgres`. */
  authenticatedAs: string;
  /** A wrong password was refused, so the password really is checked. */
  wrongPasswordRefused: boolean;
}

export interface BenchRun {
  phases: PhaseResult[];
  /** pool.state() about 50 times during the last 200-caller slice of db-pool's `pool.query`. */
  stateSamples: StateSample[];
  scram?: ScramServer;
}

interface PhaseSpec {
  id: PhaseId;
  title: string;
  levels: number[];
  contenders: number;
  /** The groups of contenders compared with each other (see `roundOrder`): with two or more, none runs twice in a row. */
  groups: number[];
  /** Rounds as a multiple of `--rounds` (1 unless a ratio needs more to be pinned down). */
  roundsFactor?: number;
  open(res: Resources): Promise<Contender[]>;
  observe?: RoundsOptions['observe'];
}

/** About 50 samples of pool.state() over a slice. */
const sampleEveryMs = (durationMs: number) => Math.max(2, Math.round(durationMs / 50));

function sampleState(pool: DbPool, into: StateSample[], everyMs: number): () => void {
  into.length = 0;
  const t0 = performance.now();
  const take = () => {
    const s = pool.state();
    into.push({ tMs: performance.now() - t0, active: s.active, total: s.total, waiting: s.waiting });
  };
  take();
  const timer = setInterval(take, everyMs);
  return () => {
    clearInterval(timer);
    take();
  };
}

function phases(settings: BenchSettings, run: BenchRun): PhaseSpec[] {
  const { url, pgbench } = settings;
  const withPgbench = pgbench ? 1 : 0;
  const maxCallers = Math.max(...settings.sweep);
  return [
    {
      id: 'sequential',
      title: 'Sequential latency: 1 caller, SELECT 1',
      levels: [1],
      contenders: 6 + withPgbench,
      // TypeORM's pair, pool.query's pair, then the others one by one (shown, not judged): pgbench
      // stays last, so the slot after it is each side of TypeORM's pair in turn.
      groups: [2, 2, 1, 1],
      async open(res) {
        const list = [
          dataSourceQuery(C.dbPoolTypeOrm, await openDbPoolDataSource(res, url, 'bench-seq-dbpool-typeorm'), 'ds.query, all features on'),
          dataSourceQuery(C.typeOrm, await openStockDataSource(res, url, 'bench-seq-typeorm', 1), 'ds.query, pg.Pool'),
          poolQuery(C.dbPool, await openDbPool(res, url, 'bench-seq-dbpool'), 'pool.query, all features on'),
          poolQuery(C.pgPool, await openPgPool(res, url, 'bench-seq-pg', 1), 'pool.query'),
          postgresJsQuery(C.postgresJs, await openPostgresJs(res, url, 'bench-seq-postgresjs', 1), 'sql`SELECT 1`'),
          noPool(C.noPool, url, 'connect, query, end; trust auth'),
        ];
        if (pgbench) list.push(await openPgbench(res, pgbench, url, C.pgbench));
        return list;
      },
    },
    {
      id: 'sweep-core',
      title: `Concurrency sweep, capacity ${CAPACITY}: db-pool vs pg.Pool`,
      levels: settings.sweep,
      contenders: 5 + withPgbench,
      // connect/release's pair, pool.query's three, pgbench.
      groups: [2, 3],
      async open(res) {
        const ours = await openDbPool(res, url, 'bench-sweep-dbpool');
        const theirs = await openPgPool(res, url, 'bench-sweep-pg');
        // connect/release's pair first: the slot after pgbench (the last, whose 20 backends are
        // still going away) is each of its sides' in turn. pg.Pool between the two db-pools of
        // pool.query: each ratio compares neighbours.
        const list = [
          poolCheckout(C.dbPoolCheckout, ours, 'wait timed around connect(), all features on'),
          poolCheckout(C.pgPoolCheckout, theirs, 'wait timed around connect()'),
          poolQuery(C.dbPool, ours, 'pool.query, all features on'),
          poolQuery(C.pgPool, theirs, 'pool.query'),
          poolQuery(
            C.dbPoolAdaptive,
            await openDbPool(res, url, 'bench-sweep-dbpool-adaptive', WITH_ADAPTIVE),
            'pool.query, all features on and the adaptive limit',
          ),
        ];
        if (pgbench) list.push(await openPgbench(res, pgbench, url, C.pgbench));
        return list;
      },
      observe: (contender, callers) =>
        contender.name === C.dbPool && callers === maxCallers && contender.pool
          ? sampleState(contender.pool, run.stateSamples, sampleEveryMs(settings.durationMs))
          : undefined,
    },
    {
      id: 'sweep-orm',
      title: `Concurrency sweep, capacity ${CAPACITY}: TypeORM and postgres.js`,
      levels: settings.sweep,
      contenders: 3,
      groups: [2],
      async open(res) {
        return [
          dataSourceQuery(C.dbPoolTypeOrm, await openDbPoolDataSource(res, url, 'bench-sweep-dbpool-typeorm'), 'ds.query, all features on'),
          dataSourceQuery(C.typeOrm, await openStockDataSource(res, url, 'bench-sweep-typeorm'), 'ds.query, pg.Pool'),
          postgresJsQuery(C.postgresJs, await openPostgresJs(res, url, 'bench-sweep-postgresjs'), 'pipelines past max'),
        ];
      },
    },
    {
      id: 'features',
      title: `db-pool features on vs off: ${settings.steadyCallers} callers, steady load`,
      levels: [settings.steadyCallers],
      contenders: 4,
      // The three compared with "off" in its middle; every stack apart (informational).
      groups: [3],
      // preping_on_vs_off's target (≤ 1.05) sits a few per cent from 1: 4× the rounds halve its
      // median's 95 % interval (±3.5 % at 300 rounds on a noisy day, 2026-12-06; #22).
      roundsFactor: 4,
      async open(res) {
        // "off" in the middle: the two target ratios compare neighbours.
        return [
          poolQuery(
            C.prePingOn,
            await openDbPool(res, url, 'bench-preping-on', { prePing: true, prePingBypassMs: 500, leakThresholdSeconds: 0 }),
            'prePing true, 500 ms bypass',
          ),
          poolQuery(C.featuresOff, await openDbPool(res, url, 'bench-features-off', FEATURES_OFF), 'prePing false, leakThresholdSeconds 0'),
          poolQuery(
            C.featuresOn,
            await openDbPool(res, url, 'bench-features-on', ALL_FEATURES),
            'as the headline rows: prePing, leakThresholdSeconds 30, ≤ 100 stacks/s',
          ),
          // Informational: what a stack for every checkout would cost (the rate set out of reach).
          poolQuery(C.featuresEveryStack, await openDbPool(res, url, 'bench-every-stack', EVERY_STACK), 'leakStacksPerSecond 1000000'),
        ];
      },
    },
    {
      id: 'scram',
      title: 'Pool vs no pool over SCRAM-SHA-256 password authentication: 1 caller',
      levels: [1],
      contenders: 2,
      // One pair: each runs twice in a row in every other round, as often as the other.
      groups: [2],
      async open(res) {
        const server = await startScramServer(res);
        run.scram = server.info;
        return [
          noPool(C.noPoolScram, server.url, 'connect + SCRAM, query, end'),
          poolQuery(C.dbPoolScram, await openDbPool(res, server.url, 'bench-scram-dbpool'), 'pool.query, all features on'),
        ];
      },
    },
  ];
}

/**
 * A dedicated embedded PostgreSQL that checks passwords with SCRAM-SHA-256 (the machine's own
 * service may trust every local connection, which would make a new connection look cheap).
 */
async function startScramServer(res: Resources): Promise<{ url: string; info: ScramServer }> {
  // The compiled file runs from apps/loadtest/dist/bench/: four levels up is the repo root.
  const moduleUrl = new URL('../../../../tools/embedded-db.mjs', import.meta.url);
  const { startEmbeddedPostgres } = (await import(moduleUrl.href)) as EmbeddedDb;
  const password = `bench-${Math.random().toString(36).slice(2)}`;
  const db = await startEmbeddedPostgres({ authMethod: 'scram-sha-256', password, quiet: true });
  res.add(() => db.stop());

  const client = new pg.Client({ connectionString: db.url });
  await client.connect();
  const { rows } = await client.query<{ version: string; who: string }>('SELECT current_setting($1) AS version, system_user AS who', [
    'server_version',
  ]);
  await client.end();
  const wrong = new URL(db.url);
  wrong.password = `${password}-wrong`;
  const intruder = new pg.Client({ connectionString: wrong.href });
  const wrongPasswordRefused = await intruder.connect().then(
    () => intruder.end().then(() => false),
    () => true,
  );
  return { url: db.url, info: { serverVersion: rows[0].version, authenticatedAs: rows[0].who, wrongPasswordRefused } };
}

/** Planned slice time of the whole run, for the progress bar. */
export function plannedMs(settings: BenchSettings): number {
  const run: BenchRun = { phases: [], stateSamples: [] };
  return phases(settings, run).reduce(
    (sum, p) =>
      sum +
      p.levels.length * p.contenders * (settings.warmupMs + settings.rounds * (p.roundsFactor ?? 1) * (settings.durationMs + SETTLE_MS)),
    0,
  );
}

export async function runBench(settings: BenchSettings, progress: Progress): Promise<BenchRun> {
  const run: BenchRun = { phases: [], stateSamples: [] };
  const rounds: RoundsOptions = { rounds: settings.rounds, durationMs: settings.durationMs, warmupMs: settings.warmupMs };
  for (const spec of phases(settings, run)) {
    const res = new Resources();
    try {
      progress.activity(`${spec.id} · opening pools`);
      const contenders = await spec.open(res);
      const levels: LevelResult[] = [];
      for (const callers of spec.levels) {
        levels.push(
          await runRounds(
            `${spec.id} c=${callers}`,
            contenders,
            callers,
            { ...rounds, rounds: rounds.rounds * (spec.roundsFactor ?? 1), groups: spec.groups, observe: spec.observe },
            progress,
          ),
        );
      }
      const infos = contenders.map(({ name, note, waitSource, pool }): ContenderInfo => ({
        name,
        note,
        waitSource,
        ...(pool ? { leakStacks: pool.leakStackStats() } : {}),
      }));
      run.phases.push({ id: spec.id, title: spec.title, contenders: infos, levels });
    } catch (err) {
      // The first error is the one worth reading; a pool that then fails to close adds nothing.
      await res.closeAll().catch(() => {});
      throw err;
    }
    progress.activity(`${spec.id} · closing pools`);
    await res.closeAll();
  }
  return run;
}
