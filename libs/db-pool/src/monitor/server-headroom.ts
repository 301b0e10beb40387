import type { DbPool } from '../pool/db-pool.js';

/** What the server can give, sampled from `pg_settings` and `pg_stat_activity`. */
export interface ServerHeadroom {
  sampled_at: string;
  max_connections: number;
  superuser_reserved_connections: number;
  /** max_connections − superuser_reserved_connections. */
  available: number;
  /** Client connections open on the server, all applications. */
  in_use: number;
  /** Of those, this pool's (by application_name). */
  in_use_by_pool: number;
  /** This pool's connections that are "idle in transaction". */
  idle_in_transaction: number;
  /** available − in_use. */
  headroom: number;
  /** The server's idle_session_timeout in ms (0 = off): it closes connections idle that long. */
  idle_session_timeout_ms: number;
  /** Client connections per application_name and state (in health bodies only with DB_POOL_HEALTH_DETAIL). */
  by_application?: { application_name: string; state: string; count: number }[];
}

const SAMPLE = `
SELECT current_setting('max_connections')::int AS max_connections,
       current_setting('superuser_reserved_connections')::int AS superuser_reserved_connections,
       coalesce((SELECT setting::int FROM pg_settings WHERE name = 'idle_session_timeout'), 0) AS idle_session_timeout_ms,
       coalesce((SELECT json_agg(json_build_object('application_name', application_name, 'state', state, 'count', n) ORDER BY application_name, state)
                 FROM (SELECT coalesce(application_name, '') AS application_name, coalesce(state, 'unknown') AS state, count(*)::int AS n
                         FROM pg_stat_activity WHERE backend_type = 'client backend' GROUP BY 1, 2) s), '[]'::json) AS by_application`;

/** Takes one sample through the pool, within `timeoutMs` in all; never queues behind a busy pool. */
export async function sampleServerHeadroom(pool: DbPool, applicationName: string, timeoutMs: number): Promise<ServerHeadroom> {
  const {
    rows: [row],
  } = await pool.queryWithin<{ max_connections: number; superuser_reserved_connections: number; idle_session_timeout_ms: number; by_application: NonNullable<ServerHeadroom['by_application']> }>(
    SAMPLE,
    timeoutMs,
  );
  const inUse = row.by_application.reduce((n, r) => n + r.count, 0);
  const ours = row.by_application.filter((r) => r.application_name === applicationName);
  const available = row.max_connections - row.superuser_reserved_connections;
  return {
    sampled_at: new Date().toISOString(),
    max_connections: row.max_connections,
    superuser_reserved_connections: row.superuser_reserved_connections,
    available,
    in_use: inUse,
    in_use_by_pool: ours.reduce((n, r) => n + r.count, 0),
    idle_in_transaction: ours.filter((r) => r.state.startsWith('idle in transaction')).reduce((n, r) => n + r.count, 0),
    headroom: available - inUse,
    idle_session_timeout_ms: row.idle_session_timeout_ms,
    by_application: row.by_application,
  };
}
