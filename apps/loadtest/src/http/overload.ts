// The HTTP view of overload control: GET /items/stats (an aggregate whose cost is the server's
// CPU) driven above what the api can serve, against the api with DB_POOL_ADAPTIVE and the route's
// request deadline (a client could shorten it with X-Request-Deadline-Ms), and against plain
// TypeOrmModule.forRoot defaults. Shows the
// 503s arriving fast and the 2xx latency holding.
import autocannon from 'autocannon';
import pg from 'pg';

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

export interface OverloadSliceResult {
  rows: number;
  capacityPerSec: number;
  deadlineMs: number;
  connections: number;
  durationS: number;
  results: OverloadSliceRow[];
}

const pct = (sorted: number[], q: number) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] : NaN);

function summarize(latencies: number[], durationS: number): StatusLatency {
  const sorted = [...latencies].sort((a, b) => a - b);
  return { count: sorted.length, perSec: sorted.length / durationS, p50: pct(sorted, 0.5), p99: pct(sorted, 0.99) };
}

async function drive(
  url: string,
  opts: { connections: number; durationS: number; overallRate?: number; headers?: Record<string, string> },
): Promise<{ byStatus: Map<number, number[]>; errors: number; sent: number }> {
  const byStatus = new Map<number, number[]>();
  let instance: autocannon.Instance | undefined;
  const done = new Promise<autocannon.Result>((resolve, reject) => {
    instance = autocannon(
      { url, connections: opts.connections, duration: opts.durationS, overallRate: opts.overallRate, headers: opts.headers, timeout: 30 },
      (err, result) => (err ? reject(err) : resolve(result)),
    );
  });
  instance!.on('response', (_client: unknown, statusCode: number, _bytes: number, ms: number) => {
    const list = byStatus.get(statusCode);
    if (list) list.push(ms);
    else byStatus.set(statusCode, [ms]);
  });
  const result = await done;
  return { byStatus, errors: result.errors + result.timeouts, sent: result.requests.sent };
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

export async function overloadSlice(
  servers: { name: string; port: number; headers?: Record<string, string> }[],
  settings: { rows: number; deadlineMs: number; factor: number; connections: number; durationS: number },
  note: (text: string) => void,
): Promise<OverloadSliceResult> {
  const path = '/items/stats';
  // Capacity: the best closed-loop rate of the db-pool api at a few connections.
  let capacity = 0;
  for (const connections of [2, 4, 8]) {
    const { byStatus } = await drive(`http://127.0.0.1:${servers[0].port}${path}`, { connections, durationS: 3 });
    capacity = Math.max(capacity, (byStatus.get(200)?.length ?? 0) / 3);
  }
  note(`capacity of ${path}: ${Math.round(capacity)}/s`);
  const rate = Math.round(capacity * settings.factor);
  const results: OverloadSliceRow[] = [];
  for (const server of servers) {
    await new Promise((r) => setTimeout(r, 1_000));
    const run = await drive(`http://127.0.0.1:${server.port}${path}`, {
      connections: settings.connections,
      durationS: settings.durationS,
      overallRate: rate,
      headers: server.headers,
    });
    const ok = run.byStatus.get(200) ?? [];
    const shed = run.byStatus.get(503) ?? [];
    let other = 0;
    for (const [status, list] of run.byStatus) if (status !== 200 && status !== 503) other += list.length;
    results.push({
      contender: server.name,
      offeredPerSec: rate,
      sentPerSec: run.sent / settings.durationS,
      ok: summarize(ok, settings.durationS),
      okWithinDeadlinePerSec: ok.filter((ms) => ms <= settings.deadlineMs).length / settings.durationS,
      shed: summarize(shed, settings.durationS),
      otherNon2xx: other,
      errors: run.errors,
    });
  }
  return {
    rows: settings.rows,
    capacityPerSec: capacity,
    deadlineMs: settings.deadlineMs,
    connections: settings.connections,
    durationS: settings.durationS,
    results,
  };
}
