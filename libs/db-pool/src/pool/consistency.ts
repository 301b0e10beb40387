/**
 * Read-your-writes on replicas (`DB_REPLICA_CONSISTENCY=read-your-writes`), by WAL position: a
 * write is noted in the scope it was made in (a request, or `withReadYourWrites`), carried with
 * AsyncLocalStorage, the moment its commit has answered; its position — the primary's insert
 * position read after that moment, one read shared by every scope that needs one — is read when
 * the scope first needs it. The scope's later reads go only to a replica whose replay position has
 * passed it (replicas.ts), else to the primary. The position leaves the process as an
 * opaque token (the `X-Db-Lsn` header through `dbPoolConsistency()`), and a scope opened with one
 * gets the same guarantee. See docs/high-availability.md, "Consistency".
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import { performance } from 'node:perf_hooks';

/**
 * Where a scope's writes get their position: the primary's insert position
 * (`pg_current_wal_insert_lsn()`) read at or after performance.now() `at`, which has passed the
 * commit record of every transaction that committed before `at`, handed to `done` (or the error
 * that kept it from being read). Reads are shared: one serves every scope whose writes came before
 * it was sent (the replica router's, replicas.ts).
 */
export interface PositionSource {
  positionAfter(at: number, done: (err: Error | undefined, lsn?: bigint, reachedAt?: number) => void): void;
}

/** The WAL positions one unit of work (a request) must see. */
export class ConsistencyScope {
  #lsn: bigint | undefined;
  #since = 0;
  /** performance.now() after the scope's latest write whose position is not read yet. */
  #pendingAt: number | undefined;
  #source: PositionSource | undefined;
  /** Called once no write's position is pending; set while a read is under way. */
  #waiters: (() => void)[] | undefined;
  #reading = false;
  #unknown = false;

  constructor(lsn?: bigint) {
    if (lsn !== undefined) this.note(lsn, performance.now());
  }

  /** The highest position a read here must see (a write's commit, or a token's), as far as known. */
  get lsn(): bigint | undefined {
    return this.#lsn;
  }

  /**
   * performance.now() by which the primary had reached {@link lsn}. A replica sampled before it
   * may have replayed it since (it is asked again); one sampled after it and still behind is behind.
   */
  get since(): number {
    return this.#since;
  }

  /** A write committed whose position is not read yet: {@link settle} reads it. */
  get pending(): boolean {
    return this.#pendingAt !== undefined;
  }

  /** A write's position could not be read (the primary did not answer): the scope's reads go to the primary, and it has no token. */
  get unknown(): boolean {
    return this.#unknown;
  }

  /** The token of {@link lsn} once settled: what a later scope opens with to see the same writes. */
  get token(): string | undefined {
    return this.#lsn === undefined || this.#unknown || this.#pendingAt !== undefined ? undefined : tokenOf(this.#lsn);
  }

