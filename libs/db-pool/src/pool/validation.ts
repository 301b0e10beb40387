/**
 * The round trips that decide whether a connection may be handed out (again): the pre-ping on
 * borrow, and on return the wait for a query still on the wire, the rollback of a transaction
 * left open and the reset of session state left behind. Each is bounded by a timeout; a
 * connection that fails one is discarded by the pool.
 */
import { connect } from 'node:net';
import type pg from 'pg';
import type { HostAddress } from './hosts.js';
import { awaitingServer, backendKeyOf, protocolOf } from './pg-internals.js';

type Done = (err: Error | undefined) => void;

const PING = 'SELECT 1';
/**
 * Undoes what a borrower may have left on the session. Not DISCARD ALL: that would also drop the
 * named prepared statements pg keeps track of on the client, which would then fail.
 */
export const RESET_SESSION = 'RESET ALL; RESET ROLE; RESET SESSION AUTHORIZATION; UNLISTEN *; SELECT pg_advisory_unlock_all()';
/** Command tags after which a session may differ from a fresh one. */
const SESSION_COMMANDS = new Set(['SET', 'RESET', 'LISTEN']);

/** `SELECT 1` within `timeoutMs`. */
export function ping(client: pg.ClientBase, timeoutMs: number, done: Done): void {
  client.query({ text: PING, query_timeout: timeoutMs } as pg.QueryConfig, (err: Error | null) => done(err ?? undefined));
}

/**
 * Waits, up to `timeoutMs`, for the server's ReadyForQuery of a query still on the wire when the
 * connection was released (an error answer whose ReadyForQuery is on its way, a query abandoned
 * by `query_timeout`). Fails if the connection ends or the answer does not come in time.
 */
export function settle(client: pg.ClientBase, timeoutMs: number, done: Done): void {
  const connection = protocolOf(client);
  if (!connection) return done(new Error("the Client is not pg's: a released query cannot be settled"));
  let settled = false;
  const finish = (err: Error | undefined) => {
    if (settled) return;
    settled = true;
    clearTimeout(timer);
    connection.removeListener('readyForQuery', onReady);
    connection.removeListener('end', onEnd);
    done(err);
  };
  // pg clears its active query in its own readyForQuery handler, which may run after ours.
  const onReady = () =>
    setImmediate(() => finish(awaitingServer(client) ? new Error('the connection is still busy after ReadyForQuery') : undefined));
  const onEnd = () => finish(new Error('the connection ended while a released query was on the wire'));
  const timer = setTimeout(() => finish(new Error(`a released query did not finish within ${timeoutMs} ms`)), timeoutMs);
  timer.unref();
  connection.once('readyForQuery', onReady);
  connection.once('end', onEnd);
}

/**
 * Settles a connection released while its query runs on the server (its caller's deadline passed,
 * `query_timeout`): PostgreSQL's cancel request stops the query, then the connection is kept if the
 * server's ReadyForQuery comes within `timeoutMs`. It goes back to the pool only once the cancel
 * request has been handled too (the server closes that socket after signalling the backend), so
 * a late cancel can never hit the next borrower's query: a cancel that reaches an idle backend is
 * ignored by the server.
 */
export function cancelAndSettle(client: pg.ClientBase, cancel: (done: (err?: Error) => void) => void, timeoutMs: number, done: Done): void {
  // (A cancel sent earlier in the checkout is waited for by the pool; see DbPool.giveBack.)
  let pending = 2;
  let failure: Error | undefined;
  const one = (err?: Error) => {
    failure ??= err;
    if (--pending === 0) done(failure);
  };
  settle(client, timeoutMs, one);
  cancel(one);
}

/**
 * PostgreSQL's CancelRequest on a connection of its own: length 16, code 80877102, the backend's pid
 * and key. Succeeds once the server has closed that connection after reading the packet (it
 * signals the backend first); a cancel not confirmed so — refused, timed out — is an error, so the
 * connection is not handed to anyone whose query a late signal could hit. Without a key or a host
 * there is no cancel to wait for.
 */
export function sendCancel(client: pg.ClientBase, host: HostAddress | undefined, timeoutMs: number, done: (err?: Error) => void): void {
  const key = backendKeyOf(client);
  if (!host || !key) return done();
  const packet = Buffer.alloc(16);
  packet.writeInt32BE(16, 0);
  packet.writeInt32BE(80877102, 4);
  packet.writeInt32BE(key.processID, 8);
  packet.writeInt32BE(key.secretKey, 12);
  const socket = host.host.startsWith('/') ? connect(`${host.host}/.s.PGSQL.${host.port}`) : connect(host.port, host.host);
  let sent = false;
  let finished = false;
  const finish = (err?: Error) => {
    if (finished) return;
    finished = true;
    clearTimeout(timer);
    socket.destroy();
    done(err);
  };
  const timer = setTimeout(() => finish(new Error(`the cancel request was not confirmed within ${timeoutMs} ms`)), timeoutMs);
  timer.unref();
  socket.on('connect', () => socket.end(packet, () => (sent = true)));
  socket.on('error', (err) => finish(err));
  socket.on('close', () => finish(sent ? undefined : new Error('the cancel request could not be sent')));
}

/** True when the connection is inside a transaction (open or aborted). */
export function inTransaction(client: pg.ClientBase): boolean {
  const { getTransactionStatus } = client as pg.ClientBase & { getTransactionStatus?(): string | null };
  // A Client that cannot say (not pg's): rolled back, as if it were (a ROLLBACK outside one only warns).
  if (typeof getTransactionStatus !== 'function') return true;
  const status = getTransactionStatus.call(client);
  return status === 'T' || status === 'E';
}

/** `ROLLBACK` within `timeoutMs`; fails unless the connection is idle afterwards. */
export function rollback(client: pg.ClientBase, timeoutMs: number, done: Done): void {
  client.query({ text: 'ROLLBACK', query_timeout: timeoutMs } as pg.QueryConfig, (err: Error | null) => {
    if (err) return done(err);
    done(inTransaction(client) ? new Error('still in a transaction after ROLLBACK') : undefined);
  });
}

/**
 * Resets session state (settings, role, LISTEN, session advisory locks), then replays the
 * statements the application ran when the connection was opened, so its own set-up survives.
 */
export function resetSession(client: pg.ClientBase, setUp: readonly string[], timeoutMs: number, done: Done): void {
  const text = setUp.length > 0 ? `${RESET_SESSION}; ${setUp.join('; ')}` : RESET_SESSION;
  client.query({ text, query_timeout: timeoutMs } as pg.QueryConfig, (err: Error | null) => done(err ?? undefined));
}

/**
 * Calls `changed` when the session may have changed: a SET, RESET or LISTEN completed, or the
 * server reported a new value of a setting (set_config() of a reported one, say).
 */
export function watchSession(client: pg.ClientBase, changed: () => void): void {
  const connection = protocolOf(client);
  if (!connection) return;
  connection.on('commandComplete', (msg: { text?: string }) => {
    if (SESSION_COMMANDS.has(msg.text ?? '')) changed();
  });
  connection.on('parameterStatus', changed);
}
