import { DbPoolConfigError } from '../errors.js';
import { ENCODE_HINT, pgSslModeProblem, splitUrl } from '../pool/connection-string.js';
import { connectTargetOf, describeServer, HostListError, isPlainPort } from '../pool/hosts.js';
import { redactUrl } from '../redact.js';
import type pg from 'pg';
import type { DbPoolLogger } from '../pool/logger.js';
import type { DbPoolConfig, DbPoolOptions } from './db-pool.options.js';
import { type EnvKey, FALSE_WORDS, OPTION_KEYS, TRUE_WORDS } from './option-keys.js';
import { passwordFromFile, unreadableFile } from './password.js';

export const DEFAULT_POOL_NAME = 'default';

const NUMBER = /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/;
const URL_EXAMPLE = 'postgres://user:password@host:5432/database';

type Parsed = number | boolean | string | undefined;

function allowed(key: EnvKey): string {
  switch (key.kind) {
    case 'int':
      if (key.auto) return `must be auto or an integer from ${key.min} to ${key.max}`;
      return key.off !== undefined
        ? `must be ${key.off} (off) or an integer from ${key.min} to ${key.max}`
        : `must be an integer from ${key.min} to ${key.max}`;
    case 'bool':
      return `must be one of ${[...TRUE_WORDS, ...FALSE_WORDS].join(', ')}`;
    case 'url':
      return `must be a postgres:// or postgresql:// URL with a host, such as ${URL_EXAMPLE}`;
    case 'urls':
      return `must be postgres:// URLs separated by commas, such as ${URL_EXAMPLE},${URL_EXAMPLE.replace('host', 'host2')}`;
    case 'enum':
      return `must be one of ${key.values!.join(', ')}`;
    case 'ascii':
      return `must be printable ASCII (space to ~) of ${key.min} to ${key.max} characters: the server truncates longer values and replaces other characters`;
    case 'text':
      return `must be a text of ${key.min} to ${key.max} characters`;
    case 'file':
      return 'must be the path of a readable file';
  }
}

/** Parses one raw value; returns `undefined` for "unset" and throws the allowed-values text when invalid. */
function parse(key: EnvKey, raw: unknown): Parsed {
  if (raw === undefined || raw === null || raw === '' || (Array.isArray(raw) && raw.length === 0)) return undefined;
  switch (key.kind) {
    case 'int': {
      if (key.auto && typeof raw === 'string' && raw.trim().toLowerCase() === 'auto') return 'auto';
      const n = typeof raw === 'number' ? raw : typeof raw === 'string' && NUMBER.test(raw.trim()) ? Number(raw) : NaN;
      if (n === key.off) return n;
      if (!Number.isInteger(n) || n < key.min! || n > key.max!) throw allowed(key);
      return n;
    }
    case 'bool': {
      if (typeof raw === 'boolean') return raw;
      const word = String(raw).trim().toLowerCase();
      if ((TRUE_WORDS as readonly string[]).includes(word)) return true;
      if ((FALSE_WORDS as readonly string[]).includes(word)) return false;
      throw allowed(key);
    }
    case 'url':
      if (typeof raw !== 'string') throw allowed(key);
      return checkedUrl(key, raw);
    case 'urls': {
      const list = typeof raw === 'string' ? splitUrlList(raw) : Array.isArray(raw) ? raw.map(String) : undefined;
      if (!list || list.length === 0) throw allowed(key);
      list.forEach((url, i) => {
        try {
          parse({ ...key, kind: 'url' }, url);
        } catch (rule) {
          throw `URL ${i + 1} of ${list.length}: ${rule as string}`;
        }
      });
      return list.join(',');
    }
    case 'enum': {
      const word = String(raw).trim().toLowerCase();
      if (!key.values!.includes(word)) throw allowed(key);
      return word;
    }
    case 'ascii': {
      const text = String(raw);
      if (!isPrintableAscii(text, key.min!, key.max!)) throw allowed(key);
      return text;
    }
    case 'text': {
      const text = String(raw);
      if (text.length < key.min! || text.length > key.max!) throw allowed(key);
      return text;
    }
    case 'file': {
      const path = String(raw);
      const problem = unreadableFile(path);
      if (problem !== undefined) throw `${allowed(key)} (${problem})`;
      return path;
    }
  }
}

