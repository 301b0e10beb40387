/**
 * Submittables — a pg-cursor, a QueryStream, a COPY stream: anything with `submit` that pg runs on
 * the connection — keep a reference of their own to the connection and go on reading it through
 * that, not through the lease. The pool stops them where a lease would refuse: when the checkout
 * is released while one is still open, and when its request's deadline passes. Their connection
 * then serves no one else (they may still write to it).
 */
import type { Submittable } from './pg-internals.js';

/**
 * Tells a submittable once, through its own `handleError`, that it was stopped: its reads fail
 * with `err` from now on. What pg tells it later (the cancelled statement's error, the connection's
 * end) is not passed on: a second error would make a cursor send a second Sync, whose stray
 * ReadyForQuery would end someone else's query.
 */
export function stopSubmittable(submittable: Submittable, err: Error): void {
  const handleError = submittable.handleError;
  if (typeof handleError !== 'function') return;
  submittable.handleError = () => {};
  handleError.call(submittable, err);
}
