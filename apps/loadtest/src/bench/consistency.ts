/**
 * The read-your-writes scenario (#23): what `DB_REPLICA_CONSISTENCY=read-your-writes` costs, on a
 * real primary and streaming standby of its own (tools/replica-set.mjs). Two pairs of pools (a
 * primary's and its replica router's each), one `eventual` and one `read-your-writes`, side by
 * side in short rounds, each side of a pair going first in half of them:
 *
 * - a TypeORM `save()` (a transaction: START TRANSACTION, INSERT … RETURNING, COMMIT), as the
 *   module's users write: read-your-writes runs each in a scope of its own, as a request would,
 *   and reads its token after it, as a write request's response does (the position of its commit,
 *   read on the primary once for every commit that came before the read was sent). The target;
 * - the same with the least a write transaction can be, `BEGIN`, `INSERT`, `COMMIT` on the pool
 *   (information: the fixed cost per write, the scope and the shared position read, against the
 *   smallest transaction);
 * - a read through the router: read-your-writes in a scope with no write, as most requests are;
 * - (information) a write then a read of it in one scope: eventual's read goes to the standby and
 *   may miss it; read-your-writes' goes where it is sure to see it.
 *
 * Ratios are read-your-writes' throughput over eventual's, the median of the ratios of pairs of
 * rounds (measure.ts, roundPairRatios: each pair holds both orders). The
 * callers are eight per connection, so the pools stay busy on both sides: a read-your-writes
 * write's caller waits a while for its token (up to POSITION_READ_INTERVAL_MS, and the read's round
 * trip), and at three callers per connection a third of them were waiting there at any moment,
 * with the pool idle for want of callers. Throughput is then what the pool sustains; the wait
 * itself is reported apart (`token_wait_ms`), as what a write request's response waits. A slice
 * counts the operations that end from its 20th ms to its end (closedLoop's `steadyFromMs`): with
 * the ends of the last operations counted, the slice's drain (the pool idle while the last tokens
 * are awaited) cost read-your-writes up to about 3 % of a 100 ms slice, against no throughput.
 */
import {
  createDbPool,
  createDbPoolDataSource,
  createReplicaRouter,
  type DbPool,
  type DbPoolOptions,
  readYourWritesToken,
  type ReplicaRouter,
  withReadYourWrites,
} from '@db-pool/db-pool';
import { type DataSource, EntitySchema } from 'typeorm';
import type { Contender } from './contenders.js';
import { closedLoop, percentiles, ratioStat, roundPairRatios, type RatioStat, type SliceResult } from './measure.js';
import type { Progress } from './progress.js';
import { runRounds } from './rounds.js';

type ReplicaSetModule = typeof import('../../../../tools/replica-set.mjs');

export interface ConsistencySettings {
  rounds: number;
  durationMs: number;
  warmupMs: number;
  /** Callers in each closed loop. */
  callers: number;
}

/** Each pool's connections (primary and replica alike), for 64 callers (main.ts): eight a connection. */
const POOL_SIZE = 8;

export const CONSISTENCY = {
  saveEventual: 'TypeORM save, eventual',
  saveRyw: 'TypeORM save, read-your-writes',
  writeEventual: 'write, eventual',
  writeRyw: 'write, read-your-writes',
  readEventual: 'read, eventual',
  readRyw: 'read, read-your-writes',
  writeReadEventual: 'write then read, eventual',
  writeReadRyw: 'write then read, read-your-writes',
} as const;

export interface ConsistencyRatios {
  /** read-your-writes / eventual, TypeORM `save()`s per second (a transaction: START TRANSACTION, INSERT … RETURNING, COMMIT). */
  ryw_save_throughput: number;
  /** read-your-writes / eventual, bare write transactions per second on the pool (information: the least work a write can be). */
  ryw_write_throughput: number;
  /** read-your-writes / eventual, reads per second (a scope with no write). */
  ryw_read_throughput: number;
  /** read-your-writes / eventual, a write and a read of it per second (information: eventual's read may miss the write). */
  ryw_write_then_read_throughput: number;
}

export interface ConsistencyTarget {
  comparison: '>=';
  limit: number;
  description: string;
  measured: number;
  met: boolean;
}

