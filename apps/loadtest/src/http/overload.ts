// The HTTP view of overload control: GET /items/stats (an aggregate whose cost is the server's
// CPU) driven above what the api can serve, against the api with DB_POOL_ADAPTIVE and the route's
// request deadline (a client could shorten it with X-Request-Deadline-Ms), and against plain
// TypeOrmModule.forRoot defaults. Shows the 503s arriving fast and the 2xx latency holding.
//
// The capacity is measured closed-loop (autocannon); the overload is offered open-loop, as the
// pool bench's overload scenario offers it: one request every 1/rate s, each timed from its
// arrival, whatever the ones before it are doing. autocannon's own rate mode is not that: it
// caps each of its connections at one request per 1-s window, so the whole rate arrives as one
// burst at the top of every second, and a connection whose answer is late sends nothing more.
import autocannon from 'autocannon';
import http from 'node:http';
import { performance } from 'node:perf_hooks';
import pg from 'pg';
import { median, openLoop } from '../bench/measure.js';
import type { OverloadRound } from './targets.js';

export interface StatusLatency {
  count: number;
  perSec: number;
  p50: number;
  p99: number;
}

export interface OverloadSliceRow {
  contender: string;
  offeredPerSec: number;
  sentPerSec: number;
  ok: StatusLatency;
  /** 2xx answers that came within the route's deadline, per second: the goodput. */
  okWithinDeadlinePerSec: number;
  shed: StatusLatency;
  otherNon2xx: number;
  errors: number;
}

/** One round of the judged server: its capacity, measured just before, what it was offered and its goodput. */
export interface OverloadRoundResult extends OverloadRound {
  offeredPerSec: number;
}

export interface OverloadSliceResult {
  rows: number;
  /** Closed-loop connections at which the judged server served the route best (its capacity is measured there). */
  bestConnections: number;
  /** The median of the rounds' capacities. */
  capacityPerSec: number;
  deadlineMs: number;
  connections: number;
  /** Length of each overload run, s. */
  durationS: number;
  rounds: OverloadRoundResult[];
  /** The judged server's rows summed over its rounds, then the others'. */
  results: OverloadSliceRow[];
}

const pct = (sorted: number[], q: number) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] : NaN);

function summarize(latencies: number[], durationS: number): StatusLatency {
  const sorted = [...latencies].sort((a, b) => a - b);
  return { count: sorted.length, perSec: sorted.length / durationS, p50: pct(sorted, 0.5), p99: pct(sorted, 0.99) };
}

/** Closed loop: `connections` clients, each sending its next request when its answer is in. */
async function closedLoopRate(url: string, connections: number, durationS: number): Promise<number> {
  const result = await autocannon({ url, connections, duration: durationS, timeout: 30 });
  return (result['2xx'] ?? 0) / durationS;
}

function get(agent: http.Agent, url: string, headers: Record<string, string> | undefined, timeoutMs: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { agent, headers, timeout: timeoutMs }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    req.on('error', reject);
  });
}

/** Open loop: `perSec` requests a second for `durationS`, over at most `connections` keep-alive sockets; latency from each arrival. */
async function offer(
  url: string,
  opts: { connections: number; durationS: number; perSec: number; headers?: Record<string, string> },
): Promise<{ byStatus: Map<number, number[]>; errors: number; sent: number }> {
  const byStatus = new Map<number, number[]>();
  let errors = 0;
  const agent = new http.Agent({ keepAlive: true, maxSockets: opts.connections });
  const total = Math.round(opts.perSec * opts.durationS);
  const { pending } = await openLoop(opts.perSec, total, (arrival) =>
    get(agent, url, opts.headers, 30_000).then(
      (status) => {
        const ms = performance.now() - arrival;
        const list = byStatus.get(status);
        if (list) list.push(ms);
        else byStatus.set(status, [ms]);
      },
      () => void errors++,
    ),
  );
  await Promise.all(pending);
  agent.destroy();
  return { byStatus, errors, sent: total };
}

