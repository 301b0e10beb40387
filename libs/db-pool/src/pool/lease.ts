import type { EventEmitter } from 'node:events';
import type pg from 'pg';
import { PoolLeaseError, PoolReleaseError } from '../errors.js';
import { currentDeadline, type Deadline } from './deadline.js';
import { type ConsistencyScope, currentConsistencyScope, type PositionSource } from './consistency.js';
import { sensitiveCommand } from './outcome.js';
import type { PoolEntry } from './pool-entry.js';
import { queryGuarded, refuse } from './statement-guard.js';
import { queryRecordingWrite } from './write-position.js';

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
  /** Set while a replica router with `DB_REPLICA_CONSISTENCY=read-your-writes` reads this pool's writes: a read-your-writes scope notes them, and reads their positions from it. */
  readonly positionSource: PositionSource | undefined;
}

type Listener = (...args: unknown[]) => void;
const HELD = Symbol('db-pool.lease.held');
const CLIENT = Symbol('db-pool.lease.client');
type Delegate = Record<string, (...args: unknown[]) => unknown>;
type TxStatusReader = { getTransactionStatus?(): string | null };

/**
 * What a caller gets from an acquire: the connection's client, for this checkout only (HikariCP's
 * proxy per checkout). It does what a `pg.PoolClient` does while the checkout lasts; after
 * `release()`, any use of it throws {@link PoolLeaseError} naming the pool and never reaches the
 * connection, which may belong to another caller by then — but for its fields, which stay
 * readable, and its event methods while the connection sits idle with no later checkout (pg.Pool's
 * released client is the pooled client: code listens to it, or emits an error on it, as
 * pg-pool's own tests do). Listeners added through it are removed from the connection at release,
 * or those added after it at the connection's next checkout, so the next borrower hears none.
 *
 * Costs one object and one closure per checkout; each call is one check and a call.
 */
export class PoolLease implements Pick<pg.PoolClient, 'query'> {
  /** pg.Pool's release: bound, so it works detached (TypeORM keeps it). */
  readonly release: (err?: Error | boolean) => void;
  // #private: no name of pg's client can collide with them.
  #entry: PoolEntry | undefined;
  /** The connection's client, kept after release for reads of its fields (see `defineField`). */
  readonly #client: pg.Client;
  /** The connection it held, kept after release for its event methods while the connection is idle. */
  readonly #held: PoolEntry;
  /** Listeners added through the lease, flat: event, listener, event, listener, … */
  #listeners: (string | symbol | Listener)[] | undefined;
  readonly #owner: LeaseOwner;
  /** The deadline of the request that acquired it (`withDeadline`): it bounds every statement. */
  readonly #deadline: Deadline | undefined;
  /** The deadline in force where the connection was handed out: that of whoever's release (or connect) served it. */
  readonly #handedOutIn: Deadline | undefined;
  /**
   * Read-your-writes: the scope of this checkout's statements, from the first made in one. A
   * statement made where the context is lost (a pg callback runs where the answer is read) is the
   * checkout's too, so a COMMIT sent from a callback is still noted.
   */
  #scope: ConsistencyScope | undefined;

