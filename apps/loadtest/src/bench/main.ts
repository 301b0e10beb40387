// The benchmark CLI: db-pool against raw pg.Pool, postgres.js, stock TypeORM, no pool and
// pgbench, interleaved in short rounds, reported as ratios measured in the same run.
//   npx nx run loadtest:bench [-- --quick] [--rounds N] [--duration-ms N] [--out-dir DIR]
import { mkdir, writeFile } from 'node:fs/promises';
import { relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { resolveDbPoolConfig } from '@db-pool/db-pool';
import { ALL_FEATURES, CAPACITY } from './contenders.js';
import { SETTLE_MS } from './rounds.js';
import { machineInfo, serverInfo } from './machine.js';
import { findPgbench, pgbenchVersion } from './pgbench.js';
import { Progress } from './progress.js';
import { renderHtml, type RunInfo } from './report-html.js';
import { renderOverloadTable } from './report-overload.js';
import { renderTable } from './report-table.js';
import { analyze } from './results.js';
import { analyzeOverload, OVERLOAD_SQL, runOverload, type OverloadResult, type OverloadSettings } from './overload.js';
import { plannedMs, runBench, type BenchSettings } from './scenarios.js';
import { renderConsistencyTable, runConsistency, type ConsistencySettings } from './consistency.js';

const USAGE = `usage: node apps/loadtest/dist/bench/main.js [options]   (or: npx nx run loadtest:bench -- [options])

Benchmarks db-pool against raw pg.Pool, postgres.js, stock TypeORM, no pool and pgbench on the
server DATABASE_URL names (the nx target starts an embedded one when it is unset). Contenders run
interleaved in short rounds; every ratio is the median of per-round ratios (the read-your-writes
scenario's, of ratios over pairs of rounds, each pair holding both orders).

  --quick            a short run (well under a minute): 5 rounds × 100 ms, indicative only
  --rounds N         rounds per scenario (default 75; 5 with --quick; the features scenario runs 4 × N)
  --duration-ms N    length of one contender's slice in a round (default 100)
  --scenario S       core (the comparisons above), overload (2× capacity, open loop, deadlines),
                     consistency (DB_REPLICA_CONSISTENCY=read-your-writes against eventual, on a primary and
                     streaming standby of its own), or all (default)
  --overload-seconds N  length of the overload (default 5; 2 with --quick)
  --out-dir DIR      where bench-results.json and bench-report.html go (default: current dir)
  --help             this text

Profiling is Node's own: node --cpu-prof --cpu-prof-dir=prof apps/loadtest/dist/bench/main.js --quick
The exit code is 0 when a target is missed (this is a report); non-zero only on errors.
`;

interface Cli {
  quick: boolean;
  scenarios: { core: boolean; overload: boolean; consistency: boolean };
  overloadMs: number;
  rounds: number;
  durationMs: number;
  warmupMs: number;
  outDir: string;
}

function positiveInt(flag: string, raw: string | undefined, fallback: number, min: number): number {
  if (raw === undefined) return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < min) throw new UsageError(`${flag} must be an integer ≥ ${min}, got ${JSON.stringify(raw)}`);
  return n;
}

class UsageError extends Error {}

