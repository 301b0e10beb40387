// The overload scenario: a query whose cost is the server's CPU, the server's capacity measured
// first (best closed-loop throughput over a concurrency sweep), then open-loop arrivals at a
// multiple of it, each request with a deadline from its arrival. Goodput is the answers within
// the deadline per second; recovery is how long after the arrivals stop a query through the
// contender takes its idle time again.
import { performance } from 'node:perf_hooks';
import { createDbPool, type DbPool, PoolOverloadedError, PoolDeadlineError, PoolTimeoutError, withDeadline } from '@db-pool/db-pool';
import pg from 'pg';
import { ALL_FEATURES } from './contenders.js';
import { closedLoop, openLoop, percentiles, type Percentiles } from './measure.js';
import type { Progress } from './progress.js';

/** About 4–5 ms of one core on the machines this was written on: the server's CPU is the bottleneck. */
export const OVERLOAD_SQL = 'SELECT sum(i) FROM generate_series(1, 60000) i';

export const O = {
  adaptive: 'db-pool adaptive',
  fixed: 'db-pool fixed 20+40',
  pgPool60: 'pg.Pool max 60',
  pgPool10: 'pg.Pool max 10',
} as const;

export interface OverloadSettings {
  url: string;
  sql: string;
  /** Each request's deadline from its arrival, ms. */
  deadlineMs: number;
  /** Arrival rate as a multiple of the measured capacity. */
  factor: number;
  /** Length of the overload, ms. */
  overloadMs: number;
  /** Concurrencies of the capacity sweep. */
  sweep: number[];
  /** Length of one sweep level, ms. */
  sweepMs: number;
  /**
   * Rounds of the adaptive contender (odd: its row is the median round), each with a fresh pool,
   * judged against the capacity measured just before it: one 5-s run read 0.699 of capacity where
   * the two run next, on the same code, read 0.866 and 0.973 (2026-12-07).
   */
  adaptiveRounds: number;
}

/** One round of the adaptive contender: the capacity measured before it and what it kept within the deadline. */
export interface AdaptiveRound {
  capacityPerSec: number;
  goodput: number;
  goodputVsCapacity: number;
  /** Its concurrency limit at the end. */
  limit: number;
}

export interface CapacityLevel {
  concurrency: number;
  opsPerSec: number;
  latencyMs: Percentiles;
}

/** What happened to one request. */
type Outcome = 'ok' | 'late' | 'shed' | 'acquire_timeout' | 'deadline' | 'query_timeout' | 'unanswered' | 'other';

export interface TimelineBucket {
  /** Start of the bucket, ms since the overload began. */
  tMs: number;
  /** Answers within the deadline completed in the bucket, per second. */
  goodput: number;
  /** Requests that failed or were late, completed in the bucket, per second. */
  failed: number;
  /** db-pool: the concurrency limit at the bucket's end, connections out, callers queued. */
  limit?: number;
  active?: number;
  waiting?: number;
}

export interface OverloadContenderResult {
  name: string;
  note: string;
  /** Median of 30 sequential requests before the overload, ms. */
  idleMs: number;
  offered: number;
  arrivalsPerSec: number;
  /** Answers within the deadline, per second of overload. */
  goodput: number;
  /** The capacity it is judged against (measured before it), per second. */
  capacityPerSec: number;
  goodputVsCapacity: number;
  outcomes: Record<Outcome, number>;
  /** Latency of every answer (late ones included), from arrival. */
  answeredMs: Percentiles;
  /** Seconds after the last arrival until probes through the contender were back at their idle time (null: not within the watch). */
  recoveryS: number | null;
  /** Queries still running on the server for this contender when its last request settled. */
  serverQueriesLeft: number;
  timeline: TimelineBucket[];
  /** db-pool: its limit and counters at the end. */
  pool?: { limit: number; floor: number; ceiling: number; baselineMs: number; shed: number; cancels: number };
  /** The adaptive contender: every round, in the order run; this row is the round with the median goodput over capacity. */
  rounds?: AdaptiveRound[];
}

