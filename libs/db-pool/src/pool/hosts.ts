/**
 * Where a pool's connections go, read as pg reads it, with libpq's host lists on top:
 * `postgres://user:pw@h1:5432,h2:5433,h3/db?target_session_attrs=read-write`,
 * `postgres:///db?host=h1,h2&port=5432,5433`, `socket:/var/run/postgresql?db=db`, or no URL at all
 * (the `host` and `port` options, else `PGHOST` and `PGPORT`, else `pg.defaults`). pg takes one
 * host per connection; db-pool resolves the list once and hands pg, for each attempt, options
 * that name one host and port outright — so the address the pool shows, cancels on and fails over
 * from is the one pg connects to, whatever the environment says later. The string itself (its
 * parts, its parameters, those pg would misread) is read in connection-string.ts.
 */
import pg from 'pg';
import { REDACTED, scrubSecrets } from '../redact.js';
import { ENCODE_HINT, notAConnectionString, type Param, quoteUnlessSecret, splitUrl, tlsAndTimeoutProblem } from './connection-string.js';

/** libpq's `target_session_attrs` (PostgreSQL 14+ has all six). */
export const TARGET_SESSION_ATTRS = ['any', 'read-write', 'read-only', 'primary', 'standby', 'prefer-standby'] as const;
export type TargetSessionAttrs = (typeof TARGET_SESSION_ATTRS)[number];
/** libpq 16's `load_balance_hosts`. */
export const LOAD_BALANCE_HOSTS = ['disable', 'random'] as const;
export type LoadBalanceHosts = (typeof LOAD_BALANCE_HOSTS)[number];

/** URL parameters the pool reads and leaves out of the URL it gives pg for one host. */
const POOL_PARAMS = ['target_session_attrs', 'load_balance_hosts', 'host', 'port'];

export interface HostAddress {
  readonly host: string;
  readonly port: number;
  /** `host:port` (`[v6]:port`, `/socket/folder:port`): how the host is named in health, metrics and logs. */
  readonly address: string;
}

/** Where a pool's connections may go, and which session each must have. */
export interface ConnectTarget {
  readonly hosts: readonly HostAddress[];
  readonly targetSessionAttrs: TargetSessionAttrs;
  readonly loadBalanceHosts: LoadBalanceHosts;
  /** No host was named (options, URL, `host=`): pg's own default (`PGHOST`, else `pg.defaults.host`) is the host. */
  readonly defaultHost: boolean;
  /** pg's options for a connection to one host of the list: that host and port, and nothing pg could read otherwise. */
  clientConfig(host: HostAddress): pg.ClientConfig;
}

/** A host list or one of its parameters that cannot be used; the message names the part and what is allowed, never the password. */
export class HostListError extends Error {
  override name = 'HostListError';
}

/**
 * Reads where connections go from pg's options: a `connectionString` (`postgres://`,
 * `postgresql://`, pg's `socket:` form or a socket folder `"/var/run/postgresql dbname"`) or the
 * `host`/`port` options, each falling back to pg's own sources. Each host's `clientConfig` is
 * checked against pg's reading of it: a string pg would read otherwise is refused here.
 */
export function connectTargetOf(config: pg.ClientConfig): ConnectTarget {
  const url = config.connectionString;
  const target =
    url === undefined || url === '' ? fromOptions(config) : url.startsWith('/') ? fromSocketFolder(config, url) : fromUrl(config, url);
  for (const host of target.hosts) {
    const seen = pgAddress(target.clientConfig(host));
    if (seen.host !== host.host || seen.port !== host.port)
      throw new HostListError(`pg would read another host or port from the connection string than the pool does; ${ENCODE_HINT}`);
  }
  return target;
}

/**
 * The server pg connects to for options without a URL, written as one with the password masked
 * (`postgres://app:***@db:5432/shop`): the options, else pg's PG* variables, else pg.defaults.
 */
export function describeServer(config: pg.ClientConfig): string {
  const { hosts } = connectTargetOf(config);
  const client = new pg.Client({ user: config.user, database: config.database, password: config.password, host: 'x' });
  const password = client.password ? `:${REDACTED}` : '';
  const list = hosts.map((h) => `${urlHost(h.host)}:${h.port}`).join(',');
  return `postgres://${encodeURIComponent(client.user ?? '')}${password}@${list}/${encodeURIComponent(client.database ?? '')}`;
}

/**
 * The host and port pg connects to for these options, by pg's own reading (`pg.Client#host` and
 * `#port`): the URL's parts, else the options, else `PGHOST`/`PGPORT`, else `pg.defaults`.
 */
