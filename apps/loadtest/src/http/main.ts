/**
 * HTTP load: drives apps/api with autocannon — a read (GET /items/:id), a transactional write
 * (POST /items) and GET /health/db_pool — at 10, 50 and 200 connections, against db-pool and
 * against the same routes on plain `TypeOrmModule.forRoot` defaults (apps/api/src/baseline.ts),
 * interleaved in rounds in one run. Prints a table and writes http-results.json.
 *
 * Then the overload slice (skip it with --skip-overload): GET /items/stats over 30k rows at twice
 * the rate the api serves, against the api with DB_POOL_ADAPTIVE (the route's deadline is 1 s), and
 * against the baseline (see ./overload.ts).
 *
 * Each slice's ratios are judged against #22's targets (throughput ≥ 0.97 and p99 ≤ 1.10 of the
 * baseline, per slice; overload goodput within the deadline ≥ 0.75 of capacity), printed with a
 * met/missed verdict and written with the results.
 *
 *   npx nx run loadtest:http [-- --quick] [--connections 10,50,200] [--duration 5] [--rounds 5] [--skip-overload] [--out-dir .]
 */
import autocannon from 'autocannon';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { overloadSlice, seedRows, type OverloadSliceResult } from './overload.js';
import { formatTargets, httpTargets, median, type RoundPair } from './targets.js';

const root = fileURLToPath(new URL('../../../../', import.meta.url));

interface Args {
  quick: boolean;
  connections: number[];
  durationS: number;
  rounds: number;
  outDir: string;
  overload: boolean;
}

function parseArgs(argv: string[]): Args {
  // `--flag value` or `--flag=value` (nx passes the latter).
  const get = (flag: string) => {
    const joined = argv.find((a) => a.startsWith(`${flag}=`));
    if (joined) return joined.slice(flag.length + 1);
    const i = argv.indexOf(flag);
    return i === -1 ? undefined : argv[i + 1];
  };
  const quick = argv.includes('--quick');
  return {
    quick,
    connections: (get('--connections') ?? '10,50,200').split(',').map(Number),
    durationS: Number(get('--duration') ?? (quick ? 1 : 5)),
    rounds: Number(get('--rounds') ?? (quick ? 1 : 5)),
    outDir: get('--out-dir') ?? process.cwd(),
    overload: !argv.includes('--skip-overload'),
  };
}

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
  });
}

