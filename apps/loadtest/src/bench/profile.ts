// The profile behind docs/benchmarks.md "What the profile shows": each pool in turn runs
// `SELECT 1` from N callers for a few seconds in a child process of its own, started with
// `node --cpu-prof`; then the self time of every function is summed per pool and the top lines
// and db-pool's own functions are printed, and what the lease (src/pool/lease.ts) costs per
// checkout: its self time over the checkouts the child made; for the callback form, what running
// each callback in its caller's async context costs (Node's async_hooks frames per checkout).
// Last, the happy path counted rather than timed: every function of db-pool's that one connect()
// finding an idle connection enters, and one release, from V8's precise coverage (call counts).
//
//   npx nx run loadtest:profile [--callers 10] [--seconds 6] [--out-dir DIR]
//
// A child runs one pool: node --cpu-prof apps/loadtest/dist/bench/profile.js --child <pool> …
import { spawn } from 'node:child_process';
import { mkdir, mkdtemp, readdir, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Session } from 'node:inspector/promises';
import { parseArgs } from 'node:util';
import {
  ALL_FEATURES,
  CAPACITY,
  EVERY_STACK,
  FEATURES_OFF,
  Resources,
  openDbPool,
  openPgPool,
  poolQuery,
  poolQueryCallback,
  type Contender,
} from './contenders.js';
import { selfTimes, type CpuProfile } from './cpu-profile.js';
import { C } from './scenarios.js';

/** pool.query(text, callback): what binding the callback to its caller's async context costs shows here. */
const CALLBACKS = 'db-pool callback form';

const POOLS: Record<string, (res: Resources, url: string) => Promise<Contender>> = {
  [C.pgPool]: async (res, url) => poolQuery(C.pgPool, await openPgPool(res, url, 'profile-pg')),
  [C.featuresOff]: async (res, url) => poolQuery(C.featuresOff, await openDbPool(res, url, 'profile-off', FEATURES_OFF)),
  [C.featuresOn]: async (res, url) => poolQuery(C.featuresOn, await openDbPool(res, url, 'profile-on', ALL_FEATURES)),
  [C.featuresEveryStack]: async (res, url) => poolQuery(C.featuresEveryStack, await openDbPool(res, url, 'profile-every', EVERY_STACK)),
  [CALLBACKS]: async (res, url) => poolQueryCallback(CALLBACKS, await openDbPool(res, url, 'profile-callbacks', FEATURES_OFF)),
};

/** V8's precise coverage of one script: each function's name, where it starts and how often it ran. */
interface ScriptCoverage {
  url: string;
  functions: { functionName: string; ranges: { startOffset: number; count: number }[] }[];
}

/** The functions of db-pool's that ran since the last take, in the order V8 lists them: `file:name ×count`. */
function oursThatRan(scripts: ScriptCoverage[]): string[] {
  const ran: string[] = [];
  for (const script of scripts) {
    const at = script.url.indexOf('/libs/db-pool/dist/');
    if (at < 0) continue;
    const file = script.url.slice(at + '/libs/db-pool/dist/'.length);
    for (const fn of script.functions) {
      const { count, startOffset } = fn.ranges[0];
      if (count > 0) ran.push(`${file}:${fn.functionName || `(closure at ${startOffset})`}${count > 1 ? ` ×${count}` : ''}`);
    }
  }
  return ran;
}

/**
 * The happy path, counted: a warm pool (features off, then every feature on), one `connect()`
 * that finds an idle connection, then its `release()`; V8's precise coverage counts every call
 * of every function between two takes, so what is listed is what ran, closures and getters included.
 */
async function happyPath(url: string): Promise<void> {
  const session = new Session();
  session.connect();
  await session.post('Profiler.enable');
  await session.post('Profiler.startPreciseCoverage', { callCount: true, detailed: false });
  const take = async () => ((await session.post('Profiler.takePreciseCoverage')) as { result: ScriptCoverage[] }).result;
  const res = new Resources();
  try {
    for (const [label, features] of [
      [C.featuresOff, FEATURES_OFF],
      [C.featuresOn, ALL_FEATURES],
    ] as const) {
      const pool = await openDbPool(res, url, 'profile-path', features);
      for (let i = 0; i < 100; i++) (await pool.connect()).release();
      await take();
      const client = await pool.connect();
      const acquire = oursThatRan(await take());
      client.release();
      const release = oursThatRan(await take());
      process.stdout.write(`\n== the happy path, ${label}: functions of db-pool's entered (V8 precise coverage)\n`);
      process.stdout.write(`  connect() finding an idle connection: ${acquire.length}\n    ${acquire.join('\n    ')}\n`);
      process.stdout.write(`  release() of a connection that is kept: ${release.length}\n    ${release.join('\n    ')}\n`);
      await res.closeAll();
    }
  } finally {
    await res.closeAll();
    await session.post('Profiler.stopPreciseCoverage');
    session.disconnect();
  }
}