function pgAddress(config: pg.ClientConfig): { host: string; port: number } {
  try {
    const client = new pg.Client({ connectionString: config.connectionString, host: config.host, port: config.port });
    return { host: client.host, port: client.port };
  } catch (err) {
    // pg's URL errors carry no input (pg-connection-string redacts it); scrubbed all the same.
    throw new HostListError(`pg cannot read the connection string (${scrubSecrets((err as Error).message)}); ${ENCODE_HINT}`);
  }
}

/**
 * pg's default port, named by where it came from when it is no plain port: pg reads it with
 * parseInt (`1e1` is port 1, `5432abc` and `+5432` are 5432), a URL's port is digits only, and
 * so is this one.
 */
function defaultPort(portOption: unknown): number {
  const { port } = pgAddress({ port: portOption as number | undefined });
  const [source, value] = portOption
    ? ['the port option', portOption]
    : process.env.PGPORT
      ? ['PGPORT', process.env.PGPORT]
      : ['pg.defaults.port', pg.defaults.port];
  if (validPort(port) && isPlainPort(value)) return port;
  throw new HostListError(`${source}=${JSON.stringify(String(value))}: the port must be an integer from 1 to 65535`);
}

/** Digits that are one port (`5432`, a number 5432), not what parseInt makes a port of (`1e1`, `5432abc`, `+5432`, 5432.5). */
export function isPlainPort(value: unknown): boolean {
  return (typeof value === 'number' || typeof value === 'string') && /^\d+$/.test(String(value)) && validPort(Number(value));
}

function fromOptions(config: pg.ClientConfig): ConnectTarget {
  const session = sessionParams((name) => {
    const value = (config as Record<string, unknown>)[name] as string | undefined;
    return { value, quoted: JSON.stringify(value) };
  });
  const given = typeof config.host === 'string' && config.host !== '' ? config.host : undefined;
  const port = defaultPort(config.port);
  const hosts = given?.includes(',')
    ? hostItems(given, 0, 'the host option', undefined).map((item) => hostAddress(item.host, item.port === '' ? port : Number(item.port)))
    : [hostAddress(pgAddress({ host: given }).host, port)];
  return {
    hosts,
    ...session,
    defaultHost: given === undefined,
    clientConfig: (host) => withOptions(config, { host: host.host, port: host.port }),
  };
}

/** pg's plainest form: `"/var/run/postgresql dbname"` (a socket folder, a space, a database). */
function fromSocketFolder(config: pg.ClientConfig, url: string): ConnectTarget {
  // pg reads only the folder and the database from it; the port stays the option's (else PGPORT, pg.defaults).
  const host = hostAddress(pgAddress({ connectionString: url }).host, defaultPort(config.port));
  return {
    hosts: [host],
    targetSessionAttrs: 'any',
    loadBalanceHosts: 'disable',
    defaultHost: false,
    clientConfig: (h) => withOptions(config, { port: h.port }),
  };
}

