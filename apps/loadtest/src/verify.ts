/**
 * The quick verification report (test_db_pool_quick.py of the SQLAlchemy design this pool
 * reproduces): three checks against the configured database, printed in that script's format.
 * Exit code 0 only if every check passed.
 *   npm run verify            (embedded PostgreSQL unless DATABASE_URL is set)
 */
import 'reflect-metadata';
import { createDbPoolDataSource, PoolMonitor, poolOf, resolveDbPoolConfig } from '@db-pool/db-pool';

const RULE = '='.repeat(80);
/** Average per sequential query under which pooling is clearly at work (a new connection costs ms). */
const FAST_MS = 5;

let failures = 0;
const out = (line = '') => process.stdout.write(`${line}\n`);
const check = (ok: boolean, pass: string, fail: string) => {
  out(ok ? `✅ ${pass}` : `❌ ${fail}`);
  if (!ok) failures++;
};

async function main(): Promise<void> {
  out(RULE);
  out('DATABASE CONNECTION POOL - VERIFICATION TESTS');
  out('db-pool: production-grade connection pooling for NestJS + TypeORM');
  out(RULE);

  const config = resolveDbPoolConfig();
  const dataSource = await createDbPoolDataSource();
  const pool = poolOf(dataSource);
  const monitor = new PoolMonitor(pool, config, { log() {}, warn: (m) => out(`⚠️  ${m}`) });
  try {
    out();
    out('TEST 1: Single Connection');
    const [row] = await dataSource.query('SELECT 1 AS one');
    check(row?.one === 1, 'Single connection works', `Single connection failed: got ${JSON.stringify(row)}`);

    out();
    out('TEST 2: Sequential Connections (Pool Reuse)');
    const created = pool.counters.created;
    const started = performance.now();
    for (let i = 0; i < 50; i++) await dataSource.query('SELECT 1');
    const seconds = (performance.now() - started) / 1000;
    const avgMs = (seconds * 1000) / 50;
    out(`50 sequential queries in ${seconds.toFixed(2)}s`);
    out(`Average: ${avgMs.toFixed(2)}ms per query`);
    check(
      avgMs < FAST_MS,
      `Fast queries (${avgMs.toFixed(2)}ms avg) - pooling working!`,
      `Slow queries (${avgMs.toFixed(2)}ms avg, expected < ${FAST_MS}ms)`,
    );
    check(
      pool.counters.created === created,
      'No new connections after warm-up - connections reused',
      `${pool.counters.created - created} new connection(s) opened during the run`,
    );
    check(pool.state().active === 0, 'All connections returned to pool', `${pool.state().active} connection(s) still checked out`);

    out();
    out('TEST 3: Pool Monitoring');
    const c = monitor.getConfiguration();
    const status = monitor.getPoolStatus();
    out('Pool Configuration:');
    out(`  Size: ${c.pool_size}`);
    out(`  Max Overflow: ${c.max_overflow}`);
    out(`  Total Capacity: ${status.total_capacity}`);
    out(`  Timeout: ${c.timeout.toFixed(1)}s`);
    out(`  Recycle: ${c.recycle}s`);
    out(`  Pre-ping: ${c.pre_ping ? 'True' : 'False'}`);
    out(`  URL: ${c.url}`);
    out();
    out('Current Status:');
    out(`  Checked Out: ${status.checked_out}`);
    out(`  Checked In: ${status.checked_in}`);
    out(`  Overflow: ${status.overflow}`);
    out(`  Utilization: ${status.utilization.toFixed(1)}%`);
    out(`  Health: ${status.health}`);
    out();
    out('Recommendations:');
    for (const r of monitor.getRecommendations()) out(`  - ${r}`);
    out();
    check(
      status.checked_in === c.pool_size,
      `All ${c.pool_size} connections warm and checked in`,
      `${status.checked_in} of ${c.pool_size} connections checked in`,
    );
    check(!monitor.checkConnectionLeaks(), 'No connection leaks detected', 'Connection leak suspected');
    check(monitor.isPoolHealthy(), 'Pool is healthy', `Pool is not healthy (${status.health})`);
  } finally {
    monitor.stop();
    await dataSource.destroy();
  }

  out();
  out(RULE);
  out(failures === 0 ? 'ALL CHECKS PASSED' : `${failures} CHECK(S) FAILED`);
  out(RULE);
  process.exitCode = failures === 0 ? 0 : 1;
}

main().catch((err: unknown) => {
  out(`❌ ${err instanceof Error ? err.message : String(err)}`);
  process.exitCode = 1;
});
