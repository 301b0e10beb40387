import type { EventEmitter } from 'node:events';
import { performance } from 'node:perf_hooks';
import pg from 'pg';
import { type OutcomeUnknownReason, PoolDeadlineError, PoolLeaseError, PoolOutcomeUnknownError, PoolReleaseError } from '../errors.js';
import { currentDeadline, type Deadline, MAX_TIMER_MS } from './deadline.js';
import { commitsBeforeLast, committedLocally, sensitiveCommand, statementText } from './outcome.js';
import { connectionLost, openSubmittables, type Submittable } from './pg-internals.js';
import { stopSubmittable, watchQuery, type QueryObject } from './submittables.js';
import type { PoolEntry } from './pool-entry.js';

/** What a lease needs of its pool. */
export interface LeaseOwner {
  readonly name: string;
  /** Takes the connection back; called once per checkout, by the lease's `release`. */
  giveBack(entry: PoolEntry, err: Error | boolean | undefined): void;
  /** The error a statement on an evicted connection (its server changed role) gets instead of being sent. */
  evictedError(entry: PoolEntry): Error;
  /** The request's deadline passed while a statement ran: cancel it on the server now. */
  deadlinePassed(entry: PoolEntry): void;
  /** How long past its request's deadline the answer to a statement whose outcome matters is awaited, once it is cancelled (DB_VALIDATION_TIMEOUT_MS). */
  readonly cancelWaitMs: number;
}

type Listener = (...args: unknown[]) => void;
const HELD = Symbol('db-pool.lease.held');
type Delegate = Record<string, (...args: unknown[]) => unknown>;
type TxStatusReader = { getTransactionStatus?(): string | null };
type GuardedClient = Delegate & EventEmitter & { connectionParameters?: { query_timeout?: number } };

/**
 * What a caller gets from an acquire: the connection's client, for this checkout only (HikariCP's
 * proxy per checkout). It does what a `pg.PoolClient` does while the checkout lasts; after
 * `release()`, any use of it throws {@link PoolLeaseError} naming the pool and never reaches the
 * connection, which may belong to another caller by then. Listeners added through it are removed
 * from the connection at release, so the next borrower hears none of them.
 *
 * Costs one object and one closure per checkout; each call is one check and a call.
 */
export class PoolLease implements Pick<pg.PoolClient, 'query'> {
  /** pg.Pool's release: bound, so it works detached (TypeORM keeps it). */
  readonly release: (err?: Error | boolean) => void;
  // #private: no name of pg's client can collide with them.
  #entry: PoolEntry | undefined;
  /** Listeners added through the lease, flat: event, listener, event, listener, … */
  #listeners: (string | symbol | Listener)[] | undefined;
  readonly #owner: LeaseOwner;
  /** The deadline of the request that acquired it (`withDeadline`): it bounds every statement. */
  readonly #deadline: Deadline | undefined;
  /** The deadline in force where the connection was handed out: that of whoever's release (or connect) served it. */
  readonly #handedOutIn: Deadline | undefined;

