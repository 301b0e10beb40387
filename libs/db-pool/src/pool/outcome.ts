/**
 * Statements whose outcome matters when their answer never comes: those that end a transaction
 * (`COMMIT`, `END`, `PREPARE TRANSACTION`, `COMMIT PREPARED`), and those that write in a
 * transaction of their own (an `INSERT` sent outside `BEGIN`). If the connection is lost or a
 * deadline passes after one was sent, the server may have applied it: the caller must not be
 * told "retry". Everything else either changed nothing yet (inside an open transaction, which
 * the server rolls back when the connection ends) or only read.
 *
 * The test reads the statement's text, not the server's mind: a `SELECT` that calls a function
 * which writes is taken as a read.
 */

/** Leading keywords of statements that end a transaction. */
const ENDS = new Set(['COMMIT', 'END']);
/** Leading keywords of statements that write (or may: `WITH` is checked for a data-modifying part). */
const WRITES = new Set([
  'INSERT',
  'UPDATE',
  'DELETE',
  'MERGE',
  'COPY',
  'CALL',
  'DO',
  'CREATE',
  'ALTER',
  'DROP',
  'TRUNCATE',
  'GRANT',
  'REVOKE',
  'COMMENT',
  'REFRESH',
  'REINDEX',
  'CLUSTER',
  'VACUUM',
  'IMPORT',
  'REASSIGN',
]);
const MODIFYING = /\b(INSERT|UPDATE|DELETE|MERGE)\b/i;
/** First character of every keyword above, upper and lower case: one look rejects the rest (SELECT, SET, BEGIN, SHOW, …). */
const FIRST = new Set('CEPIUDMWTAGRV'.split('').flatMap((c) => [c.charCodeAt(0), c.toLowerCase().charCodeAt(0)]));

/** The text of a query as pg takes it (a string or a config with `text`); undefined for anything else. */
export function statementText(config: unknown): string | undefined {
  if (typeof config === 'string') return config;
  const c = config as { text?: unknown; submit?: unknown } | null | undefined;
  // A submittable (a cursor, a stream) answers through its own methods, not a callback.
  return typeof c?.text === 'string' && typeof c.submit !== 'function' ? c.text : undefined;
}

/**
 * The command whose outcome would be unknown if its answer never came (`COMMIT`, `INSERT`, …), or
 * undefined. The client's transaction status before the statement (pg's `getTransactionStatus()`:
 * `I` idle, `T` in a transaction, `E` in a failed one) is read only for a candidate. A statement queued
 * behind others is judged by the status they leave, which is not known yet: a transaction-ending
 * one is then taken as sensitive (the safe side).
 */
export function outcomeSensitive(text: string, client: { getTransactionStatus?(): string | null }): string | undefined {
  const at = startOf(text, 0);
  if (at === -1) return undefined;
  const candidate = FIRST.has(text.charCodeAt(at));
  if (!candidate && !text.includes(';')) return undefined;
  const txStatus = client.getTransactionStatus?.() ?? null;
  // A failed transaction commits nothing: its COMMIT rolls back, its statements are refused.
  if (txStatus === 'E') return undefined;
  return (candidate ? judge(text, at, txStatus === 'T') : undefined) ?? judgeRest(text, at, txStatus === 'T');
}

/** The first statement of a multi-statement text decided nothing: any later one that ends a transaction or (outside one) writes. */
function judgeRest(text: string, from: number, inTransaction: boolean): string | undefined {
  const opening = keywordAt(text, from);
  if (opening === 'BEGIN' || opening === 'START') inTransaction = true;
  for (let semi = text.indexOf(';', from); semi !== -1; semi = text.indexOf(';', semi + 1)) {
    const at = startOf(text, semi + 1);
    if (at === -1) return undefined;
    const word = keywordAt(text, at);
    if (word === 'BEGIN' || word === 'START') inTransaction = true;
    const command = judge(text, at, inTransaction);
    if (command !== undefined) return command;
  }
  return undefined;
}

function judge(text: string, at: number, inTransaction: boolean): string | undefined {
  const word = keywordAt(text, at);
  if (ENDS.has(word)) return word;
  if (word === 'PREPARE' && keywordAt(text, startOf(text, at + word.length)) === 'TRANSACTION') return 'PREPARE TRANSACTION';
  if (inTransaction) return undefined;
  if (WRITES.has(word)) return word;
  if (word === 'WITH' && MODIFYING.test(text)) return 'WITH';
  return undefined;
}

/** The index of the first character after white space and comments from `from`, or -1 at the end. */
function startOf(text: string, from: number): number {
  let i = from;
  while (i < text.length) {
    const c = text.charCodeAt(i);
    if (c === 32 || (c >= 9 && c <= 13) || c === 40 /* ( */) i++;
    else if (c === 45 && text.charCodeAt(i + 1) === 45) {
      const end = text.indexOf('\n', i);
      if (end === -1) return -1;
      i = end + 1;
    } else if (c === 47 && text.charCodeAt(i + 1) === 42) {
      const end = text.indexOf('*/', i + 2);
      if (end === -1) return -1;
      i = end + 2;
    } else return i;
  }
  return -1;
}

function keywordAt(text: string, at: number): string {
  if (at < 0) return '';
  let end = at;
  while (end < text.length && /[A-Za-z_]/.test(text[end])) end++;
  return text.slice(at, end).toUpperCase();
}

/**
 * PostgreSQL's warning when a commit's wait for synchronous replication is cancelled (by a cancel
 * request or a terminate): the transaction committed on the primary, its replication is
 * unconfirmed. Recognised by its text, which the server writes in `lc_messages`' language:
 * English (C, POSIX, en_*) is recognised.
 */
export function committedLocally(notice: { message?: string; detail?: string }): boolean {
  return (notice.detail ?? '').includes('already committed locally') || /wait for synchronous replication/.test(notice.message ?? '');
}
