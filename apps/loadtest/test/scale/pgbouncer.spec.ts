/**
 * Scale-out: 8 processes, each with a pool of 20 + 40, against a PostgreSQL whose
 * max_connections (40) is far below 8 × 60. Directly, the start-up recommendation predicts the
 * overcommit and the server's "too many clients" errors appear as clear errors, never a crash.
 * Through PgBouncer in transaction mode, its server pool sized to the headroom: zero errors.
 */
import { execFileSync, spawn } from 'node:child_process';
import { createDbPool, DbPoolMetrics, DbPoolRegistry, PoolMonitor, resolveDbPoolConfig } from '@db-pool/db-pool';
import { fileURLToPath } from 'node:url';
import { startEmbeddedPostgres, type EmbeddedPostgres } from '../../../../tools/embedded-db.mjs';
import { hasPgBouncer, startPgBouncer, type PgBouncer } from './pgbouncer.js';

const root = fileURLToPath(new URL('../../../../', import.meta.url));
const REPLICAS = 8;
const MAX_CONNECTIONS = 40;

interface WorkerResult {
  ok: number;
  errors: Record<string, number>;
  warnings: string[];
  ops_per_s: number;
  crashed?: string;
}

async function runReplicas(url: string): Promise<{ results: WorkerResult[]; codes: (number | null)[] }> {
  const runs = Array.from({ length: REPLICAS }, () => {
    const child = spawn(process.execPath, [`${root}apps/loadtest/dist/scale/worker.js`], {
      cwd: root,
      env: { PATH: process.env.PATH!, DATABASE_URL: url, EXPECTED_REPLICAS: String(REPLICAS), DURATION_MS: '3000', CALLERS: '60' },
    });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    return new Promise<{ out: string; code: number | null }>((resolve) => child.on('close', (code) => resolve({ out, code })));
  });
  const done = await Promise.all(runs);
  return { results: done.map((d) => JSON.parse(d.out.trim().split('\n').pop()!)), codes: done.map((d) => d.code) };
}

const describeIf = hasPgBouncer || process.env.CI ? describe : describe.skip;

