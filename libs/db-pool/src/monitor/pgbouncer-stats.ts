import pg from 'pg';
import type { DbPoolConfig } from '../config/db-pool.options.js';
import { firstHostUrl } from '../pool/hosts.js';

/** The database the pool connects to, as PgBouncer names it in its admin console. */
export function pgbouncerDatabase(config: DbPoolConfig): string {
  return config.database ?? decodeURIComponent(new URL(firstHostUrl(config.url ?? 'postgres://x/')).pathname.slice(1));
}

/** PgBouncer's own view of the pool(s) for our database, from its admin console. */
export interface PgBouncerStats {
  sampled_at: string;
  /** Client connections linked to a server connection / waiting for one. */
  cl_active: number;
  cl_waiting: number;
  /** Server connections in use / idle and ready. */
  sv_active: number;
  sv_idle: number;
  /** Age of the oldest waiting client, seconds. */
  maxwait: number;
  pool_mode: string;
  /** From SHOW STATS: transactions and queries per second, and average wait (µs), for our database. */
  avg_xact_count: number;
  avg_query_count: number;
  avg_wait_time_us: number;
}

type Row = Record<string, string | number | null>;
const num = (v: unknown) => Number(v ?? 0) || 0;

/** One sample of `SHOW POOLS` and `SHOW STATS` for `database`. */
export function samplePgBouncer(adminUrl: string, database: string, timeoutMs: number): Promise<PgBouncerStats> {
  return withAdminConsole(adminUrl, timeoutMs, async (client) => {
    const pools = (await client.query<Row>('SHOW POOLS')).rows.filter((r) => r.database === database);
    const stats = (await client.query<Row>('SHOW STATS')).rows.find((r) => r.database === database) ?? {};
    const sum = (key: string) => pools.reduce((n, r) => n + num(r[key]), 0);
    return {
      sampled_at: new Date().toISOString(),
      cl_active: sum('cl_active'),
      cl_waiting: sum('cl_waiting'),
      sv_active: sum('sv_active'),
      sv_idle: sum('sv_idle'),
      maxwait: Math.max(0, ...pools.map((r) => num(r.maxwait) + num(r.maxwait_us) / 1e6)),
      pool_mode: String(pools[0]?.pool_mode ?? 'unknown'),
      avg_xact_count: num(stats.avg_xact_count),
      avg_query_count: num(stats.avg_query_count),
      avg_wait_time_us: num(stats.avg_wait_time),
    };
  });
}

/** What PgBouncer says of `database` for the connection budget: its server pool, and its clients by application_name. */
export interface PgBouncerClients {
  /** Server connections PgBouncer opens for the database (its `pool_size`, within its `max_db_connections`). */
  pool_size: number;
  /** Every client connection to the database: its application_name, and its address and port as PgBouncer sees them. */
  clients: { application_name: string; addr: string; port: number }[];
}

/** One sample of `SHOW DATABASES` and `SHOW CLIENTS` for `database`. */
export function samplePgBouncerClients(adminUrl: string, database: string, timeoutMs: number): Promise<PgBouncerClients> {
  return withAdminConsole(adminUrl, timeoutMs, async (client) => {
    const entry = (await client.query<Row>('SHOW DATABASES')).rows.find((r) => r.name === database);
    if (!entry) throw new Error(`PgBouncer has no database "${database}" (SHOW DATABASES)`);
    const clients = (await client.query<Row>('SHOW CLIENTS')).rows.filter((r) => r.database === database);
    const cap = num(entry.max_connections);
    return {
      pool_size: cap > 0 ? Math.min(num(entry.pool_size), cap) : num(entry.pool_size),
      clients: clients.map((r) => ({ application_name: String(r.application_name ?? ''), addr: String(r.addr ?? ''), port: num(r.port) })),
    };
  });
}

/**
 * A short-lived connection to the admin console (it speaks only the simple query protocol, which
 * is what pg uses here), bounded by `timeoutMs`, closed after `use`.
 */
async function withAdminConsole<T>(adminUrl: string, timeoutMs: number, use: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({
    connectionString: adminUrl,
    connectionTimeoutMillis: timeoutMs,
    query_timeout: timeoutMs,
  } as pg.ClientConfig);
  client.on('error', () => {});
  await client.connect();
  try {
    return await use(client);
  } finally {
    await client.end().catch(() => {});
  }
}
