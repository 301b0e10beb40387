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
  /** Of those, this pool's: the connections with the application_name the server gave the sampling connection. */
  in_use_by_pool: number;
  /** This pool's connections that have been "idle in transaction" for 5 s or more (a transaction left open). */
  idle_in_transaction: number;
  /** available − in_use. */
  headroom: number;
  /** The server's idle_session_timeout in ms (0 = off): it closes connections idle that long. */
  idle_session_timeout_ms: number;
  /** Client connections per application_name and state (in health bodies only with DB_POOL_HEALTH_DETAIL). */
  by_application?: { application_name: string; state: string; count: number }[];
}

/** How long a connection must sit "idle in transaction" to count as a transaction left open. */
export const IDLE_IN_TRANSACTION_MIN_S = 5;

/**
 * A client connection in pg_stat_activity, whoever's it is. A role without pg_read_all_stats sees
 * other roles' sessions with most columns NULL, backend_type among them (their application_name
 * still shows): such a row with a database is counted as a client too (a background worker of
 * another role's with one would be counted as well, which errs on the side of fewer connections).
 */
export const CLIENT_BACKEND = "(backend_type = 'client backend' OR (backend_type IS NULL AND datid IS NOT NULL))";

// The pool's own connections are found by the application_name the server reports for the
// sampling connection (one of them), so a name the server truncated or took from the URL is
// matched as it is.
const SAMPLE = `
SELECT current_setting('max_connections')::int AS max_connections,
       current_setting('application_name') AS own_name,
       (SELECT count(*)::int FROM pg_stat_activity
         WHERE ${CLIENT_BACKEND} AND application_name = current_setting('application_name')
           AND state LIKE 'idle in transaction%' AND now() - state_change >= interval '${IDLE_IN_TRANSACTION_MIN_S} seconds') AS idle_in_transaction,
       current_setting('superuser_reserved_connections')::int AS superuser_reserved_connections,
       coalesce((SELECT setting::int FROM pg_settings WHERE name = 'idle_session_timeout'), 0) AS idle_session_timeout_ms,
       coalesce((SELECT json_agg(json_build_object('application_name', application_name, 'state', state, 'count', n) ORDER BY application_name, state)
                 FROM (SELECT coalesce(application_name, '') AS application_name, coalesce(state, 'unknown') AS state, count(*)::int AS n
                         FROM pg_stat_activity WHERE ${CLIENT_BACKEND} GROUP BY 1, 2) s), '[]'::json) AS by_application`;

/** Takes one sample through the pool, within `timeoutMs` in all; never queues behind a busy pool. */
export async function sampleServerHeadroom(pool: DbPool, timeoutMs: number): Promise<ServerHeadroom> {
  const {
    rows: [row],
  } = await pool.queryWithin<{
    max_connections: number;
    own_name: string;
    idle_in_transaction: number;
    superuser_reserved_connections: number;
    idle_session_timeout_ms: number;
    by_application: NonNullable<ServerHeadroom['by_application']>;
  }>(SAMPLE, timeoutMs);
  const inUse = row.by_application.reduce((n, r) => n + r.count, 0);
  const ours = row.by_application.filter((r) => r.application_name === row.own_name);
  const available = row.max_connections - row.superuser_reserved_connections;
  return {
    sampled_at: new Date().toISOString(),
    max_connections: row.max_connections,
    superuser_reserved_connections: row.superuser_reserved_connections,
    available,
    in_use: inUse,
    in_use_by_pool: ours.reduce((n, r) => n + r.count, 0),
    idle_in_transaction: row.idle_in_transaction,
    headroom: available - inUse,
    idle_session_timeout_ms: row.idle_session_timeout_ms,
    by_application: row.by_application,
  };
}
