/**
 * The guarded statement path of a lease: a statement under a request's deadline (`withDeadline`),
 * or one whose outcome matters (it ends a transaction, or writes in one of its own). A plain
 * statement with no deadline never comes here: the lease's query hands it to pg directly, so that
 * the hot path costs no more than a check.
 */
import type { EventEmitter } from 'node:events';
import { performance } from 'node:perf_hooks';
import pg from 'pg';
import { type OutcomeUnknownReason, PoolAbortedError, PoolDeadlineError, PoolOutcomeUnknownError } from '../errors.js';
import { type Deadline, MAX_TIMER_MS } from './deadline.js';
import type { LeaseOwner } from './lease.js';
import { commitsBeforeLast, committedLocally, statementText } from './outcome.js';
import { connectionLost, openSubmittables, socketTaken, type Submittable } from './pg-internals.js';
import { stopSubmittable, watchQuery, type QueryObject } from './submittables.js';
import type { PoolEntry } from './pool-entry.js';

type GuardedClient = Record<string, (...args: unknown[]) => unknown> & EventEmitter & { connectionParameters?: { query_timeout?: number } };

/** One guarded statement: the checkout it runs in, and what it is guarded for. */
export interface GuardedStatement {
  readonly owner: LeaseOwner;
  readonly entry: PoolEntry;
  /** The deadline it is bounded by (the lease's, or a nearer one in force where it is made). */
  readonly deadline: Deadline | undefined;
  /** Its command, when its outcome matters (`sensitiveCommand`). */
  readonly command: string | undefined;
  /**
   * The lease still holds the connection: only then is its statement cancelled from here. After a
   * release the pool has its own cancel under way, and the connection may be someone else's by the
   * time a second one lands.
   */
  held(): boolean;
}

/**
 * A statement under a request's deadline (`withDeadline`), or one whose outcome matters
 * (`command`: it ends a transaction, or writes in one of its own).
 *
 * Under a deadline a statement is not sent once it has passed, else sent with the time left as
 * its `query_timeout`: when that fires first, the caller gets a {@link PoolDeadlineError} at once
 * and the statement is cancelled on the server. A statement whose outcome matters is cancelled
 * at the deadline too, but its answer is awaited up to `cancelWaitMs` longer (see
 * {@link Outcome}). With no deadline, such a statement whose connection is lost or whose
 * `query_timeout` passes is a PoolOutcomeUnknownError as well, never a plain error that invites a
 * retry.
 */