const TARGETS: Record<'ryw_save_throughput' | 'ryw_read_throughput', Omit<ConsistencyTarget, 'measured' | 'met'>> = {
  ryw_save_throughput: {
    comparison: '>=',
    limit: 0.95,
    description:
      'TypeORM save() transactions/s with DB_REPLICA_CONSISTENCY=read-your-writes, each in a scope that reads its token / eventual (#23: at most 5 % less)',
  },
  ryw_read_throughput: {
    comparison: '>=',
    limit: 0.97,
    description: 'reads/s through the router with read-your-writes (a scope, no write) / eventual (#23: nothing on reads)',
  },
};

export interface ConsistencyResult {
  settings: ConsistencySettings & { pool_size: number };
  /** Operations per second of each contender, per round. */
  ops_per_sec: Record<string, number[]>;
  /** Of the write-then-read operations, those whose read missed the write (eventual may; read-your-writes must not). */
  missed_own_write: Record<string, number>;
  /** Where read-your-writes' router sent its reads, by reason, over the scenario. */
  ryw_reads: ReturnType<ReplicaRouter['readCounts']>;
  /** Statements read-your-writes' routers sent on the primary for writes' positions, and the writes whose position was needed. */
  position_reads: { reads: number; writes: number };
  /** From a read-your-writes TypeORM save's answer to its token, in ms: what a write request's response waits. */
  token_wait_ms: { p50: number; p99: number; max: number };
  ratios: ConsistencyRatios;
  ratio_details: Record<keyof ConsistencyRatios, RatioStat>;
  targets: Record<string, ConsistencyTarget>;
  missed: string[];
}

interface Side {
  primary: DbPool;
  router: ReplicaRouter;
}

interface BenchRow {
  id: number;
  name: string;
}
const BenchRyw = new EntitySchema<BenchRow>({
  name: 'bench_ryw',
  columns: { id: { type: Number, primary: true, generated: true }, name: { type: String } },
});

function sideOptions(url: string, replicaUrl: string, consistency: 'eventual' | 'read-your-writes', name: string): DbPoolOptions {
  return {
    name,
    url,
    replicaUrls: replicaUrl,
    replicaConsistency: consistency,
    poolSize: POOL_SIZE,
    maxOverflow: 0,
    headroomIntervalSeconds: 0,
    env: {},
  };
}

async function openSide(url: string, replicaUrl: string, consistency: 'eventual' | 'read-your-writes'): Promise<Side> {
  const options = sideOptions(url, replicaUrl, consistency, consistency === 'eventual' ? 'bench-eventual' : 'bench-ryw');
  const primary = await createDbPool(options);
  const router = (await createReplicaRouter(options, primary))!;
  return { primary, router };
}

/** The replica router TypeORM reads through (createDbPoolDataSource's). */
function routerOf(ds: DataSource): ReplicaRouter {
  return (ds.driver as unknown as { slaves: ReplicaRouter[] }).slaves[0];
}

async function write(primary: DbPool): Promise<number> {
  const client = await primary.connect();
  try {
    await client.query('BEGIN');
    const { rows } = await client.query<{ id: number }>('INSERT INTO bench_ryw (name) VALUES ($1) RETURNING id', ['bench']);
    await client.query('COMMIT');
    return rows[0].id;
  } finally {
    client.release();
  }
}

async function read(router: ReplicaRouter, id: number): Promise<boolean> {
  const client = await router.connect();
  try {
    return (await client.query('SELECT name FROM bench_ryw WHERE id = $1', [id])).rowCount === 1;
  } finally {
    client.release();
  }
}

/** A contender whose slices each start once `before` has resolved (the standby caught up: see runConsistency). */
function sliceContender(name: string, op: () => Promise<unknown>, before: () => Promise<unknown>): Contender {
  return {
    name,
    waitSource: 'none',
    run: async (callers, durationMs): Promise<SliceResult> => {
      await before();
      return closedLoop(callers, durationMs, op, { steadyFromMs: Math.min(20, durationMs / 5) });
    },
  };
}

