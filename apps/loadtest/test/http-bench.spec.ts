/**
 * The HTTP benchmark's CLI (`nx run loadtest:http`), run short: one round of 1-s slices at 10
 * connections, one process per api, no overload slice. A benchmark is not a timed test: this
 * checks that it runs against the real apis and server and reports what docs/benchmarks.md
 * reads from it (each slice's rows, its targets with verdicts), and that `--aa` puts the baseline
 * in the judged place. The ratios' values are not judged here.
 */
import { execFileSync } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { root, runScript } from './support/cli.js';

const SHORT = ['--quick', '--connections', '10', '--rounds', '1', '--instances', '1', '--warmup', '1', '--skip-overload'];
const SLICES = ['read GET /items/:id @ 10', 'write POST /items @ 10'];

interface HttpResults {
  command: string;
  settings: { aa: boolean; dbPool: string };
  rows: { connections: number; endpoint: string; contender: string; rps: number; errors: number; non2xx: number; rounds: unknown[] }[];
  targets: { name: string; slice: string; limit: number; measured: number; met: boolean }[];
  all_targets_met: boolean;
  overload?: unknown;
}

const runCli = (args: string[]) => runScript('apps/loadtest/dist/http/main.js', args);

describe('the HTTP benchmark CLI, run short', () => {
  let outDir: string;

  beforeAll(async () => {
    execFileSync(
      process.execPath,
      [`${root}node_modules/typescript/bin/tsc`, '-b', `${root}apps/api/tsconfig.app.json`, `${root}apps/loadtest/tsconfig.app.json`],
      { stdio: 'inherit' },
    );
    outDir = await mkdtemp(join(tmpdir(), 'http-bench-'));
  }, 120_000);

  afterAll(async () => {
    if (outDir) await rm(outDir, { recursive: true, force: true });
  });

  it('measures db-pool, the baseline and the api at its defaults on both slices, and writes every target with a verdict', async () => {
    const dir = join(outDir, 'judged');
    const run = await runCli([...SHORT, '--out-dir', dir]);
    expect({ code: run.code, stderr: run.code === 0 ? '' : run.stderr }).toEqual({ code: 0, stderr: '' });
    expect(run.stdout).toMatch(/targets \(#22\)/);
    expect(run.stdout).toMatch(/All HTTP targets met\.|HTTP TARGETS MISSED/);
    const results = JSON.parse(await readFile(join(dir, 'http-results.json'), 'utf8')) as HttpResults;
    expect(results.settings.aa).toBe(false);
    const judged = results.rows.filter((r) => r.endpoint !== 'GET /health/db_pool');
    expect(judged.map((r) => `${r.endpoint}|${r.contender}`).sort()).toEqual(
      ['read GET /items/:id', 'write POST /items'].flatMap((e) => [`${e}|baseline`, `${e}|db-pool`, `${e}|db-pool 20+40`]).sort(),
    );
    for (const row of judged) {
      expect(row.rps).toBeGreaterThan(0);
      expect({ errors: row.errors, non2xx: row.non2xx }).toEqual({ errors: 0, non2xx: 0 });
      expect(row.rounds).toHaveLength(1);
    }
    // db-pool's own health route is measured too, shown and not compared.
    expect(results.rows.some((r) => r.endpoint === 'GET /health/db_pool' && r.contender === 'db-pool')).toBe(true);
    expect(results.targets.map((t) => `${t.name} ${t.slice}`).sort()).toEqual(
      SLICES.flatMap((s) => [`http_p99_vs_baseline ${s}`, `http_throughput_vs_baseline ${s}`]).sort(),
    );
    for (const t of results.targets) {
      expect(Number.isFinite(t.measured)).toBe(true);
      expect(t.met).toBe(t.name === 'http_p99_vs_baseline' ? t.measured <= t.limit : t.measured >= t.limit);
    }
    expect(results.all_targets_met).toBe(results.targets.every((t) => t.met));
    expect(results.overload).toBeUndefined();
  }, 180_000);

  it('--aa: a second set of baseline processes in the judged place, no health slice, no overload slice', async () => {
    const dir = join(outDir, 'aa');
    const run = await runCli([...SHORT.filter((a) => a !== '--skip-overload'), '--aa', '--out-dir', dir]);
    expect({ code: run.code, stderr: run.code === 0 ? '' : run.stderr }).toEqual({ code: 0, stderr: '' });
    expect(run.stdout).toContain('A/A (the baseline in the judged place)');
    const results = JSON.parse(await readFile(join(dir, 'http-results.json'), 'utf8')) as HttpResults;
    expect(results.settings.aa).toBe(true);
    expect(results.settings.dbPool).toMatch(/^A\/A/);
    expect(new Set(results.rows.map((r) => r.contender))).toEqual(new Set(['baseline (A/A)', 'baseline', 'db-pool 20+40']));
    expect(results.rows.some((r) => r.endpoint === 'GET /health/db_pool')).toBe(false);
    for (const row of results.rows) expect({ errors: row.errors, non2xx: row.non2xx }).toEqual({ errors: 0, non2xx: 0 });
    expect(results.targets).toHaveLength(4);
    expect(results.overload).toBeUndefined();
  }, 180_000);

  it('refuses a bad number, naming the flag, before starting anything', async () => {
    const run = await runCli(['--rounds', 'two', '--out-dir', join(outDir, 'bad')]);
    expect(run.code).toBe(1);
    expect(run.stderr).toContain('--rounds must be a positive whole number; got two');
  });
});