function fromUrl(config: pg.ClientConfig, url: string): ConnectTarget {
  const parts = splitUrl(url);
  if (!parts) throw new HostListError(notAConnectionString(url));
  // An '@' after the authority is a user or password with a raw '/', '?' or '#' (where the
  // WHATWG parser pg uses ends the authority); the host list read before it is part of them.
  if (parts.path.includes('@') || parts.fragment.includes('@') || parts.params.some((p) => p.raw.split('=')[0].includes('@')))
    throw new HostListError(`an '@' after the host: ${ENCODE_HINT}; an '@' in the database name is written %40`);
  const param = (name: string) => parts.params.findLast((p) => p.name === name);
  /** A parameter's value as written, quoted where it cannot be a piece of the password. */
  const quote = (p: Param) => quoteUnlessSecret(url, p.raw.slice(p.raw.indexOf('=') + 1), p.valueAt);
  const named = (p: Param) => `${p.name}${quote(p) === undefined ? '' : `=${quote(p)}`}`;
  const session = sessionParams((name) => {
    const p = param(name);
    return { value: p?.value, quoted: p && quote(p) };
  });
  const problem = tlsAndTimeoutProblem(param, named);
  if (problem !== undefined) throw new HostListError(problem);

  let items: HostItem[];
  if (parts.form === 'socket') {
    if (parts.hostList !== '')
      throw new HostListError('a socket: URL names its socket folder as its path, not a host: socket:/var/run/postgresql?db=…');
    // pg reads the folder with decodeURI, as it is.
    let folder: string;
    try {
      folder = decodeURI(parts.path);
    } catch {
      throw new HostListError("a socket: URL's folder is not percent-encoded correctly: a '%' must start a percent-encoded byte (%20)");
    }
    items = [{ host: folder, port: '', text: parts.path, at: parts.pathAt }];
    if (!folder.startsWith('/'))
      throw new HostListError('a socket: URL names its socket folder as its path: socket:/var/run/postgresql?db=…');
  } else {
    items = hostItems(parts.hostList, parts.hostListAt, 'the URL', url);
    const hostParam = param('host');
    if (hostParam && hostParam.value !== '') {
      // libpq and pg: host= wins over the authority's host (whose port still counts).
      if (items.length > 1) throw new HostListError('the URL names hosts both before its path and in host=: name them in one place');
      const port = items[0].port;
      let at = hostParam.valueAt;
      items = hostParam.value.split(',').map((host) => {
        const item = { host, port, text: host, at };
        at += host.length + 1;
        return item;
      });
    }
  }
  const portParam = param('port');
  if (portParam && portParam.value !== '') {
    const ports = portParam.value.split(',');
    if (ports.length !== 1 && ports.length !== items.length)
      throw new HostListError(
        `the URL gives ${ports.length} ports for ${items.length} host${items.length === 1 ? '' : 's'}: give one port for all of them or one per host, as libpq does`,
      );
    // Named by the parameter, not by a host whose own port it replaced.
    const bad = ports.find((port) => port !== '' && !isPlainPort(port));
    if (bad !== undefined)
      throw new HostListError(
        `${named(portParam)} in the URL: ${ports.length === 1 ? 'the port' : 'each port'} must be an integer from 1 to 65535`,
      );
    items = items.map((item, i) => ({ ...item, port: ports[ports.length === 1 ? 0 : i] }));
  }

  // A URL's empty host or port is pg's default: PGHOST / PGPORT, else pg.defaults (never the options: the URL wins over them in pg).
  const defaultHost = items.length === 1 && items[0].host === '';
  const fallbackPort = items.some((item) => item.port === '') ? defaultPort(parts.form === 'socket' ? config.port : undefined) : 0;
  const hosts = items.map((item) => {
    if (item.host === '' && items.length > 1)
      throw new HostListError(badHost(url, item, 'the URL', 'each host must be a name or address, with :port optionally'));
    const port = item.port === '' ? fallbackPort : /^\d+$/.test(item.port) ? Number(item.port) : NaN;
    if (!validPort(port)) throw new HostListError(badHost(url, item, 'the URL', 'the port must be an integer from 1 to 65535'));
    return hostAddress(defaultHost ? pgAddress({}).host : item.host, port);
  });

  const rest = parts.params.filter((p) => !POOL_PARAMS.includes(p.name)).map((p) => p.raw);
  // A single host and port written out, nothing for the pool in the query: pg reads the URL as given.
  const asGiven =
    parts.form === 'url' &&
    hosts.length === 1 &&
    !defaultHost &&
    parts.hostList !== '' &&
    rest.length === parts.params.length &&
    /:\d+$/.test(parts.hostList);
  return {
    hosts,
    ...session,
    defaultHost,
    clientConfig: asGiven
      ? () => config
      : (host) => {
          const authority = parts.form === 'socket' ? parts.hostList : `${urlHost(host.host)}:${host.port}`;
          const query = parts.form === 'socket' ? [...rest, `port=${host.port}`] : rest;
          return withOptions(config, {
            connectionString: `${parts.scheme}${parts.userinfo}${authority}${parts.path}${query.length > 0 ? `?${query.join('&')}` : ''}${parts.fragment}`,
          });
        },
  };
}

/**
 * A copy of `config` with `changes`, its secrets kept as hidden as in the original (pg-pool
 * hides them): a spread would drop a non-enumerable password.
 */
function withOptions(config: pg.ClientConfig, changes: pg.ClientConfig): pg.ClientConfig {
  const copy: pg.ClientConfig = { ...config };
  for (const key of ['password', 'connectionString'] as const) {
    if (key in config || key in changes)
      Object.defineProperty(copy, key, {
        value: key in changes ? changes[key] : config[key],
        enumerable: false,
        writable: true,
        configurable: true,
      });
  }
  for (const [key, value] of Object.entries(changes))
    if (key !== 'password' && key !== 'connectionString') (copy as Record<string, unknown>)[key] = value;
  return copy;
}

/**
 * The URL with one host, written out (for parsers that take one: the WHATWG URL class, TypeORM's
 * URL reader): the first of a list, or of `host=`, in the authority with its port, and pg's socket
 * forms as `postgres://%2Ffolder/db`. The string itself when it is none of these. (The WHATWG
 * parser refuses credentials before an empty host: `postgres://u:pw@/db?host=h` must be written out
 * for a reader to find, and remove, the password.)
 */
