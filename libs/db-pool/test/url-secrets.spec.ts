/**
 * #19 item 4: no part of a password in any message. Passwords full of the characters that end a
 * URL's user-info early (`# / ? @ : % [ ] ,`, spaces, non-ASCII), raw and percent-encoded, in
 * every URL form the pool reads, through every path that reads one: the environment
 * (DATABASE_URL, DB_REPLICA_URLS), `createDbPool` and the `new DbPool` drop-in. Not a
 * 4-character piece of the password may show in an error, a log line or `util.inspect`.
 */
import { inspect } from 'node:util';
import fc from 'fast-check';
import pg from 'pg';
import type { DataSource } from 'typeorm';
import { describeConfig } from '../src/config/resolve-config.js';
import { createDbPool, createDbPoolDataSource, DbPool, type DbPoolLogger, resolveDbPoolConfig } from '../src/index.js';
import { type EmbeddedPostgres, freePort, startEmbeddedPostgres } from '../../../tools/embedded-db.mjs';
import { databaseUrl, eventually } from './support/db.js';

/** Fixed, so a run is repeatable; fast-check prints it (and the shrunk case) when the property fails. */
const SEED = 1_904;
const RUNS = 1_000;

// Every password is made of chunks that each start with a non-ASCII "marker": any 4 characters
// in a row hold one, so a 4-character piece of the password can never be a piece of the pool's
// own (ASCII) wording by chance, and a hit is always a leak.
const MARKERS = ['é', 'ø', 'ß', 'Ж', '漢', 'ñ', 'Ω', '🔑'];
const RESERVED = ['#', '/', '?', '@', ':', '%', '[', ']', ',', ' '];
const OTHERS = [...RESERVED, 'a', 'Z', '7', '&', '=', '+', '.', '-', '_', '~'];

const chunk = fc
  .tuple(fc.constantFrom(...MARKERS), fc.array(fc.constantFrom(...OTHERS), { maxLength: 2 }))
  .map(([marker, rest]) => marker + rest.join(''));
/** At least one reserved character, right after the first marker. */
const passwordArb = fc
  .tuple(fc.constantFrom(...RESERVED), fc.array(chunk, { minLength: 2, maxLength: 8 }))
  .map(([reserved, chunks]) => `${[...chunks[0]][0]}${reserved}${chunks.join('').slice([...chunks[0]][0].length)}`);

/** The 4-code-point pieces of the password, and the 4-character pieces of its percent-encodings that hold a byte of a marker. */
function pieces(password: string): string[] {
  const out = new Set<string>();
  const points = [...password];
  for (let i = 0; i + 4 <= points.length; i++) out.add(points.slice(i, i + 4).join(''));
  // encodeURIComponent (how a careful user writes it), encodeURI (how pg re-encodes a URL with a space or a stray %).
  for (const encoded of [encodeURIComponent(password), encodeURI(password)]) {
    for (let i = 0; i + 4 <= encoded.length; i++) {
      const piece = encoded.slice(i, i + 4);
      if (/%[89A-F][0-9A-F]/.test(piece)) out.add(piece);
    }
  }
  return [...out];
}

const TEST_SERVER = new URL(databaseUrl());
const HOST_OF_TEST = TEST_SERVER.hostname;
const PORT_OF_TEST = Number(TEST_SERVER.port || 5432);
const DB_OF_TEST = TEST_SERVER.pathname.slice(1) || 'postgres';
const USER_OF_TEST = TEST_SERVER.username || 'postgres';

const ENCODINGS: Record<string, (password: string) => string> = {
  raw: (p) => p,
  encodeURIComponent: (p) => encodeURIComponent(p),
  encodeURI: (p) => encodeURI(p),
};

type Form = (pw: string) => string;

function formsFor(server: URL, closedPort: number): Record<string, Form> {
  const host = server.hostname;
  const port = Number(server.port || 5432);
  const db = server.pathname.slice(1) || 'postgres';
  const user = decodeURIComponent(server.username) || 'postgres';
  return {
    'single host': (pw) => `postgres://${user}:${pw}@${host}:${port}/${db}`,
    'single host, default port, postgresql://': (pw) => `postgresql://${user}:${pw}@${host}/${db}?sslmode=disable`,
    'host list': (pw) => `postgres://${user}:${pw}@${host}:${closedPort},${host}:${port}/${db}`,
    'host list, target_session_attrs': (pw) =>
      `postgres://${user}:${pw}@${host}:${port},${host}:${port}/${db}?target_session_attrs=read-write&load_balance_hosts=disable`,
    'empty authority, ?host= and ?port=': (pw) => `postgres://${user}:${pw}@/${db}?host=${host}&port=${port}`,
    'port list': (pw) => `postgres://${user}:${pw}@${host},${host}/${db}?port=${closedPort},${port}`,
    'IPv6 in brackets': (pw) => `postgres://${user}:${pw}@[::1]:${closedPort},${host}:${port}/${db}`,
    'socket folder, percent-encoded': (pw) => `postgres://${user}:${pw}@%2Fvar%2Frun%2Fpostgresql/${db}`,
    'socket: form': (pw) => `socket://${user}:${pw}@/var/run/postgresql?db=${db}`,
    'password parameter': (pw) => `postgres://${user}@${host}:${port}/${db}?password=${pw}&application_name=secrets`,
    'sslpassword parameter': (pw) => `postgres://${user}@${host}:${port}/${db}?sslmode=disable&sslpassword=${pw}`,
  };
}