/**
 * A capacity the connection budget gives, split as the defaults are (20 kept open of 60): a third
 * kept open (at least one), the rest overflow.
 */
export function budgetSplit(capacity: number): { poolSize: number; maxOverflow: number } {
  const poolSize = Math.max(1, Math.round(capacity / 3));
  return { poolSize, maxOverflow: Math.max(0, capacity - poolSize) };
}

/** `postgres://a,postgres://b1,b2/db` → the URLs: a comma starts a new URL only before a scheme (`…://`); inside a URL it separates hosts. */
export function splitUrlList(text: string): string[] {
  return text
    .split(/,(?=\s*[a-z][a-z0-9+.-]*:\/\/)/i)
    .map((u) => u.trim())
    .filter((u) => u !== '');
}

/**
 * A connection string the pool and pg read alike (hosts, ports, socket folders, libpq's
 * target_session_attrs and load_balance_hosts), or the rule it breaks, never quoting its user-info.
 */
function checkedUrl(key: EnvKey, raw: string): string {
  const parts = splitUrl(raw);
  if (!parts && !raw.startsWith('/'))
    throw /^\s*[a-z_]+\s*=/i.test(raw)
      ? `${allowed(key)}; "host=… dbname=…" is libpq's keyword/value form, which pg does not read`
      : allowed(key);
  // pg decodes the user and password; libpq refuses a stray '%' there, and so does the pool.
  if (parts && !decodes(parts.userinfo)) throw `${allowed(key)}; ${ENCODE_HINT}`;
  try {
    // A URL that names no host is pg's default host: only where PGHOST names one, never localhost by accident.
    if (connectTargetOf({ connectionString: raw }).defaultHost && !process.env.PGHOST) throw allowed(key);
  } catch (err) {
    if (err instanceof HostListError) throw err.message;
    throw err;
  }
  return raw;
}

function applicationNameIn(url: string | undefined): string | undefined {
  return url === undefined ? undefined : splitUrl(url)?.params.findLast((p) => p.name === 'application_name')?.value;
}

function decodes(text: string): boolean {
  try {
    decodeURIComponent(text);
    return true;
  } catch {
    return false;
  }
}

function isPrintableAscii(text: string, min: number, max: number): boolean {
  return text.length >= min && text.length <= max && /^[\x20-\x7e]*$/.test(text);
}

function shown(key: EnvKey, raw: unknown): string {
  const text = typeof raw === 'string' ? raw : String(raw);
  if (key.kind === 'urls') return JSON.stringify(splitUrlList(text).map(redactUrl).join(','));
  return JSON.stringify(key.kind === 'url' ? redactUrl(text) : text);
}

/**
 * Reads environment variables by their rules (the same rules as db-pool's own keys): each value
 * parsed, or its default; every bad one a problem line `KEY="value": what is allowed`, the value
 * of a URL key redacted. Nothing is thrown: an application adds these to its own problems.
 */
export function readEnvKeys(
  keys: readonly EnvKey[],
  env: Record<string, string | undefined>,
): { values: Record<string, Parsed>; problems: string[] } {
  const values: Record<string, Parsed> = {};
  const problems: string[] = [];
  for (const key of keys) {
    const raw = env[key.env];
    try {
      values[key.env] = parse(key, raw) ?? key.default;
    } catch (rule) {
      problems.push(`${key.env}=${shown(key, raw)}: ${rule as string}`);
    }
  }
  return { values, problems };
}

/**
 * Merges code options over the environment over the defaults, validates everything at once and
 * returns the effective configuration. Throws one {@link DbPoolConfigError} listing every bad key,
 * the value given (passwords redacted) and what is allowed.
 */
