/**
 * A connection string read as pg reads it: split where the WHATWG parser pg uses splits it, its
 * parameters decoded as pg decodes them, and the parameters pg would read as something else than
 * libpq does (sslmode, ssl, connect_timeout, PGSSLMODE) named as problems. Where its hosts go is
 * hosts.ts's: this file knows the string, not the host list.
 */
import type pg from 'pg';
import { credentialSpan } from '../redact.js';

/** What to do about a user or password pg cannot read; said instead of quoting the part, which may hold the password. */
export const ENCODE_HINT = "percent-encode '/', '@', ':', '#', '?', '%' and spaces in the user and password (encodeURIComponent)";

export interface Param {
  name: string;
  value: string;
  /** The parameter as written, and where its value starts in the URL. */
  raw: string;
  valueAt: number;
}

export interface UrlParts {
  /** `url`: postgres:// or postgresql://; `socket`: pg's socket: form, whose path is the socket folder. */
  form: 'url' | 'socket';
  scheme: string;
  userinfo: string;
  hostList: string;
  hostListAt: number;
  path: string;
  pathAt: number;
  query: string;
  params: Param[];
  fragment: string;
}

/**
 * Splits a connection URL where the WHATWG parser pg uses splits it: the authority ends at the
 * first '/', '?' or '#', and the credentials at its last '@'. Undefined when it is not a
 * postgres://, postgresql:// or socket: URL.
 */
