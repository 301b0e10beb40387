/**
 * #19 item 7: URLs as libpq and pg read them. Each form of libpq's connection-URI documentation
 * and of pg-connection-string's tests, with the host list and the per-host options the pool
 * derives (`connectTargetOf`), checked against pg's own reading (`pg.Client`) and, where libpq
 * reads it alike, against psql connecting with the same string: the same server, the same port.
 * Where the pool refuses a form, its error names the form and never the password.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import pg from 'pg';
import { DbPool, DbPoolConfigError, resolveDbPoolConfig } from '../src/index.js';
import { connectTargetOf } from '../src/pool/hosts.js';
import { freePort } from '../../../tools/embedded-db.mjs';
import { databaseUrl } from './support/db.js';

const SECRET = 'Tr0ub4dor';
const server = new URL(databaseUrl());
const H = server.hostname;
const P = Number(server.port || 5432);
const D = server.pathname.slice(1) || 'postgres';
const USER = decodeURIComponent(server.username) || 'postgres';
const PASSWORD = decodeURIComponent(server.password);
/** `user:password@` of the test server, and the same as query parameters. */
const AUTH = `${server.username || 'postgres'}${server.password ? `:${server.password}` : ''}@`;
const AUTHQ = `user=${encodeURIComponent(USER)}${PASSWORD ? `&password=${encodeURIComponent(PASSWORD)}` : ''}`;
const SOCK = '/var/run/postgresql';
/** The test server's own socket is there (a system PostgreSQL); an embedded one listens on TCP only. */
const socketIsServer = existsSync(`${SOCK}/.s.PGSQL.${P}`);
const CLOSED = await freePort();

/**
 * How libpq reads the form: `same` (psql and the pool both connect to the same server and port,
 * or both fail), or why it reads it otherwise (the pool follows pg, which connects).
 */
type Libpq = 'same' | { differs: string } | 'not tried';

interface Form {
  url: string;
  /** The addresses the pool derives, in order. */
  hosts?: string[];
  /** The pool refuses the form: its error matches this. */
  refused?: RegExp;
  libpq: Libpq;
  /** Options besides the URL (pg's socket-folder form takes the user from them). */
  options?: pg.ClientConfig;
}