async function child(pool: string, callers: number, seconds: number): Promise<void> {
  const url = process.env.DATABASE_URL!;
  const res = new Resources();
  try {
    const contender = await POOLS[pool](res, url);
    const warm = await contender.run(callers, 500);
    const slice = await contender.run(callers, seconds * 1000);
    // One checkout per query: the profile covers both runs.
    process.stdout.write(`${JSON.stringify({ opsPerSec: (slice.ops / slice.elapsedMs) * 1000, checkouts: warm.ops + slice.ops })}\n`);
  } finally {
    await res.closeAll();
  }
}

function run(args: string[]): Promise<string> {
  return new Promise((done, fail) => {
    const p = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    p.stdout.on('data', (d) => (out += d));
    p.on('error', fail);
    p.on('close', (code) => (code === 0 ? done(out) : fail(new Error(`profile child exited with ${code}`))));
  });
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      child: { type: 'string' },
      callers: { type: 'string', default: '10' },
      seconds: { type: 'string', default: '6' },
      'out-dir': { type: 'string' },
      top: { type: 'string', default: '6' },
    },
  });
  const callers = Number(values.callers);
  const seconds = Number(values.seconds);
  if (!Number.isInteger(callers) || callers < 1 || !(seconds > 0))
    throw new Error('--callers must be a positive integer and --seconds a positive number');
  if (!process.env.DATABASE_URL)
    throw new Error('DATABASE_URL is not set: run `npx nx run loadtest:profile` (it starts an embedded PostgreSQL) or set it');
  if (values.child) return child(values.child, callers, seconds);

  const outDir = values['out-dir'] ? resolve(values['out-dir']) : await mkdtemp(join(tmpdir(), 'db-pool-profile-'));
  await mkdir(outDir, { recursive: true });
  const script = fileURLToPath(import.meta.url);
  process.stdout.write(
    `${callers} callers × ${seconds} s of pool.query('SELECT 1') per pool, capacity ${CAPACITY}; profiles in ${outDir}\n`,
  );
  for (const pool of Object.keys(POOLS)) {
    const dir = join(outDir, pool.replace(/[^a-z0-9]+/gi, '-'));
    // Sampled every 100 µs (V8's default is 1 ms): functions that take a microsecond still show.
    const { opsPerSec, checkouts } = JSON.parse(
      await run([
        '--cpu-prof',
        '--cpu-prof-interval=100',
        `--cpu-prof-dir=${dir}`,
        script,
        '--child',
        pool,
        '--callers',
        String(callers),
        '--seconds',
        String(seconds),
      ]),
    ) as { opsPerSec: number; checkouts: number };
    const [file] = await readdir(dir);
    const times = selfTimes(JSON.parse(await readFile(join(dir, file), 'utf8')) as CpuProfile);
    const total = [...times.values()].reduce((a, b) => a + b, 0);
    const pct = (ms: number) => `${((ms / total) * 100).toFixed(2)} %`;
    const sorted = [...times].sort((a, b) => b[1] - a[1]);
    const ours = sorted.filter(([k]) => k.includes(' libs/db-pool/'));
    process.stdout.write(`\n== ${pool}: ${Math.round(opsPerSec).toLocaleString('en-US')} ops/s\n`);
    for (const [k, ms] of sorted.slice(0, Number(values.top))) process.stdout.write(`  ${pct(ms).padStart(8)}  ${k}\n`);
    const oursTotal = ours.reduce((a, [, ms]) => a + ms, 0);
    process.stdout.write(
      `  db-pool's own functions: ${pct(oursTotal)}${
        ours.length
          ? ` (${ours
              .slice(0, 4)
              .map(([k, ms]) => `${k.split(' ')[0]} ${pct(ms)}`)
              .join(', ')})`
          : ''
      }\n`,
    );
    const gc = times.get('(garbage collector)') ?? 0;
    process.stdout.write(`  garbage collector: ${pct(gc)}\n`);
    const lease = ours.filter(([k]) => k.includes('/pool/lease.')).reduce((a, [, ms]) => a + ms, 0);
    if (pool !== C.pgPool)
      process.stdout.write(
        `  the lease: ${((lease * 1000) / checkouts).toFixed(3)} µs per checkout (${checkouts.toLocaleString('en-US')} checkouts)\n`,
      );
    // An AsyncResource per callback and running the callback in its scope: Node's async_hooks frames and callersContext.
    const asyncContext = sorted
      .filter(([k]) => k.includes('async_hooks') || k.startsWith('callersContext '))
      .reduce((a, [, ms]) => a + ms, 0);
    if (pool === CALLBACKS)
      process.stdout.write(
        `  the caller's async context (an AsyncResource per callback): ${((asyncContext * 1000) / checkouts).toFixed(3)} µs per checkout (budget 1 µs)\n`,
      );
  }
  await happyPath(process.env.DATABASE_URL);
}

main().catch((err: unknown) => {
  process.stderr.write(`profile failed: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exitCode = 1;
});