export async function runConsistency(settings: ConsistencySettings, progress: Progress): Promise<ConsistencyResult> {
  const { startReplicaSet } = (await import(new URL('../../../../tools/replica-set.mjs', import.meta.url).href)) as ReplicaSetModule;
  progress.activity('read-your-writes · starting a primary and a streaming standby');
  const rs = await startReplicaSet({ quiet: true });
  const sides: Side[] = [];
  const dataSources: DataSource[] = [];
  try {
    await rs.primary.query('CREATE TABLE bench_ryw (id bigserial PRIMARY KEY, name text NOT NULL)');
    await rs.caughtUp();
    const eventual = await openSide(rs.primary.url, rs.standby.url, 'eventual');
    sides.push(eventual);
    const ryw = await openSide(rs.primary.url, rs.standby.url, 'read-your-writes');
    sides.push(ryw);
    const openDataSource = async (consistency: 'eventual' | 'read-your-writes') => {
      const ds = await createDbPoolDataSource({
        ...sideOptions(rs.primary.url, rs.standby.url, consistency, consistency === 'eventual' ? 'orm-eventual' : 'orm-ryw'),
        typeorm: { entities: [BenchRyw] },
      });
      dataSources.push(ds);
      return ds.getRepository(BenchRyw);
    };
    const ormEventual = await openDataSource('eventual');
    const ormRyw = await openDataSource('read-your-writes');
    const { rows } = await rs.primary.query<{ id: number }>("INSERT INTO bench_ryw (name) VALUES ('seed') RETURNING id");
    const seed = rows[0].id;
    await rs.caughtUp();

    const missedOwn: Record<string, number> = { [CONSISTENCY.writeReadEventual]: 0, [CONSISTENCY.writeReadRyw]: 0 };
    // Writes whose position read-your-writes needed: those that took a token, and those read after.
    let positioned = 0;
    const writeThenRead = (side: Side, name: string) => async () => {
      const id = await write(side.primary);
      if (side === ryw) positioned++;
      if (!(await read(side.router, id))) missedOwn[name]++;
    };
    // A write answers with its token, as a write request does: the position is read (shared) before it can.
    // (As lean as the eventual side's operation: a write request's handler awaits nothing more for it.)
    const tokenWaits: number[] = [];
    const tokenOrThrow = (token: string | undefined) => {
      if (token === undefined) throw new Error('read-your-writes noted no position for a write');
      positioned++;
    };
    const timedToken = () => {
      const saved = performance.now();
      return readYourWritesToken().then((token) => {
        tokenWaits.push(performance.now() - saved);
        tokenOrThrow(token);
      });
    };
    // Every slice starts with the standby caught up: the WAL a write slice leaves behind is not
    // replayed during the slice after it.
    const contender = (name: string, op: () => Promise<unknown>) => sliceContender(name, op, () => rs.caughtUp());
    const contenders: Contender[] = [
      contender(CONSISTENCY.saveEventual, () => ormEventual.save({ name: 'bench' })),
      contender(CONSISTENCY.saveRyw, () => withReadYourWrites(() => ormRyw.save({ name: 'bench' }).then(timedToken))),
      contender(CONSISTENCY.writeEventual, () => write(eventual.primary)),
      contender(CONSISTENCY.writeRyw, () => withReadYourWrites(() => write(ryw.primary).then(readYourWritesToken).then(tokenOrThrow))),
      contender(CONSISTENCY.readEventual, () => read(eventual.router, seed)),
      contender(CONSISTENCY.readRyw, () => withReadYourWrites(() => read(ryw.router, seed))),
      contender(CONSISTENCY.writeReadEventual, writeThenRead(eventual, CONSISTENCY.writeReadEventual)),
      contender(CONSISTENCY.writeReadRyw, () => withReadYourWrites(writeThenRead(ryw, CONSISTENCY.writeReadRyw))),
    ];
    const level = await runRounds(
      'read-your-writes',
      contenders,
      settings.callers,
      { rounds: settings.rounds, durationMs: settings.durationMs, warmupMs: settings.warmupMs, groups: [2, 2, 2, 2] },
      progress,
    );
    // The warm-up's write-then-reads count too: they are operations like any other.
    const rate = (s: SliceResult) => (s.ops * 1000) / s.elapsedMs;
    const stat = (ours: string, theirs: string) => ratioStat(roundPairRatios(level.slices[ours], level.slices[theirs], rate));
    const details = {
      ryw_save_throughput: stat(CONSISTENCY.saveRyw, CONSISTENCY.saveEventual),
      ryw_write_throughput: stat(CONSISTENCY.writeRyw, CONSISTENCY.writeEventual),
      ryw_read_throughput: stat(CONSISTENCY.readRyw, CONSISTENCY.readEventual),
      ryw_write_then_read_throughput: stat(CONSISTENCY.writeReadRyw, CONSISTENCY.writeReadEventual),
    };
    const ratios: ConsistencyRatios = {
      ryw_save_throughput: details.ryw_save_throughput.median,
      ryw_write_throughput: details.ryw_write_throughput.median,
      ryw_read_throughput: details.ryw_read_throughput.median,
      ryw_write_then_read_throughput: details.ryw_write_then_read_throughput.median,
    };
    const targets: Record<string, ConsistencyTarget> = {};
    const missed: string[] = [];
    for (const [key, t] of Object.entries(TARGETS) as [keyof typeof TARGETS, (typeof TARGETS)[keyof typeof TARGETS]][]) {
      const measured = ratios[key];
      const met = measured >= t.limit;
      targets[key] = { ...t, measured, met };
      if (!met) missed.push(`${key} = ${measured.toFixed(3)} (target >= ${t.limit})`);
    }
    if (missedOwn[CONSISTENCY.writeReadRyw] > 0)
      missed.push(`read-your-writes missed its own write ${missedOwn[CONSISTENCY.writeReadRyw]} time(s): a correctness failure`);
    return {
      settings: { ...settings, pool_size: POOL_SIZE },
      ops_per_sec: Object.fromEntries(Object.entries(level.slices).map(([name, slices]) => [name, slices.map(rate)])),
      missed_own_write: missedOwn,
      ryw_reads: ryw.router.readCounts(),
      position_reads: { reads: ryw.router.positionReads() + routerOf(dataSources[1]).positionReads(), writes: positioned },
      token_wait_ms: (({ p50, p99, max }) => ({ p50, p99, max }))(percentiles(Float64Array.from(tokenWaits))),
      ratios,
      ratio_details: details,
      targets,
      missed,
    };
  } finally {
    for (const ds of dataSources) await ds.destroy().catch(() => {});
    for (const side of sides.reverse()) await Promise.all([side.router.end(), side.primary.end()]).catch(() => {});
    await rs.stop();
  }
}

