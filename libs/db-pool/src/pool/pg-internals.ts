/**
 * Every use of pg's and TypeORM's undocumented members, in one place. db-pool owns its queue
 * (pg-pool's is not used); what it still reads of a `pg.Client` is how its socket and protocol
 * stand, which pg does not expose otherwise. `test/pg-internals.contract.spec.ts` checks each
 * member against the pinned versions and fails naming the one an upgrade changed.
 */
import type { EventEmitter } from 'node:events';
import pg from 'pg';

/** The versions this file was written against (pinned in package.json; the contract test checks them). */
export const PINNED = { pg: '8.23.1', typeorm: '1.1.1' } as const;

/** pg's client state, private in its typings. */
interface PgClientInternals {
  /** false once the connection reported an error. */
  _queryable: boolean;
  /** true once `end()` was called (by us or by pg's connect timeout). */
  _ending: boolean;
  /** true once the socket has closed. */
  _ended: boolean;
  /** Queries handed to the client and not sent yet (pg sends one at a time). */
  _queryQueue: unknown[];
  /** The query whose answer pg is reading (sent, ReadyForQuery not yet come), or null. */
  _activeQuery: unknown;
  /** false from sending a query until the server's ReadyForQuery. */
  readyForQuery: boolean;
  /** The protocol connection: emits every server message by name. */
  connection: EventEmitter & { stream: EventEmitter & { destroy(): void }; sendCopyFail?(message: string): void };
}

const internals = (client: pg.ClientBase) => client as unknown as PgClientInternals;

/**
 * True when the client's connection has failed or is closing: its socket reported an error,
 * it has closed, or it is being ended. Such a client can never answer again.
 */
export function connectionLost(client: pg.ClientBase): boolean {
  const c = client as unknown as PgClientInternals; // every checkout reads it: no call for the cast
  return c._queryable === false || c._ending || c._ended;
}

/** Queries the caller queued on the client that pg has not sent yet. */
export function queuedQueries(client: pg.ClientBase): number {
  return internals(client)._queryQueue?.length ?? 0;
}

/** True while a query is on the wire: the server's ReadyForQuery has not arrived yet. */
export function awaitingServer(client: pg.ClientBase): boolean {
  return internals(client).readyForQuery === false;
}

/**
 * The protocol connection, whose events are the server's messages ('readyForQuery', 'errorMessage', …);
 * undefined for a `Client` class of the application's that is not pg's (see {@link hasPgInternals}).
 */
export function protocolOf(client: pg.ClientBase): EventEmitter | undefined {
  const connection = internals(client).connection as Partial<EventEmitter> | undefined;
  return typeof connection?.on === 'function' ? (connection as EventEmitter) : undefined;
}

/**
 * The client is pg's, or reads as pg's: its protocol connection and queues are where pg keeps
 * them. A `Client` class that implements only pg.Client's public API works without them; what
 * needs them (FATAL and role reports, settling a released statement, session-change detection,
 * closing a socket at once) is off for its connections.
 */
export function hasPgInternals(client: pg.ClientBase): boolean {
  return protocolOf(client) !== undefined && Array.isArray(internals(client)._queryQueue);
}

/**
 * The backend's key (BackendKeyData) a cancel request names: pg keeps it as `processID` and
 * `secretKey` (the latter not in its typings). Undefined before the connection is up.
 */
export function backendKeyOf(client: pg.ClientBase): { processID: number; secretKey: number } | undefined {
  const c = client as unknown as { processID?: unknown; secretKey?: unknown };
  return typeof c.processID === 'number' && typeof c.secretKey === 'number'
    ? { processID: c.processID, secretKey: c.secretKey }
    : undefined;
}

/**
 * Submittables (a pg-cursor, a QueryStream, a COPY stream: anything with `submit` that is not pg's
 * own Query) the client is running or holds queued. They read the connection through a reference
 * of their own, not through a lease.
 */
export function openSubmittables(client: pg.ClientBase): Submittable[] {
  const c = internals(client);
  const all = c._activeQuery ? [c._activeQuery, ...(c._queryQueue ?? [])] : (c._queryQueue ?? []);
  return all.filter((q) => !(q instanceof pg.Query) && typeof (q as Submittable).submit === 'function') as Submittable[];
}

/** What pg calls on a submittable (pg.Submittable, with the callback pg drives it by). */
export interface Submittable {
  submit(connection: unknown): void;
  handleError?(err: Error, connection?: unknown): void;
  /** A COPY FROM stream (pg-copy-streams): it writes to the server, which waits on it. */
  handleCopyInResponse?(connection: unknown): void;
  /** A stream's own (a QueryStream, a COPY stream). */
  destroy?(err?: Error): void;
}

/**
 * True while a submittable reads the client's socket itself, pg's own reader taken off it (a
 * COPY TO stream of pg-copy-streams, until the COPY ends): pg hears nothing of the server meanwhile.
 */
export function socketTaken(client: pg.ClientBase): boolean {
  const stream = (internals(client).connection as Partial<PgClientInternals['connection']> | undefined)?.stream;
  return typeof stream?.listenerCount === 'function' && stream.listenerCount('data') === 0;
}

/**
 * Tells the server that the COPY FROM the client runs has failed (a CopyFail message): it rolls the
 * COPY back and answers at once. The server ignores one that comes outside a COPY.
 */
export function failCopyIn(client: pg.ClientBase, message: string): void {
  internals(client).connection?.sendCopyFail?.(message);
}

/** Closes the client's socket at once, without waiting for the server to close its end. */
export function destroySocket(client: pg.ClientBase): void {
  const stream = (internals(client).connection as Partial<PgClientInternals['connection']> | undefined)?.stream;
  if (typeof stream?.destroy === 'function') stream.destroy();
  else void (client as unknown as { end?: () => Promise<void> }).end?.().catch(() => {});
}

/** The client's TCP address and port, as the server (or PgBouncer) sees them unless translated on the way; undefined over a Unix socket. */
export function localEndpointOf(client: pg.ClientBase): { address: string; port: number } | undefined {
  const stream = internals(client).connection?.stream as { localAddress?: unknown; localPort?: unknown } | undefined;
  if (typeof stream?.localAddress !== 'string' || typeof stream.localPort !== 'number') return undefined;
  // An IPv4 address on a dual-stack socket reads ::ffff:127.0.0.1; PgBouncer writes 127.0.0.1.
  return { address: stream.localAddress.replace(/^::ffff:/i, ''), port: stream.localPort };
}

/** The pg pool TypeORM's Postgres driver holds (`driver.master`; `driver.slaves` with replication). */
export function typeOrmPoolsOf(driver: unknown): { master: unknown; slaves: unknown[] } {
  const d = driver as { master?: unknown; slaves?: unknown[] };
  return { master: d.master, slaves: d.slaves ?? [] };
}
