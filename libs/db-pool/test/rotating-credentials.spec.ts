/**
 * #21 item 5: credentials that rotate without a restart, against an embedded server that checks
 * passwords (scram-sha-256). A password function (sync or async, as pg allows: a cloud IAM token)
 * and DB_PASSWORD_FILE (a mounted secret) are asked again for each new connection: after the
 * role's password changes and the secret follows, new connections use the new one and those
 * already open keep working. A failure names the file, never the secret.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inspect } from 'node:util';
import pg from 'pg';
import { createDbPool, DbPool, DbPoolConfigError, type DbPoolLogger, PoolConnectError } from '../src/index.js';
import { type EmbeddedPostgres, startEmbeddedPostgres } from '../../../tools/embedded-db.mjs';
import { eventually } from '../../../tools/wait.mjs';

const ROLE = 'rotating_app';
const SECRETS = ['first-s3cret-Ω', 'second-s3cret-Ж', 'third-s3cret-ß'];

let server: EmbeddedPostgres;
let admin: pg.Client;
let dir: string;

beforeAll(async () => {
  server = await startEmbeddedPostgres({ authMethod: 'scram-sha-256', password: 'admin-pw' });
  admin = new pg.Client({ connectionString: server.url });
  await admin.connect();
  dir = await mkdtemp(join(tmpdir(), 'db-pool-secret-'));
});
afterAll(async () => {
  await admin?.end();
  await server?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});
beforeEach(async () => {
  await admin.query(`DROP ROLE IF EXISTS ${ROLE}`);
  await admin.query(`CREATE ROLE ${ROLE} LOGIN PASSWORD '${SECRETS[0]}'`);
});
const rotate = (secret: string) => admin.query(`ALTER ROLE ${ROLE} PASSWORD '${secret}'`);
/** The role's backends the server has now. */
const backends = async () => (await admin.query('SELECT pid FROM pg_stat_activity WHERE usename = $1', [ROLE])).rows.length;

// A test's backends are gone before the next counts its own: a backend leaves pg_stat_activity as it exits, a moment after it is told to.
afterEach(async () => {
  await admin.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1', [ROLE]);
  if (!(await eventually(async () => (await backends()) === 0))) throw new Error(`backends of ${ROLE} still there after the test`);
});

function recordingLogger(lines: string[]): DbPoolLogger {
  const push = (m: unknown) => lines.push(String(m));
  return { log: push, warn: push, debug: push };
}

function expectNoSecret(...texts: unknown[]): void {
  for (const text of texts) {
    const shown = typeof text === 'string' ? text : inspect(text, { depth: 6 });
    for (const secret of SECRETS) expect(shown).not.toContain(secret);
  }
}