export function queryGuarded(statement: GuardedStatement, config: unknown, values: unknown, callback: unknown): unknown {
  const { owner, entry, deadline, command } = statement;
  const client = entry.client as unknown as GuardedClient;
  if (config === null || config === undefined) return client.query(config, values, callback);
  if (typeof (config as { submit?: unknown }).submit === 'function') {
    if (config instanceof pg.Query) return runQueryObject(statement, config as unknown as QueryObject, values, callback);
    return deadline === undefined
      ? client.query(config, values, callback)
      : submitBy(statement, deadline, config as Submittable, values, callback);
  }
  let timeout: number | undefined;
  let byDeadline = false;
  const watch = command === undefined ? undefined : new Outcome(owner.name, command, entry, config, deadline);
  let abort: Abort | undefined;
  if (deadline !== undefined) {
    const left = Math.floor(deadline.at - performance.now());
    const refused = notToSend(owner.name, deadline, left);
    if (refused) return refuse(refused, config, values, callback);
    if (left !== Infinity) {
      const given = typeof config === 'object' ? (config as { query_timeout?: number }).query_timeout : undefined;
      const own = client.connectionParameters?.query_timeout;
      if (watch === undefined) {
        timeout = Math.min(left, given || Infinity, own || Infinity);
        byDeadline = timeout === left;
      } else {
        timeout = Math.min(left + owner.cancelWaitMs, given || Infinity, own || Infinity, MAX_TIMER_MS);
        watch.timer = setTimeout(() => {
          watch.cancelled = true;
          if (statement.held()) owner.deadlinePassed(entry);
        }, left);
      }
    }
    if (deadline.signal !== undefined)
      abort = new Abort(deadline.signal, () => {
        if (watch !== undefined) watch.cancelled = watch.aborted = true;
        if (statement.held()) owner.deadlinePassed(entry);
      });
  }
  watch?.listen();
  const outcome = (err: Error | null): Error | null => {
    abort?.stop();
    if (watch !== undefined) return watch.settle(err);
    if (err && abort?.fired) return new PoolAbortedError(owner.name, true, abort.signal.reason, { cause: err });
    if (!err || !byDeadline || err.message !== 'Query read timeout') return err;
    if (statement.held()) owner.deadlinePassed(entry);
    return new PoolDeadlineError(owner.name, deadline!.budgetMs, true, { cause: err });
  };
  const cb = (typeof callback === 'function' ? callback : typeof values === 'function' ? values : undefined) as
    ((err: Error | null, result?: unknown) => void) | undefined;
  const configCallback = (config as { callback?: unknown }).callback;
  if (typeof configCallback === 'function' && !cb) {
    // A config carrying its own callback (pg's QueryConfig.callback): pg answers through it.
    const answer = (err: Error | null, result?: unknown) =>
      (configCallback as (e: Error | null, r?: unknown) => void)(outcome(err), result);
    return client.query(bounded(config, timeout, answer), values);
  }
  const sent = timeout === undefined ? config : bounded(config, timeout, undefined);
  if (cb) {
    const wrapped = (err: Error | null, result?: unknown) => cb(outcome(err), result);
    return cb === values ? client.query(sent, wrapped) : client.query(sent, values, wrapped);
  }
  return (client.query(sent, values) as Promise<unknown>).then(
    (result) => {
      const err = outcome(null);
      if (err) throw err;
      return result;
    },
    (err: Error) => {
      throw outcome(err);
    },
  );
}

/**
 * pg's own Query object (`client.query(new pg.Query(…))`): it answers through its own events
 * or callback, and pg's `query_timeout` cannot end one that has no callback, so it is watched
 * rather than bounded. Under a deadline, one pg has not sent yet when it passes is never sent
 * (`PoolDeadlineError`, `sent: false`); one running is cancelled on the server and stopped
 * (`sent: true`) — unless its outcome matters, in which case its answer is awaited up to
 * `cancelWaitMs` longer, as for any statement.
 */
function runQueryObject(statement: GuardedStatement, query: QueryObject, values: unknown, callback: unknown): unknown {
  const { owner, entry, deadline, command } = statement;
  const client = entry.client as unknown as GuardedClient;
  let left = 0;
  if (deadline !== undefined) {
    left = deadline.at - performance.now();
    const refused = notToSend(owner.name, deadline, left);
    if (refused) return refuse(refused, query, values, callback);
  }
  const watch = command === undefined ? undefined : new Outcome(owner.name, command, entry, query, deadline);
  let timer: NodeJS.Timeout | undefined;
  let abort: Abort | undefined;
  const watched = watchQuery(query, (err) => {
    clearTimeout(timer);
    abort?.stop();
    return watch === undefined ? err : watch.settle(err);
  });
  watch?.listen();
  if (deadline !== undefined) {
    let ending = false;
    const ended = (passed: (sent: boolean) => Error) => {
      // Once: the deadline and the signal may both come.
      if (watched.answered || ending) return;
      ending = true;
      if (!watched.submitted) {
        watch?.settle(null);
        return watched.stop(passed(false));
      }
      if (statement.held()) owner.deadlinePassed(entry);
      if (watch === undefined) return watched.stop(passed(true));
      watch.cancelled = true;
      watch.aborted = abort?.fired ?? false;
      // Awaited a while longer: the cancel's answer says whether it was rolled back or committed after all.
      timer = setTimeout(
        () => {
          // No answer to the cancel either: what pg's query_timeout says of a config's statement at this point.
          if (!watched.answered) watched.stop(watch.settle(new Error('Query read timeout'))!);
        },
        Math.min(owner.cancelWaitMs, MAX_TIMER_MS),
      );
      timer.unref();
    };
    if (left !== Infinity) {
      timer = setTimeout(() => ended((sent) => new PoolDeadlineError(owner.name, deadline.budgetMs, sent)), left);
      timer.unref();
    }
    const { signal } = deadline;
    if (signal !== undefined) abort = new Abort(signal, () => ended((sent) => new PoolAbortedError(owner.name, sent, signal.reason)));
  }
  return client.query(query, values, callback);
}