function parseCli(argv: string[]): Cli | undefined {
  const { values } = parseArgs({
    args: argv,
    options: {
      quick: { type: 'boolean', default: false },
      rounds: { type: 'string' },
      'duration-ms': { type: 'string' },
      'out-dir': { type: 'string' },
      scenario: { type: 'string', default: 'all' },
      'overload-seconds': { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
  });
  if (values.help) return undefined;
  const quick = values.quick ?? false;
  // Many short rounds rather than a few long ones: the two sides of a ratio run back to back, so a
  // change in machine speed (these machines swing by 2× for seconds at a time) rarely falls between them.
  // 75 × 100 ms gave steadier medians here than 25 × 300 ms in the same time.
  const durationMs = positiveInt('--duration-ms', values['duration-ms'], 100, 20);
  const scenario = values.scenario ?? 'all';
  if (!['core', 'overload', 'consistency', 'all'].includes(scenario))
    throw new UsageError(`--scenario must be one of core, overload, consistency, all; got ${JSON.stringify(scenario)}`);
  return {
    quick,
    scenarios: {
      core: scenario === 'core' || scenario === 'all',
      overload: scenario === 'overload' || scenario === 'all',
      consistency: scenario === 'consistency' || scenario === 'all',
    },
    overloadMs: positiveInt('--overload-seconds', values['overload-seconds'], quick ? 2 : 5, 1) * 1000,
    rounds: positiveInt('--rounds', values.rounds, quick ? 5 : 75, 1),
    durationMs,
    warmupMs: Math.max(150, Math.round(durationMs / 2)),
    outDir: resolve(values['out-dir'] ?? '.'),
  };
}

/** The headline db-pool contenders' settings, as the pool resolves them. */
function dbPoolFeatures() {
  const config = resolveDbPoolConfig({ url: 'postgres://bench@localhost/bench', env: {}, ...ALL_FEATURES });
  return {
    adaptive_limit: config.adaptive ? `${config.adaptiveMin}..capacity` : 'off',
    pre_ping: config.prePing,
    pre_ping_bypass_ms: config.prePingBypassMs,
    leak_threshold_s: config.leakThresholdMs / 1000,
    leak_stack_rate_per_s: config.leakStackRate,
    reset_on_return: 'always (rollback when returned inside a transaction)',
    metrics: 'always (wait/use/create histograms and counters)',
  };
}

function commandLine(): string {
  const script = relative(process.cwd(), fileURLToPath(import.meta.url)) || process.argv[1];
  return ['node', ...process.execArgv, script, ...process.argv.slice(2)].join(' ');
}

async function main(): Promise<number> {
  let cli: Cli | undefined;
  try {
    cli = parseCli(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`${(err as Error).message}\n\n${USAGE}`);
    return 2;
  }
  if (!cli) {
    process.stdout.write(USAGE);
    return 0;
  }
  const url = process.env.DATABASE_URL;
  if (!url) {
    process.stderr.write(
      'DATABASE_URL is not set. Run `npx nx run loadtest:bench` (it starts an embedded PostgreSQL) or set DATABASE_URL.\n',
    );
    return 2;
  }

  const progress = new Progress();
  const server = await serverInfo(url);
  // Up to three pools of 20 plus pgbench's 20 are open at once.
  const needed = 3 * CAPACITY + 5;
  if (server.maxConnections - server.clientConnections < needed) {
    progress.note(
      `warning: the server has ${server.maxConnections - server.clientConnections} free connections; this benchmark needs about ${needed}`,
    );
  }
  const pgbench = findPgbench();
  if (!pgbench) progress.note('pgbench is not on PATH: the native ceiling is left out');

  const settings: BenchSettings = {
    url,
    rounds: cli.rounds,
    durationMs: cli.durationMs,
    warmupMs: cli.warmupMs,
    sweep: [1, 10, 50, 200],
    pgbench,
    steadyCallers: 10,
  };
  const overloadSettings: OverloadSettings = {
    url,
    sql: OVERLOAD_SQL,
    deadlineMs: 250,
    factor: 2,
    overloadMs: cli.overloadMs,
    sweep: [1, 2, 4, 8, 16],
    sweepMs: cli.quick ? 500 : 1500,
    adaptiveRounds: 3,
  };
  const consistencySettings: ConsistencySettings = {
    // Its ratios are over pairs of rounds: an even number, two at least.
    rounds: Math.max(2, cli.rounds + (cli.rounds % 2)),
    durationMs: cli.durationMs,
    warmupMs: cli.warmupMs,
    callers: 64,
  };
  progress.plan(
    (cli.scenarios.core ? plannedMs(settings) : 0) +
      (cli.scenarios.overload
        ? (overloadSettings.sweep.length + overloadSettings.adaptiveRounds - 1) * (2 * overloadSettings.sweepMs + 200) +
          (3 + overloadSettings.adaptiveRounds) * (cli.overloadMs + 2000)
        : 0) +
      (cli.scenarios.consistency ? 8 * (cli.warmupMs + consistencySettings.rounds * (cli.durationMs + SETTLE_MS)) : 0),
  );
  const run = cli.scenarios.core ? await runBench(settings, progress) : undefined;
  const overload: OverloadResult | undefined = cli.scenarios.overload ? await runOverload(overloadSettings, progress) : undefined;
  const consistency = cli.scenarios.consistency ? await runConsistency(consistencySettings, progress) : undefined;
  progress.finish();

  const analysis = run ? analyze(run) : undefined;
  const overloadAnalysis = overload ? analyzeOverload(overload) : undefined;
  const missed = [...(analysis?.missed ?? []), ...(overloadAnalysis?.missed ?? []), ...(consistency?.missed ?? [])];
  const info: RunInfo = {
    generated_at: new Date().toISOString(),
    command: commandLine(),
    rounds: cli.rounds,
    duration_ms: cli.durationMs,
    quick: cli.quick,
    db_pool_features: dbPoolFeatures(),
    machine: machineInfo({
      server_version: server.version,
      server_max_connections: server.maxConnections,
      scram_server_version: run?.scram?.serverVersion,
      scram_authenticated_as: run?.scram?.authenticatedAs,
      scram_wrong_password_refused: run?.scram?.wrongPasswordRefused,
      pgbench: pgbench ? await pgbenchVersion(pgbench) : 'not on PATH',
    }),
  };

  const results = {
    generated_at: info.generated_at,
    command: info.command,
    argv: process.argv.slice(2),
    settings: {
      quick: cli.quick,
      scenarios: Object.entries(cli.scenarios)
        .filter(([, on]) => on)
        .map(([name]) => name),
      rounds: cli.rounds,
      duration_ms: cli.durationMs,
      warmup_ms: cli.warmupMs,
      settle_ms: SETTLE_MS,
      capacity: CAPACITY,
      sweep: settings.sweep,
      steady_callers: settings.steadyCallers,
      db_pool_features: info.db_pool_features,
    },
    machine: info.machine,
    ratios: { ...analysis?.ratios, ...overloadAnalysis?.ratios, ...consistency?.ratios },
    targets: { ...analysis?.targets, ...overloadAnalysis?.targets, ...consistency?.targets },
    all_targets_met: missed.length === 0,
    missed,
    ratio_details: analysis?.ratio_details,
    scenarios: analysis?.phases,
    pool_state_samples: analysis?.state_samples,
    overload,
    consistency,
  };

  await mkdir(cli.outDir, { recursive: true });
  const jsonPath = resolve(cli.outDir, 'bench-results.json');
  const htmlPath = resolve(cli.outDir, 'bench-report.html');
  await writeFile(
    jsonPath,
    `${JSON.stringify(results, (_k, v: unknown) => (typeof v === 'number' && !Number.isFinite(v) ? null : v), 2)}\n`,
  );
  await writeFile(
    htmlPath,
    renderHtml(analysis, info, CAPACITY, overload && overloadAnalysis ? { result: overload, ...overloadAnalysis } : undefined),
  );

  if (analysis) process.stdout.write(renderTable(analysis, { rounds: cli.rounds, durationMs: cli.durationMs }));
  if (overload && overloadAnalysis) process.stdout.write(renderOverloadTable(overload, overloadAnalysis));
  if (consistency) process.stdout.write(renderConsistencyTable(consistency));
  process.stdout.write(
    `\nmachine: ${String(info.machine.cpu_count)} × ${String(info.machine.cpu_model)}, node ${process.version}, ${server.version.split(',')[0]}\n`,
  );
  process.stderr.write(`wrote ${jsonPath}\nwrote ${htmlPath}\n`);
  return 0;
}

main().then(
  (code) => {
    process.exitCode = code;
    // Anything a driver left open must not keep a finished benchmark alive.
    setTimeout(() => process.exit(), 3_000).unref();
  },
  (err: unknown) => {
    process.stderr.write(`\nbench failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exitCode = 1;
    setTimeout(() => process.exit(), 3_000).unref();
  },
);
