/**
 * The lease's path for a statement that commits (a transaction's `COMMIT`, or a write outside a
 * transaction) inside a read-your-writes scope, on the primary of a router with
 * `DB_REPLICA_CONSISTENCY=read-your-writes`: its WAL position is noted in the scope before the
 * caller has the answer, so no read the caller makes after it can miss the write.
 *
 * A plain `COMMIT` (or `END`) in a transaction goes in the same round trip as two reads: whether
 * the transaction wrote (`pg_current_xact_id_if_assigned()`, PostgreSQL 13 and later) before it,
 * and the primary's insert position (`pg_current_wal_insert_lsn()`, which has passed the commit
 * record once the commit has returned) after it. A transaction that only read notes nothing. Any
 * other statement that commits (an `INSERT` outside a transaction, a parameterized one, `COMMIT
 * PREPARED`) is followed by a read of the position on the same connection before its answer is
 * handed on: one round trip more, for writes outside a transaction only.
 *
 * If the position cannot be read after the write has committed (the connection is lost between
 * the two answers), the caller gets {@link PoolOutcomeUnknownError} with `committed: true`: the
 * write is on the primary, and a read that must see it could not be routed.
 */
import pg from 'pg';
import { PoolOutcomeUnknownError } from '../errors.js';
import { type ConsistencyScope, parseLsn } from './consistency.js';
import { type GuardedStatement, queryGuarded } from './statement-guard.js';

type Callback = (err: Error | null, result?: unknown) => void;
type TxStatusReader = { getTransactionStatus?(): string | null };

/** A transaction's end as TypeORM, Kysely, Drizzle and people write it: one statement, nothing after. */
const PLAIN_COMMIT = /^\s*(?:COMMIT|END)(?:\s+(?:WORK|TRANSACTION))?\s*;?\s*$/i;
const WROTE = 'SELECT pg_current_xact_id_if_assigned() IS NOT NULL AS wrote';
const POSITION = 'SELECT pg_current_wal_insert_lsn()::text AS lsn';

/** {@link queryGuarded}, noting the statement's commit position in `scope` when it committed a write. */
export function queryRecordingPosition(
  statement: GuardedStatement,
  scope: ConsistencyScope,
  config: unknown,
  values: unknown,
  callback: unknown,
): unknown {
  const cb = (typeof callback === 'function' ? callback : typeof values === 'function' ? values : undefined) as Callback | undefined;
  const given = typeof values === 'function' ? undefined : values;
  // A pg.Query object answers through its own events, which cannot be held back until the
  // position is read: it runs as it is and notes nothing (README, "Consistency": run such a write
  // in a transaction whose COMMIT is a string). A config's own callback is taken over like a
  // callback argument.
  if (config instanceof pg.Query) return queryGuarded(statement, config, values, callback);
  const own = typeof config === 'object' && config !== null ? (config as { callback?: unknown }).callback : undefined;
  const answer = cb ?? (typeof own === 'function' ? (own as Callback) : undefined);
  const sent = typeof own === 'function' ? { ...(config as object), callback: undefined } : config;

  const client = statement.entry.client as unknown as pg.Client & TxStatusReader;
  const text = typeof sent === 'string' ? sent : (sent as { text?: unknown }).text;
  const plain =
    typeof text === 'string' &&
    PLAIN_COMMIT.test(text) &&
    (given === undefined || (Array.isArray(given) && given.length === 0)) &&
    (typeof sent === 'string' || Object.keys(sent as object).every((k) => k === 'text' || k === 'callback')) &&
    client.getTransactionStatus?.() === 'T';

  const done: Promise<unknown> = plain
    ? (
        queryGuarded(statement, `${WROTE};\n${text.trim().replace(/;$/, '')};\n${POSITION}`, undefined, undefined) as Promise<
          pg.QueryResult[]
        >
      ).then((results) => {
        if (results[0]?.rows[0]?.wrote === true) noteOrThrow(statement, scope, results[2]?.rows[0]?.lsn);
        return results[1];
      })
    : (queryGuarded(statement, sent, given, undefined) as Promise<unknown>).then((result) => {
        if (!statement.held())
          throw unknownPosition(statement, new Error('the connection was released before its write position was read'));
        return (client.query(POSITION) as Promise<pg.QueryResult>).then(
          (position) => {
            noteOrThrow(statement, scope, position.rows[0]?.lsn);
            return result;
          },
          (err: Error) => {
            throw unknownPosition(statement, err);
          },
        );
      });
  if (!answer) return done;
  done.then(
    (result) => answer(null, result),
    (err: Error) => answer(err),
  );
  return undefined;
}

function noteOrThrow(statement: GuardedStatement, scope: ConsistencyScope, text: unknown): void {
  const lsn = typeof text === 'string' ? parseLsn(text) : undefined;
  if (lsn === undefined) throw unknownPosition(statement, new Error(`pg_current_wal_insert_lsn() answered ${JSON.stringify(text)}`));
  scope.note(lsn);
}

function unknownPosition(statement: GuardedStatement, cause: Error): PoolOutcomeUnknownError {
  return new PoolOutcomeUnknownError(statement.owner.name, statement.command ?? 'the write', 'position_unknown', true, { cause });
}