/** Fills items with `rows` rows so that /items/stats costs the server some milliseconds of CPU; returns a cleanup. */
export async function seedRows(databaseUrl: string, rows: number): Promise<() => Promise<void>> {
  const client = new pg.Client({ connectionString: databaseUrl });
  await client.connect();
  await client.query(`INSERT INTO items (name) SELECT 'http-overload-' || (i % 5000) FROM generate_series(1, $1::int) i`, [rows]);
  await client.query('ANALYZE items');
  return async () => {
    await client.query(`DELETE FROM items WHERE name LIKE 'http-overload-%'`);
    await client.end();
  };
}

type OfferResult = Awaited<ReturnType<typeof offer>>;

function row(contender: string, offeredPerSec: number, runs: OfferResult[], durationS: number, deadlineMs: number): OverloadSliceRow {
  const seconds = durationS * runs.length;
  const of = (status: number) => runs.flatMap((r) => r.byStatus.get(status) ?? []);
  const ok = of(200);
  let other = 0;
  for (const run of runs) for (const [status, list] of run.byStatus) if (status !== 200 && status !== 503) other += list.length;
  return {
    contender,
    offeredPerSec,
    sentPerSec: runs.reduce((n, r) => n + r.sent, 0) / seconds,
    ok: summarize(ok, seconds),
    okWithinDeadlinePerSec: ok.filter((ms) => ms <= deadlineMs).length / seconds,
    shed: summarize(of(503), seconds),
    otherNon2xx: other,
    errors: runs.reduce((n, r) => n + r.errors, 0),
  };
}

/**
 * The first server is judged: the concurrency at which it serves the route best is found once
 * (2, 4 or 8 connections, closed loop); then each round measures its capacity there and offers it
 * `factor` × that, open loop, for `durationS`; its goodput is judged round by round against the
 * capacity measured just before (see `overloadGoodput`). The others are shown, not judged: one run
 * each at `factor` × the median capacity.
 */
export async function overloadSlice(
  servers: { name: string; port: number; headers?: Record<string, string> }[],
  settings: { rows: number; deadlineMs: number; factor: number; connections: number; durationS: number; rounds: number },
  note: (text: string) => void,
): Promise<OverloadSliceResult> {
  const path = '/items/stats';
  const url = (port: number) => `http://127.0.0.1:${port}${path}`;
  const pause = () => new Promise((r) => setTimeout(r, 1_000));
  const overload = async (server: (typeof servers)[number], perSec: number) => {
    await pause();
    return offer(url(server.port), { connections: settings.connections, durationS: settings.durationS, perSec, headers: server.headers });
  };
  const [judged, ...shown] = servers;
  let best = { connections: 2, perSec: 0 };
  for (const connections of [2, 4, 8]) {
    const perSec = await closedLoopRate(url(judged.port), connections, 3);
    if (perSec > best.perSec) best = { connections, perSec };
  }
  note(`${path} is served best at ${best.connections} connections (${Math.round(best.perSec)}/s)`);
  const rounds: OverloadRoundResult[] = [];
  const runs: OfferResult[] = [];
  for (let i = 0; i < settings.rounds; i++) {
    await pause();
    const capacityPerSec = await closedLoopRate(url(judged.port), best.connections, 3);
    const offeredPerSec = Math.round(capacityPerSec * settings.factor);
    const run = await overload(judged, offeredPerSec);
    runs.push(run);
    const withinDeadlinePerSec = (run.byStatus.get(200) ?? []).filter((ms) => ms <= settings.deadlineMs).length / settings.durationS;
    rounds.push({ capacityPerSec, offeredPerSec, withinDeadlinePerSec });
    note(
      `overload round ${i + 1}/${settings.rounds}: capacity ${Math.round(capacityPerSec)}/s, ${withinDeadlinePerSec.toFixed(1)}/s within the deadline`,
    );
  }
  const capacityPerSec = median(rounds.map((r) => r.capacityPerSec));
  const offeredPerSec = median(rounds.map((r) => r.offeredPerSec));
  const results = [row(judged.name, offeredPerSec, runs, settings.durationS, settings.deadlineMs)];
  for (const server of shown)
    results.push(row(server.name, offeredPerSec, [await overload(server, offeredPerSec)], settings.durationS, settings.deadlineMs));
  return {
    rows: settings.rows,
    bestConnections: best.connections,
    capacityPerSec,
    deadlineMs: settings.deadlineMs,
    connections: settings.connections,
    durationS: settings.durationS,
    rounds,
    results,
  };
}
