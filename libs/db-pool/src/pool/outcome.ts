/**
 * Statements whose outcome matters when their answer never comes: those that end a transaction
 * (`COMMIT`, `END`, `PREPARE TRANSACTION`, `COMMIT PREPARED`), and those that write in a
 * transaction of their own (an `INSERT` sent outside `BEGIN`). If the connection is lost or a
 * deadline passes after one was sent, the server may have applied it: the caller must not be
 * told "retry". Everything else either changed nothing yet (inside an open transaction, which
 * the server rolls back when the connection ends) or only read.
 *
 * The test reads the statement's text, not the server's mind: a `SELECT` that calls a function
 * which writes is taken as a read. The text is split into statements as PostgreSQL's lexer reads
 * it: `--` comments end at a line feed or a carriage return, block comments nest, and a `;` in a
 * string, a quoted identifier or a dollar-quoted body separates nothing.
 */
import pg from 'pg';

/** Leading keywords of statements that end a transaction. */
const ENDS = new Set(['COMMIT', 'END']);
/** Leading keywords of statements that write (or may: `WITH` is checked for a data-modifying part, `EXECUTE` runs a statement not in view). */
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
  'EXECUTE',
]);
const MODIFYING = /\b(INSERT|UPDATE|DELETE|MERGE)\b/i;
/** First character of every keyword above (and EXPLAIN's), upper and lower case: one look rejects the rest (SELECT, SET, BEGIN, SHOW, …). */
const FIRST = firstChars('CEPIUDMWTAGRV');
/** First character of the statements that end a transaction (COMMIT, END, PREPARE TRANSACTION): inside one, the only candidates. */
const ENDS_FIRST = firstChars('CEP');

type TxStatusReader = { getTransactionStatus?(): string | null };

/** The text of a query as pg takes it (a string, a config with `text`, a `pg.Query`); undefined for anything else. */
export function statementText(config: unknown): string | undefined {
  if (typeof config === 'string') return config;
  const c = config as { text?: unknown; submit?: unknown } | null | undefined;
  const text = c?.text;
  if (typeof text !== 'string') return undefined;
  // A cursor or a stream reads its rows through its own methods: of the submittables, only pg's
  // own Query, which answers once as a config does, is judged by its text.
  return typeof c!.submit !== 'function' || c instanceof pg.Query ? text : undefined;
}

/**
 * {@link outcomeSensitive} for a query as pg takes it. A prepared statement run by its name alone
 * (`{ name, values }`, its text sent earlier on the connection) is not in view: it is taken as a
 * write (the safe side), so it counts wherever a write would, outside a transaction.
 */
export function sensitiveCommand(config: unknown, client: TxStatusReader): string | undefined {
  const text = statementText(config);
  if (text) return outcomeSensitive(text, client);
  const c = config as { name?: unknown; submit?: unknown } | null | undefined;
  if (typeof c?.name !== 'string' || c.name === '' || typeof c.submit === 'function') return undefined;
  const status = client.getTransactionStatus?.() ?? null;
  return status === 'T' || status === 'E' ? undefined : `EXECUTE ${c.name}`;
}

/**
 * The command whose outcome would be unknown if its answer never came (`COMMIT`, `INSERT`, …), or
 * undefined. The client's transaction status before the statement (pg's `getTransactionStatus()`:
 * `I` idle, `T` in a transaction, `E` in a failed one) is read only for a candidate or a text of several
 * statements. A statement queued
 * behind others is judged by the status they leave, which is not known yet: a transaction-ending
 * one is then taken as sensitive (the safe side).
 *
 * A text of several statements is followed as the server runs it (one implicit transaction unless
 * it holds its own transaction control): `BEGIN` opens a transaction, `ROLLBACK` ends one, a
 * failed transaction refuses all but its end; the first statement that commits, or that writes
 * outside an explicit transaction (it commits with the text), decides.
 */