export function splitUrl(url: string): UrlParts | undefined {
  const scheme = /^(?:postgres(?:ql)?:\/\/|socket:(?:\/\/)?)/i.exec(url)?.[0];
  if (!scheme) return undefined;
  const form = scheme.toLowerCase().startsWith('socket') ? 'socket' : 'url';
  const hasAuthority = scheme.endsWith('//');
  const afterScheme = url.slice(scheme.length);
  const authorityEnd = hasAuthority ? afterScheme.search(/[/?#]/) : 0;
  const authority = authorityEnd === -1 ? afterScheme : afterScheme.slice(0, authorityEnd);
  let rest = authorityEnd === -1 ? '' : afterScheme.slice(authorityEnd);
  const at = authority.lastIndexOf('@');
  const hashAt = rest.indexOf('#');
  const fragment = hashAt === -1 ? '' : rest.slice(hashAt);
  if (hashAt !== -1) rest = rest.slice(0, hashAt);
  const q = rest.indexOf('?');
  const pathAt = scheme.length + authority.length;
  const query = q === -1 ? '' : rest.slice(q + 1);
  return {
    form,
    scheme,
    userinfo: at === -1 ? '' : authority.slice(0, at + 1),
    hostList: at === -1 ? authority : authority.slice(at + 1),
    hostListAt: scheme.length + at + 1,
    path: q === -1 ? rest : rest.slice(0, q),
    pathAt,
    query,
    params: queryParams(query, pathAt + q + 1),
    fragment,
  };
}

/** The query's parameters, decoded as pg decodes them (URLSearchParams: '+' is a space), with where each value stands. */
function queryParams(query: string, at: number): Param[] {
  const params: Param[] = [];
  for (const raw of query.split('&')) {
    const [entry] = [...new URLSearchParams(raw)];
    if (entry) params.push({ name: entry[0], value: entry[1], raw, valueAt: at + raw.indexOf('=') + 1 });
    at += raw.length + 1;
  }
  return params;
}

/** `"text"` when the text at `at` lies outside the URL's credentials (what redactUrl masks); undefined otherwise. */
export function quoteUnlessSecret(url: string | undefined, text: string, at: number): string | undefined {
  const span = url === undefined ? undefined : credentialSpan(url);
  return span && at < span.to && at + text.length > span.from ? undefined : JSON.stringify(text);
}

/** Why `url` is not read as a connection string (neither a URL pg reads nor a socket folder). */
export function notAConnectionString(url: string): string {
  return /^\s*[a-z_]+\s*=/i.test(url)
    ? "a keyword/value connection string (host=… dbname=…) is libpq's form, which pg does not read: give a postgres:// URL"
    : 'the connection string is not a postgres:// or postgresql:// URL, a socket: URL or a socket folder ("/var/run/postgresql dbname")';
}

/** The sslmode values libpq and pg both read (pg's own no-verify besides). */
const SSL_MODES = ['disable', 'prefer', 'require', 'verify-ca', 'verify-full'];

/** What sslmode and PGSSLMODE may be, and what pg makes of anything else (`otherwise`). */
function sslModeRule(otherwise: string): string {
  return `must be one of ${SSL_MODES.join(', ')} (libpq's and pg's) or no-verify (pg's): pg takes any other value, libpq's allow included, as ${otherwise}`;
}

/**
 * The problem of the URL's TLS and timeout parameters where pg would read them as something
 * else, or undefined: pg takes an sslmode it does not know (`disabled`, libpq's `allow`) as
 * verify-full, and an `ssl` other than true, 1, 0 or no-verify (`false` included) as TLS on;
 * `connect_timeout` as libpq reads it (pg does not). `named` names a parameter as it may be
 * quoted.
 */
export function tlsAndTimeoutProblem(param: (name: string) => Param | undefined, named: (p: Param) => string): string | undefined {
  const sslmode = param('sslmode');
  if (sslmode && sslmode.value !== '') {
    // pg's libpq compatibility has no no-verify: it falls through to verify-full there too.
    const compat = param('uselibpqcompat')?.value === 'true';
    if (compat && !SSL_MODES.includes(sslmode.value))
      return `${named(sslmode)} in the URL: with uselibpqcompat=true, must be one of ${SSL_MODES.join(', ')}: pg takes any other value, no-verify included, as verify-full`;
    if (!SSL_MODES.includes(sslmode.value) && sslmode.value !== 'no-verify')
      return `${named(sslmode)} in the URL: ${sslModeRule('verify-full')}`;
  }
  const ssl = param('ssl');
  if (ssl && !['', 'true', '1', '0', 'no-verify'].includes(ssl.value))
    return `${named(ssl)} in the URL: must be one of true, 1 (TLS, verified), 0 (none) or no-verify: pg takes any other value, false included, as TLS on`;
  const timeout = param('connect_timeout');
  // libpq: an integer (strtol: blanks around it, a sign), 0 or less for no limit.
  if (timeout && timeout.value !== '' && !(/^\s*[+-]?\d+\s*$/.test(timeout.value) && Math.abs(Number(timeout.value)) <= 2 ** 31 - 1))
    return (
      `${named(timeout)} in the URL: must be an integer number of seconds, as libpq reads it (0 or less: no limit); ` +
      "pg does not read it: the connect timeout is DB_CONNECT_TIMEOUT, or the drop-in's connectionTimeoutMillis"
    );
  return undefined;
}

/** URL parameters that set a connection's TLS, so that pg does not read PGSSLMODE. */
const TLS_PARAMS = ['sslmode', 'sslcert', 'sslkey', 'sslrootcert'];

/**
 * PGSSLMODE's problem where pg reads it (the connection names no TLS of its own: no `ssl` option,
 * no `ssl` or `sslmode` in the URL), or undefined. pg takes a value it does not know as disable,
 * so PGSSLMODE=requre would connect without TLS, and say nothing.
 */
export function pgSslModeProblem(config: pg.ClientConfig): string | undefined {
  const value = process.env.PGSSLMODE;
  if (!value || SSL_MODES.includes(value) || value === 'no-verify' || config.ssl !== undefined) return undefined;
  const url = config.connectionString;
  const params = url === undefined || url.startsWith('/') ? [] : (splitUrl(url)?.params ?? []);
  const ownTls = params.some(
    (p) => p.name === 'ssl' || (TLS_PARAMS.includes(p.name) && p.value !== '') || (p.name === 'sslnegotiation' && p.value === 'direct'),
  );
  return ownTls ? undefined : `PGSSLMODE=${JSON.stringify(value)}: ${sslModeRule('disable (no TLS)')}`;
}
