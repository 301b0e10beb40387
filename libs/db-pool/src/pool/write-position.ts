/**
 * The lease's path for a statement that commits (a transaction's `COMMIT`, or a write outside a
 * transaction) inside a read-your-writes scope, on the primary of a router with
 * `DB_REPLICA_CONSISTENCY=read-your-writes`: the scope is told of the write the moment its answer
 * has come, before the caller hears of it, so no read the caller makes after it can miss it.
 * Nothing more is sent on the connection: the write's position is read later, when the scope
 * needs it, as the primary's insert position read after that moment (consistency.ts), one read
 * shared by every scope waiting.
 *
 * Every transaction that commits counts, whether it wrote or not (a SELECT may call a function
 * that writes): a transaction that only read costs its scope one shared read of the position, and
 * its later reads wait for a replica to reach a position it has most likely reached already.
 */
import pg from 'pg';
import type { ConsistencyScope, PositionSource } from './consistency.js';
import { type GuardedStatement, queryGuarded } from './statement-guard.js';

type Callback = (err: Error | null, result?: unknown) => void;

/** {@link queryGuarded}, telling `scope` of the write once it has committed. */
export function queryRecordingWrite(
  statement: GuardedStatement,
  scope: ConsistencyScope,
  source: PositionSource,
  config: unknown,
  values: unknown,
  callback: unknown,
): unknown {
  // A pg.Query object answers through its own events: ours is added first, so it runs before the caller's.
  if (config instanceof pg.Query) {
    (config as unknown as NodeJS.EventEmitter).once('end', () => scope.wrote(source));
    return queryGuarded(statement, config, values, callback);
  }
  const cb = (typeof callback === 'function' ? callback : typeof values === 'function' ? values : undefined) as Callback | undefined;
  const own = typeof config === 'object' && config !== null ? (config as { callback?: unknown }).callback : undefined;
  const answer = cb ?? (typeof own === 'function' ? (own as Callback) : undefined);
  const given = typeof values === 'function' ? undefined : values;
  if (answer) {
    // A config's own callback is taken over like a callback argument.
    const sent = typeof own === 'function' ? { ...(config as object), callback: undefined } : config;
    return queryGuarded(statement, sent, given, (err: Error | null, result?: unknown) => {
      if (!err) scope.wrote(source);
      answer(err, result);
    });
  }
  return (queryGuarded(statement, config, given, undefined) as Promise<unknown>).then((result) => {
    scope.wrote(source);
    return result;
  });
}
