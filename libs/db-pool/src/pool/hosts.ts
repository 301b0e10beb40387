/**
 * Host lists with libpq's semantics: `postgres://user:pw@h1:5432,h2:5433,h3/db?target_session_attrs=read-write`.
 * pg (and the WHATWG URL parser it uses) takes one host per connection string; db-pool splits the
 * list itself and hands pg one single-host configuration per connection attempt.
 */
import type pg from 'pg';

/** libpq's `target_session_attrs` (PostgreSQL 14+ has all six). */
export const TARGET_SESSION_ATTRS = ['any', 'read-write', 'read-only', 'primary', 'standby', 'prefer-standby'] as const;
export type TargetSessionAttrs = (typeof TARGET_SESSION_ATTRS)[number];
/** libpq 16's `load_balance_hosts`. */
export const LOAD_BALANCE_HOSTS = ['disable', 'random'] as const;
export type LoadBalanceHosts = (typeof LOAD_BALANCE_HOSTS)[number];

const HA_PARAMS = ['target_session_attrs', 'load_balance_hosts'] as const;

export interface HostAddress {
  readonly host: string;
  readonly port: number;
  /** `host:port` (`[v6]:port`): how the host is named in health, metrics and logs. */
  readonly address: string;
}

/** Where a pool's connections may go, and which session each must have. */
export interface ConnectTarget {
  readonly hosts: readonly HostAddress[];
  readonly targetSessionAttrs: TargetSessionAttrs;
  readonly loadBalanceHosts: LoadBalanceHosts;
  /** pg's options for a connection to one host of the list. */
  clientConfig(host: HostAddress): pg.ClientConfig;
}

/** A host list or one of its parameters that cannot be used; the message names the part and what is allowed. */
export class HostListError extends Error {
  override name = 'HostListError';
}

const DEFAULT_PORT = 5432;

/**
 * Reads the host list and the session requirement from pg's options: a `connectionString` whose
 * authority lists several hosts, or a `host` option `h1,h2:5433`. A single host with no HA
 * parameter gives a target whose `clientConfig` returns the options unchanged.
 */
export function connectTargetOf(config: pg.ClientConfig): ConnectTarget {
  const url = config.connectionString;
  if (url !== undefined && url !== '') return fromUrl(config, url);
  const hostOption = typeof config.host === 'string' ? config.host : undefined;
  const defaultPort = config.port === undefined ? DEFAULT_PORT : Number(config.port);
  const hosts = hostOption?.includes(',') ? splitHostList(hostOption, defaultPort, 'host') : undefined;
  const attrs = readAttrs((config as { target_session_attrs?: string }).target_session_attrs, 'target_session_attrs');
  const balance = readBalance((config as { load_balance_hosts?: string }).load_balance_hosts, 'load_balance_hosts');
  if (!hosts) {
    const only = { host: hostOption ?? 'localhost', port: defaultPort, address: addressOf(hostOption ?? 'localhost', defaultPort) };
    return { hosts: [only], targetSessionAttrs: attrs, loadBalanceHosts: balance, clientConfig: () => config };
  }
  return {
    hosts,
    targetSessionAttrs: attrs,
    loadBalanceHosts: balance,
    clientConfig: (host) => ({ ...config, host: host.host, port: host.port }),
  };
}

function fromUrl(config: pg.ClientConfig, url: string): ConnectTarget {
  const parts = splitUrl(url);
  if (!parts) throw new HostListError('the connection string is not a postgres:// URL');
  const params = parts.query === '' ? [] : parts.query.split('&');
  const param = (name: string) => {
    const hit = params.find((p) => p.split('=')[0] === name);
    return hit === undefined ? undefined : decodeURIComponent(hit.slice(name.length + 1).replace(/\+/g, ' '));
  };
  const attrs = readAttrs(param('target_session_attrs'), 'target_session_attrs');
  const balance = readBalance(param('load_balance_hosts'), 'load_balance_hosts');
  const portParam = param('port');
  const defaultPort = portParam === undefined ? DEFAULT_PORT : Number(portParam);
  const hosts = splitHostList(parts.hostList, defaultPort, 'the URL');
  const rest = params.filter((p) => !(HA_PARAMS as readonly string[]).includes(p.split('=')[0]));
  const tail = `${parts.path}${rest.length > 0 ? `?${rest.join('&')}` : ''}${parts.fragment}`;
  const untouched = hosts.length === 1 && rest.length === params.length;
  return {
    hosts,
    targetSessionAttrs: attrs,
    loadBalanceHosts: balance,
    clientConfig: untouched
      ? () => config
      : (host) => withConnectionString(config, `${parts.scheme}${parts.userinfo}${urlHost(host.host)}:${host.port}${tail}`),
  };
}

