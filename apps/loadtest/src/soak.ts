/**
 * Soak: mixed load (reads, transactions, failing statements, transactions handed back open)
 * with a backend killed every half second. Checks that heap growth after warm-up stays under
 * 20 MB, that the pool is back at DB_POOL_SIZE afterwards, and that the process then exits on its
 * own (nothing left holding the event loop). Exit code 0 only if all of that holds.
 *
 *   node --expose-gc apps/loadtest/dist/soak.js [--duration-s 600]     (npx nx run loadtest:soak)
 */
import pg from 'pg';
import { createDbPool } from '@db-pool/db-pool';

const arg = (flag: string, fallback: number) => {
  const i = process.argv.indexOf(flag);
  return i === -1 ? fallback : Number(process.argv[i + 1]);
};
const durationMs = arg('--duration-s', 600) * 1000;
const HEAP_LIMIT_MB = 20;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const gc = (globalThis as { gc?: () => void }).gc;
const heapMb = () => {
  gc?.();
  return process.memoryUsage().heapUsed / 1024 / 1024;
};

async function main(): Promise<void> {
  const url = process.env.DATABASE_URL;
  if (!url) throw new Error('DATABASE_URL is not set');
  const name = `soak-${process.pid}`;
  const pool = await createDbPool({
    url,
    poolSize: 5,
    maxOverflow: 5,
    poolTimeoutSeconds: 5,
    overflowIdleTimeoutSeconds: 1,
    leakThresholdSeconds: 30,
    applicationName: name,
    env: {},
  });
  await pool.query('CREATE TABLE IF NOT EXISTS soak (id serial PRIMARY KEY, v int)');
  const admin = new pg.Client({ connectionString: url });
  await admin.connect();

  const counts = { operations: 0, failed: 0, kills: 0 };
  let running = true;
  const work = async (i: number) => {
    for (let n = 0; running; n++) {
      try {
        switch ((i + n) % 4) {
          case 0:
            await pool.query('SELECT pg_sleep(0.002), $1::int', [n]);
            break;
          case 1: {
            const c = await pool.connect();
            try {
              await c.query('BEGIN');
              await c.query('INSERT INTO soak (v) VALUES ($1)', [n]);
              await c.query('COMMIT');
            } finally {
              c.release();
            }
            break;
          }
          case 2:
            await pool.query('SELECT * FROM no_such_table_soak').catch(() => undefined);
            break;
          case 3: {
            const c = await pool.connect();
            try {
              await c.query('BEGIN');
            } catch (err) {
              c.release(err as Error);
              throw err;
            }
            c.release(); // handed back open: the pool rolls it back
            break;
          }
        }
        counts.operations++;
      } catch {
        counts.failed++;
      }
    }
  };
  const killer = (async () => {
    while (running) {
      await sleep(500);
      const { rowCount } = await admin.query(
        'SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1 AND pid <> pg_backend_pid() LIMIT 1',
        [name],
      );
      counts.kills += rowCount ?? 0;
    }
  })();

  const workers = Array.from({ length: 12 }, (_, i) => work(i));
  const warmupMs = Math.min(5_000, durationMs / 4);
  await sleep(warmupMs);
  const heapAfterWarmup = heapMb();
  await sleep(durationMs - warmupMs);
  running = false;
  await Promise.all([...workers, killer]);
  await sleep(1_500); // overflow idle timeout, refill
  const heapEnd = heapMb();
  const state = pool.state();
  await admin.query('DROP TABLE IF EXISTS soak');
  await admin.end();
  await pool.end();

  const checks = {
    heap_growth_mb: Math.round((heapEnd - heapAfterWarmup) * 10) / 10,
    heap_ok: heapEnd - heapAfterWarmup < HEAP_LIMIT_MB,
    pool_back_at_size: state.total === pool.settings.poolSize && state.active === 0,
    served: counts.operations > 100,
  };
  const ok = checks.heap_ok && checks.pool_back_at_size && checks.served;
  process.stdout.write(`${JSON.stringify({ duration_s: durationMs / 1000, gc: Boolean(gc), ...counts, state, ...checks, ok })}\n`);
  process.exitCode = ok ? 0 : 1;
  // No process.exit(): the process must end by itself, which proves nothing was left open.
}

main().catch((err: unknown) => {
  process.stderr.write(`soak failed: ${err instanceof Error ? err.stack : String(err)}\n`);
  process.exitCode = 1;
});