  /** Takes a position the scope must see from now on (the highest one wins), reached by `at`. */
  note(lsn: bigint, at: number): void {
    if (this.#lsn !== undefined && lsn <= this.#lsn) return;
    this.#lsn = lsn;
    this.#since = at;
  }

  /** A write committed just now (its answer has come): its position is read from `source` when the scope needs it. */
  wrote(source: PositionSource): void {
    this.#pendingAt = performance.now();
    this.#source = source;
  }

  /** Reads the position of the scope's writes, if any is pending; never rejects (a failure makes the scope {@link unknown}). */
  settle(): Promise<void> {
    if (this.#pendingAt === undefined) return Promise.resolve();
    return new Promise((resolve) => this.whenSettled(resolve));
  }

  /**
   * {@link settle} with a callback, called at once when nothing is pending: the request path's
   * form (a write's token, a response's header), with no promise of its own.
   */
  whenSettled(done: () => void): void {
    if (this.#pendingAt === undefined) return done();
    (this.#waiters ??= []).push(done);
    if (!this.#reading) this.#read(this.#pendingAt);
  }

  #read(at: number): void {
    this.#reading = true;
    this.#source!.positionAfter(at, (err, lsn, reachedAt) => {
      this.#reading = false;
      if (err !== undefined || lsn === undefined) this.#unknown = true;
      // Reached by the time the primary answered, which may be well after the commit (the read
      // waits its turn): a replica sampled in between may have replayed it since, and is asked again.
      else this.note(lsn, reachedAt ?? performance.now());
      // A write that committed while the position was read needs a later one.
      if (this.#pendingAt !== at) return this.#read(this.#pendingAt!);
      this.#pendingAt = undefined;
      const waiters = this.#waiters ?? [];
      this.#waiters = undefined;
      callEach(waiters);
    });
  }
}

/** Where an error a waiter threw goes: thrown again on the next tick, uncaught (tests look at it instead). */
let waiterFailed = (err: unknown): void =>
  process.nextTick(() => {
    throw err;
  });

/** @internal Sends the errors waiters throw to `report` instead; returns the function that puts it back. */
export function reportWaiterErrors(report: (err: unknown) => void): () => void {
  const before = waiterFailed;
  waiterFailed = report;
  return () => {
    waiterFailed = before;
  };
}

/**
 * Calls every one of `callbacks` with `args`, whatever one of them throws: each error is thrown
 * again on the next tick (as an uncaught callback error would be), after the rest have run.
 * Waiters sharing one answer (requests ending, scopes settling) must not lose it to another's throw.
 */
export function callEach<A extends unknown[]>(callbacks: readonly ((...args: A) => void)[], ...args: A): void {
  for (const callback of callbacks) {
    try {
      callback(...args);
    } catch (err) {
      waiterFailed(err);
    }
  }
}

/** The latest token written, kept: every scope a position read answers shares its position. */
let lastToken: { lsn: bigint; text: string } | undefined;

function tokenOf(lsn: bigint): string {
  if (lastToken?.lsn !== lsn) lastToken = { lsn, text: formatLsn(lsn) };
  return lastToken.text;
}

const current = new AsyncLocalStorage<ConsistencyScope>();

/** Replica routers with `DB_REPLICA_CONSISTENCY=read-your-writes` in the process: while none is, `dbPoolConsistency()` passes requests through untouched. */
let readYourWritesRouters = 0;

/** @internal A router with read-your-writes started; the returned function says it ended. */
export function readYourWritesStarted(): () => void {
  readYourWritesRouters++;
  let ended = false;
  return () => {
    if (!ended) readYourWritesRouters--;
    ended = true;
  };
}

/** Whether any replica router in the process reads your writes. */
export function readYourWritesInUse(): boolean {
  return readYourWritesRouters > 0;
}

/** Runs `fn` in `scope` (the HTTP middleware's, which has read the request's token already). */
export function runInConsistencyScope<T>(scope: ConsistencyScope, fn: () => T): T {
  return current.run(scope, fn);
}

/** The consistency scope in force here, if any. */
export function currentConsistencyScope(): ConsistencyScope | undefined {
  return current.getStore();
}

/**
 * Runs `fn` in a read-your-writes scope: with `DB_REPLICA_CONSISTENCY=read-your-writes`, every
 * write committed inside it (a transaction that wrote, or a write outside one) records its WAL
 * position, and every read the replica router serves inside it after that goes only to a replica
 * that has replayed the position, else to the primary. `token` (from
 * {@link readYourWritesToken} in an earlier scope, e.g. a previous response's `X-Db-Lsn`)
 * carries an earlier scope's writes into this one; a malformed token is a
 * {@link ConsistencyTokenError}. Inside a scope already, the scope is shared (the token is added
 * to it). For HTTP, `dbPoolConsistency()` opens one per request.
 */
export function withReadYourWrites<T>(fn: () => T, options?: { token?: string }): T {
  const token = options?.token;
  const lsn = token === undefined ? undefined : parseConsistencyToken(token);
  if (token !== undefined && lsn === undefined) throw new ConsistencyTokenError(token);
  const outer = current.getStore();
  if (outer !== undefined) {
    if (lsn !== undefined) outer.note(lsn, performance.now());
    return fn();
  }
  return current.run(new ConsistencyScope(lsn), fn);
}

/**
 * The token of the writes the scope in force here has made or been given, or undefined (no scope,
 * no write, or a position the primary could not be asked for). Resolves once the position of the
 * scope's latest write has been read (one statement on the primary, shared by every scope waiting).
 */
export function readYourWritesToken(): Promise<string | undefined> {
  const scope = current.getStore();
  if (scope === undefined) return Promise.resolve(undefined);
  if (!scope.pending) return Promise.resolve(scope.token);
  return new Promise((resolve) => scope.whenSettled(() => resolve(scope.token)));
}

/** A consistency token that is not one (`withReadYourWrites`, the `X-Db-Lsn` header). */
export class ConsistencyTokenError extends RangeError {
  readonly code = 'DB_POOL_BAD_CONSISTENCY_TOKEN';
  constructor(token: string) {
    // The token is shown only while it is short and printable: it is the client's, not a secret, but not trusted either.
    const shown = token.length <= 40 && /^[\x20-\x7e]*$/.test(token) ? JSON.stringify(token) : `(${token.length} characters)`;
    super(`malformed read-your-writes token ${shown}: pass back the X-Db-Lsn value of an earlier response unchanged, or none`);
    this.name = new.target.name;
  }
}

const LSN = /^([0-9A-F]{1,8})\/([0-9A-F]{1,8})$/i;

/** A pg_lsn's text (`16/B374D848`) as a byte position; undefined when it is not one. */
export function parseLsn(text: string | null | undefined): bigint | undefined {
  const m = LSN.exec(text ?? '');
  return m ? (BigInt(`0x${m[1]}`) << 32n) | BigInt(`0x${m[2]}`) : undefined;
}

/** A byte position as PostgreSQL writes a pg_lsn (`16/B374D848`). */
export function formatLsn(lsn: bigint): string {
  return `${(lsn >> 32n).toString(16).toUpperCase()}/${(lsn & 0xffffffffn).toString(16).toUpperCase()}`;
}

/** A token's position, or undefined when the text is not a token. Clients are told the token is opaque. */
export function parseConsistencyToken(token: string): bigint | undefined {
  return token.length > 17 ? undefined : parseLsn(token);
}
