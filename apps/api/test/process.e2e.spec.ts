import { execFileSync, spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { eventually, outputOf, type ProcessOutput } from '../../../tools/wait.mjs';

const root = fileURLToPath(new URL('../../../', import.meta.url));
const main = `${root}apps/api/dist/main.js`;

interface Run {
  child: ChildProcessWithoutNullStreams;
  output: ProcessOutput['text'];
  /** Resolves once the process has printed the text; fails if it ends first. */
  waitFor: ProcessOutput['waitFor'];
  /** The exit code, once everything the process printed has been read. */
  exited: Promise<number | null>;
}

function start(env: Record<string, string>): Run {
  const child = spawn(process.execPath, [main], { cwd: root, env: { PATH: process.env.PATH!, NO_COLOR: '1', ...env } });
  const output = outputOf(child);
  const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
  return { child, output: output.text, waitFor: output.waitFor, exited };
}

async function freePort(): Promise<number> {
  const { createServer } = await import('node:net');
  return new Promise((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
  });
}

describe('the api process: start-up validation and graceful shutdown', () => {
  beforeAll(() => {
    execFileSync(process.execPath, [`${root}node_modules/typescript/bin/tsc`, '-b', `${root}apps/api/tsconfig.app.json`], {
      stdio: 'inherit',
    });
  });

  it('refuses a bad configuration before it listens: exit 1, one message listing every bad key, no password', async () => {
    const port = await freePort();
    const secret = 'Sup3r"secret pw';
    const run = start({
      PORT: String(port),
      DATABASE_URL: `postgres://app:${encodeURIComponent(secret)}@127.0.0.1:5432/test`,
      DB_POOL_SIZE: 'abc',
      DB_MAX_OVERFLOW: '-1',
      DB_POOL_PRE_PING: 'maybe',
    });
    const code = await run.exited;
    const out = run.output();
    expect(code).toBe(1);
    expect(out).toContain('api failed to start: Invalid configuration (3 problems)');
    expect(out).toContain('DB_POOL_SIZE="abc": must be auto or an integer from 1 to 10000');
    expect(out).toContain('DB_MAX_OVERFLOW="-1": must be auto or an integer from 0 to 10000');
    expect(out).toContain('DB_POOL_PRE_PING="maybe": must be one of');
    expect(out).not.toContain('listening');
    expect(out).not.toContain(secret);
    expect(out).not.toContain(encodeURIComponent(secret));
    await expect(fetch(`http://127.0.0.1:${port}/health/live`)).rejects.toThrow();
  });

  it('a URL whose password holds / @ : # % and a space, written raw: the configuration error on stderr shows no fragment of it', async () => {
    const password = 'Zq/9@x:W#7%k Pv';
    const run = start({
      PORT: String(await freePort()),
      DATABASE_URL: `postgres://app:${password}@db.internal:5432/app`,
      DB_PGBOUNCER_ADMIN_URL: `postgres://admin:${password}@pgbouncer:6432/pgbouncer`,
    });
    expect(await run.exited).toBe(1);
    const out = run.output();
    expect(out).toContain('Invalid configuration (2 problems)');
    expect(out).toContain(`DATABASE_URL="postgres://app:***@db.internal:5432/app": an '@' after the host: percent-encode`);
    expect(out).toContain(`DB_PGBOUNCER_ADMIN_URL="postgres://admin:***@pgbouncer:6432/pgbouncer": an '@' after the host: percent-encode`);
    for (let i = 0; i + 3 <= password.length; i++) {
      const piece = password.slice(i, i + 3);
      expect(out.includes(piece) ? `"${piece}" in: ${out}` : '').toBe('');
    }
  });

  it('a DATABASE_URL in libpq keyword form or with a slash missing is refused without its password', async () => {
    for (const given of [
      'host=db.internal port=5432 user=app password=Tr0ub4dor dbname=shop',
      'postgres:/app:Tr0ub4dor@db.internal:5432/shop',
    ]) {
      const run = start({ PORT: String(await freePort()), DATABASE_URL: given });
      expect(await run.exited).toBe(1);
      expect(run.output()).toContain('DATABASE_URL="');
      expect(run.output()).not.toContain('Tr0ub4dor');
    }
  });

  it('refuses a bad PORT and a missing DATABASE_URL in the same message', async () => {
    const run = start({ PORT: 'eighty' });
    expect(await run.exited).toBe(1);
    expect(run.output()).toContain('Invalid configuration (2 problems)');
    expect(run.output()).toContain('PORT="eighty": must be an integer from 1 to 65535');
    expect(run.output()).toContain('DATABASE_URL: not set');
  });

  it('a misspelt pool variable (DB_POOL_MAX_OVERFLOW) starts the api with one warning naming the key it probably meant', async () => {
    const port = await freePort();
    const run = start({ PORT: String(port), DATABASE_URL: process.env.DATABASE_URL!, DB_POOL_SIZE: '1', DB_POOL_MAX_OVERFLOW: '0' });
    try {
      await run.waitFor(`API listening on http://localhost:${port}`);
      expect(run.output()).toContain('DB_POOL_MAX_OVERFLOW (did you mean DB_MAX_OVERFLOW?)');
      expect(run.output().match(/look like db-pool's are not read/g)).toHaveLength(1);
    } finally {
      run.child.kill('SIGTERM');
      await run.exited;
    }
  });

  it('prints where it listens, and on SIGTERM finishes in-flight writes, ends the pool and exits 0', async () => {
    const port = await freePort();
    const appName = `api-shutdown-${process.pid}`;
    const run = start({
      PORT: String(port),
      DATABASE_URL: process.env.DATABASE_URL!,
      DB_POOL_SIZE: '3',
      DB_MAX_OVERFLOW: '3',
      DB_APPLICATION_NAME: appName,
    });
    await run.waitFor(`API listening on http://localhost:${port}`);
    expect(run.output()).toContain('url=postgres://');
    expect(run.output()).toContain('pool_size=3, max_overflow=3, total_max=6');

    const tag = `shutdown-${process.pid}-${Date.now()}`;
    const admin = new pg.Client({ connectionString: process.env.DATABASE_URL });
    await admin.connect();
    try {
      // The writes are held in flight by a lock until the signal has been sent.
      await admin.query('BEGIN');
      await admin.query('LOCK TABLE items IN ACCESS EXCLUSIVE MODE');
      const writes = Array.from({ length: 40 }, (_, i) =>
        fetch(`http://127.0.0.1:${port}/items`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ name: `${tag}-${i}` }),
        })
          .then(async (res) => (res.status === 201 ? ((await res.json()) as { id: number }).id : undefined))
          .catch(() => undefined),
      );
      const waitingOnLock = async () =>
        (
          await admin.query("SELECT count(*)::int AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND application_name = $1", [
            appName,
          ])
        ).rows[0].n as number;
      const inPool = async () => {
        type Pools = { default: { pool_status: { checked_out: number; waiting: number } } };
        const body = (await (await fetch(`http://127.0.0.1:${port}/health/db_pool`)).json()) as { details?: Pools; error?: Pools };
        const { checked_out, waiting } = (body.details ?? body.error)!.default.pool_status;
        return checked_out + waiting;
      };
      // Every write has reached the pool, and those on a connection wait for the lock.
      expect(await eventually(async () => (await inPool()) === 40 && (await waitingOnLock()) > 0, 10_000)).toBe(true);
      run.child.kill('SIGTERM');
      await admin.query('COMMIT');
      const acknowledged = (await Promise.all(writes)).filter((id): id is number => id !== undefined);
      expect(await run.exited).toBe(0);
      expect(run.output()).toContain('shut down');
      expect(acknowledged).toHaveLength(40); // every write in flight at the signal finished

      const { rows } = await admin.query<{ id: number }>('SELECT id FROM items WHERE name LIKE $1', [`${tag}-%`]);
      const stored = new Set(rows.map((r) => r.id));
      for (const id of acknowledged) expect(stored.has(id)).toBe(true);
      // Every session was ended: a backend leaves pg_stat_activity as it exits, just after our Terminate.
      const sessions = async () => (await admin.query('SELECT pid FROM pg_stat_activity WHERE application_name = $1', [appName])).rowCount;
      expect(await eventually(async () => (await sessions()) === 0)).toBe(true);
      await admin.query('DELETE FROM items WHERE name LIKE $1', [`${tag}-%`]);
    } finally {
      await admin.end();
      if (run.child.exitCode === null) run.child.kill('SIGKILL');
    }
  });

  it('during SHUTDOWN_DELAY_MS after SIGTERM, /health/live stays 200 while /health/ready answers 503 shutting_down; then the exit is 0', async () => {
    const port = await freePort();
    const base = `http://127.0.0.1:${port}`;
    const run = start({
      PORT: String(port),
      DATABASE_URL: process.env.DATABASE_URL!,
      DB_POOL_SIZE: '1',
      DB_MAX_OVERFLOW: '0',
      SHUTDOWN_DELAY_MS: '1500',
      DB_APPLICATION_NAME: `api-drain-${process.pid}`,
    });
    await run.waitFor('API listening');
    const probe = (path: string) =>
      fetch(`${base}${path}`).then(
        async (res) => ({ status: res.status, body: await res.text() }),
        () => ({ status: 0, body: '' }), // refused: the server has stopped accepting
      );
    expect((await probe('/health/live')).status).toBe(200);
    expect((await probe('/health/ready')).status).toBe(200);

    run.child.kill('SIGTERM');
    // Both routes, side by side, until the server stops answering either.
    const seen: { ready: { status: number; body: string }; live: { status: number; body: string } }[] = [];
    for (;;) {
      const [ready, live] = await Promise.all([probe('/health/ready'), probe('/health/live')]);
      if (ready.status === 0 && live.status === 0) break;
      seen.push({ ready, live });
      await new Promise((r) => setTimeout(r, 20)); // a probe's pace, not a wait for a state
    }
    const draining = seen.filter((s) => s.ready.status === 503);
    expect(draining.length).toBeGreaterThan(0);
    expect(draining[0].ready.body).toContain('shutting_down');
    // While the process answers, liveness says it is alive: a liveness probe must not kill a draining pod.
    expect(seen.map((s) => s.live.status).filter((status) => status !== 0 && status !== 200)).toEqual([]);
    const both = draining.filter((s) => s.live.status === 200); // the last pair may straddle the close
    expect(both.length).toBeGreaterThan(0);
    expect(JSON.parse(both[0].live.body)).toEqual({ status: 'ok', info: {}, error: {}, details: {} });
    expect(await run.exited).toBe(0);
    expect(run.output()).toContain('shut down');
  });

  it('a second SIGTERM during the drain is ignored: the in-flight write finishes and the exit is 0', async () => {
    const port = await freePort();
    const run = start({
      PORT: String(port),
      DATABASE_URL: process.env.DATABASE_URL!,
      DB_POOL_SIZE: '2',
      DB_MAX_OVERFLOW: '0',
      SHUTDOWN_DELAY_MS: '300',
      DB_APPLICATION_NAME: `api-double-${process.pid}`,
    });
    await run.waitFor('API listening');
    const locker = new pg.Client({ connectionString: process.env.DATABASE_URL });
    await locker.connect();
    const tag = `double-signal-${process.pid}-${Date.now()}`;
    try {
      await locker.query('BEGIN');
      await locker.query('LOCK TABLE items IN ACCESS EXCLUSIVE MODE'); // holds the write in flight
      const post = fetch(`http://127.0.0.1:${port}/items`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ name: tag }),
      }).then((r) => r.status);
      const waiting = async () =>
        (
          await locker.query("SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND application_name = $1", [
            `api-double-${process.pid}`,
          ])
        ).rowCount === 1;
      expect(await eventually(waiting, 10_000)).toBe(true);
      run.child.kill('SIGTERM');
      run.child.kill('SIGTERM');
      await locker.query('COMMIT');
      expect(await post).toBe(201);
      expect(await run.exited).toBe(0);
      expect(run.output()).toContain('shut down');
    } finally {
      await locker.query('DELETE FROM items WHERE name = $1', [tag]).catch(() => {});
      await locker.end();
    }
  });

  it("a query error that reaches Nest's log (a constraint refuses the row) shows neither its bind parameters nor the row: the Idempotency-Key and the name stay out of the process's output", async () => {
    // A database of its own: the constraint that refuses the write must not touch other tests' table.
    const database = `api_logs_${process.pid}`;
    const admin = new pg.Client({ connectionString: process.env.DATABASE_URL });
    await admin.connect();
    const url = new URL(process.env.DATABASE_URL!);
    url.pathname = `/${database}`;
    let run: Run | undefined;
    try {
      await admin.query(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`);
      await admin.query(`CREATE DATABASE ${database}`);
      const port = await freePort();
      run = start({ PORT: String(port), DATABASE_URL: url.href, DB_POOL_SIZE: '1', DB_MAX_OVERFLOW: '0' });
      await run.waitFor('API listening');
      const db = new pg.Client({ connectionString: url.href });
      await db.connect();
      await db.query("ALTER TABLE items ADD CONSTRAINT items_name_not_private CHECK (name NOT LIKE 'private-%')");
      await db.end();

      const name = `private-${randomUUID()}`;
      const key = `SECRET-${randomUUID()}`;
      const res = await fetch(`http://127.0.0.1:${port}/items`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'idempotency-key': key },
        body: JSON.stringify({ name }),
      });
      expect(res.status).toBe(500);
      expect(await res.json()).toEqual({ statusCode: 500, message: 'Internal server error' });
      // The line that says what failed, and where: the test waits for it, then reads all there is.
      await run.waitFor('violates check constraint "items_name_not_private"');
      run.child.kill('SIGTERM');
      expect(await run.exited).toBe(0);
      const out = run.output();
      expect(out).toContain('INSERT INTO items (name, idempotency_key) VALUES ($1, $2)');
      expect(out).not.toContain(name);
      expect(out).not.toContain(key);
    } finally {
      if (run && run.child.exitCode === null) {
        run.child.kill('SIGKILL');
        await run.exited;
      }
      await admin.query(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`);
      await admin.end();
    }
  });

  it('shutdown finishes though a keep-alive client keeps sending and another stalls mid-body: busy connections are closed after SHUTDOWN_TIMEOUT_MS, exit 0', async () => {
    const port = await freePort();
    const run = start({
      PORT: String(port),
      DATABASE_URL: process.env.DATABASE_URL!,
      DB_POOL_SIZE: '2',
      DB_MAX_OVERFLOW: '0',
      SHUTDOWN_DELAY_MS: '300',
      SHUTDOWN_TIMEOUT_MS: '500',
    });
    await run.waitFor('API listening');
    const { Agent, get } = await import('node:http');
    const { connect } = await import('node:net');
    const agent = new Agent({ keepAlive: true, maxSockets: 1 });
    let stop = false;
    let closeHeaders = 0;
    let sent = 0;
    let answered = 0;
    const loop = (async () => {
      while (!stop) {
        await new Promise<void>((resolve) => {
          sent++;
          const req = get({ host: '127.0.0.1', port, path: '/health/live', agent }, (res) => {
            if (res.headers.connection === 'close') closeHeaders++;
            res.resume();
            res.on('end', () => {
              answered++;
              resolve();
            });
          });
          req.on('error', () => setTimeout(resolve, 10)); // a retry's pace
        });
      }
    })();
    const stalled = connect(port, '127.0.0.1');
    stalled.on('error', () => {});
    // Half a request, written; the server has read it once a request sent after it has been answered.
    await new Promise<void>((resolve) =>
      stalled.write('POST /items HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 20\r\n\r\n{"name":', () =>
        resolve(),
      ),
    );
    const sentBefore = sent;
    expect(await eventually(() => answered > sentBefore)).toBe(true);
    run.child.kill('SIGTERM');
    expect(await run.exited).toBe(0);
    stop = true;
    await loop;
    agent.destroy();
    stalled.destroy();
    expect(closeHeaders).toBeGreaterThan(0); // keep-alive clients were told to go
  });
});