async function startServer(script: string, port: number, env: Record<string, string>): Promise<ChildProcess> {
  const child = spawn(process.execPath, [join(root, script)], {
    cwd: root,
    env: { ...process.env, ...env, PORT: String(port) },
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`${script} exited with ${child.exitCode}`);
    try {
      const res = await fetch(`http://127.0.0.1:${port}/items?limit=1`);
      if (res.ok) return child;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  child.kill('SIGKILL');
  throw new Error(`${script} did not start`);
}

interface Endpoint {
  name: string;
  method: 'GET' | 'POST';
  path: (id: number) => string;
  body?: string;
  baseline: boolean;
}

const ENDPOINTS: Endpoint[] = [
  { name: 'read GET /items/:id', method: 'GET', path: (id) => `/items/${id}`, baseline: true },
  { name: 'write POST /items', method: 'POST', path: () => '/items', body: JSON.stringify({ name: 'http-load' }), baseline: true },
  { name: 'GET /health/db_pool', method: 'GET', path: () => '/health/db_pool', baseline: false },
];

interface Sample {
  rps: number;
  p50: number;
  p99: number;
  errors: number;
  non2xx: number;
}

async function drive(port: number, endpoint: Endpoint, id: number, connections: number, durationS: number): Promise<Sample> {
  const result = await autocannon({
    url: `http://127.0.0.1:${port}${endpoint.path(id)}`,
    method: endpoint.method,
    body: endpoint.body,
    headers: endpoint.body ? { 'content-type': 'application/json' } : undefined,
    connections,
    duration: durationS,
  });
  return {
    rps: result.requests.average,
    p50: result.latency.p50,
    p99: result.latency.p99,
    errors: result.errors + result.timeouts,
    non2xx: result.non2xx,
  };
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  if (!process.env.DATABASE_URL) throw new Error('DATABASE_URL is not set (run through `nx run loadtest:http`, which provides one)');
  const [dbPoolPort, baselinePort, overloadPort] = [await freePort(), await freePort(), await freePort()];
  const servers: ChildProcess[] = [];
  try {
    servers.push(await startServer('apps/api/dist/main.js', dbPoolPort, { DB_APPLICATION_NAME: 'http-load-db-pool' }));
    servers.push(await startServer('apps/api/dist/baseline.js', baselinePort, {}));
    const seed = async (port: number) =>
      (
        (await (
          await fetch(`http://127.0.0.1:${port}/items`, {
            method: 'POST',
            headers: { 'content-type': 'application/json' },
            body: '{"name":"seed"}',
          })
        ).json()) as { id: number }
      ).id;
    const ids = { 'db-pool': await seed(dbPoolPort), baseline: await seed(baselinePort) };

    const samples = new Map<string, Sample[]>();
    const key = (c: number, e: string, who: string) => `${c}|${e}|${who}`;
    const total = args.connections.length * args.rounds * ENDPOINTS.reduce((n, e) => n + (e.baseline ? 2 : 1), 0);
    let done = 0;
    for (const connections of args.connections) {
      for (let round = 0; round < args.rounds; round++) {
        for (const endpoint of ENDPOINTS) {
          // Alternate who goes first, so neither always runs on a warmer machine.
          const order: ('db-pool' | 'baseline')[] = endpoint.baseline
            ? round % 2
              ? ['baseline', 'db-pool']
              : ['db-pool', 'baseline']
            : ['db-pool'];
          for (const who of order) {
            await new Promise((r) => setTimeout(r, 500)); // let the previous slice's requests drain
            const sample = await drive(who === 'db-pool' ? dbPoolPort : baselinePort, endpoint, ids[who], connections, args.durationS);
            const k = key(connections, endpoint.name, who);
            samples.set(k, [...(samples.get(k) ?? []), sample]);
            process.stderr.write(`\r[${'#'.repeat(Math.round((++done / total) * 30)).padEnd(30)}] ${done}/${total} `);
          }
        }
      }
    }
    process.stderr.write('\n');

    const rows = [];
    for (const connections of args.connections) {
      for (const endpoint of ENDPOINTS) {
        for (const who of endpoint.baseline ? ['db-pool', 'baseline'] : ['db-pool']) {
          const s = samples.get(key(connections, endpoint.name, who))!;
          rows.push({
            connections,
            endpoint: endpoint.name,
            contender: who,
            rps: Math.round(median(s.map((x) => x.rps))),
            p50_ms: median(s.map((x) => x.p50)),
            p99_ms: median(s.map((x) => x.p99)),
            errors: s.reduce((n, x) => n + x.errors, 0),
            non2xx: s.reduce((n, x) => n + x.non2xx, 0),
          });
        }
      }
    }
    const ratios: Record<string, Record<string, number>> = {};
    for (const endpoint of ENDPOINTS.filter((e) => e.baseline)) {
      ratios[endpoint.name] = {};
      for (const connections of args.connections) {
        const ours = rows.find((r) => r.connections === connections && r.endpoint === endpoint.name && r.contender === 'db-pool')!;
        const theirs = rows.find((r) => r.connections === connections && r.endpoint === endpoint.name && r.contender === 'baseline')!;
        ratios[endpoint.name][String(connections)] = Math.round((ours.rps / theirs.rps) * 100) / 100;
      }
    }

    const header = ['conns', 'endpoint', 'contender', 'req/s', 'p50 ms', 'p99 ms', 'errors', 'non-2xx'];
    const lines = rows.map((r) => [r.connections, r.endpoint, r.contender, r.rps, r.p50_ms, r.p99_ms, r.errors, r.non2xx].map(String));
    const widths = header.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i].length)));
    const fmt = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i])).join('  ');
    process.stdout.write(`${fmt(header)}\n${widths.map((w) => '-'.repeat(w)).join('  ')}\n${lines.map(fmt).join('\n')}\n\n`);
    process.stdout.write('throughput db-pool / plain TypeOrmModule.forRoot defaults:\n');
    for (const [endpoint, byC] of Object.entries(ratios))
      process.stdout.write(
        `  ${endpoint}: ${Object.entries(byC)
          .map(([c, r]) => `${c} conns ${r}x`)
          .join(', ')}\n`,
      );

    let overload: OverloadSliceResult | undefined;
    if (args.overload) {
      servers.push(
        await startServer('apps/api/dist/main.js', overloadPort, { DB_APPLICATION_NAME: 'http-load-overload', DB_POOL_ADAPTIVE: 'true' }),
      );
      const cleanup = await seedRows(process.env.DATABASE_URL, 30_000);
      try {
        // The route's own deadline (@DbPoolDeadline(1_000)): a statement here takes tens of ms on
        // an idle machine and ~100 ms under this load, where the api shares two cores with the
        // server and autocannon; 250 ms would leave room for one or two in line.
        const deadlineMs = 1_000;
        overload = await overloadSlice(
          [
            {
              name: 'db-pool, DB_POOL_ADAPTIVE, route deadline 1 s',
              port: overloadPort,
            },
            { name: 'baseline (TypeOrmModule.forRoot defaults)', port: baselinePort },
          ],
          { rows: 30_000, deadlineMs, factor: 2, connections: 200, durationS: args.quick ? 3 : 10 },
          (text) => process.stderr.write(`${text}\n`),
        );
      } finally {
        await cleanup();
      }
      const f = (v: number) => (Number.isFinite(v) ? String(Math.round(v)) : '—');
      process.stdout.write(
        `\noverload slice: GET /items/stats over ${overload.rows} rows, capacity ${f(overload.capacityPerSec)}/s, offered ${f(overload.results[0].offeredPerSec)}/s (2×) by ${overload.connections} connections for ${overload.durationS} s\n`,
      );
      const oh = ['contender', 'sent/s', '2xx/s', '2xx p50 ms', '2xx p99 ms', '503/s', '503 p50 ms', '503 p99 ms', 'other', 'errors'];
      const ol = overload.results.map((r) => [
        r.contender,
        f(r.sentPerSec),
        f(r.ok.perSec),
        f(r.ok.p50),
        f(r.ok.p99),
        f(r.shed.perSec),
        f(r.shed.p50),
        f(r.shed.p99),
        String(r.otherNon2xx),
        String(r.errors),
      ]);
      const ow = oh.map((h, i) => Math.max(h.length, ...ol.map((l) => l[i].length)));
      const ofmt = (cells: string[]) => cells.map((c, i) => c.padEnd(ow[i])).join('  ');
      process.stdout.write(`${ofmt(oh)}\n${ow.map((w) => '-'.repeat(w)).join('  ')}\n${ol.map(ofmt).join('\n')}\n`);
    }

    // Round i of db-pool and round i of the baseline ran back to back: judged as pairs.
    const slices = new Map<string, RoundPair[]>();
    for (const connections of args.connections)
      for (const endpoint of ENDPOINTS.filter((e) => e.baseline)) {
        const ours = samples.get(key(connections, endpoint.name, 'db-pool'))!;
        const theirs = samples.get(key(connections, endpoint.name, 'baseline'))!;
        slices.set(
          `${endpoint.name} @ ${connections}`,
          ours.map((o, i) => ({ ours: { rps: o.rps, p99: o.p99 }, baseline: { rps: theirs[i].rps, p99: theirs[i].p99 } })),
        );
      }
    const dbPoolOverload = overload?.results[0];
    const targets = httpTargets(
      slices,
      dbPoolOverload && { withinDeadlinePerSec: dbPoolOverload.okWithinDeadlinePerSec, capacityPerSec: overload!.capacityPerSec },
    );
    process.stdout.write(`\ntargets (#22), each the median of its per-round ratios:\n${formatTargets(targets)}`);

    const results = {
      command: `nx run loadtest:http ${process.argv.slice(2).join(' ')}`.trim(),
      machine: { cpus: cpus().length, cpu: cpus()[0]?.model, node: process.version },
      settings: {
        ...args,
        dbPool: 'apps/api defaults (DB_POOL_SIZE=20, DB_MAX_OVERFLOW=40)',
        baseline: 'TypeOrmModule.forRoot defaults (pg pool max 10)',
      },
      rows,
      ratios,
      overload,
      targets,
      all_targets_met: targets.every((t) => t.met),
    };
    await mkdir(args.outDir, { recursive: true });
    await writeFile(join(args.outDir, 'http-results.json'), `${JSON.stringify(results, null, 2)}\n`);
    // /health/db_pool answering 503 while the pool is critical is the route doing its job;
    // anywhere else a non-2xx answer, and everywhere a transport error, is a failure.
    const failed = rows.filter((r) => r.errors > 0 || (r.non2xx > 0 && r.endpoint !== 'GET /health/db_pool'));
    if (failed.length > 0) {
      process.stdout.write(`\n${failed.length} row(s) had errors or non-2xx answers (see the table)\n`);
      process.exitCode = 1;
    }
  } finally {
    for (const server of servers) server.kill('SIGTERM');
    await Promise.all(servers.map((s) => new Promise((r) => (s.exitCode !== null ? r(null) : s.once('exit', r)))));
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`http load failed: ${err instanceof Error ? err.stack : String(err)}\n`);
  process.exitCode = 1;
});