export function resolveDbPoolConfig(options: DbPoolOptions = {}): DbPoolConfig {
  const name = options.name ?? DEFAULT_POOL_NAME;
  const prefix = options.envPrefix ?? '';
  const env = options.env ?? process.env;
  const problems: string[] = [];
  const values = new Map<keyof DbPoolOptions, Parsed>();
  const given = new Set<keyof DbPoolOptions>();

  problems.push(...unknownOptions(options));
  for (const key of OPTION_KEYS) {
    const envName = `${prefix}${key.env}`;
    const fromCode = options[key.option];
    const useCode = fromCode !== undefined && fromCode !== '';
    const raw = useCode ? fromCode : env[envName];
    const label = useCode ? `${key.option} (${envName})` : envName;
    try {
      const value = parse(key, raw);
      if (value !== undefined) given.add(key.option);
      values.set(key.option, value ?? key.default);
    } catch (rule) {
      problems.push(`${label}=${shown(key, raw)}: ${rule as string}`);
    }
  }

  let port: number | undefined;
  if (options.port !== undefined && options.port !== '') {
    if (!isPlainPort(options.port)) problems.push(`port=${JSON.stringify(String(options.port))}: must be an integer from 1 to 65535`);
    else port = Number(options.port);
  }

  const url = values.get('url') as string | undefined;
  const password = passwordOf(options, values.get('passwordFile') as string | undefined, `${prefix}DB_PASSWORD_FILE`, url, problems);
  // Without a URL, pg's own variables name the server (PGHOST, PGPORT, PGUSER, PGPASSWORD,
  // PGDATABASE, read by pg from the process environment) — for the default pool only: a pool of
  // its own (envPrefix) must name its server, not fall back to another's.
  const pgNamesServer = prefix === '' && Boolean(process.env.PGHOST);
  if (
    url === undefined &&
    !options.host &&
    !pgNamesServer &&
    !problems.some((p) => p.startsWith(`${prefix}DATABASE_URL=`) || p.startsWith('url '))
  ) {
    problems.push(
      `${prefix}DATABASE_URL: not set; give a postgres:// URL such as ${URL_EXAMPLE}, the host option${prefix === '' ? ", or pg's PGHOST (with PGPORT, PGUSER, PGPASSWORD, PGDATABASE)" : ''}`,
    );
  }

  const int = (option: keyof DbPoolOptions) => values.get(option) as number;
  const envOf = (option: keyof DbPoolOptions) => `${prefix}${OPTION_KEYS.find((k) => k.option === option)!.env}`;
  if (!given.has('connectTimeoutSeconds') && values.get('poolTimeoutSeconds') !== undefined) {
    // The default connect timeout never outlasts a shorter acquire deadline.
    values.set('connectTimeoutSeconds', Math.min(int('connectTimeoutSeconds'), int('poolTimeoutSeconds')));
  }
  if (
    values.get('connectTimeoutSeconds') !== undefined &&
    values.get('poolTimeoutSeconds') !== undefined &&
    int('connectTimeoutSeconds') > int('poolTimeoutSeconds')
  ) {
    problems.push(
      `${envOf('connectTimeoutSeconds')}=${int('connectTimeoutSeconds')} exceeds ${envOf('poolTimeoutSeconds')}=${int('poolTimeoutSeconds')}: ` +
        `a connection that takes that long to open could never be handed out in time; make ${envOf('connectTimeoutSeconds')} ≤ ${envOf('poolTimeoutSeconds')}`,
    );
  }
  const sizeAuto = values.get('poolSize') === 'auto';
  const overflowAuto = values.get('maxOverflow') === 'auto';
  if (sizeAuto !== overflowAuto && values.get('poolSize') !== undefined && values.get('maxOverflow') !== undefined) {
    problems.push(
      `${envOf('poolSize')}=${String(values.get('poolSize'))} and ${envOf('maxOverflow')}=${String(values.get('maxOverflow'))}: auto goes with auto (the budget sizes the whole capacity): set both to auto, or both to numbers`,
    );
  }
  if (sizeAuto && int('headroomIntervalSeconds') === 0) {
    problems.push(
      `${envOf('poolSize')}=auto needs the headroom samples the budget is taken at: ${envOf('headroomIntervalSeconds')} must not be 0`,
    );
  }
  if (sizeAuto && applicationNameIn(url) !== undefined) {
    problems.push(
      `${envOf('poolSize')}=auto: give the application's name with ${envOf('applicationName')}, not as application_name in ${envOf('url')} (the budget's presence connection needs a name of its own, which the URL's would override)`,
    );
  }
  if (int('poolMin') > int('poolMax')) {
    problems.push(
      `${envOf('poolMin')}=${int('poolMin')} exceeds ${envOf('poolMax')}=${int('poolMax')}: the budget's least capacity must be at most its most`,
    );
  }
  if (
    !sizeAuto &&
    !overflowAuto &&
    values.get('poolSize') !== undefined &&
    values.get('maxOverflow') !== undefined &&
    int('poolSize') + int('maxOverflow') > 10_000
  ) {
    problems.push(
      `${envOf('poolSize')} + ${envOf('maxOverflow')} = ${int('poolSize') + int('maxOverflow')}: the total capacity must be at most 10000`,
    );
  }

  if (
    values.get('warnUtilizationPercent') !== undefined &&
    values.get('criticalUtilizationPercent') !== undefined &&
    int('warnUtilizationPercent') >= int('criticalUtilizationPercent')
  ) {
    problems.push(
      `${envOf('warnUtilizationPercent')}=${int('warnUtilizationPercent')} is not below ${envOf('criticalUtilizationPercent')}=${int('criticalUtilizationPercent')}: ` +
        `the warning threshold must be lower than the critical one`,
    );
  }

  // pg lets the URL's application_name win over the option: take it as the name, and refuse
  // two names that disagree rather than print one and connect with the other.
  const fromUrl = applicationNameIn(url);
  const givenName = values.get('applicationName') as string | undefined;
  if (fromUrl !== undefined && givenName !== undefined && fromUrl !== givenName) {
    problems.push(
      `${envOf('applicationName')}=${JSON.stringify(givenName)} disagrees with application_name=${JSON.stringify(fromUrl)} in ${envOf('url')}: give one of them`,
    );
  } else if (fromUrl !== undefined && !isPrintableAscii(fromUrl, 1, 63)) {
    problems.push(
      `application_name=${JSON.stringify(fromUrl)} in ${envOf('url')}: ${allowed(OPTION_KEYS.find((k) => k.option === 'applicationName')!)}`,
    );
  }
  const applicationName = givenName ?? fromUrl ?? (name === DEFAULT_POOL_NAME ? 'db-pool' : `db-pool:${name}`);
  if (givenName === undefined && fromUrl === undefined && !isPrintableAscii(applicationName, 1, 63)) {
    problems.push(
      `${envOf('applicationName')}: not set, and the default derived from the pool name (${JSON.stringify(applicationName)}) is not printable ASCII of at most 63 characters; set ${envOf('applicationName')}`,
    );
  }
  if (sizeAuto && applicationName.includes('~')) {
    problems.push(
      `${envOf('applicationName')}=${JSON.stringify(applicationName)}: with ${envOf('poolSize')}=auto it must not contain "~", which ends the application's part of the budget's presence names (<name>~<claim>): "a~b" would count among the processes of "a"`,
    );
  }

  let server: string | undefined;
  if (url === undefined && (options.host || pgNamesServer)) {
    try {
      server = describeServer({ host: options.host, port, user: options.username, password: options.password, database: options.database });
    } catch (err) {
      if (!(err instanceof HostListError)) throw err;
      problems.push(err.message);
    }
  }

  // pg reads PGSSLMODE for any pool whose connection names no TLS of its own (typeorm.extra.ssl is pg's ssl option).
  const sslMode = pgSslModeProblem({
    connectionString: url,
    ssl: (options.typeorm?.extra as { ssl?: pg.ClientConfig['ssl'] } | undefined)?.ssl,
  });
  if (sslMode) problems.push(sslMode);

  const connectTimeout =
    values.get('connectTimeoutSeconds') === undefined ? undefined : `${envOf('connectTimeoutSeconds')}=${int('connectTimeoutSeconds')} s`;
  const warnings = startUpWarnings(env, prefix, url, envOf('url'), connectTimeout);
  if (options.logger) warnOnce(options.logger, env, warnings);

  if (problems.length > 0) throw new DbPoolConfigError(name, problems);

  const config: DbPoolConfig = {
    name,
    url,
    redactedUrl: url !== undefined ? redactUrl(url) : server!,
    host: options.host,
    port,
    username: options.username,
    password,
    database: options.database,
    // With a budget, the pool starts at its least capacity; the first sample sizes it.
    poolSize: sizeAuto ? budgetSplit(int('poolMin')).poolSize : int('poolSize'),
    maxOverflow: sizeAuto ? budgetSplit(int('poolMin')).maxOverflow : int('maxOverflow'),
    budget: sizeAuto ? { min: int('poolMin'), max: int('poolMax') } : undefined,
    poolTimeoutMs: int('poolTimeoutSeconds') * 1000,
    recycleMs: int('recycleSeconds') * 1000,
    recycleJitter: int('recycleJitterPercent') / 100,
    prePing: values.get('prePing') as boolean,
    prePingBypassMs: int('prePingBypassMs'),
    overflowIdleTimeoutMs: int('overflowIdleTimeoutSeconds') * 1000,
    connectTimeoutMs: int('connectTimeoutSeconds') * 1000,
    validationTimeoutMs: int('validationTimeoutMs'),
    statementTimeoutMs: int('statementTimeoutMs'),
    queryTimeoutMs: int('queryTimeoutMs'),
    leakThresholdMs: int('leakThresholdSeconds') * 1000,
    leakStackRate: int('leakStacksPerSecond'),
    warnUtilization: int('warnUtilizationPercent'),
    criticalUtilization: int('criticalUtilizationPercent'),
    expectedReplicas: int('expectedReplicas'),
    healthTimeoutMs: int('healthTimeoutMs'),
    headroomIntervalMs: int('headroomIntervalSeconds') * 1000,
    shutdownGraceMs: int('shutdownGraceSeconds') * 1000,
    pgbouncerAdminUrl: values.get('pgbouncerAdminUrl') as string | undefined,
    replicaUrls: values.get('replicaUrls') === undefined ? [] : splitUrlList(values.get('replicaUrls') as string),
    replicaMaxLagMs: int('replicaMaxLagMs'),
    replicaConsistency: values.get('replicaConsistency') as DbPoolConfig['replicaConsistency'],
    maxWaiting: int('maxWaiting'),
    adaptive: values.get('adaptive') as boolean,
    adaptiveMin: int('adaptiveMin'),
    applicationName,
    resetSession: values.get('resetSession') as DbPoolConfig['resetSession'],
    healthDetail: values.get('healthDetail') as boolean,
    typeorm: options.typeorm ?? {},
    warnings,
  };
  // Readable, but not listed: util.inspect, JSON.stringify and logging a config show none of them.
  for (const key of ['url', 'password', 'pgbouncerAdminUrl', 'replicaUrls'] as const)
    Object.defineProperty(config, key, { enumerable: false });
  return config;
}