function capture(into: string[]): DbPoolLogger {
  return {
    log: (m) => into.push(`log ${m}`),
    warn: (m) => into.push(`warn ${m}`),
    debug: (m) => into.push(`debug ${m}`),
  };
}

function describeError(err: unknown): string[] {
  return [String((err as Error)?.message), String((err as Error)?.stack), inspect(err, { depth: 8 })];
}

/** The environment path: DATABASE_URL and DB_REPLICA_URLS. */
function throughEnvironment(url: string, out: string[]): boolean {
  try {
    const config = resolveDbPoolConfig({ name: 'secrets', env: { DATABASE_URL: url, DB_REPLICA_URLS: `${url}, ${url}` } });
    out.push(describeConfig(config), inspect(config, { depth: 8 }), JSON.stringify(config));
    return true;
  } catch (err) {
    out.push(...describeError(err));
    return false;
  }
}

/** The drop-in, built and not connected. */
async function throughDropIn(url: string, out: string[]): Promise<boolean> {
  let pool: DbPool;
  try {
    pool = new DbPool({ connectionString: url, max: 1, log: (m: string) => out.push(`pg-log ${m}`) });
  } catch (err) {
    out.push(...describeError(err));
    return false;
  }
  out.push(inspect(pool.options, { depth: 8 }), JSON.stringify(pool.hosts()), inspect(pool, { depth: 2 }));
  await pool.end();
  return true;
}

/** Connected: createDbPool (its logger captured) and the drop-in's first query. */
async function throughConnect(url: string, out: string[]): Promise<{ connected: number }> {
  let connected = 0;
  const logger = capture(out);
  try {
    const pool = await createDbPool({ url, poolSize: 1, maxOverflow: 0, poolTimeoutSeconds: 3, connectTimeoutSeconds: 2, env: {}, logger });
    try {
      await pool.query('SELECT 1');
      connected++;
      out.push(inspect(pool, { depth: 6 }), JSON.stringify(pool.hosts()));
      // An idle connection lost: the pool logs it, with the driver's message.
      const { rows } = await pool.query<{ pid: number }>('SELECT pg_backend_pid() AS pid');
      const logged = out.length;
      // Terminated from a connection to the same server, wherever the form pointed.
      const admin = new pg.Client({ connectionString: url });
      await admin.connect();
      try {
        await admin.query('SELECT pg_terminate_backend($1)', [rows[0].pid]);
      } finally {
        await admin.end();
      }
      await eventually(() => out.slice(logged).some((line) => line.startsWith('warn ')));
    } finally {
      await pool.end();
    }
  } catch (err) {
    out.push(...describeError(err));
  }
  let dropIn: DbPool | undefined;
  try {
    dropIn = new DbPool({ connectionString: url, max: 1, connectionTimeoutMillis: 2_000, log: (m: string) => out.push(`pg-log ${m}`) });
    await dropIn.query('SELECT 1');
    connected++;
    out.push(inspect(dropIn, { depth: 6 }));
  } catch (err) {
    out.push(...describeError(err));
  } finally {
    await dropIn?.end();
  }
  return { connected };
}

function leaksIn(outputs: string[], password: string): string | undefined {
  for (const piece of pieces(password)) {
    for (const text of outputs) {
      const at = text.indexOf(piece);
      if (at !== -1) return `${JSON.stringify(piece)} of ${JSON.stringify(password)} in: …${text.slice(Math.max(0, at - 200), at + 60)}…`;
    }
  }
  return undefined;
}