export function firstHostUrl(url: string): string {
  if (url.startsWith('/')) {
    const [folder, database = ''] = url.split(' ');
    return `postgres://${encodeURIComponent(folder)}/${encodeURIComponent(database)}`;
  }
  const parts = splitUrl(url);
  if (!parts) return url;
  if (parts.form === 'socket') {
    const database = parts.params.findLast((p) => p.name === 'db')?.value ?? '';
    const rest = parts.params.filter((p) => p.name !== 'db' && p.name !== 'encoding').map((p) => p.raw);
    return `postgres://${parts.userinfo}${encodeURIComponent(decodeURI(parts.path))}/${encodeURIComponent(database)}${rest.length > 0 ? `?${rest.join('&')}` : ''}`;
  }
  try {
    const target = connectTargetOf({ connectionString: url });
    return target.clientConfig(target.hosts[0]).connectionString ?? url;
  } catch {
    return url; // refused as a connection string already
  }
}

interface HostItem {
  host: string;
  /** As written: digits, or '' for the default. */
  port: string;
  /** The item as written, and where it stands in the URL (for quoting it only when it cannot hold the password). */
  text: string;
  at: number;
}

/** `h1:5432,h2,[::1]:5433` → items; a URL's hosts are percent-decoded (a socket folder `%2Fvar%2Frun%2Fpostgresql`). */
function hostItems(list: string, at: number, where: string, url: string | undefined): HostItem[] {
  return list.split(',').map((text) => {
    const item = { host: '', port: '', text, at };
    at += text.length + 1;
    const m = /^(\[[^\]]*\]|[^:[\]]*)(?::(\d*))?$/.exec(text);
    if (!m || (m[1] === '' && list.includes(',')))
      throw new HostListError(badHost(url, item, where, 'each host must be a name or address, with :port optionally'));
    const host = m[1].replace(/^\[(.*)\]$/, '$1');
    item.port = m[2] ?? '';
    try {
      item.host = url === undefined ? host : decodeURIComponent(host);
    } catch {
      throw new HostListError(badHost(url, item, where, "a '%' must start a percent-encoded byte (%2F)"));
    }
    return item;
  });
}

/** A host's problem, quoting the host only where it cannot be a piece of the password. */
function badHost(url: string | undefined, item: HostItem, where: string, problem: string): string {
  const quoted = quoteUnlessSecret(url, item.text, item.at);
  return quoted === undefined
    ? `a host in ${where} (not shown: it stands where a password may): ${problem}; ${ENCODE_HINT}`
    : `host ${quoted} in ${where}: ${problem}`;
}

function validPort(port: number): boolean {
  return Number.isInteger(port) && port >= 1 && port <= 65_535;
}

function hostAddress(host: string, port: number): HostAddress {
  return { host, port, address: `${bracket(host)}:${port}` };
}

/** A host as it stands in a URL: IPv6 in brackets, anything else percent-encoded (a socket folder `/var/run/postgresql`). */
function urlHost(host: string): string {
  return host.includes(':') ? bracket(host) : encodeURIComponent(host);
}

function bracket(host: string): string {
  return host.includes(':') && !host.startsWith('[') && !host.startsWith('/') ? `[${host}]` : host;
}

/** `target_session_attrs` and `load_balance_hosts`, from `read` (a parameter's value, and how to quote it in an error). */
function sessionParams(
  read: (name: string) => { value: string | undefined; quoted: string | undefined },
): Pick<ConnectTarget, 'targetSessionAttrs' | 'loadBalanceHosts'> {
  const choice = <T extends string>(name: string, allowed: readonly T[], fallback: T): T => {
    const { value, quoted } = read(name);
    return readChoice(value, name, allowed, fallback, quoted);
  };
  return {
    targetSessionAttrs: choice('target_session_attrs', TARGET_SESSION_ATTRS, 'any'),
    loadBalanceHosts: choice('load_balance_hosts', LOAD_BALANCE_HOSTS, 'disable'),
  };
}

function readChoice<T extends string>(value: string | undefined, key: string, allowed: readonly T[], fallback: T, quoted?: string): T {
  if (value === undefined || value === '') return fallback;
  if ((allowed as readonly string[]).includes(value)) return value as T;
  throw new HostListError(`${key}${quoted === undefined ? ' in the URL' : `=${quoted}`}: must be one of ${allowed.join(', ')}`);
}

/** The order one connection attempt walks the hosts in: as listed, or shuffled (`load_balance_hosts=random`). */
export function walkOrder(target: ConnectTarget, random: () => number = Math.random): readonly HostAddress[] {
  if (target.loadBalanceHosts !== 'random' || target.hosts.length < 2) return target.hosts;
  const order = [...target.hosts];
  for (let i = order.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [order[i], order[j]] = [order[j], order[i]];
  }
  return order;
}