describeIf('scale-out: 8 replicas × 60 against max_connections=40', () => {
  let db: EmbeddedPostgres;
  beforeAll(async () => {
    if (!hasPgBouncer) throw new Error('pgbouncer is not installed (Debian package pgbouncer); .ci/run installs it');
    execFileSync(process.execPath, [`${root}node_modules/typescript/bin/tsc`, '-b', `${root}apps/loadtest/tsconfig.app.json`], {
      stdio: 'inherit',
    });
    db = await startEmbeddedPostgres({ postgresFlags: ['-c', `max_connections=${MAX_CONNECTIONS}`] });
  });
  afterAll(async () => {
    await db?.stop();
  });

  const total = (results: WorkerResult[]) => results.reduce((n, r) => n + r.ok, 0);
  const errorCount = (results: WorkerResult[]) => results.reduce((n, r) => n + Object.values(r.errors).reduce((a, b) => a + b, 0), 0);

  it('directly: the overcommit is predicted at start-up, and "too many clients" surfaces as clear errors, never a crash', async () => {
    const { results, codes } = await runReplicas(db.url);
    expect(codes).toEqual(Array(REPLICAS).fill(0));
    for (const r of results) expect(r.crashed).toBeUndefined();
    const warnings = results.flatMap((r) => r.warnings).join('\n');
    expect(warnings).toMatch(
      /Server headroom: 8 replica\(s\) × 60 connections = 480, more than the \d+ the server can give \(max_connections=40/,
    );
    // Callers fail only in a process left with no connection at all (one that holds some makes its
    // callers wait for them); the server's refusals surface at least in the warm-up warnings.
    const kinds = results.flatMap((r) => Object.keys(r.errors));
    // The server refuses (too many clients) or, swamped by connection attempts, answers too late;
    // after two such failures in a row the connect circuit breaker fails callers at once, naming the last one.
    const refusal =
      '(sorry, too many clients already|remaining connection slots are reserved.*|DB_CONNECT_TIMEOUT \\(3000 ms\\) expired|timeout expired)';
    for (const kind of kinds) {
      expect(kind).toMatch(
        new RegExp(
          `^(PoolConnectError: db-pool "…": could not open a connection: ${refusal}|` +
            `PoolUnavailableError: db-pool "…": could not open a connection: every host failed, so no connection is opened until \\S+ \\(connect circuit breaker open; last failure: ${refusal}\\))\\s*$`,
        ),
      );
    }
    expect([...kinds, warnings].some((k) => /too many clients|remaining connection slots/.test(k))).toBe(true);
    expect(total(results)).toBeGreaterThan(0);
    process.stdout.write(
      `direct: ${total(results)} queries, ${errorCount(results)} errors, ${results.reduce((n, r) => n + r.ops_per_s, 0)} ops/s; ` +
        `errors by kind: ${JSON.stringify(
          results.reduce<Record<string, number>>((all, r) => {
            for (const [k, n] of Object.entries(r.errors)) all[k.split(':')[0]] = (all[k.split(':')[0]] ?? 0) + n;
            return all;
          }, {}),
        )}\n`,
    );
  }, 120_000);

  describe('through PgBouncer', () => {
    let bouncer: PgBouncer;
    const serverPool = MAX_CONNECTIONS - 3 - 5; // leave the reserved slots and a few for admin
    const url = (database?: string) => bouncer.url(database);

    beforeAll(async () => {
      bouncer = await startPgBouncer(db, serverPool, [{ name: db.user, password: db.password }]);
    });
    afterAll(async () => {
      await bouncer?.stop();
    });

    it('in transaction mode, its server pool sized to the headroom: zero errors', async () => {
      const { results, codes } = await runReplicas(url());
      expect(codes).toEqual(Array(REPLICAS).fill(0));
      for (const r of results) expect(r).toMatchObject({ errors: {} });
      expect(errorCount(results)).toBe(0);
      expect(total(results)).toBeGreaterThan(1_000);
      process.stdout.write(
        `via PgBouncer (server pool ${serverPool}): ${total(results)} queries, 0 errors, ${results.reduce((n, r) => n + r.ops_per_s, 0)} ops/s\n`,
      );
    }, 120_000);

    it("with DB_PGBOUNCER_ADMIN_URL, PgBouncer's SHOW POOLS figures join the status, the health report and the metrics", async () => {
      const options = {
        url: url(),
        pgbouncerAdminUrl: url('pgbouncer'),
        poolSize: 4,
        maxOverflow: 0,
        expectedReplicas: 50,
        healthDetail: true,
        env: {},
      };
      const config = resolveDbPoolConfig(options);
      const pool = await createDbPool(options);
      const registry = new DbPoolRegistry();
      const monitor = new PoolMonitor(pool, config, { log() {}, warn() {} });
      registry.add(monitor);
      try {
        await pool.warmUp();
        const held = [await pool.connect(), await pool.connect()];
        await Promise.all(held.map((c) => c.query('BEGIN')));
        const stats = await monitor.samplePgBouncer();
        expect(stats).toMatchObject({
          pool_mode: 'transaction',
          cl_active: expect.any(Number),
          sv_active: expect.any(Number),
          cl_waiting: 0,
        });
        expect(stats!.cl_active + stats!.cl_waiting).toBeGreaterThanOrEqual(2);
        expect(stats!.sv_active).toBeGreaterThanOrEqual(2); // two open transactions hold two server connections
        expect(monitor.getPoolStatus().pgbouncer).toEqual(stats);
        expect(monitor.getHealthReport().pool_status.pgbouncer).toEqual(stats);
        // behind PgBouncer the server-headroom advice does not apply: 50 × 4 is PgBouncer's business
        await monitor.sampleHeadroom();
        expect(monitor.getRecommendations().join(' ')).not.toContain('Server headroom');
        const metrics = await new DbPoolMetrics(registry).metrics();
        expect(metrics).toMatch(/^db_pool_pgbouncer_servers\{pool_name="default",state="active"\} [1-9]\d*$/m);
        expect(metrics).toMatch(/^db_pool_pgbouncer_clients\{pool_name="default",state="waiting"\} 0$/m);
        expect(metrics).toMatch(/^db_pool_pgbouncer_maxwait_seconds\{pool_name="default"\} [\d.]+$/m);
        const report = JSON.stringify(monitor.getHealthReport());
        expect(report).toContain(`postgres://${db.user}:***@127.0.0.1:${bouncer.port}/postgres`);
        expect(report).not.toContain(`${db.user}:${db.password}@`);
        for (const c of held) c.release();
      } finally {
        await pool.end();
      }
    });
  });
});