describe('a password function (pg allows one: a cloud IAM token)', () => {
  it.each([
    ['async, on the drop-in', 'async'],
    ['sync, on the drop-in', 'sync'],
  ])(
    '%s: asked for each new connection; after a rotation new connections use the new secret and open ones keep working',
    async (_, kind) => {
      let current = SECRETS[0];
      let asked = 0;
      const password = kind === 'async' ? async () => (asked++, current) : () => (asked++, current);
      const pool = new DbPool({ host: server.host, port: server.port, user: ROLE, database: server.database, password, max: 3 });
      try {
        const first = await pool.connect();
        expect(asked).toBe(1);
        await rotate(SECRETS[1]);
        current = SECRETS[1];
        const second = await pool.connect(); // the first is out: a new connection
        expect(asked).toBe(2);
        expect((await first.query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
        expect((await second.query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
        first.release();
        second.release();
        // Reused connections do not ask again.
        await pool.query('SELECT 1');
        expect(asked).toBe(2);
        expect(await backends()).toBe(2);
      } finally {
        await pool.end();
      }
    },
  );

  it('through createDbPool: the option takes a function too', async () => {
    let current = SECRETS[0];
    const pool = await createDbPool({
      url: `postgres://${ROLE}@${server.host}:${server.port}/${server.database}`,
      password: async () => current,
      poolSize: 1,
      maxOverflow: 2,
      env: {},
    });
    try {
      const held = await pool.connect();
      await rotate(SECRETS[1]);
      current = SECRETS[1];
      const fresh = await pool.connect();
      await expect(Promise.all([held.query('SELECT 1'), fresh.query('SELECT 1')])).resolves.toHaveLength(2);
      held.release();
      fresh.release();
    } finally {
      await pool.end();
    }
  });
});

describe('DB_PASSWORD_FILE (a mounted secret)', () => {
  it('reads the file for each new connection: after the role and the file change, new connections use the new secret and open ones keep working', async () => {
    const file = join(dir, 'password');
    await writeFile(file, `${SECRETS[0]}\n`); // a trailing newline, as `echo` writes it
    const lines: string[] = [];
    const pool = await createDbPool({
      env: { DATABASE_URL: `postgres://${ROLE}@${server.host}:${server.port}/${server.database}`, DB_PASSWORD_FILE: file },
      poolSize: 1,
      maxOverflow: 3,
      logger: recordingLogger(lines),
    });
    try {
      const held = await pool.connect();
      await rotate(SECRETS[1]);
      await writeFile(file, SECRETS[1]);
      const fresh = await pool.connect(); // the one warmed connection is out: a new one, with the new secret
      await expect(held.query('SELECT 1')).resolves.toBeDefined(); // opened with the old secret, still working
      await expect(fresh.query('SELECT 1')).resolves.toBeDefined();

      // The role moves on and the file does not: the failure names the file and the server's reason.
      await rotate(SECRETS[2]);
      const err = await pool.connect().then(
        (c) => (c.release(), undefined),
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(PoolConnectError);
      expect((err as Error).message).toContain(`password authentication failed for user "${ROLE}"`);
      expect((err as Error).message).toContain(`(password from DB_PASSWORD_FILE "${file}")`);
      held.release();
      fresh.release();
      expectNoSecret(err, lines.join('\n'), pool.state());
    } finally {
      await pool.end();
    }
  });

  it('a file that went away fails the connection with its name and the reason; the open connections keep working', async () => {
    const file = join(dir, 'vanishing');
    await writeFile(file, SECRETS[0]);
    const configured = await createDbPool({
      env: { DATABASE_URL: `postgres://${ROLE}@${server.host}:${server.port}/${server.database}`, DB_PASSWORD_FILE: file },
      poolSize: 1,
      maxOverflow: 1,
    });
    try {
      const held = await configured.connect();
      await rm(file);
      const err = await configured.connect().then(
        (c) => (c.release(), undefined),
        (e: unknown) => e,
      );
      expect((err as Error).message).toContain(`the password file DB_PASSWORD_FILE "${file}" could not be read (ENOENT)`);
      await expect(held.query('SELECT 1')).resolves.toBeDefined();
      held.release();
      expectNoSecret(err);
    } finally {
      await configured.end();
    }
  });

  it("a secret of reserved and non-ASCII characters is read as written (no URL encoding), and a URL's empty password ('app:@host') leaves the file in force", async () => {
    const odd = `p@ss:w/rd#?% é'"\\ ${SECRETS[0]}`;
    await admin.query(`ALTER ROLE ${ROLE} PASSWORD ${admin.escapeLiteral(odd)}`);
    const file = join(dir, 'odd');
    await writeFile(file, `${odd}\r\n`); // a Windows line end, as an editor there leaves it
    const lines: string[] = [];
    for (const userinfo of [ROLE, `${ROLE}:`]) {
      const pool = await createDbPool({
        env: { DATABASE_URL: `postgres://${userinfo}@${server.host}:${server.port}/${server.database}`, DB_PASSWORD_FILE: file },
        poolSize: 1,
        logger: recordingLogger(lines),
      });
      try {
        expect((await pool.query('SELECT current_user AS u')).rows).toEqual([{ u: ROLE }]);
      } finally {
        await pool.end();
      }
    }
    for (const text of lines) expect(text).not.toContain('w/rd#');
  });

  it('an empty file is said to be empty (not sent as an empty password)', async () => {
    const file = join(dir, 'empty');
    await writeFile(file, '\n');
    const err = await createDbPool({
      env: { DATABASE_URL: `postgres://${ROLE}@${server.host}:${server.port}/${server.database}`, DB_PASSWORD_FILE: file },
      poolSize: 1,
    }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PoolConnectError);
    expect((err as Error).message).toContain(`the password file DB_PASSWORD_FILE "${file}" is empty`);
  });

  it('bad configurations are refused at start-up, naming the key: no such file, a password given twice', async () => {
    const file = join(dir, 'present');
    await writeFile(file, SECRETS[0]);
    const base = `postgres://${ROLE}@${server.host}:${server.port}/${server.database}`;
    const problems = async (env: Record<string, string>, extra: object = {}) => {
      const err = await createDbPool({ env, ...extra }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(DbPoolConfigError);
      expectNoSecret(err);
      return (err as DbPoolConfigError).problems;
    };
    expect(await problems({ DATABASE_URL: base, DB_PASSWORD_FILE: join(dir, 'nope') })).toEqual([
      `DB_PASSWORD_FILE=${JSON.stringify(join(dir, 'nope'))}: must be the path of a readable file (ENOENT)`,
    ]);
    expect(await problems({ DATABASE_URL: base, DB_PASSWORD_FILE: dir })).toEqual([
      `DB_PASSWORD_FILE=${JSON.stringify(dir)}: must be the path of a readable file (not a file)`,
    ]);
    expect(
      await problems({
        DATABASE_URL: `postgres://${ROLE}:${encodeURIComponent(SECRETS[0])}@${server.host}:${server.port}/db`,
        DB_PASSWORD_FILE: file,
      }),
    ).toEqual(["DB_PASSWORD_FILE: not with a password in the URL as well (pg would use the URL's); remove one of them"]);
    expect(await problems({ DATABASE_URL: base, DB_PASSWORD_FILE: file }, { password: SECRETS[1] })).toEqual([
      'DB_PASSWORD_FILE: not with the password option as well; give the password one way',
    ]);
  });
});