const FORMS: [string, Form][] = [
  // libpq's documented URIs
  ['host only (database defaults to the user)', { url: `postgresql://${AUTH}${H}`, hosts: [`${H}:5432`], libpq: 'same' }],
  ['host and port', { url: `postgresql://${AUTH}${H}:${P}`, hosts: [`${H}:${P}`], libpq: 'same' }],
  ['host and database, default port', { url: `postgresql://${AUTH}${H}/${D}`, hosts: [`${H}:5432`], libpq: 'same' }],
  [
    'connect_timeout and application_name parameters',
    { url: `postgresql://${AUTH}${H}:${P}/${D}?connect_timeout=10&application_name=myapp`, hosts: [`${H}:${P}`], libpq: 'same' },
  ],
  [
    'host list with ports, target_session_attrs=any',
    {
      url: `postgresql://${AUTH}${H}:${CLOSED},${H}:${P}/${D}?target_session_attrs=any&application_name=myapp`,
      hosts: [`${H}:${CLOSED}`, `${H}:${P}`],
      libpq: 'same',
    },
  ],
  [
    'three hosts',
    {
      url: `postgres://${AUTH}${H}:${CLOSED},${H}:${P},${H}:${P}/${D}`,
      hosts: [`${H}:${CLOSED}`, `${H}:${P}`, `${H}:${P}`],
      libpq: 'same',
    },
  ],
  ['empty authority, host= and port=', { url: `postgresql:///${D}?host=${H}&port=${P}&${AUTHQ}`, hosts: [`${H}:${P}`], libpq: 'same' }],
  ['empty authority with user-info, host=', { url: `postgresql://${AUTH}/${D}?host=${H}&port=${P}`, hosts: [`${H}:${P}`], libpq: 'same' }],
  [
    'options parameter, percent-encoded',
    { url: `postgresql://${AUTH}${H}:${P}/${D}?options=-c%20synchronous_commit%3Doff`, hosts: [`${H}:${P}`], libpq: 'same' },
  ],
  ['IPv6 loopback in brackets', { url: `postgresql://${AUTH}[::1]:${P}/${D}`, hosts: [`[::1]:${P}`], libpq: 'same' }],
  [
    'IPv6 address in brackets, default port',
    { url: `postgresql://${AUTH}[2001:db8::1234]/database`, hosts: ['[2001:db8::1234]:5432'], libpq: 'not tried' },
  ],
  ['socket folder in host=', { url: `postgresql:///${D}?host=${SOCK}&${AUTHQ}`, hosts: [`${SOCK}:5432`], libpq: 'same' }],
  [
    'socket folder in host=, percent-encoded',
    { url: `postgresql:///${D}?host=%2Fvar%2Frun%2Fpostgresql&${AUTHQ}`, hosts: [`${SOCK}:5432`], libpq: 'same' },
  ],
  [
    'socket folder as the host, percent-encoded',
    { url: `postgresql://${AUTH}%2Fvar%2Frun%2Fpostgresql/${D}`, hosts: [`${SOCK}:5432`], libpq: 'same' },
  ],
  // libpq's host and port lists
  [
    'port list in port=',
    { url: `postgresql://${AUTH}${H},${H}/${D}?port=${CLOSED},${P}`, hosts: [`${H}:${CLOSED}`, `${H}:${P}`], libpq: 'same' },
  ],
  ['one port= for every host', { url: `postgresql://${AUTH}${H},${H}/${D}?port=${P}`, hosts: [`${H}:${P}`, `${H}:${P}`], libpq: 'same' }],
  [
    'host and port lists in host= and port=',
    { url: `postgresql:///${D}?host=${H},${H}&port=${CLOSED},${P}&${AUTHQ}`, hosts: [`${H}:${CLOSED}`, `${H}:${P}`], libpq: 'same' },
  ],
  [
    'host= over the authority, whose port counts',
    { url: `postgresql://${AUTH}nowhere.invalid:${P}/${D}?host=${H}`, hosts: [`${H}:${P}`], libpq: 'same' },
  ],
  ['port= over the authority port', { url: `postgresql://${AUTH}${H}:${P}/${D}?port=${CLOSED}`, hosts: [`${H}:${CLOSED}`], libpq: 'same' }],
  ['empty port (the default)', { url: `postgresql://${AUTH}${H}:/${D}`, hosts: [`${H}:5432`], libpq: 'same' }],
  [
    'target_session_attrs=read-write',
    { url: `postgresql://${AUTH}${H}:${P}/${D}?target_session_attrs=read-write`, hosts: [`${H}:${P}`], libpq: 'same' },
  ],
  [
    'two ports for one host',
    {
      url: `postgresql://${AUTH}${H}/${D}?port=${P},${P}`,
      refused: /^the URL gives 2 ports for 1 host: give one port for all of them or one per host/,
      libpq: 'same',
    },
  ],
  [
    'hosts both in the authority and in host=',
    {
      url: `postgresql://${AUTH}a.invalid,b.invalid/${D}?host=${H}`,
      refused: /^the URL names hosts both before its path and in host=/,
      libpq: 'same',
    },
  ],
  [
    'a port past 65535',
    {
      url: `postgresql://${AUTH}${H}:99999/${D}`,
      refused: new RegExp(`^host "${H}:99999" in the URL: the port must be an integer from 1 to 65535$`),
      libpq: 'same',
    },
  ],
  [
    'port= that is a word',
    {
      url: `postgresql://${AUTH}${H}:${P}/${D}?port=abc`,
      refused: /^port="abc" in the URL: the port must be an integer from 1 to 65535$/,
      libpq: 'same',
    },
  ],
  [
    'port= in exponent notation',
    {
      url: `postgresql://${AUTH}${H}/${D}?port=1e1`,
      refused: /^port="1e1" in the URL: the port must be an integer from 1 to 65535$/,
      libpq: 'same',
    },
  ],
  [
    'a bad port in a port= list',
    {
      url: `postgresql://${AUTH}${H},${H}/${D}?port=${P},+${P}`,
      refused: new RegExp(`^port="${P},\\+${P}" in the URL: each port must be an integer from 1 to 65535$`),
      libpq: { differs: "libpq reads '+5432' as 5432; the pool takes digits only, as in the authority (db:+5432)" },
    },
  ],
  [
    'an empty host in a list',
    {
      url: `postgresql://${AUTH}${H}:${CLOSED},,${H}:${P}/${D}`,
      refused: /^host "" in the URL: each host must be a name or address/,
      libpq: {
        differs: "libpq reads an empty item as its default host (a socket); the pool asks for the host rather than guess pg's (localhost)",
      },
    },
  ],
  // sslmode (this server runs without TLS)
  ['sslmode=disable', { url: `postgresql://${AUTH}${H}:${P}/${D}?sslmode=disable`, hosts: [`${H}:${P}`], libpq: 'same' }],
  ['sslmode=require', { url: `postgresql://${AUTH}${H}:${P}/${D}?sslmode=require`, hosts: [`${H}:${P}`], libpq: 'same' }],
  ['sslmode=verify-full', { url: `postgresql://${AUTH}${H}:${P}/${D}?sslmode=verify-full`, hosts: [`${H}:${P}`], libpq: 'same' }],
  [
    'sslmode=prefer',
    {
      url: `postgresql://${AUTH}${H}:${P}/${D}?sslmode=prefer`,
      hosts: [`${H}:${P}`],
      libpq: { differs: "pg 8 treats prefer as verify-full (its SECURITY WARNING): no fallback to a plain connection as libpq's" },
    },
  ],
  [
    'sslmode=no-verify (pg only)',
    {
      url: `postgresql://${AUTH}${H}:${P}/${D}?sslmode=no-verify`,
      hosts: [`${H}:${P}`],
      libpq: { differs: 'libpq has no sslmode no-verify' },
    },
  ],
  [
    'uselibpqcompat=true&sslmode=require (pg only)',
    {
      url: `postgresql://${AUTH}${H}:${P}/${D}?uselibpqcompat=true&sslmode=require`,
      hosts: [`${H}:${P}`],
      libpq: { differs: 'libpq refuses the parameter uselibpqcompat' },
    },
  ],
  // TLS and timeout parameters pg or libpq cannot read: refused, not taken as something else
  [
    'sslmode misspelt (disabled), which pg takes as verify-full',
    {
      url: `postgresql://${AUTH}${H}:${P}/${D}?sslmode=disabled`,
      refused:
        /^sslmode="disabled" in the URL: must be one of disable, prefer, require, verify-ca, verify-full \(libpq's and pg's\) or no-verify \(pg's\): pg takes any other value, libpq's allow included, as verify-full$/,
      libpq: 'same',
    },
  ],
  [
    'sslmode=bogus',
    {
      url: `postgresql://${AUTH}${H}:${P}/${D}?sslmode=bogus`,
      refused: /^sslmode="bogus" in the URL: must be one of disable, /,
      libpq: 'same',
    },
  ],
  [
    "sslmode=allow (libpq's; pg takes it as verify-full)",
    {
      url: `postgresql://${AUTH}${H}:${P}/${D}?sslmode=allow`,
      refused: /^sslmode="allow" in the URL: must be one of .*libpq's allow included, as verify-full$/,
      libpq: { differs: 'libpq tries a plain connection first, then TLS' },
    },
  ],
  [
    'sslmode=no-verify with uselibpqcompat=true',
    {
      url: `postgresql://${AUTH}${H}:${P}/${D}?uselibpqcompat=true&sslmode=no-verify`,
      refused:
        /^sslmode="no-verify" in the URL: with uselibpqcompat=true, must be one of disable, prefer, require, verify-ca, verify-full: pg takes any other value, no-verify included, as verify-full$/,
      libpq: 'same',
    },
  ],
  [
    'ssl=false, which pg takes as TLS on',
    {
      url: `postgresql://${AUTH}${H}:${P}/${D}?ssl=false`,
      refused:
        /^ssl="false" in the URL: must be one of true, 1 \(TLS, verified\), 0 \(none\) or no-verify: pg takes any other value, false included, as TLS on$/,
      libpq: 'same',
    },
  ],
  [
    'connect_timeout that is a word',
    {
      url: `postgresql://${AUTH}${H}:${P}/${D}?connect_timeout=abc`,
      refused:
        /^connect_timeout="abc" in the URL: must be an integer number of seconds, as libpq reads it \(0 or less: no limit\); pg does not read it/,
      libpq: 'same',
    },
  ],
  [
    'connect_timeout=0 (no limit, as libpq reads it)',
    { url: `postgresql://${AUTH}${H}:${P}/${D}?connect_timeout=0`, hosts: [`${H}:${P}`], libpq: 'same' },
  ],
  [
    'ssl=0 (no TLS)',
    { url: `postgresql://${AUTH}${H}:${P}/${D}?ssl=0`, hosts: [`${H}:${P}`], libpq: { differs: 'libpq has no ssl parameter' } },
  ],
  // user and password
  [
    'percent-encoded user',
    { url: `postgresql://${encodeAll(USER)}${PASSWORD ? `:${server.password}` : ''}@${H}:${P}/${D}`, hosts: [`${H}:${P}`], libpq: 'same' },
  ],
  [
    'percent-encoded password with reserved characters',
    { url: `postgresql://${USER}:p%40ss%2Fw%3Ard%23%3F%20x@${H}:${P}/${D}`, hosts: [`${H}:${P}`], libpq: 'same' },
  ],
  ["a raw ':' in the password", { url: `postgresql://${USER}:pa:ss@${H}:${P}/${D}`, hosts: [`${H}:${P}`], libpq: 'same' }],
  ['an empty password', { url: `postgresql://${USER}:@${H}:${P}/${D}`, hosts: [`${H}:${P}`], libpq: 'same' }],
  [
    "a raw '@' in the password",
    {
      url: `postgresql://${USER}:p@ss@${H}:${P}/${D}`,
      hosts: [`${H}:${P}`],
      libpq: { differs: 'libpq ends the user-info at the first \'@\' (host "ss@…"); pg, and the pool, at the last' },
    },
  ],
  [
    "a raw '#' in the password",
    {
      url: `postgresql://${USER}:${SECRET.slice(0, 5)}#${SECRET.slice(5)}@${H}:${P}/${D}`,
      refused: /^an '@' after the host: percent-encode/,
      libpq: { differs: "libpq reads a raw '#' in the password; pg cannot (the WHATWG parser ends the authority there)" },
    },
  ],
  [
    "a raw '/' in the password",
    {
      url: `postgresql://${USER}:${SECRET.slice(0, 5)}/${SECRET.slice(5)}@${H}:${P}/${D}`,
      refused: /^an '@' after the host: percent-encode/,
      libpq: 'same',
    },
  ],
  // pg's own forms
  ['socket: form', { url: `socket:${SOCK}?db=${D}&${AUTHQ}`, hosts: [`${SOCK}:5432`], libpq: { differs: 'libpq has no socket: form' } }],
  [
    'socket:// form with user-info and encoding',
    { url: `socket://${AUTH}${SOCK}?db=${D}&encoding=utf8`, hosts: [`${SOCK}:5432`], libpq: { differs: 'libpq has no socket: form' } },
  ],
  [
    'a socket folder and a database',
    {
      url: `${SOCK} ${D}`,
      hosts: [`${SOCK}:5432`],
      options: { user: USER, password: PASSWORD || undefined },
      libpq: { differs: "libpq's keyword form would need host= and dbname=" },
    },
  ],
  [
    'no host at all (pg: PGHOST, else localhost)',
    {
      url: 'postgresql://',
      hosts: [`${pg.defaults.host}:${pg.defaults.port}`],
      libpq: { differs: 'libpq goes to its socket, pg to localhost' },
    },
  ],
  [
    "libpq's keyword/value form",
    {
      url: `host=${H} port=${P} dbname=${D} user=${USER} password=${SECRET}`,
      refused: /^a keyword\/value connection string \(host=… dbname=…\) is libpq's form, which pg does not read/,
      libpq: { differs: 'libpq reads keyword/value strings; pg reads URLs only' },
    },
  ],
  [
    'another scheme',
    {
      url: `mysql://${USER}:${SECRET}@${H}/${D}`,
      refused: /^the connection string is not a postgres:\/\/ or postgresql:\/\/ URL/,
      libpq: 'same',
    },
  ],
];

function encodeAll(text: string): string {
  return [...Buffer.from(text)].map((b) => `%${b.toString(16).toUpperCase().padStart(2, '0')}`).join('');
}

interface Reached {
  ok: boolean;
  /** inet_server_addr() ('' over a socket) and the server's port. */
  where?: string;
  error?: string;
}

const SQL = "select coalesce(host(inet_server_addr()), '') || '|' || current_setting('port')";

/** psql with the string and nothing else of the environment (no PG* variables). */
function psql(url: string): Promise<Reached> {
  return new Promise((resolve) => {
    execFile(
      'psql',
      [url, '-XAtc', SQL],
      { env: { PATH: process.env.PATH, PGCONNECT_TIMEOUT: '3' }, timeout: 10_000 },
      (err, stdout, stderr) => resolve(err ? { ok: false, error: stderr.trim() } : { ok: true, where: stdout.trim() }),
    );
  });
}

async function throughPool(url: string, options: pg.ClientConfig = {}): Promise<Reached & { up?: string }> {
  const pool = new DbPool({ connectionString: url, max: 1, connectionTimeoutMillis: 3_000, ...options });
  try {
    const { rows } = await pool.query<{ where: string }>(`${SQL} AS where`);
    return { ok: true, where: rows[0].where, up: pool.hosts().find((h) => h.state === 'up')?.address };
  } catch (err) {
    return { ok: false, error: (err as Error).message };
  } finally {
    await pool.end();
  }
}

const hasPsql = await new Promise<boolean>((resolve) => execFile('psql', ['--version'], (err) => resolve(!err)));

describe('connection strings as libpq and pg read them', () => {
  it('the table covers at least 25 forms, each either read or refused', () => {
    expect(FORMS.length).toBeGreaterThanOrEqual(25);
    for (const [, form] of FORMS) expect(form.hosts === undefined).toBe(form.refused !== undefined);
  });

  describe.each(FORMS.filter(([, f]) => f.hosts))('%s', (_name, form) => {
    it('gives the host list libpq documents, and each host pg options that pg reads as that host and port, with the rest of the URL as pg reads it', () => {
      const target = connectTargetOf({ connectionString: form.url, ...form.options });
      expect(target.hosts.map((h) => h.address)).toEqual(form.hosts);
      let original: pg.Client | undefined;
      try {
        original = new pg.Client({ connectionString: form.url, ...form.options });
      } catch {
        original = undefined; // pg cannot read a host list; each host's own string it can
      }
      for (const host of target.hosts) {
        const client = new pg.Client(target.clientConfig(host));
        expect({ host: client.host, port: client.port }).toEqual({ host: host.host, port: host.port });
        if (original)
          expect({ user: client.user, database: client.database, ssl: client.ssl }).toEqual({
            user: original.user,
            database: original.database,
            ssl: original.ssl,
          });
      }
      // A single host pg reads from the original string is the host the pool names.
      if (original && target.hosts.length === 1)
        expect(`${original.host.includes(':') ? `[${original.host}]` : original.host}:${original.port}`).toBe(form.hosts![0]);
    });

    const connects = !form.hosts!.some((h) => h.startsWith(SOCK)) || socketIsServer;
    if (form.libpq === 'same')
      (hasPsql && connects ? it : it.skip)('psql and the pool reach the same server and port, or both fail', async () => {
        const [viaPsql, viaPool] = await Promise.all([psql(form.url), throughPool(form.url, form.options)]);
        expect({ ok: viaPool.ok, where: viaPool.where }).toEqual({ ok: viaPsql.ok, where: viaPsql.where });
        if (viaPool.ok) {
          // …and the pool names the host it reached.
          const [addr, port] = viaPool.where!.split('|');
          expect(viaPool.up).toBe(addr === '' ? `${SOCK}:${port}` : `${addr}:${port}`);
        }
      });
    else if (form.libpq !== 'not tried')
      (connects ? it : it.skip)(`the pool connects where pg reads it, and names that host (${form.libpq.differs})`, async () => {
        const viaPool = await throughPool(form.url, form.options);
        const pgReads = new pg.Client({ connectionString: form.url, ...form.options });
        if (!viaPool.ok) {
          // pg fails the same way on its own (sslmode=prefer and friends on a server without TLS).
          const alone = new pg.Client({ connectionString: form.url, ...form.options, connectionTimeoutMillis: 3_000 });
          const err = await alone.connect().then(
            () => undefined,
            (e: unknown) => e as Error,
          );
          await alone.end().catch(() => {});
          expect(viaPool.error).toContain(err!.message);
          return;
        }
        const [addr, port] = viaPool.where!.split('|');
        expect(viaPool.up).toBe(addr === '' ? `${pgReads.host}:${port}` : `${addr}:${port}`);
      });
  });

  describe.each(FORMS.filter(([, f]) => f.refused))('%s', (_name, form) => {
    it('is refused by the drop-in and the environment alike, naming the form and not the password', () => {
      expect(() => connectTargetOf({ connectionString: form.url })).toThrow(form.refused);
      let dropIn: unknown;
      try {
        new DbPool({ connectionString: form.url });
      } catch (err) {
        dropIn = err;
      }
      expect(dropIn).toBeInstanceOf(DbPoolConfigError);
      const [problem] = (dropIn as DbPoolConfigError).problems;
      expect(problem.startsWith('connectionString: ') && form.refused!.test(problem.slice('connectionString: '.length))).toBe(true);
      let message = '';
      try {
        resolveDbPoolConfig({ env: { DATABASE_URL: form.url } });
      } catch (err) {
        expect(err).toBeInstanceOf(DbPoolConfigError);
        message = (err as Error).message;
      }
      expect(message).toMatch(/^Invalid db-pool configuration/);
      for (const text of [message, (dropIn as Error).message])
        for (const piece of ['Tr0ub', 'ub4do', '4dor']) expect(text).not.toContain(piece);
    });

    if (form.libpq === 'same')
      (hasPsql ? it : it.skip)('libpq refuses it too', async () => {
        expect((await psql(form.url)).ok).toBe(false);
      });
  });
});