/** A copy of `config` with another connection string, kept as hidden as the original (pg-pool hides secrets). */
function withConnectionString(config: pg.ClientConfig, connectionString: string): pg.ClientConfig {
  const copy = { ...config };
  Object.defineProperty(copy, 'connectionString', { value: connectionString, enumerable: false, writable: true, configurable: true });
  if ('password' in config)
    Object.defineProperty(copy, 'password', { value: config.password, enumerable: false, writable: true, configurable: true });
  return copy;
}

interface UrlParts {
  scheme: string;
  userinfo: string;
  hostList: string;
  path: string;
  query: string;
  fragment: string;
}

/**
 * Splits a postgres URL around its authority. The credentials end at the authority's last '@'
 * (a password's own '@' must be percent-encoded, which the configuration checks).
 */
export function splitUrl(url: string): UrlParts | undefined {
  const scheme = /^postgres(?:ql)?:\/\//i.exec(url)?.[0];
  if (!scheme) return undefined;
  const afterScheme = url.slice(scheme.length);
  const authorityEnd = afterScheme.search(/[/?#]/);
  const authority = authorityEnd === -1 ? afterScheme : afterScheme.slice(0, authorityEnd);
  let rest = authorityEnd === -1 ? '' : afterScheme.slice(authorityEnd);
  const at = authority.lastIndexOf('@');
  const hashAt = rest.indexOf('#');
  const fragment = hashAt === -1 ? '' : rest.slice(hashAt);
  if (hashAt !== -1) rest = rest.slice(0, hashAt);
  const q = rest.indexOf('?');
  return {
    scheme,
    userinfo: at === -1 ? '' : authority.slice(0, at + 1),
    hostList: at === -1 ? authority : authority.slice(at + 1),
    path: q === -1 ? rest : rest.slice(0, q),
    query: q === -1 ? '' : rest.slice(q + 1),
    fragment,
  };
}

/**
 * The URL with its host list cut to the first host (for parsers that take one host: the WHATWG
 * URL class, TypeORM's URL reader); the URL itself when it is not a postgres:// URL.
 */
export function firstHostUrl(url: string): string {
  const parts = splitUrl(url);
  if (!parts || !parts.hostList.includes(',')) return url;
  const first = parts.hostList.slice(0, parts.hostList.indexOf(','));
  return `${parts.scheme}${parts.userinfo}${first}${parts.path}${parts.query === '' ? '' : `?${parts.query}`}${parts.fragment}`;
}

/** `h1:5432,h2,[::1]:5433` → hosts; a missing port is `defaultPort`. */
function splitHostList(list: string, defaultPort: number, where: string): HostAddress[] {
  const hosts = list.split(',').map((item) => {
    const m = /^(\[[^\]]*\]|[^:[\]]*)(?::(\d*))?$/.exec(item);
    const host = m?.[1].replace(/^\[(.*)\]$/, '$1') ?? '';
    const port = m?.[2] === undefined || m[2] === '' ? defaultPort : Number(m[2]);
    if (!m || host === '')
      throw new HostListError(`host ${JSON.stringify(item)} in ${where}: each host must be a name or address, with :port optionally`);
    if (!Number.isInteger(port) || port < 1 || port > 65_535)
      throw new HostListError(`host ${JSON.stringify(item)} in ${where}: the port must be an integer from 1 to 65535`);
    return { host: decodeURIComponent(host), port, address: addressOf(host, port) };
  });
  return hosts;
}

function addressOf(host: string, port: number): string {
  return `${bracket(host)}:${port}`;
}

/** A host as it stands in a URL: IPv6 in brackets, anything else percent-encoded again (a socket folder `/var/run/postgresql`). */
function urlHost(host: string): string {
  return host.includes(':') ? bracket(host) : encodeURIComponent(host);
}

function bracket(host: string): string {
  return host.includes(':') && !host.startsWith('[') ? `[${host}]` : host;
}

function readAttrs(value: string | undefined, key: string): TargetSessionAttrs {
  if (value === undefined || value === '') return 'any';
  if ((TARGET_SESSION_ATTRS as readonly string[]).includes(value)) return value as TargetSessionAttrs;
  throw new HostListError(`${key}=${JSON.stringify(value)}: must be one of ${TARGET_SESSION_ATTRS.join(', ')}`);
}

function readBalance(value: string | undefined, key: string): LoadBalanceHosts {
  if (value === undefined || value === '') return 'disable';
  if ((LOAD_BALANCE_HOSTS as readonly string[]).includes(value)) return value as LoadBalanceHosts;
  throw new HostListError(`${key}=${JSON.stringify(value)}: must be one of ${LOAD_BALANCE_HOSTS.join(', ')}`);
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
