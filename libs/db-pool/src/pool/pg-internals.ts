import type pg from 'pg';

/** pg's own client state (private in its typings), read to know whether a socket still works. */
interface PgClientState {
  /** false once the connection reported an error. */
  _queryable?: boolean;
  /** true once `end()` was called on the client (by us, pg-pool or pg's connect timeout). */
  _ending?: boolean;
  /** true once the socket has closed. */
  _ended?: boolean;
  /** Queries handed to the client and not sent yet (pg sends one at a time). */
  _queryQueue?: unknown[];
  connection?: { stream?: { destroy(): void } };
}

/**
 * True when the client's connection has failed or is closing: its socket reported an error,
 * it has closed, or it is being ended. Such a client can never answer again.
 */
export function connectionLost(client: pg.ClientBase): boolean {
  const state = client as unknown as PgClientState;
  return state._queryable === false || state._ending === true || state._ended === true;
}

/** Queries the caller queued on the client that pg has not sent yet. */
export function queuedQueries(client: pg.ClientBase): number {
  return (client as unknown as PgClientState)._queryQueue?.length ?? 0;
}

/** Closes the client's socket at once, without waiting for the server to close its end. */
export function destroySocket(client: pg.ClientBase): void {
  (client as unknown as PgClientState).connection?.stream?.destroy();
}