  constructor(owner: LeaseOwner, entry: PoolEntry, deadline?: Deadline) {
    this.#owner = owner;
    this.#entry = entry;
    this.#deadline = deadline;
    this.#handedOutIn = currentDeadline();
    this.release = (err?: Error | boolean) => {
      const held = this.#entry;
      if (!held) throw new PoolReleaseError(owner.name);
      this.#entry = undefined;
      if (this.#listeners) this.#dropListeners(held.client);
      owner.giveBack(held, err);
    };
  }

  /** The client while the checkout lasts; throws, naming `member`, once released. */
  [HELD](member: string): pg.Client {
    const entry = this.#entry;
    if (!entry) throw new PoolLeaseError(this.#owner.name, member);
    return entry.client;
  }

  // Every checkout's hot call: three arguments as pg takes them, no rest array.
  query(config: unknown, values?: unknown, callback?: unknown): never {
    const entry = this.#entry;
    if (entry !== undefined) {
      if (entry.evicted !== undefined) return refuse(this.#owner.evictedError(entry), config, values, callback) as never;
      const deadline = this.#deadlineHere();
      // A statement that ends a transaction or writes in one of its own: how it ended must be known.
      const command = sensitiveCommand(config, entry.client as TxStatusReader);
      if (deadline !== undefined || command !== undefined)
        return this.#queryGuarded(entry, config, values, callback, deadline, command) as never;
    }
    return (this[HELD]('query') as unknown as Delegate).query(config, values, callback) as never;
  }

  /**
   * The deadline a statement made here is bounded by: the earlier of the lease's own (its
   * acquire's) and the one in force here, a nested or later `withDeadline`. A statement made in
   * the context the connection was handed out in is the pool's own (pool.query's, an 'acquire'
   * listener's): that context is whoever's release served the connection, so it keeps the lease's.
   */
  #deadlineHere(): Deadline | undefined {
    const here = currentDeadline();
    const own = this.#deadline;
    if (here === undefined || here === own || here === this.#handedOutIn) return own;
    return own === undefined || here.at < own.at ? here : own;
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
  #queryGuarded(
    entry: PoolEntry,
    config: unknown,
    values: unknown,
    callback: unknown,
    deadline: Deadline | undefined,
    command: string | undefined,
  ): unknown {
    const client = entry.client as unknown as GuardedClient;
    if (config === null || config === undefined) return client.query(config, values, callback);
    if (typeof (config as { submit?: unknown }).submit === 'function') {
      if (config instanceof pg.Query)
        return this.#runQueryObject(entry, config as unknown as QueryObject, values, callback, deadline, command);
      return deadline === undefined
        ? client.query(config, values, callback)
        : this.#submitBy(deadline, entry, config as Submittable, values, callback);
    }
    const owner = this.#owner;
    let timeout: number | undefined;
    let byDeadline = false;
    const watch = command === undefined ? undefined : new Outcome(owner.name, command, entry, config, deadline);
    if (deadline !== undefined) {
      const left = Math.floor(deadline.at - performance.now());
      if (left <= 0) return refuse(new PoolDeadlineError(owner.name, deadline.budgetMs, false), config, values, callback);
      const given = typeof config === 'object' ? (config as { query_timeout?: number }).query_timeout : undefined;
      const own = client.connectionParameters?.query_timeout;
      if (watch === undefined) {
        timeout = Math.min(left, given || Infinity, own || Infinity);
        byDeadline = timeout === left;
      } else {
        timeout = Math.min(left + owner.cancelWaitMs, given || Infinity, own || Infinity, MAX_TIMER_MS);
        watch.timer = setTimeout(() => {
          watch.cancelled = true;
          if (this.#entry === entry) owner.deadlinePassed(entry);
        }, left);
      }
    }
    watch?.listen();
    const outcome = (err: Error | null): Error | null => {
      if (watch !== undefined) return watch.settle(err);
      if (!err || !byDeadline || err.message !== 'Query read timeout') return err;
      // Only while this lease still holds the connection: after a release the pool has its own
      // cancel under way, and the connection may be someone else's by the time a second one lands.
      if (this.#entry === entry) owner.deadlinePassed(entry);
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
  #runQueryObject(
    entry: PoolEntry,
    query: QueryObject,
    values: unknown,
    callback: unknown,
    deadline: Deadline | undefined,
    command: string | undefined,
  ): unknown {
    const owner = this.#owner;
    const client = entry.client as unknown as GuardedClient;
    let left = 0;
    if (deadline !== undefined) {
      left = deadline.at - performance.now();
      if (left <= 0) return refuse(new PoolDeadlineError(owner.name, deadline.budgetMs, false), query, values, callback);
    }
    const watch = command === undefined ? undefined : new Outcome(owner.name, command, entry, query, deadline);
    let timer: NodeJS.Timeout | undefined;
    const watched = watchQuery(query, (err) => {
      clearTimeout(timer);
      return watch === undefined ? err : watch.settle(err);
    });
    watch?.listen();
    if (deadline !== undefined) {
      timer = setTimeout(() => {
        if (watched.answered) return;
        if (!watched.submitted) {
          watch?.settle(null);
          return watched.stop(new PoolDeadlineError(owner.name, deadline.budgetMs, false));
        }
        if (this.#entry === entry) owner.deadlinePassed(entry);
        if (watch === undefined) return watched.stop(new PoolDeadlineError(owner.name, deadline.budgetMs, true));
        watch.cancelled = true;
        // Awaited a while longer: the cancel's answer says whether it was rolled back or committed after all.
        timer = setTimeout(
          () => {
            // No answer to the cancel either: what pg's query_timeout says of a config's statement at this point.
            if (!watched.answered) watched.stop(watch.settle(new Error('Query read timeout'))!);
          },
          Math.min(owner.cancelWaitMs, MAX_TIMER_MS),
        );
        timer.unref();
      }, left);
      timer.unref();
    }
    return client.query(query, values, callback);
  }

  /**
   * A cursor, stream or COPY under a request's deadline: not submitted once it has passed; still
   * open when it passes, it is stopped (its reads fail with {@link PoolDeadlineError}), the statement
   * it runs is cancelled on the server, and its connection is closed at release rather than reused
   * (the submittable holds it and may still write to it).
   */
  #submitBy(deadline: Deadline, entry: PoolEntry, submittable: Submittable, values: unknown, callback: unknown): unknown {
    const owner = this.#owner;
    const left = deadline.at - performance.now();
    if (left <= 0) return refuse(new PoolDeadlineError(owner.name, deadline.budgetMs, false), submittable, values, callback);
    const timer = setTimeout(() => {
      if (this.#entry !== entry || !openSubmittables(entry.client).includes(submittable)) return;
      entry.discard = true;
      owner.deadlinePassed(entry);
      stopSubmittable(submittable, new PoolDeadlineError(owner.name, deadline.budgetMs, true));
    }, left);
    timer.unref();
    return (entry.client as unknown as Delegate).query(submittable, values, callback);
  }

  on(event: string | symbol, listener: Listener): this {
    emitter(this[HELD]('on')).on(event, listener);
    (this.#listeners ??= []).push(event, listener);
    return this;
  }

  addListener(event: string | symbol, listener: Listener): this {
    return this.on(event, listener);
  }

  once(event: string | symbol, listener: Listener): this {
    emitter(this[HELD]('once')).once(event, listener);
    (this.#listeners ??= []).push(event, listener);
    return this;
  }

  prependListener(event: string | symbol, listener: Listener): this {
    emitter(this[HELD]('prependListener')).prependListener(event, listener);
    (this.#listeners ??= []).push(event, listener);
    return this;
  }

  prependOnceListener(event: string | symbol, listener: Listener): this {
    emitter(this[HELD]('prependOnceListener')).prependOnceListener(event, listener);
    (this.#listeners ??= []).push(event, listener);
    return this;
  }

  removeListener(event: string | symbol, listener: Listener): this {
    emitter(this[HELD]('removeListener')).removeListener(event, listener);
    const added = this.#listeners;
    if (added) {
      // The newest first: a listener is most often removed by the code that just added it.
      for (let i = added.length - 2; i >= 0; i -= 2) {
        if (added[i] === event && added[i + 1] === listener) {
          added.splice(i, 2);
          break;
        }
      }
    }
    return this;
  }

  off(event: string | symbol, listener: Listener): this {
    return this.removeListener(event, listener);
  }

  /** Removes the listeners added through this lease (the pool's own stay). */
  removeAllListeners(event?: string | symbol): this {
    this[HELD]('removeAllListeners');
    const added = [...(this.#listeners ?? [])];
    for (let i = 0; i < added.length; i += 2)
      if (event === undefined || added[i] === event) this.removeListener(added[i] as string | symbol, added[i + 1] as Listener);
    return this;
  }

  #dropListeners(client: pg.Client): void {
    const added = this.#listeners!;
    for (let i = 0; i < added.length; i += 2) emitter(client).removeListener(added[i] as string | symbol, added[i + 1] as Listener);
    this.#listeners = undefined;
  }
}

const emitter = (client: pg.Client) => client as unknown as EventEmitter;

/**
 * A statement whose outcome matters (it ends a transaction, or writes in one of its own), from
 * its sending to its answer: what the answer, or its absence, tells the caller. Under a deadline
 * it is cancelled at the deadline (`cancelled`) and its answer awaited a while longer: done (its
 * result), rolled back by the cancel ({@link PoolDeadlineError}), committed locally with its
 * synchronous replication unconfirmed, or none at all (both {@link PoolOutcomeUnknownError}).
 */
class Outcome {
  /** Its request's deadline passed and it was cancelled on the server. */
  cancelled = false;
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
      return new PoolDeadlineError(pool, this.deadline!.budgetMs, true, { cause: err });
    }
    return err;
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
function refuse(err: Error, config: unknown, values: unknown, callback: unknown): unknown {
  const cb = typeof callback === 'function' ? callback : typeof values === 'function' ? values : undefined;
  if (cb) return void process.nextTick(cb as (err: Error) => void, err);
  const submittable = config as { submit?: unknown; handleError?: (err: Error) => void } | null;
  if (submittable && typeof submittable.submit === 'function') {
    process.nextTick(() => submittable.handleError?.(err));
    return config;
  }
  return Promise.reject(err);
}

const delegated = new WeakSet<object>();

/**
 * Gives {@link PoolLease} every other public member of a client class — methods
 * (`escapeLiteral`, `getTransactionStatus`, `emit`, …) and fields (`processID`, `database`, …) —
 * each checking the lease first. Run once per client class, with one instance to read its fields.
 */
export function delegateToClient(sample: pg.Client): void {
  const target = PoolLease.prototype as unknown as Record<string, unknown>;
  for (
    let proto = Object.getPrototypeOf(sample) as object | null;
    proto && proto !== Object.prototype;
    proto = Object.getPrototypeOf(proto) as object | null
  ) {
    if (delegated.has(proto)) break;
    delegated.add(proto);
    for (const name of Object.getOwnPropertyNames(proto)) {
      if (name === 'constructor' || name.startsWith('_') || name in target) continue;
      const descriptor = Object.getOwnPropertyDescriptor(proto, name)!;
      if (typeof descriptor.value === 'function') {
        Object.defineProperty(target, name, {
          configurable: true,
          writable: true,
          value: function (this: PoolLease, ...args: unknown[]) {
            return (this[HELD](name) as unknown as Delegate)[name](...args);
          },
        });
      } else if (descriptor.get) {
        defineField(target, name);
      }
    }
  }
  for (const name of Object.getOwnPropertyNames(sample)) {
    if (!name.startsWith('_') && !(name in target)) defineField(target, name);
  }
}

function defineField(target: object, name: string): void {
  Object.defineProperty(target, name, {
    configurable: true,
    get(this: PoolLease) {
      return (this[HELD](name) as unknown as Record<string, unknown>)[name];
    },
    set(this: PoolLease, value: unknown) {
      (this[HELD](name) as unknown as Record<string, unknown>)[name] = value;
    },
  });
}