export function outcomeSensitive(text: string, client: TxStatusReader): string | undefined {
  const at = startOf(text, 0);
  if (at === -1) return undefined;
  const candidate = FIRST.has(text.charCodeAt(at));
  const more = text.includes(';', at);
  if (!candidate && !more) return undefined;
  const txStatus = client.getTransactionStatus?.() ?? null;
  if (!more) {
    if (txStatus === 'E') return undefined;
    // Inside a transaction only its end counts: the INSERT of a TypeORM save is let by at one look.
    if (txStatus === 'T') return ENDS_FIRST.has(text.charCodeAt(at)) ? judge(text, at, true) : undefined;
    return judge(text, at, false);
  }
  let tx: 'I' | 'T' | 'E' = txStatus === 'T' || txStatus === 'E' ? txStatus : 'I';
  for (let start = at; start !== -1; start = nextStatement(text, start)) {
    const word = keywordAt(text, start);
    if (tx === 'E') {
      // A failed transaction commits nothing: its end (a COMMIT too) rolls it back, anything else is
      // refused, and the rest of the text with it.
      const next = keywordAt(text, startOf(text, start + word.length));
      if (word === 'ROLLBACK' || word === 'ABORT' || ENDS.has(word) || (word === 'PREPARE' && next === 'TRANSACTION'))
        tx = next === 'TO' || next === 'AND' ? 'T' : 'I'; // ROLLBACK TO a savepoint, … AND CHAIN: a transaction again
      else return undefined;
      continue;
    }
    const command = judge(text, start, tx === 'T');
    if (command !== undefined) return command;
    if (word === 'BEGIN' || word === 'START') tx = 'T';
    else if (word === 'ROLLBACK' || word === 'ABORT') {
      const next = keywordAt(text, startOf(text, start + word.length));
      if (next !== 'TO' && next !== 'PREPARED' && next !== 'AND') tx = 'I';
    }
  }
  return undefined;
}

/**
 * Whether a statement that commits (`COMMIT`, `END`, `PREPARE TRANSACTION`, `COMMIT PREPARED`) is
 * followed by another in the text. A cancel that stops the text proves a rollback only when none
 * is: the server runs the statements in turn, so a later one's cancel leaves an earlier commit in
 * place. (Writes with no commit after them are in the text's own implicit transaction and roll
 * back with it.)
 */
export function commitsBeforeLast(text: string): boolean {
  if (!text.includes(';')) return false;
  let committed = false;
  for (let start = startOf(text, 0); start !== -1; start = nextStatement(text, start)) {
    if (committed) return true;
    const word = keywordAt(text, start);
    committed = ENDS.has(word) || (word === 'PREPARE' && keywordAt(text, startOf(text, start + word.length)) === 'TRANSACTION');
  }
  return false;
}

function judge(text: string, at: number, inTransaction: boolean): string | undefined {
  const word = keywordAt(text, at);
  if (ENDS.has(word)) return word;
  if (word === 'PREPARE' && keywordAt(text, startOf(text, at + word.length)) === 'TRANSACTION') return 'PREPARE TRANSACTION';
  if (inTransaction) return undefined;
  if (WRITES.has(word)) return word;
  if (word === 'WITH' && MODIFYING.test(text)) return 'WITH';
  if (word === 'EXPLAIN') return explainAnalyze(text, at + word.length);
  return undefined;
}

/** `EXPLAIN ANALYZE <statement>` runs the statement: the command it runs when that writes (`EXPLAIN ANALYZE INSERT`), else undefined. */
function explainAnalyze(text: string, from: number): string | undefined {
  let at = skipBlank(text, from);
  let analyze = false;
  if (text.charCodeAt(at) === 40 /* ( */) {
    const close = text.indexOf(')', at);
    if (close === -1) return undefined;
    for (const option of text.slice(at + 1, close).split(',')) {
      const [name, value] = option.trim().toUpperCase().split(/\s+/);
      if ((name === 'ANALYZE' || name === 'ANALYSE') && value !== 'FALSE' && value !== 'OFF' && value !== '0') analyze = true;
    }
    at = close + 1;
  } else {
    for (let word = keywordAt(text, at); word === 'ANALYZE' || word === 'ANALYSE' || word === 'VERBOSE'; word = keywordAt(text, at)) {
      if (word !== 'VERBOSE') analyze = true;
      at = skipBlank(text, at + word.length);
    }
  }
  if (!analyze) return undefined;
  const inner = startOf(text, at);
  const command = keywordAt(text, inner) === 'EXPLAIN' ? undefined : judge(text, inner, false);
  return command === undefined ? undefined : `EXPLAIN ANALYZE ${command}`;
}

/** The index of the first character after white space, comments and opening parentheses from `from`, or -1 at the end. */
function startOf(text: string, from: number): number {
  let i = from;
  while (i < text.length) {
    const at = skipBlank(text, i);
    if (text.charCodeAt(at) !== 40 /* ( */) return at < text.length ? at : -1;
    i = at + 1;
  }
  return -1;
}