  constructor(owner: LeaseOwner, entry: PoolEntry, deadline?: Deadline) {
    this.#owner = owner;
    this.#entry = entry;
    this.#client = entry.client;
    this.#held = entry;
    // Listeners the previous lease added after its release go now: this checkout hears none of them.
    const previous = entry.lastLease;
    if (previous instanceof PoolLease && previous.#listeners) previous.#dropListeners(entry.client);
    entry.lastLease = this;
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

  /** The client, checkout or not: only reads of its fields go through it. */
  [CLIENT](): pg.Client {
    return this.#client;
  }

  /** The client while the checkout lasts; throws, naming `member`, once released. */
  [HELD](member: string): pg.Client {
    const entry = this.#entry;
    if (!entry) throw new PoolLeaseError(this.#owner.name, member);
    return entry.client;
  }

  /** For the event methods: the client while the checkout lasts, or after it while the connection is idle with no later checkout. */
  #events(member: string): EventEmitter {
    const entry = this.#entry;
    if (entry !== undefined) return emitter(entry.client);
    const held = this.#held;
    if (held.lastLease === this && held.checkedOutAt < 0 && !held.removed) return emitter(held.client);
    throw new PoolLeaseError(this.#owner.name, member);
  }

  // Every checkout's hot call: three arguments as pg takes them, no rest array.
  query(config: unknown, values?: unknown, callback?: unknown): never {
    const entry = this.#entry;
    if (entry !== undefined) {
      const source = this.#owner.positionSource;
      const scope = source !== undefined ? (this.#scope = currentConsistencyScope() ?? this.#scope) : undefined;
      if (entry.evicted !== undefined) return refuse(this.#owner.evictedError(entry), config, values, callback) as never;
      const deadline = this.#deadlineHere();
      // A statement that ends a transaction or writes in one of its own: how it ended must be known.
      const command = sensitiveCommand(config, entry.client as TxStatusReader);
      if (deadline !== undefined || command !== undefined) {
        const statement = { owner: this.#owner, entry, deadline, command, held: () => this.#entry === entry };
        if (scope !== undefined && command !== undefined)
          return queryRecordingWrite(statement, scope, source!, config, values, callback) as never;
        return queryGuarded(statement, config, values, callback) as never;
      }
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
    const nearer = own === undefined || here.at < own.at ? here : own;
    // A signal in force (withSignal) is kept whichever deadline is nearer.
    const signal = nearer.signal ?? (nearer === here ? own?.signal : here.signal);
    return signal === nearer.signal ? nearer : { ...nearer, signal };
  }

  on(event: string | symbol, listener: Listener): this {
    this.#events('on').on(event, listener);
    (this.#listeners ??= []).push(event, listener);
    return this;
  }

  addListener(event: string | symbol, listener: Listener): this {
    return this.on(event, listener);
  }

  once(event: string | symbol, listener: Listener): this {
    this.#events('once').once(event, listener);
    (this.#listeners ??= []).push(event, listener);
    return this;
  }

  prependListener(event: string | symbol, listener: Listener): this {
    this.#events('prependListener').prependListener(event, listener);
    (this.#listeners ??= []).push(event, listener);
    return this;
  }

  prependOnceListener(event: string | symbol, listener: Listener): this {
    this.#events('prependOnceListener').prependOnceListener(event, listener);
    (this.#listeners ??= []).push(event, listener);
    return this;
  }

  removeListener(event: string | symbol, listener: Listener): this {
    this.#events('removeListener').removeListener(event, listener);
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

  /**
   * The application's listeners: the pool's own on every connection ('error', 'end') are not
   * counted, as pg.Pool detaches its idle-error listener while a client is out.
   */
  listenerCount(event: string | symbol): number {
    const n = this.#events('listenerCount').listenerCount(event);
    return event === 'error' || event === 'end' ? n - 1 : n;
  }

  off(event: string | symbol, listener: Listener): this {
    return this.removeListener(event, listener);
  }

  emit(event: string | symbol, ...args: unknown[]): boolean {
    return this.#events('emit').emit(event, ...args);
  }

  /** Removes the listeners added through this lease (the pool's own stay). */
  removeAllListeners(event?: string | symbol): this {
    this.#events('removeAllListeners');
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
  delegateFields(sample);
}

/**
 * Gives {@link PoolLease} the client's own fields it does not have yet: those of its class, and
 * those the application's set-up (`onConnect`, a 'connect' listener) put on the connection, which
 * every lease of it then reads and writes.
 */
export function delegateFields(client: pg.Client): void {
  const target = PoolLease.prototype as unknown as Record<string, unknown>;
  for (const name of Object.getOwnPropertyNames(client)) {
    if (!name.startsWith('_') && !(name in target)) defineField(target, name);
  }
}

/**
 * A field of the client, on every lease: read through even after release (its connection's
 * `processID`, `database`, … stay what they were: the pool's 'remove' and 'error' listeners read
 * them from the lease that held it last), written only during the checkout.
 */
function defineField(target: object, name: string): void {
  Object.defineProperty(target, name, {
    configurable: true,
    get(this: PoolLease) {
      return (this[CLIENT]() as unknown as Record<string, unknown>)[name];
    },
    set(this: PoolLease, value: unknown) {
      (this[HELD](name) as unknown as Record<string, unknown>)[name] = value;
    },
  });
}
