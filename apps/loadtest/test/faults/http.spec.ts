/** Fault scenarios seen through the api process: refused server, shutdown, health under exhaustion. */
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { type Api, get, startApi } from './api-process.js';
import { faultRig } from './support.js';
import { eventually } from '../../../../tools/wait.mjs';

const root = fileURLToPath(new URL('../../../../', import.meta.url));

describe('fault scenarios: through the api', () => {
  const rig = faultRig();
  const apis: Api[] = [];
  beforeAll(() => {
    execFileSync(process.execPath, [`${root}node_modules/typescript/bin/tsc`, '-b', `${root}apps/api/tsconfig.app.json`], {
      stdio: 'inherit',
    });
  });
  afterEach(async () => {
    for (const api of apis.splice(0)) {
      if (api.child.exitCode === null) api.child.kill('SIGKILL');
      await api.exited;
    }
  });

  it('connection refused: readiness 503 at once, liveness 200, and both recover', async () => {
    const api = await startApi({ DATABASE_URL: rig().url, DB_POOL_SIZE: '2', DB_MAX_OVERFLOW: '0', DB_CONNECT_TIMEOUT: '1' });
    apis.push(api);
    await rig().proxy.setMode('reset'); // drop the warm connections…
    await rig().proxy.setMode('refuse'); // …and refuse new ones
    const ready = await get(`${api.base}/health/ready`);
    expect(ready.status).toBe(503);
    expect(ready.body).toContain('database not reachable');
    expect(ready.body).toContain('ECONNREFUSED');
    expect(ready.ms).toBeLessThan(1_500);
    expect((await get(`${api.base}/health/live`)).status).toBe(200);
    await rig().proxy.setMode('pass');
    expect((await get(`${api.base}/health/ready`)).status).toBe(200);
  });

  // (Readiness under an exhausted pool — 503 at once, without a query — is shown over HTTP in
  // apps/api/test/health.e2e.spec.ts.)
  it('health under a stalled server: readiness 503 within its timeout; no probe holds a connection past DB_VALIDATION_TIMEOUT_MS; liveness stays 200', async () => {
    const api = await startApi({
      DATABASE_URL: rig().url,
      DB_POOL_SIZE: '2',
      DB_MAX_OVERFLOW: '0',
      DB_POOL_HEALTH_TIMEOUT_MS: '300',
      DB_VALIDATION_TIMEOUT_MS: '1000',
      DB_APPLICATION_NAME: 'stalled-api',
    });
    apis.push(api);
    await rig().proxy.setMode('freeze'); // every open connection stalls: probes must not wait on them
    for (let i = 0; i < 20; i++) {
      const ready = await get(`${api.base}/health/ready`);
      expect(ready.status).toBe(503);
      expect(ready.ms).toBeLessThan(1_000);
    }
    expect((await get(`${api.base}/health/live`)).status).toBe(200);
    // A probe's pre-ping or late answer keeps its connection only until DB_VALIDATION_TIMEOUT_MS
    // (a slow server is not a dead one); then the connection is discarded.
    const checkedOut = async () => {
      const body = JSON.parse((await get(`${api.base}/health/db_pool`)).body);
      return (body.details ?? body.error).default.pool_status.checked_out as number;
    };
    expect(await eventually(async () => (await checkedOut()) === 0, 5_000)).toBe(true);
    await rig().proxy.setMode('pass');
  });

  it('shutdown with a leaked client under a write-heavy load: readiness 503 at once, in-flight writes finish, the pool is force-closed after the grace, exit 0, every acknowledged write stored, no connection left', async () => {
    const api = await startApi(
      {
        DATABASE_URL: rig().url,
        DB_POOL_SIZE: '4',
        DB_MAX_OVERFLOW: '4',
        DB_POOL_SHUTDOWN_GRACE: '1',
        SHUTDOWN_DELAY_MS: '500',
        DB_APPLICATION_NAME: 'shutdown-api',
      },
      `${root}apps/loadtest/test/faults/fixtures/leaky-api.mjs`,
    );
    expect(api.output()).toContain('one connection leaked');
    apis.push(api);
    const tag = `sd-${Date.now()}`;
    let stop = false;
    const acknowledged: number[] = [];
    const writers = Array.from({ length: 10 }, async (_, w) => {
      for (let i = 0; !stop; i++) {
        try {
          const res = await fetch(`${api.base}/items`, {
            method: 'POST',
            headers: { 'content-type': 'application/json' },
            body: JSON.stringify({ name: `${tag}-${w}-${i}` }),
          });
          if (res.status === 201) acknowledged.push(((await res.json()) as { id: number }).id);
        } catch {
          return;
        }
      }
    });
    // The load is on: writes are being acknowledged.
    expect(await eventually(() => acknowledged.length >= 10, 10_000)).toBe(true);
    const started = Date.now();
    api.child.kill('SIGTERM');
    // Readiness turns 503 as soon as the signal is handled.
    let ready = { status: 0, body: '', ms: 0 };
    expect(
      await eventually(async () => {
        ready = await get(`${api.base}/health/ready`).catch(() => ({ status: 0, body: '', ms: 0 }));
        return ready.status === 503;
      }, 2_000),
    ).toBe(true);
    expect(ready.body).toContain('shutting_down');
    stop = true;
    await Promise.all(writers);
    expect(await api.exited).toBe(0);
    // SHUTDOWN_DELAY_MS (0.5 s) + DB_POOL_SHUTDOWN_GRACE (1 s) for the leaked client, then out
    expect(Date.now() - started).toBeGreaterThanOrEqual(1_400);
    expect(Date.now() - started).toBeLessThan(5_000);
    const admin = new pg.Client({ connectionString: rig().db.url });
    await admin.connect();
    try {
      const { rows } = await admin.query<{ id: number }>('SELECT id FROM items WHERE name LIKE $1', [`${tag}-%`]);
      const stored = new Set(rows.map((r) => r.id));
      expect(acknowledged.filter((id) => !stored.has(id))).toEqual([]);
      const { rows: left } = await admin.query("SELECT pid FROM pg_stat_activity WHERE application_name = 'shutdown-api'");
      expect(left).toEqual([]);
    } finally {
      await admin.end();
    }
  });
});