/**
 * The password pg is given: the option, or with `DB_PASSWORD_FILE` a function that reads the file
 * for each new connection. The file with a password of another kind is a problem: pg would use the
 * URL's, and two sources leave an operator guessing which one a connection used.
 */
function passwordOf(
  options: DbPoolOptions,
  file: string | undefined,
  fileKey: string,
  url: string | undefined,
  problems: string[],
): DbPoolConfig['password'] {
  if (file === undefined) return options.password;
  if (options.password !== undefined && options.password !== '')
    problems.push(`${fileKey}: not with the password option as well; give the password one way`);
  else if (url !== undefined && /^[^@]*:[^@]+@$/.test(splitUrl(url)?.userinfo ?? ''))
    problems.push(`${fileKey}: not with a password in the URL as well (pg would use the URL's); remove one of them`);
  else return passwordFromFile(file, fileKey);
  return undefined;
}

/** The options that have no environment variable; every other option is one of {@link OPTION_KEYS}. */
const CODE_ONLY_OPTIONS = [
  'name',
  'envPrefix',
  'env',
  'host',
  'port',
  'username',
  'password',
  'database',
  'logger',
  'typeorm',
] as const satisfies readonly (keyof DbPoolOptions)[];
const KNOWN_OPTIONS: readonly string[] = [...CODE_ONLY_OPTIONS, ...OPTION_KEYS.map((k) => k.option)];

