import type { EventEmitter } from 'node:events';
import { performance } from 'node:perf_hooks';
import type pg from 'pg';
import { PoolDeadlineError, PoolLeaseError, PoolReleaseError } from '../errors.js';
import type { Deadline } from './deadline.js';
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
}

type Listener = (...args: unknown[]) => void;
const HELD = Symbol('db-pool.lease.held');
type Delegate = Record<string, (...args: unknown[]) => unknown>;

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

  constructor(owner: LeaseOwner, entry: PoolEntry, deadline?: Deadline) {
    this.#owner = owner;
    this.#entry = entry;
    this.#deadline = deadline;
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
    if (entry !== undefined && entry.evicted !== undefined)
      return refuse(this.#owner.evictedError(entry), config, values, callback) as never;
    if (this.#deadline !== undefined && entry !== undefined) return this.#queryBy(this.#deadline, entry, config, values, callback) as never;
    return (this[HELD]('query') as unknown as Delegate).query(config, values, callback) as never;
  }

  /**
   * A statement under a request's deadline (`withDeadline`): not sent once it has passed, else
   * sent with the time left as its `query_timeout`. When that fires first, the caller gets a
   * {@link PoolDeadlineError} at once and the statement is cancelled on the server.
   */
  #queryBy(deadline: Deadline, entry: PoolEntry, config: unknown, values: unknown, callback: unknown): unknown {
    const client = entry.client as unknown as Delegate & { connectionParameters?: { query_timeout?: number } };
    const submittable = typeof (config as { submit?: unknown } | null)?.submit === 'function';
    if (submittable || config === null || config === undefined) return client.query(config, values, callback);
    const left = Math.floor(deadline.at - performance.now());
    const owner = this.#owner;
    if (left <= 0) return refuse(new PoolDeadlineError(owner.name, deadline.budgetMs, false), config, values, callback);
    const given = typeof config === 'object' ? (config as { query_timeout?: number }).query_timeout : undefined;
    const own = client.connectionParameters?.query_timeout;
    const timeout = Math.min(left, given || Infinity, own || Infinity);
    const bounded =
      typeof config === 'string' ? { text: config, query_timeout: timeout } : { ...(config as object), query_timeout: timeout };
    const byDeadline = timeout === left;
    const translate = (err: Error | null): Error | null => {
      if (!err || !byDeadline || err.message !== 'Query read timeout') return err;
      // Only while this lease still holds the connection: after a release the pool has its own
      // cancel under way, and the connection may be someone else's by the time a second one lands.
      if (this.#entry === entry) owner.deadlinePassed(entry);
      return new PoolDeadlineError(owner.name, deadline.budgetMs, true, { cause: err });
    };
    const cb = (typeof callback === 'function' ? callback : typeof values === 'function' ? values : undefined) as
      ((err: Error | null, result?: unknown) => void) | undefined;
    const configCallback = (config as { callback?: unknown }).callback;
    if (typeof configCallback === 'function' && !cb) {
      // A config carrying its own callback (pg's QueryConfig.callback): pg answers through it.
      (bounded as { callback?: unknown }).callback = (err: Error | null, result?: unknown) =>
        (configCallback as (e: Error | null, r?: unknown) => void)(translate(err), result);
      return client.query(bounded, values);
    }
    if (cb) {
      const wrapped = (err: Error | null, result?: unknown) => cb(translate(err), result);
      return cb === values ? client.query(bounded, wrapped) : client.query(bounded, values, wrapped);
    }
    return (client.query(bounded, values) as Promise<unknown>).catch((err: Error) => {
      throw translate(err);
    });
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