/**
 * A cursor, stream or COPY under a request's deadline: not submitted once it has passed; still
 * open when it passes, it is stopped (its reads fail with {@link PoolDeadlineError}), the statement
 * it runs is cancelled on the server, and its connection is closed at release rather than reused
 * (the submittable holds it and may still write to it).
 */
function submitBy(statement: GuardedStatement, deadline: Deadline, submittable: Submittable, values: unknown, callback: unknown): unknown {
  const { owner, entry } = statement;
  const left = deadline.at - performance.now();
  const refused = notToSend(owner.name, deadline, left);
  if (refused) return refuse(refused, submittable, values, callback);
  const stop = (err: Error) => {
    if (!statement.held() || !openSubmittables(entry.client).includes(submittable)) return;
    entry.discard = true;
    owner.deadlinePassed(entry);
    stopSubmittable(submittable, err, socketTaken(entry.client));
  };
  const timer = left === Infinity ? undefined : setTimeout(() => stop(new PoolDeadlineError(owner.name, deadline.budgetMs, true)), left);
  timer?.unref();
  const { signal } = deadline;
  const abort = signal === undefined ? undefined : new Abort(signal, () => stop(new PoolAbortedError(owner.name, true, signal.reason)));
  // Unwatched once it is over, so that a long-lived signal (a worker's, under withSignal) does not
  // keep a listener, and the cursor it holds, per submittable for as long as the signal lives.
  whenOver(submittable, () => {
    clearTimeout(timer);
    abort?.stop();
  });
  return (entry.client as unknown as GuardedClient).query(submittable, values, callback);
}

/**
 * Calls `over` once the submittable is done with its connection: pg has given it the server's
 * ReadyForQuery, or an error (a lost connection gives no ReadyForQuery), or, a stream, it closed
 * (destroyed while it read the socket itself).
 */
function whenOver(submittable: Submittable & { handleReadyForQuery?(connection: unknown): void }, over: () => void): void {
  let done = false;
  const once = () => {
    if (done) return;
    done = true;
    over();
  };
  for (const method of ['handleReadyForQuery', 'handleError'] as const) {
    const own = submittable[method] as ((...args: unknown[]) => void) | undefined;
    if (typeof own !== 'function') continue;
    submittable[method] = function (this: unknown, ...args: unknown[]) {
      once();
      return own.apply(this, args);
    };
  }
  const events = submittable as Partial<EventEmitter>;
  if (typeof events.once === 'function') events.once('close', once);
}

/**
 * A statement whose outcome matters (it ends a transaction, or writes in one of its own), from
 * its sending to its answer: what the answer, or its absence, tells the caller. Under a deadline
 * it is cancelled at the deadline (`cancelled`) and its answer awaited a while longer: done (its
 * result), rolled back by the cancel ({@link PoolDeadlineError}), committed locally with its
 * synchronous replication unconfirmed, or none at all (both {@link PoolOutcomeUnknownError}).
 */
