#!/usr/bin/env node
// Runs a command with a PostgreSQL to talk to: the server DATABASE_URL names, or, when it is
// unset, an embedded one started here and stopped when the command exits. WITH_DB_POSTGRES_FLAGS
// adds server flags to the embedded one (`-c max_connections=200`), split at spaces.
//   node tools/with-db.mjs <command> [args...]
import { spawn } from 'node:child_process';
import { startEmbeddedPostgres } from './embedded-db.mjs';

const [command, ...args] = process.argv.slice(2);
if (!command) {
  process.stderr.write('usage: node tools/with-db.mjs <command> [args...]\n');
  process.exit(2);
}

let db;
const env = { ...process.env };
if (!env.DATABASE_URL) {
  const flags = (env.WITH_DB_POSTGRES_FLAGS ?? '').split(' ').filter(Boolean);
  db = await startEmbeddedPostgres({ postgresFlags: flags });
  env.DATABASE_URL = db.url;
  process.stderr.write(`with-db: embedded PostgreSQL on 127.0.0.1:${db.port} (data in ${db.dataDir}, removed on exit)\n`);
}

const child = spawn(command, args, { stdio: 'inherit', env, shell: process.platform === 'win32' });
// A terminal's Ctrl-C reaches the whole process group; a SIGTERM sent to us alone is passed on.
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(signal, () => {
    if (child.exitCode === null && child.signalCode === null) child.kill(signal);
  });
}
child.on('error', async (err) => {
  process.stderr.write(`with-db: cannot run ${command}: ${err.message}\n`);
  await db?.stop();
  process.exit(127);
});
child.on('exit', async (code, signal) => {
  await db?.stop();
  process.exit(code ?? (signal === 'SIGINT' || signal === 'SIGTERM' ? 0 : 1));
});