export interface OverloadResult {
  settings: Omit<OverloadSettings, 'url'>;
  capacity: { opsPerSec: number; concurrency: number; levels: CapacityLevel[] };
  contenders: OverloadContenderResult[];
}

interface OverloadContender {
  name: string;
  note: string;
  appName: string;
  pool?: DbPool;
  /** One request with the contender's deadline policy. */
  request(deadlineMs: number): Promise<unknown>;
  /** A request without deadline (idle time, recovery probes). */
  plain(): Promise<unknown>;
  close(): Promise<void>;
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Best closed-loop throughput over the sweep (each level run twice, the better kept). */
async function measureCapacity(s: OverloadSettings, progress: Progress, sweep = s.sweep): Promise<OverloadResult['capacity']> {
  const max = Math.max(...sweep);
  const pool = new pg.Pool({ connectionString: s.url, max, application_name: 'bench-overload-capacity' });
  try {
    await Promise.all(Array.from({ length: max }, () => pool.query('SELECT 1')));
    const levels: CapacityLevel[] = [];
    for (const concurrency of sweep) {
      progress.activity(`overload · capacity at ${concurrency} connection(s)`);
      await closedLoop(concurrency, 200, () => pool.query(s.sql)); // warm
      let best: CapacityLevel | undefined;
      for (let i = 0; i < 2; i++) {
        const r = await closedLoop(concurrency, s.sweepMs, () => pool.query(s.sql));
        const level = { concurrency, opsPerSec: (r.ops / r.elapsedMs) * 1000, latencyMs: percentiles(r.latencies) };
        if (!best || level.opsPerSec > best.opsPerSec) best = level;
      }
      levels.push(best!);
    }
    const top = levels.reduce((a, b) => (b.opsPerSec > a.opsPerSec ? b : a));
    return { opsPerSec: top.opsPerSec, concurrency: top.concurrency, levels };
  } finally {
    await pool.end();
  }
}

async function openContenders(s: OverloadSettings): Promise<(() => Promise<OverloadContender>)[]> {
  const dbPool = async (name: string, appName: string, adaptive: boolean, note: string): Promise<OverloadContender> => {
    const pool = await createDbPool({
      url: s.url,
      name: appName,
      applicationName: appName,
      poolSize: 20,
      maxOverflow: 40,
      env: {},
      ...ALL_FEATURES,
      ...(adaptive ? { adaptive: true } : { adaptive: false, queryTimeoutMs: s.deadlineMs }),
    });
    return {
      name,
      note,
      appName,
      pool,
      // Overload control: the request's deadline bounds the acquire (shed when it cannot be met)
      // and the statement (cancelled on the server when it passes).
      request: adaptive ? (ms) => withDeadline(ms, () => pool.query(s.sql)) : () => pool.query(s.sql),
      plain: () => pool.query(s.sql),
      close: () => pool.end(),
    };
  };
  const pgPool = (name: string, appName: string, max: number): OverloadContender => {
    const pool = new pg.Pool({ connectionString: s.url, max, application_name: appName, query_timeout: s.deadlineMs });
    pool.on('error', () => {});
    return {
      name,
      note: `query_timeout ${s.deadlineMs} ms`,
      appName,
      request: () => pool.query(s.sql),
      // Probes go through the same pool (they queue behind what it still holds), without query_timeout.
      plain: () => pool.query({ text: s.sql, query_timeout: 60_000 } as pg.QueryConfig),
      close: () => pool.end(),
    };
  };
  return [
    () => dbPool(O.adaptive, 'bench-overload-adaptive', true, `DB_POOL_ADAPTIVE, withDeadline(${s.deadlineMs} ms)`),
    () => dbPool(O.fixed, 'bench-overload-fixed', false, `DB_QUERY_TIMEOUT_MS ${s.deadlineMs}, no adaptive limit, no request deadline`),
    async () => pgPool(O.pgPool60, 'bench-overload-pg60', 60),
    async () => pgPool(O.pgPool10, 'bench-overload-pg10', 10),
  ];
}

function classify(err: unknown): Outcome {
  if (err instanceof PoolOverloadedError) return 'shed';
  if (err instanceof PoolDeadlineError) return 'deadline';
  if (err instanceof PoolTimeoutError) return 'acquire_timeout';
  if (err instanceof Error && err.message === 'Query read timeout') return 'query_timeout';
  return 'other';
}

/** Queries of `appName` running on the server now. */
async function serverQueries(url: string, appName: string): Promise<number> {
  const client = new pg.Client({ connectionString: url, application_name: 'bench-overload-watch' });
  await client.connect();
  try {
    const { rows } = await client.query<{ n: string }>(
      "SELECT count(*) AS n FROM pg_stat_activity WHERE application_name = $1 AND state = 'active'",
      [appName],
    );
    return Number(rows[0].n);
  } finally {
    await client.end();
  }
}

async function runContender(
  s: OverloadSettings,
  c: OverloadContender,
  capacity: number,
  progress: Progress,
): Promise<OverloadContenderResult> {
  // Idle time: sequential requests on a quiet server.
  progress.activity(`overload · ${c.name} · idle time`);
  for (let i = 0; i < 10; i++) await c.plain();
  const idle: number[] = [];
  for (let i = 0; i < 30; i++) {
    const t0 = performance.now();
    await c.plain();
    idle.push(performance.now() - t0);
  }
  idle.sort((a, b) => a - b);
  const idleMs = idle[Math.floor(idle.length / 2)];

  progress.activity(`overload · ${c.name} · ${s.factor}× capacity for ${s.overloadMs / 1000} s`);
  const rate = s.factor * capacity;
  const total = Math.round((s.overloadMs / 1000) * rate);
  const outcomes: Record<Outcome, number> = {
    ok: 0,
    late: 0,
    shed: 0,
    acquire_timeout: 0,
    deadline: 0,
    query_timeout: 0,
    unanswered: 0,
    other: 0,
  };
  const answered: number[] = [];
  const bucketMs = 100;
  const buckets = new Map<number, TimelineBucket>();
  const bucketAt = (t: number) => {
    const k = Math.floor(t / bucketMs);
    let b = buckets.get(k);
    if (!b) buckets.set(k, (b = { tMs: k * bucketMs, goodput: 0, failed: 0 }));
    return b;
  };
  const start = performance.now();
  // db-pool's limit and queue, sampled at each bucket's end.
  const sampler = c.pool
    ? setInterval(() => {
        const b = bucketAt(performance.now() - start);
        const st = c.pool!.state();
        b.limit = c.pool!.concurrencyLimit().limit;
        b.active = st.active;
        b.waiting = st.waiting;
      }, bucketMs / 2)
    : undefined;
  const { end, pending } = await openLoop(rate, total, (arrival) =>
    c.request(s.deadlineMs).then(
      () => {
        const t = performance.now();
        const ms = t - arrival;
        answered.push(ms);
        const b = bucketAt(t - start);
        if (ms <= s.deadlineMs) {
          outcomes.ok++;
          b.goodput++;
        } else {
          outcomes.late++;
          b.failed++;
        }
      },
      (err: unknown) => {
        const t = performance.now();
        outcomes[t - arrival > s.deadlineMs && classify(err) === 'other' ? 'late' : classify(err)]++;
        bucketAt(t - start).failed++;
      },
    ),
  );

  // Recovery: a probe every 20 ms through the contender; recovered when 25 in a row take at most
  // twice the idle time (and 2 ms more, for timer noise).
  progress.activity(`overload · ${c.name} · recovery`);
  const threshold = Math.max(2 * idleMs, idleMs + 2);
  const probes: { sentS: number; ms: number }[] = [];
  let recoveryS: number | null = null;
  const watchUntil = end + 30_000;
  const probeOne = () => {
    const sent = performance.now();
    return c.plain().then(
      () => probes.push({ sentS: (sent - end) / 1000, ms: performance.now() - sent }),
      () => probes.push({ sentS: (sent - end) / 1000, ms: Infinity }),
    );
  };
  const inFlight: Promise<unknown>[] = [];
  while (performance.now() < watchUntil) {
    inFlight.push(probeOne());
    await sleep(20);
    const sorted = [...probes].sort((a, b) => a.sentS - b.sentS);
    let run = 0;
    for (let i = sorted.length - 1; i >= 0 && sorted[i].ms <= threshold; i--) run++;
    if (run >= 25 && sorted.length - run >= 0) {
      recoveryS = sorted.length === run ? 0 : Math.max(0, sorted[sorted.length - run].sentS);
      break;
    }
  }
  await Promise.all(inFlight);
  // Requests a pool still holds (pg.Pool's queue has no deadline) are waited for, within reason.
  const drainUntil = performance.now() + 60_000;
  while (pending.size > 0 && performance.now() < drainUntil) await Promise.race([...pending, sleep(100)]);
  outcomes.unanswered = pending.size;
  if (sampler) clearInterval(sampler);
  const serverQueriesLeft = await serverQueries(s.url, c.appName);

  const ok = outcomes.ok;
  const goodput = ok / (s.overloadMs / 1000);
  const limit = c.pool?.concurrencyLimit();
  return {
    name: c.name,
    note: c.note,
    idleMs,
    offered: total,
    arrivalsPerSec: rate,
    goodput,
    capacityPerSec: capacity,
    goodputVsCapacity: goodput / capacity,
    outcomes,
    answeredMs: percentiles(Float64Array.from(answered)),
    recoveryS,
    serverQueriesLeft,
    timeline: [...buckets.values()].sort((a, b) => a.tMs - b.tMs).map((b) => ({ ...b, goodput: b.goodput * 10, failed: b.failed * 10 })),
    ...(c.pool && limit
      ? {
          pool: {
            limit: limit.limit,
            floor: limit.floor,
            ceiling: limit.ceiling,
            baselineMs: limit.baselineMs,
            shed: c.pool.counters.overloaded,
            cancels: c.pool.counters.cancels,
          },
        }
      : {}),
  };
}

/** Waits until no query of the benchmark's runs on the server (a contender's leftovers must not load the next one). */
async function quiesce(url: string): Promise<void> {
  const client = new pg.Client({ connectionString: url, application_name: 'bench-overload-watch' });
  await client.connect();
  try {
    for (let i = 0; i < 600; i++) {
      const { rows } = await client.query<{ n: string }>(
        "SELECT count(*) AS n FROM pg_stat_activity WHERE application_name LIKE 'bench-overload-%' AND application_name <> 'bench-overload-watch' AND state = 'active'",
      );
      if (Number(rows[0].n) === 0) return;
      await sleep(50);
    }
  } finally {
    await client.end();
  }
}

export async function runOverload(s: OverloadSettings, progress: Progress): Promise<OverloadResult> {
  if (!Number.isInteger(s.adaptiveRounds) || s.adaptiveRounds < 1 || s.adaptiveRounds % 2 === 0)
    throw new RangeError(`adaptiveRounds must be an odd whole number; got ${s.adaptiveRounds}`);
  const capacity = await measureCapacity(s, progress);
  const contenders: OverloadContenderResult[] = [];
  const [adaptive, ...others] = await openContenders(s);
  const run = async (open: () => Promise<OverloadContender>, capacityPerSec: number) => {
    await quiesce(s.url);
    const c = await open();
    try {
      return await runContender(s, c, capacityPerSec, progress);
    } finally {
      await c.close();
    }
  };
  // The adaptive contender's rounds, each after a capacity measured at the sweep's best concurrency
  // (the first takes the sweep's): a machine that slows for seconds slows both sides of a round.
  const rounds: OverloadContenderResult[] = [];
  for (let i = 0; i < s.adaptiveRounds; i++) {
    const before = i === 0 ? capacity.opsPerSec : (await measureCapacity(s, progress, [capacity.concurrency])).opsPerSec;
    rounds.push(await run(adaptive, before));
  }
  contenders.push(medianRound(rounds));
  for (const open of others) contenders.push(await run(open, capacity.opsPerSec));
  const { url: _url, ...shown } = s;
  return { settings: shown, capacity, contenders };
}

/** The round with the median goodput over capacity, whole (its timeline, its p99, its recovery), carrying every round. */
export function medianRound(rounds: OverloadContenderResult[]): OverloadContenderResult {
  const sorted = [...rounds].sort((a, b) => a.goodputVsCapacity - b.goodputVsCapacity);
  return {
    ...sorted[(sorted.length - 1) >> 1],
    rounds: rounds.map((r) => ({
      capacityPerSec: r.capacityPerSec,
      goodput: r.goodput,
      goodputVsCapacity: r.goodputVsCapacity,
      limit: r.pool?.limit ?? NaN,
    })),
  };
}

export interface OverloadRatios {
  overload_goodput_vs_capacity: number;
  overload_goodput_vs_pg_pool: number;
  overload_p99_over_deadline: number;
  overload_recovery_s: number;
}

export interface OverloadTarget {
  comparison: '<=' | '>=';
  limit: number;
  description: string;
  measured: number;
  met: boolean;
}

const OVERLOAD_TARGETS: Record<keyof OverloadRatios, Omit<OverloadTarget, 'measured' | 'met'>> = {
  overload_goodput_vs_capacity: {
    comparison: '>=',
    limit: 0.8,
    description: 'db-pool adaptive: answers within the deadline per second / measured capacity, under 2× overload',
  },
  overload_goodput_vs_pg_pool: { comparison: '>=', limit: 5, description: 'db-pool adaptive goodput / raw pg.Pool max 60 goodput' },
  overload_p99_over_deadline: { comparison: '<=', limit: 1, description: 'db-pool adaptive: p99 of the answered requests / deadline' },
  overload_recovery_s: {
    comparison: '<=',
    limit: 1,
    description: 'db-pool adaptive: seconds after the overload until probes take their idle time again',
  },
};

/** The scenario's ratios (db-pool with overload control against capacity and raw pg.Pool max 60) and their targets. */
export function analyzeOverload(r: OverloadResult): { ratios: OverloadRatios; targets: Record<string, OverloadTarget>; missed: string[] } {
  const of = (name: string) => {
    const found = r.contenders.find((c) => c.name === name);
    if (!found) throw new Error(`the overload scenario has no result for ${name}`);
    return found;
  };
  const ours = of(O.adaptive);
  const pg60 = of(O.pgPool60);
  const ratios: OverloadRatios = {
    overload_goodput_vs_capacity: ours.goodputVsCapacity,
    // pg.Pool may keep nothing within the deadline: the ratio is then unbounded.
    overload_goodput_vs_pg_pool: pg60.goodput > 0 ? ours.goodput / pg60.goodput : Infinity,
    overload_p99_over_deadline: ours.answeredMs.p99 / r.settings.deadlineMs,
    overload_recovery_s: ours.recoveryS ?? Infinity,
  };
  const targets: Record<string, OverloadTarget> = {};
  const missed: string[] = [];
  for (const [key, t] of Object.entries(OVERLOAD_TARGETS) as [keyof OverloadRatios, (typeof OVERLOAD_TARGETS)[keyof OverloadRatios]][]) {
    const measured = ratios[key];
    const met = t.comparison === '<=' ? measured <= t.limit : measured >= t.limit;
    targets[key] = { ...t, measured, met };
    if (!met) missed.push(`${key} = ${measured.toFixed(3)} (target ${t.comparison} ${t.limit})`);
  }
  return { ratios, targets, missed };
}