/**
 * A problem line for each key of the options that is not an option (a typo, or a name from
 * another library), with the option it probably meant: TypeScript refuses them in an object
 * literal, but not in an object built elsewhere or in JavaScript, and an option silently dropped
 * is a setting that never took effect. The value is not shown: the key is unknown, so nothing
 * says it is not a secret.
 */
function unknownOptions(options: DbPoolOptions): string[] {
  const problems: string[] = [];
  for (const [key, value] of Object.entries(options)) {
    if (value === undefined || KNOWN_OPTIONS.includes(key)) continue;
    const meant = meantOption(key);
    problems.push(
      meant !== undefined
        ? `${key}: not an option of db-pool; did you mean ${meant}?`
        : `${key}: not an option of db-pool; TypeORM's options go under typeorm, and pg's under typeorm.extra`,
    );
  }
  return problems;
}

/** The option a key probably meant: the same name in another case, the same idea in another unit (`poolTimeout`, `connectTimeoutMs`), or one within two typos (`databse`). */
function meantOption(key: string): string | undefined {
  // pg.Pool's own `min` and `max` are pg's, not the budget's bounds (poolMin, poolMax).
  if (key === 'min' || key === 'max') return undefined;
  const sameLetters = KNOWN_OPTIONS.find((o) => o.toLowerCase() === key.toLowerCase());
  if (sameLetters !== undefined) return sameLetters;
  // Spelt as a variable (poolTimeout → DB_POOL_TIMEOUT), it is matched as the look-alike variables are.
  const env = probablyMeant(`DB_${key.replace(/([a-z\d])([A-Z])/g, '$1_$2')}`);
  if (env !== undefined) return OPTION_KEYS.find((k) => k.env === env)!.option;
  return KNOWN_OPTIONS.find((o) => editDistance(o.toLowerCase(), key.toLowerCase()) <= 2);
}

