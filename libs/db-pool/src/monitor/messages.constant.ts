import { IDLE_IN_TRANSACTION_MIN_S } from './server-headroom.js';

/** Every recommendation text in one place; the parameterised ones are functions. */
export const RECOMMENDATIONS = {
  HEALTHY: 'Pool is healthy. No action needed.',
  WARNING: (utilization: number) => `Pool utilization is high (${utilization}%). Monitor for bottlenecks.`,
  CRITICAL: (utilization: number) =>
    `Pool utilization is critical (${utilization}%). Increase pool_size or max_overflow, or find what holds connections.`,
  CONNECT_FAILING: (failures: number, usable: number) =>
    `New connections are failing (${failures} attempt(s) in a row)${usable === 0 ? ' and the pool has no open connection: every query fails until the server is reachable again' : `; ${usable} open connection(s) still serve queries`}. Check the server, the network and DB_CONNECT_TIMEOUT (readiness shows the error).`,
  WAITING: (waiting: number) => `${waiting} caller(s) are queued for a connection right now.`,
  OVERLOADED: (shed: number, windowS: number, limit: number, capacity: number) =>
    `${shed} acquire(s) were shed in the last ${windowS} s (PoolOverloadedError, answered 503): demand is above what the database serves within the callers' deadlines ` +
    `(${limit} of ${capacity} connections handed out at once). Add database capacity or instances, or make the queries cheaper; a bigger pool will not help.`,
  LEAK: 'Potential connection leak detected: the pool has been exhausted for a while and connections are not coming back. Review code for query runners and transactions that are never released.',
  LEAK_TRACKED: (count: number, thresholdS: number) =>
    `${count} connection(s) have been checked out for longer than DB_POOL_LEAK_THRESHOLD (${thresholdS} s); the log shows the stack that took each one.`,
  HEADROOM: (replicas: number, capacity: number, need: number, available: number, max: number, reserved: number, others: number) =>
    `Server headroom: ${replicas} replica(s) × ${capacity} connections = ${need}, more than the ${available} the server can give ` +
    `(max_connections=${max}, superuser_reserved_connections=${reserved}, ${others} in use by other applications). ` +
    `Lower DB_POOL_SIZE/DB_MAX_OVERFLOW, raise max_connections, or put PgBouncer in front.`,
  IDLE_IN_TRANSACTION: (count: number, applicationName: string) =>
    `${count} server connection(s) of ${applicationName} have been "idle in transaction" for ${IDLE_IN_TRANSACTION_MIN_S} s or more: a transaction is being left open; set idle_in_transaction_session_timeout or find the code.`,
  SERVER_IDLE_TIMEOUT: (ms: number) =>
    `Server idle_session_timeout=${ms % 1000 === 0 ? `${ms / 1000}s` : `${ms}ms`} closes connections idle longer than that: ` +
    `the pool's warm connections will be closed under it and reopened (pre-ping and refill cover it, at a cost); raise or disable it for this role.`,
  REPLICA_OUT_OF_ROTATION: (code: string, reason: string) =>
    `Replica out of rotation for reads (${code}): ${reason}. Its reads go to the other replicas in rotation or the primary, and the instance stays ready; ` +
    `it comes back at the first lag sample that finds it fit (runbook: DbPoolReplicaLagging, DbPoolReplicaNotAStandby).`,
  POOL_SIZE: (waitedPct: number, meanWaitMs: number, meanUseMs: number, rate: number, suggested: number, poolSize: number) =>
    `Acquires waited ${waitedPct}% of the time (mean wait ${meanWaitMs} ms, mean use ${meanUseMs} ms at ${rate} checkouts/s): ` +
    `this load keeps about ${suggested} connections busy; consider DB_POOL_SIZE=${suggested} (now ${poolSize}).`,
} as const;
