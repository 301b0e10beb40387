/**
 * Submittables — a pg-cursor, a QueryStream, a COPY stream: anything with `submit` that pg runs on
 * the connection — keep a reference of their own to the connection and go on reading it through
 * that, not through the lease. The pool stops them where a lease would refuse: when the checkout
 * is released while one is still open, and when its request's deadline passes. Their connection
 * then serves no one else (they may still write to it). pg's own Query is watched instead
 * ({@link watchQuery}): it answers once, as a query config does, and pg moves on after it.
 */
import type { Submittable } from './pg-internals.js';

/**
 * Tells a submittable once, through its own `handleError`, that it was stopped: its reads fail
 * with `err` from now on. What pg tells it later (the cancelled statement's error, the connection's
 * end) is not passed on: a second error would make a cursor send a second Sync, whose stray
 * ReadyForQuery would end someone else's query. One that has taken the socket (`socketTaken`: a
 * COPY TO stream reading it itself) is destroyed as a stream instead: its `handleError` is for
 * after it gave the socket back, and clears what its reader still uses.
 */
export function stopSubmittable(submittable: Submittable, err: Error, socketTaken: boolean): void {
  const handleError = submittable.handleError;
  if (typeof handleError !== 'function') return;
  submittable.handleError = () => {};
  if (socketTaken && typeof submittable.destroy === 'function') submittable.destroy(err);
  else handleError.call(submittable, err);
}

/** pg's own Query, as pg drives it: it sends itself, then hears the server's answer through these. */
export interface QueryObject extends Submittable {
  handleError(err: Error, connection?: unknown): void;
  handleReadyForQuery(connection: unknown): void;
  handleDataRow?(msg: unknown): void;
}

/** A pg Query the lease watches: whether pg has sent it, whether its answer has come, and a way to stop it. */
export interface WatchedQuery {
  /** pg has sent it to the server. */
  readonly submitted: boolean;
  /** Its answer has come (or it was stopped): it hears nothing more. */
  readonly answered: boolean;
  /** Answers it now with `err`, through its own callback or 'error' event, and silences what pg tells it later; if pg has not sent it yet, pg never will. */
  stop(err: Error): void;
}

/**
 * Watches pg's own Query through the methods pg drives it by (`submit`, `handleError`,
 * `handleReadyForQuery`): its answer — an error, or null when it succeeded — goes through `map`
 * once, and the Query tells its caller (callback or events) what `map` returns. One stopped before
 * pg sent it refuses to be sent: pg then moves on to the next query.
 */
export function watchQuery(query: QueryObject, map: (err: Error | null) => Error | null): WatchedQuery {
  const { submit, handleError, handleReadyForQuery } = query;
  let submitted = false;
  let answered = false;
  // Query's own handleReadyForQuery reports a row it could not parse through handleError: passed on as is.
  let inReady = false;
  query.submit = function (this: QueryObject, connection: unknown) {
    if (answered) return new Error('stopped before it was sent') as never;
    submitted = true;
    return submit.call(this, connection);
  };
  query.handleError = function (this: QueryObject, err: Error, connection?: unknown) {
    if (inReady) return handleError.call(this, err, connection);
    if (answered) return;
    answered = true;
    handleError.call(this, map(err) ?? err, connection);
  };
  query.handleReadyForQuery = function (this: QueryObject, connection: unknown) {
    if (answered) return;
    answered = true;
    const err = map(null);
    if (err) return handleError.call(this, err, connection);
    inReady = true;
    try {
      handleReadyForQuery.call(this, connection);
    } finally {
      inReady = false;
    }
  };
  return {
    get submitted() {
      return submitted;
    },
    get answered() {
      return answered;
    },
    stop(err: Error) {
      if (answered) return;
      answered = true;
      query.handleDataRow = () => {};
      handleError.call(query, err);
    },
  };
}