/** The index of the first character after white space and comments from `from` (the text's length at its end). */
function skipBlank(text: string, from: number): number {
  let i = from;
  while (i < text.length) {
    const c = text.charCodeAt(i);
    if (c === 32 || (c >= 9 && c <= 13)) i++;
    else if (c === 45 /* - */ && text.charCodeAt(i + 1) === 45) i = lineEnd(text, i + 2);
    else if (c === 47 /* / */ && text.charCodeAt(i + 1) === 42 /* * */) i = commentEnd(text, i + 2);
    else return i;
  }
  return text.length;
}

/** The start of the statement after the one at `from` (past its `;`), or -1 when there is none. */
function nextStatement(text: string, from: number): number {
  const n = text.length;
  let i = from;
  while (i < n) {
    const c = text.charCodeAt(i);
    if (c === 59 /* ; */) return startOf(text, i + 1);
    if (c === 39 /* ' */) i = quoted(text, i + 1, 39, false);
    else if (c === 34 /* " */) i = quoted(text, i + 1, 34, false);
    else if (c === 45 && text.charCodeAt(i + 1) === 45) i = lineEnd(text, i + 2);
    else if (c === 47 && text.charCodeAt(i + 1) === 42) i = commentEnd(text, i + 2);
    else if (c === 36 /* $ */) i = dollarQuoted(text, i);
    else if (identStart(c)) {
      const start = i;
      while (++i < n && identPart(text.charCodeAt(i)));
      // E'…': a string in which a backslash escapes (the quote too).
      if (i === start + 1 && (c === 69 || c === 101) && text.charCodeAt(i) === 39) i = quoted(text, i + 1, 39, true);
    } else i++;
  }
  return -1;
}

/** Past the closing quote of a string or quoted identifier whose body starts at `from` (a doubled quote is one in the body). */
function quoted(text: string, from: number, quote: number, backslashes: boolean): number {
  for (let i = from; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (backslashes && c === 92 /* \ */) i++;
    else if (c === quote) {
      if (text.charCodeAt(i + 1) !== quote) return i + 1;
      i++;
    }
  }
  return text.length;
}

/** Past a `$tag$…$tag$` body starting at `from` (a `$`), or past a parameter (`$1`) or a lone `$`. */
function dollarQuoted(text: string, from: number): number {
  let i = from + 1;
  if (i < text.length && identStart(text.charCodeAt(i))) while (++i < text.length && tagPart(text.charCodeAt(i)));
  if (text.charCodeAt(i) !== 36) {
    while (i < text.length && text.charCodeAt(i) >= 48 && text.charCodeAt(i) <= 57) i++;
    return Math.max(i, from + 1);
  }
  const tag = text.slice(from, i + 1);
  const close = text.indexOf(tag, i + 1);
  return close === -1 ? text.length : close + tag.length;
}

/** Past the end of a `--` comment whose body starts at `from`: a line feed or a carriage return ends it. */
function lineEnd(text: string, from: number): number {
  for (let i = from; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 10 || c === 13) return i + 1;
  }
  return text.length;
}

/** Past the end of a block comment whose body starts at `from`: comments nest, each `/*` needs its own `*\/`. */
function commentEnd(text: string, from: number): number {
  let depth = 1;
  for (let i = from; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 47 && text.charCodeAt(i + 1) === 42) {
      depth++;
      i++;
    } else if (c === 42 && text.charCodeAt(i + 1) === 47) {
      if (--depth === 0) return i + 2;
      i++;
    }
  }
  return text.length;
}

/** A letter, `_` or a non-ASCII character: what an identifier (or a dollar quote's tag) starts with. */
function identStart(c: number): boolean {
  return (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || c === 95 || c >= 128;
}

/** What a dollar quote's tag goes on with: no `$`. */
function tagPart(c: number): boolean {
  return identStart(c) || (c >= 48 && c <= 57);
}

/** What an identifier goes on with: digits and `$` too. */
function identPart(c: number): boolean {
  return tagPart(c) || c === 36;
}

function firstChars(letters: string): Set<number> {
  return new Set(letters.split('').flatMap((c) => [c.charCodeAt(0), c.toLowerCase().charCodeAt(0)]));
}

function keywordAt(text: string, at: number): string {
  if (at < 0) return '';
  let end = at;
  for (let c = text.charCodeAt(end); (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || c === 95; c = text.charCodeAt(++end));
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
