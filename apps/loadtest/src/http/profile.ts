/**
 * The api's profile behind docs/benchmarks.md "HTTP load" (#22 item 1): each api alone — on
 * db-pool with the baseline's capacity (10 + 0), and on plain `TypeOrmModule.forRoot` defaults —
 * under autocannon on one read and one write slice, with V8's CPU profiler on for the measured
 * seconds only (after a warm-up). Prints, per slice and api, the main thread's busy time per
 * request, its share by package (db-pool's own code apart) and the top self times; writes
 * http-profile.json and each .cpuprofile to --out-dir.
 *
 *   npx nx run loadtest:http-profile [--connections 10] [--seconds 8] [--warmup 3] [--out-dir .]
 *
 * A profile's times are the sampler's, wall-clock between samples on the api's main thread: on a
 * machine shared with the server and autocannon, a preempted thread's time lands on the function
 * it was in. Compare the two apis of one run, not figures across runs.
 */
import autocannon from 'autocannon';
import type { ChildProcess } from 'node:child_process';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { packageOf, selfTimes, type CpuProfile } from '../bench/cpu-profile.js';
import { freePort, startServer, stop } from './servers.js';

const HOOK = fileURLToPath(new URL('./profile-hook.js', import.meta.url));

const APIS = [
  {
    name: 'db-pool',
    script: 'apps/api/dist/main.js',
    env: { DB_APPLICATION_NAME: 'http-profile', DB_POOL_SIZE: '10', DB_MAX_OVERFLOW: '0' },
  },
  { name: 'baseline', script: 'apps/api/dist/baseline.js', env: {} },
] as const;

const SLICES = [
  { name: 'read GET /items/:id', method: 'GET', path: (id: number) => `/items/${id}` },
  { name: 'write POST /items', method: 'POST', path: () => '/items', body: JSON.stringify({ name: 'http-profile' }) },
] as const;

interface SliceProfile {
  slice: string;
  api: string;
  requests: number;
  reqPerSec: number;
  /** The main thread's sampled time per request, idle left out, µs. */
  busyUsPerRequest: number;
  /** db-pool's own functions, µs per request and share of the busy time. */
  oursUsPerRequest: number;
  oursShare: number;
  byPackage: { name: string; usPerRequest: number; share: number }[];
  top: { fn: string; usPerRequest: number }[];
  ours: { fn: string; usPerRequest: number }[];
}

function request(child: ChildProcess, message: 'start' | 'stop'): Promise<Record<string, unknown>> {
  return new Promise((resolve) => {
    child.once('message', (m) => resolve(m as Record<string, unknown>));
    child.send(message);
  });
}

function summarize(slice: string, api: string, profile: CpuProfile, requests: number, seconds: number): SliceProfile {
  const times = selfTimes(profile);
  times.delete('(idle)');
  const per = (ms: number) => Math.round(((ms * 1000) / requests) * 100) / 100;
  const busy = [...times.values()].reduce((a, b) => a + b, 0);
  const packages = new Map<string, number>();
  for (const [key, ms] of times) packages.set(packageOf(key), (packages.get(packageOf(key)) ?? 0) + ms);
  const sorted = [...times].sort((a, b) => b[1] - a[1]);
  const ours = sorted.filter(([key]) => packageOf(key) === 'db-pool (ours)');
  const oursMs = ours.reduce((a, [, ms]) => a + ms, 0);
  return {
    slice,
    api,
    requests,
    reqPerSec: Math.round(requests / seconds),
    busyUsPerRequest: per(busy),
    oursUsPerRequest: per(oursMs),
    oursShare: Math.round((oursMs / busy) * 1000) / 1000,
    byPackage: [...packages]
      .sort((a, b) => b[1] - a[1])
      .slice(0, 12)
      .map(([name, ms]) => ({ name, usPerRequest: per(ms), share: Math.round((ms / busy) * 1000) / 1000 })),
    top: sorted.slice(0, 15).map(([fn, ms]) => ({ fn, usPerRequest: per(ms) })),
    ours: ours.slice(0, 10).map(([fn, ms]) => ({ fn, usPerRequest: per(ms) })),
  };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      connections: { type: 'string', default: '10' },
      seconds: { type: 'string', default: '8' },
      warmup: { type: 'string', default: '3' },
      'out-dir': { type: 'string', default: process.cwd() },
    },
  });
  if (!process.env.DATABASE_URL)
    throw new Error('DATABASE_URL is not set (run through `nx run loadtest:http-profile`, which provides one)');
  const connections = Number(values.connections);
  const seconds = Number(values.seconds);
  const outDir = values['out-dir']!;
  await mkdir(outDir, { recursive: true });
  const results: SliceProfile[] = [];
  for (const slice of SLICES) {
    for (const api of APIS) {
      const port = await freePort();
      const server = await startServer(api.script, port, api.env, { nodeArgs: ['--import', HOOK], ipc: true });
      try {
        const created = await fetch(`http://127.0.0.1:${port}/items`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: '{"name":"seed"}',
        });
        const { id } = (await created.json()) as { id: number };
        const load = (duration: number) =>
          autocannon({
            url: `http://127.0.0.1:${port}${slice.path(id)}`,
            method: slice.method,
            body: 'body' in slice ? slice.body : undefined,
            headers: 'body' in slice ? { 'content-type': 'application/json' } : undefined,
            connections,
            duration,
          });
        await load(Number(values.warmup));
        await request(server, 'start');
        const result = await load(seconds);
        const { profile } = (await request(server, 'stop')) as { profile: CpuProfile };
        if (result.errors + result.timeouts + result.non2xx > 0)
          throw new Error(`${api.name} ${slice.name}: errors or non-2xx answers under load`);
        const file = `${api.name}-${slice.method.toLowerCase()}.cpuprofile`;
        await writeFile(join(outDir, file), JSON.stringify(profile));
        results.push(summarize(slice.name, api.name, profile, result.requests.total, seconds));
      } finally {
        await stop(server);
      }
    }
  }
  for (const r of results) {
    process.stdout.write(
      `\n${r.slice}, ${r.api}: ${r.reqPerSec} req/s, main thread busy ${r.busyUsPerRequest} µs/request, db-pool's own code ${r.oursUsPerRequest} µs (${(r.oursShare * 100).toFixed(1)} %)\n`,
    );
    process.stdout.write(`  by package: ${r.byPackage.map((p) => `${p.name} ${p.usPerRequest}`).join(', ')}\n`);
    process.stdout.write(
      `  top self times (µs/request):\n${r.top.map((t) => `    ${t.usPerRequest.toFixed(2).padStart(7)}  ${t.fn}`).join('\n')}\n`,
    );
    if (r.ours.length > 0)
      process.stdout.write(`  db-pool's own:\n${r.ours.map((t) => `    ${t.usPerRequest.toFixed(2).padStart(7)}  ${t.fn}`).join('\n')}\n`);
  }
  await writeFile(
    join(outDir, 'http-profile.json'),
    `${JSON.stringify({ command: `nx run loadtest:http-profile ${process.argv.slice(2).join(' ')}`.trim(), connections, seconds, results }, null, 2)}\n`,
  );
}

main().catch((err: unknown) => {
  process.stderr.write(`http profile failed: ${err instanceof Error ? err.stack : String(err)}\n`);
  process.exitCode = 1;
});