/** Name segments that say where or in what unit, not what: `DB_POOL_MAX_OVERFLOW` and `DB_MAX_OVERFLOW` are one idea. */
const NOT_MEANING = new Set(['DB', 'POOL', 'MS', 'SEC', 'SECS', 'SECONDS']);
const meaningOf = (name: string) =>
  name
    .split('_')
    .filter((s) => s !== '' && !NOT_MEANING.has(s))
    .join('_');

/** The pool's key a variable most likely meant: the same idea under another prefix or unit, else one within two typos. */
function probablyMeant(name: string): string | undefined {
  const upper = name.toUpperCase();
  const meaning = meaningOf(upper);
  if (upper.startsWith('DB_') && meaning !== '') {
    const same = OPTION_KEYS.find((k) => meaningOf(k.env) === meaning);
    if (same) return same.env;
  }
  let best: string | undefined;
  let bestDistance = 3;
  for (const key of OPTION_KEYS) {
    if (Math.abs(key.env.length - upper.length) >= bestDistance) continue;
    const d = editDistance(upper, key.env);
    if (d < bestDistance) [best, bestDistance] = [key.env, d];
  }
  return best;
}

function editDistance(a: string, b: string): number {
  let row = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const next = [i];
    for (let j = 1; j <= b.length; j++) next[j] = Math.min(row[j] + 1, next[j - 1] + 1, row[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    row = next;
  }
  return row[b.length];
}

/**
 * Variables that look like this pool's and that it does not read, sorted, each with the key it
 * probably meant: every `<envPrefix>DB_POOL_*` one, and any other under the prefix that is one of
 * the pool's keys misspelt (`DB_CONECT_TIMEOUT`, `DATABSE_URL`). Never refused: another program
 * may read them.
 */
export function lookalikeKeys(env: Record<string, string | undefined>, prefix: string): { key: string; meant?: string }[] {
  const known = new Set(OPTION_KEYS.map((k) => `${prefix}${k.env}`));
  const found: { key: string; meant?: string }[] = [];
  for (const [key, value] of Object.entries(env)) {
    if (value === undefined || known.has(key) || !key.startsWith(prefix)) continue;
    const rest = key.slice(prefix.length);
    const meant = probablyMeant(rest);
    if (meant !== undefined) found.push({ key, meant: `${prefix}${meant}` });
    else if (rest.toUpperCase().startsWith('DB_POOL_')) found.push({ key });
  }
  return found.sort((a, b) => (a.key < b.key ? -1 : 1));
}

/** What a configuration that is valid still gets wrong: look-alike variables, a URL's connect_timeout that pg does not read. */
function startUpWarnings(
  env: Record<string, string | undefined>,
  prefix: string,
  url: string | undefined,
  urlKey: string,
  connectTimeout: string | undefined,
): string[] {
  const warnings: string[] = [];
  const lookalikes = lookalikeKeys(env, prefix);
  if (lookalikes.length > 0)
    warnings.push(
      `db-pool: environment variables that look like db-pool's are not read and change nothing: ` +
        `${lookalikes.map((l) => (l.meant ? `${l.key} (did you mean ${l.meant}?)` : l.key)).join(', ')}; if another program reads them, ignore this warning`,
    );
  const timeout = url === undefined ? undefined : splitUrl(url)?.params.findLast((p) => p.name === 'connect_timeout');
  if (timeout && timeout.value !== '' && connectTimeout !== undefined)
    warnings.push(
      `db-pool: connect_timeout=${timeout.value.trim()} in ${urlKey} is not read (pg does not read it): connections are given ${connectTimeout} to open`,
    );
  return warnings;
}

/** Warnings already logged, by environment: createDbPool, the module and each replica's pool resolve the same one again. */
const logged = new WeakMap<object, Set<string>>();

function warnOnce(logger: DbPoolLogger, env: object, warnings: readonly string[]): void {
  const seen = logged.get(env) ?? new Set<string>();
  logged.set(env, seen);
  for (const warning of warnings) {
    if (seen.has(warning)) continue;
    seen.add(warning);
    logger.warn(warning);
  }
}

/** The one start-up line that shows the effective configuration (URL redacted). */
export function describeConfig(config: DbPoolConfig): string {
  return (
    `db-pool "${config.name}" configured: url=${config.redactedUrl}, pool_size=${config.poolSize}, ` +
    `max_overflow=${config.maxOverflow}, total_max=${config.poolSize + config.maxOverflow}, ` +
    `timeout=${config.poolTimeoutMs / 1000}s, recycle=${config.recycleMs / 1000}s, pre_ping=${config.prePing}, ` +
    `connect_timeout=${config.connectTimeoutMs / 1000}s, overflow_idle_timeout=${config.overflowIdleTimeoutMs / 1000}s, ` +
    `leak_threshold=${config.leakThresholdMs > 0 ? `${config.leakThresholdMs / 1000}s, leak_stack_rate=${config.leakStackRate}/s` : 'off'}, reset_session=${config.resetSession}, application_name=${config.applicationName}` +
    (config.adaptive
      ? `, adaptive_limit=${Math.min(config.adaptiveMin, config.poolSize + config.maxOverflow)}..${config.poolSize + config.maxOverflow}`
      : '') +
    (config.maxWaiting > 0 ? `, max_waiting=${config.maxWaiting}` : '') +
    (config.replicaUrls.length > 0
      ? `, replicas=${config.replicaUrls.map(redactUrl).join(' ')}, replica_max_lag=${config.replicaMaxLagMs}ms, replica_consistency=${config.replicaConsistency}`
      : '')
  );
}
