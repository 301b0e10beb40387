import { execFile } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import pg from 'pg';
import { CAPACITY, type Contender, type Resources } from './contenders.js';
import type { SliceResult } from './measure.js';

const run = promisify(execFile);

/** The `pgbench` on PATH, if any. */
export function findPgbench(): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (!dir) continue;
    const candidate = join(dir, 'pgbench');
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  return undefined;
}

export async function pgbenchVersion(bin: string): Promise<string> {
  const { stdout } = await run(bin, ['--version']);
  return stdout.trim();
}

/**
 * pgbench running a `SELECT 1` script: C, libpq, one connection per client and no pool, so the
 * native ceiling of the server and this machine. It has no queue: past the pool capacity it runs
 * CAPACITY clients, the most connections a pool of that size would hold.
 */
export async function openPgbench(res: Resources, bin: string, url: string, name: string): Promise<Contender> {
  const dir = await mkdtemp(join(tmpdir(), 'db-pool-pgbench-'));
  res.add(() => rm(dir, { recursive: true, force: true }));
  const script = join(dir, 'select1.sql');
  await writeFile(script, 'SELECT 1;\n');
  const target = new URL(url);
  target.searchParams.set('application_name', name);
  // Sees pgbench's backends leave: a slice ends once they have, not while the server still tears
  // down up to 20 of them on the next contender's time.
  const watch = new pg.Client({ connectionString: url, application_name: `${name} (watch)` });
  await watch.connect();
  res.add(() => watch.end());
  const backendsGone = async () => {
    for (let i = 0; i < 400; i++) {
      const { rows } = await watch.query<{ n: number }>('SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = $1', [
        name,
      ]);
      if (rows[0].n === 0) return;
      await sleep(5);
    }
  };
  // Transactions per client per slice, from the last slice's rate (pgbench's -T takes whole seconds only).
  const perClientRate = new Map<number, number>();
  let slice = 0;

  return {
    name,
    note: `c ≤ ${CAPACITY}`,
    waitSource: 'none',
    async run(callers: number, durationMs: number): Promise<SliceResult> {
      const clients = Math.min(callers, CAPACITY);
      const threads = Math.min(2, clients);
      const rate = perClientRate.get(clients) ?? 2_000;
      const transactions = Math.max(20, Math.round((rate * durationMs) / 1000));
      const prefix = `slice${slice++}`;
      const args = ['-n', '-f', script, '-c', String(clients), '-j', String(threads), '-t', String(transactions)];
      // With one client per thread the per-transaction log is exact; with more, pgbench stamps
      // times lazily once per loop and logs many 0 µs transactions, so only its average is kept.
      const logged = clients === threads;
      if (logged) args.push('-l', `--log-prefix=${join(dir, prefix)}`);
      args.push(target.href);
      const { stdout } = await run(bin, args, { maxBuffer: 1 << 20 });
      await backendsGone();
      const tps = Number(/^tps = ([\d.]+)/m.exec(stdout)?.[1]);
      if (!Number.isFinite(tps) || tps <= 0) throw new Error(`pgbench printed no tps:\n${stdout}`);
      perClientRate.set(clients, tps / clients);

      const avg = Number(/^latency average = ([\d.]+) ms/m.exec(stdout)?.[1]);
      const latencies: number[] = [];
      for (const file of logged ? (await readdir(dir)).filter((f) => f.startsWith(`${prefix}.`)) : []) {
        const text = await readFile(join(dir, file), 'utf8');
        for (const line of text.split('\n')) {
          const fields = line.split(' ');
          if (fields.length >= 3) latencies.push(Number(fields[2]) / 1000); // µs → ms
        }
        await rm(join(dir, file));
      }
      const ops = clients * transactions;
      return { ops, elapsedMs: (ops / tps) * 1000, latencies: Float64Array.from(latencies), latencyAvgMs: avg };
    },
  };
}