describe('no fragment of a password in any message, log line or util.inspect output', () => {
  let forms: Record<string, Form>;
  let trusting: EmbeddedPostgres | undefined;
  beforeAll(async () => {
    // A server of its own that trusts every login: the generated passwords are wrong for any
    // server that checks them, and the property wants pools that connect (and then lose a
    // connection) as well as pools that fail, whichever server the run was given.
    trusting = await startEmbeddedPostgres({ authMethod: 'trust' });
    forms = formsFor(new URL(trusting.url), await freePort());
  });
  afterAll(async () => {
    await trusting?.stop();
  });

  it.each([
    ['a raw "#" and a host list', 'postgres://u:Sup3rS3cret#tail@h1,h2/db'],
    ['a raw "#", one host', 'postgres://u:Sup3rS3cret#tail@h1/db'],
    ['a raw "/", one host', 'postgres://u:Sup3rS3cret/tail@h1/db'],
    ['a raw "?", one host', 'postgres://u:Sup3rS3cret?tail@h1/db'],
    ['a raw "?" before "=", one host', 'postgres://u:Sup3rS3cret?a=tail@h1/db'],
    ['digits, then a raw "/"', 'postgres://u:123456/Sup3rS3cret@h1/db'],
  ])('the drop-in refuses a password with %s, naming the key and the problem and not the password', (_what, url) => {
    let message = '';
    expect(() => {
      try {
        new DbPool({ connectionString: url });
      } catch (err) {
        message = `${(err as Error).message}\n${inspect(err)}`;
        throw err;
      }
    }).toThrow(/- connectionString: .*percent-encode/);
    for (const piece of ['Sup3', 'p3rS', 'S3cr', '3cre', 'tail', '1234', '3456']) expect(message).not.toContain(piece);
  });

  it.each([
    [
      'an empty authority with host=',
      (pw: string) => `postgres://${USER_OF_TEST}:${pw}@/${DB_OF_TEST}?host=${HOST_OF_TEST}&port=${PORT_OF_TEST}`,
    ],
    [
      'a host list',
      (pw: string) => `postgres://${USER_OF_TEST}:${pw}@${HOST_OF_TEST}:${PORT_OF_TEST},${HOST_OF_TEST}:${PORT_OF_TEST}/${DB_OF_TEST}`,
    ],
    ['the socket: form', (pw: string) => `socket://${USER_OF_TEST}:${pw}@/var/run/postgresql?db=${DB_OF_TEST}`],
  ])('a TypeORM DataSource on %s shows no part of the password', async (_form, form) => {
    const password = 'é/ZßaЖ?7ø#Ω@ñ:';
    const url = form(encodeURIComponent(password));
    const dataSource = await createDbPoolDataSource({ url, poolSize: 1, maxOverflow: 0, env: {} }).catch((err: unknown) => err);
    const text =
      dataSource instanceof Error
        ? describeError(dataSource).join('\n')
        : `${inspect(dataSource, { depth: 8 })}\n${JSON.stringify((dataSource as DataSource).options)}`;
    if (!(dataSource instanceof Error)) await (dataSource as DataSource).destroy();
    expect(leaksIn([text], password)).toBeUndefined();
    expect(text).not.toContain(encodeURIComponent(password));
  });

  it(`holds for ${RUNS} passwords in every URL form, raw and encoded, through every path (seed ${SEED})`, async () => {
    const totals = { accepted: 0, refused: 0, connected: 0, logLines: 0 };
    const names = Object.keys(forms);
    await fc.assert(
      fc.asyncProperty(
        passwordArb,
        fc.constantFrom(...names),
        fc.constantFrom(...Object.keys(ENCODINGS)),
        async (password, connectForm, connectEncoding) => {
          const out: string[] = [];
          for (const name of names) {
            for (const encode of Object.values(ENCODINGS)) {
              const url = forms[name](encode(password));
              const ok = throughEnvironment(url, out);
              const built = await throughDropIn(url, out);
              totals[ok ? 'accepted' : 'refused']++;
              totals[built ? 'accepted' : 'refused']++;
            }
          }
          const { connected } = await throughConnect(forms[connectForm](ENCODINGS[connectEncoding](password)), out);
          totals.connected += connected;
          totals.logLines += out.filter((line) => /^(log|warn|debug|pg-log) /.test(line)).length;
          const leak = leaksIn(out, password);
          if (leak) throw new Error(`leak (seed ${SEED}): ${leak}`);
        },
      ),
      { seed: SEED, numRuns: RUNS, endOnFailure: true },
    );
    // The property saw every outcome: forms accepted and refused, pools that connected, and logs.
    expect(totals.accepted).toBeGreaterThan(RUNS);
    expect(totals.refused).toBeGreaterThan(RUNS);
    expect(totals.connected).toBeGreaterThan(RUNS / 4);
    expect(totals.logLines).toBeGreaterThan(0);
  }, 600_000);
});