class Outcome {
  /** Its request's deadline passed, or its caller's signal aborted, and it was cancelled on the server. */
  cancelled = false;
  /** It was cancelled because the caller's signal aborted. */
  aborted = false;
  /** The server warned that the transaction committed locally (its wait for a synchronous standby was cancelled). */
  committed = false;
  timer: NodeJS.Timeout | undefined;
  /** The connection was lost before the statement was handed to pg: pg refuses it, so it was never sent. */
  readonly #lostBefore: boolean;
  readonly #client: EventEmitter;
  readonly #onNotice = (msg: { message?: string; detail?: string }) => {
    if (committedLocally(msg)) this.committed = true;
  };

  constructor(
    readonly pool: string,
    readonly command: string,
    readonly entry: PoolEntry,
    /** The statement as the caller gave it (its text is read again only after a cancel). */
    readonly config: unknown,
    readonly deadline: Deadline | undefined,
  ) {
    this.#client = entry.client as unknown as EventEmitter;
    this.#lostBefore = entry.dead || connectionLost(entry.client);
  }

  listen(): void {
    this.#client.on('notice', this.#onNotice);
  }

  /** The caller's error for the answer `err` (null: it succeeded), or null; called once, when the answer comes. */
  settle(err: Error | null): Error | null {
    clearTimeout(this.timer);
    this.#client.removeListener('notice', this.#onNotice);
    const { pool, command, committed, cancelled } = this;
    if (!err) return committed ? new PoolOutcomeUnknownError(pool, command, cancelled ? 'deadline' : 'cancelled', true) : null;
    // Never sent: the server rolled the transaction back with the connection, as the driver's error says.
    if (this.#lostBefore) return err;
    const unknown = (reason: OutcomeUnknownReason) =>
      new PoolOutcomeUnknownError(pool, command, reason, committed || undefined, { cause: err });
    if (err.message === 'Query read timeout') return unknown(cancelled ? 'deadline' : 'query_timeout');
    if (this.entry.dead || connectionLost(this.entry.client)) return unknown('connection_lost');
    if (cancelled && (err as { code?: string }).code === '57014') {
      // The cancel stopped the text: a rollback of all of it only if nothing in it committed before the statement it hit.
      const text = statementText(this.config);
      if (text !== undefined && commitsBeforeLast(text)) return unknown('deadline');
      if (this.aborted) return new PoolAbortedError(pool, true, this.deadline!.signal?.reason, { cause: err });
      return new PoolDeadlineError(pool, this.deadline!.budgetMs, true, { cause: err });
    }
    return err;
  }
}

/** Why a statement is not to be sent at all (undefined: send it): the caller's signal aborted, or its deadline passed. */
function notToSend(pool: string, deadline: Deadline, left: number): Error | undefined {
  if (deadline.signal?.aborted) return new PoolAbortedError(pool, false, deadline.signal.reason);
  if (left <= 0) return new PoolDeadlineError(pool, deadline.budgetMs, false);
  return undefined;
}

/** A caller's signal, listened to while one statement runs. */
class Abort {
  fired = false;
  readonly #onAbort = () => {
    this.fired = true;
    this.then();
  };
  constructor(
    readonly signal: AbortSignal,
    private readonly then: () => void,
  ) {
    signal.addEventListener('abort', this.#onAbort, { once: true });
  }
  stop(): void {
    this.signal.removeEventListener('abort', this.#onAbort);
  }
}

/**
 * The caller's query config with a `query_timeout` (and a callback) of the pool's. Built on the
 * config itself, as pg copies one, so that every property it has — a getter of its class
 * included (sql-template-strings' `text`) — reads as before; defined, not assigned, so that a
 * frozen config takes them too.
 */
function bounded(
  config: unknown,
  timeout: number | undefined,
  callback: ((err: Error | null, result?: unknown) => void) | undefined,
): object {
  if (typeof config === 'string') return { text: config, query_timeout: timeout };
  const properties: PropertyDescriptorMap = {};
  if (timeout !== undefined) properties.query_timeout = { value: timeout, enumerable: true, writable: true, configurable: true };
  if (callback !== undefined) properties.callback = { value: callback, enumerable: true, writable: true, configurable: true };
  return Object.create(config as object, properties) as object;
}

/** Fails a query without sending it, through the channel the caller chose (as pg does for a client that is not queryable). */
export function refuse(err: Error, config: unknown, values: unknown, callback: unknown): unknown {
  const cb = typeof callback === 'function' ? callback : typeof values === 'function' ? values : undefined;
  if (cb) return void process.nextTick(cb as (err: Error) => void, err);
  const submittable = config as { submit?: unknown; handleError?: (err: Error) => void } | null;
  if (submittable && typeof submittable.submit === 'function') {
    process.nextTick(() => submittable.handleError?.(err));
    return config;
  }
  return Promise.reject(err);
}
