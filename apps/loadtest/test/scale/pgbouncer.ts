/**
 * A PgBouncer of the scale tests' own (test/scale/pgbouncer.ini), in transaction mode, in front of
 * an embedded server, its server pool given; with the user list `users` (name and password).
 */
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { execFileSync, spawn } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { freePort } from '../../../../tools/embedded-db.mjs';
import { eventually } from '../../../../tools/wait.mjs';

export const hasPgBouncer = (() => {
  try {
    execFileSync('pgbouncer', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
})();

export interface PgBouncer {
  port: number;
  /** A URL through PgBouncer for `user` (the first of the list by default) to `database`. */
  url(database?: string, user?: { name: string; password: string }): string;
  stop(): Promise<void>;
}

export async function startPgBouncer(
  server: { port: number },
  serverPool: number,
  users: { name: string; password: string }[],
): Promise<PgBouncer> {
  if (!hasPgBouncer) throw new Error('pgbouncer is not installed (Debian package pgbouncer); .ci/run installs it');
  const dir = mkdtempSync(join(tmpdir(), 'db-pool-pgbouncer-'));
  chmodSync(dir, 0o777); // pgbouncer runs as the postgres user when we are root
  const port = await freePort();
  const ini = readFileSync(new URL('./pgbouncer.ini', import.meta.url), 'utf8')
    .replaceAll('@PORT@', String(port))
    .replaceAll('@SERVER_PORT@', String(server.port))
    .replaceAll('@DIR@', dir)
    .replaceAll('@POOL@', String(serverPool));
  writeFileSync(join(dir, 'pgbouncer.ini'), ini);
  writeFileSync(join(dir, 'userlist.txt'), users.map((u) => `"${u.name}" "${u.password}"\n`).join(''));
  const args = process.getuid?.() === 0 ? ['-u', 'postgres', join(dir, 'pgbouncer.ini')] : [join(dir, 'pgbouncer.ini')];
  const bouncer = spawn('pgbouncer', args, { stdio: 'ignore' });
  const url = (database = 'postgres', user = users[0]) =>
    `postgres://${user.name}:${encodeURIComponent(user.password)}@127.0.0.1:${port}/${database}`;
  const stop = async () => {
    bouncer.kill('SIGTERM');
    await new Promise((r) => (bouncer.exitCode !== null ? r(null) : bouncer.once('exit', r)));
    rmSync(dir, { recursive: true, force: true });
  };
  let lastError: Error | undefined;
  const accepting = async () => {
    const c = new pg.Client({ connectionString: url() });
    c.on('error', () => {});
    try {
      await c.connect();
      await c.end();
      return true;
    } catch (err) {
      lastError = err as Error;
      return false;
    }
  };
  if (!(await eventually(accepting, 10_000, 100))) {
    const log = readFileSync(join(dir, 'pgbouncer.log'), 'utf8').slice(-2000);
    await stop();
    throw new Error(`pgbouncer did not start: ${lastError?.message}\n${log}`, { cause: lastError });
  }
  return { port, url, stop };
}