/** The scenario's table: each contender's median rate, the ratios and their verdicts. */
export function renderConsistencyTable(r: ConsistencyResult): string {
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  const lines = [
    '',
    `read-your-writes (#23): a primary and a streaming standby, pools of ${r.settings.pool_size}, ${r.settings.callers} callers, ${r.settings.rounds} rounds × ${r.settings.durationMs} ms`,
    'contender                               ops/s (median)  missed own write',
    '--------------------------------------  --------------  ----------------',
  ];
  for (const [name, rates] of Object.entries(r.ops_per_sec))
    lines.push(
      `${name.padEnd(38)}  ${median(rates).toFixed(0).padStart(14)}  ${name in r.missed_own_write ? String(r.missed_own_write[name]).padStart(16) : ''}`,
    );
  lines.push(
    `read-your-writes' position reads: ${r.position_reads.reads} for ${r.position_reads.writes} writes; a save's token came ${r.token_wait_ms.p50.toFixed(2)} ms after it (median), ${r.token_wait_ms.p99.toFixed(2)} ms (p99)`,
    `read-your-writes' reads: ${Object.entries(r.ryw_reads)
      .map(([k, v]) => `${k} ${v}`)
      .join(', ')}`,
  );
  for (const [key, stat] of Object.entries(r.ratio_details)) {
    const t = r.targets[key];
    lines.push(
      `${key.padEnd(32)} ${stat.median.toFixed(3)} (±${(stat.spread * 100).toFixed(1)} %)${t ? `  >= ${t.limit}  ${t.met ? 'met' : 'MISSED'}` : '  (information)'}`,
    );
  }
  return `${lines.join('\n')}\n`;
}
