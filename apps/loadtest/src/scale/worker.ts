/**
 * One replica of the scale-out test: a pool of 20 + 40 (the default DB_POOL_SIZE and DB_MAX_OVERFLOW) under CALLERS
 * concurrent callers for DURATION_MS, then one JSON line with what happened. Spawned N times
 * by test/scale/pgbouncer.spec.ts, against PostgreSQL directly or through PgBouncer.
 */
import { createDbPool, PoolMonitor, resolveDbPoolConfig } from '@db-pool/db-pool';

async function main(): Promise<void> {
  const env = process.env;
  const durationMs = Number(env.DURATION_MS ?? 3_000);
  const callers = Number(env.CALLERS ?? 60);
  const warnings: string[] = [];
  const logger = { log() {}, warn: (m: string) => warnings.push(m) };
  const options = {
    url: env.DATABASE_URL,
    poolSize: 20,
    maxOverflow: 40,
    poolTimeoutSeconds: 5,
    connectTimeoutSeconds: 3,
    expectedReplicas: env.EXPECTED_REPLICAS,
    applicationName: 'scale-test',
    env: {},
    logger, // a warm-up the server cuts short is a warning here
  };
  const config = resolveDbPoolConfig(options);
  const pool = await createDbPool(options);
  const monitor = new PoolMonitor(pool, config, logger);
  await monitor.start(); // the start-up recommendations land in `warnings`
  monitor.stop();

  let ok = 0;
  const errors: Record<string, number> = {};
  const started = performance.now();
  const end = Date.now() + durationMs;
  await Promise.all(
    Array.from({ length: callers }, async () => {
      while (Date.now() < end) {
        try {
          await pool.query('SELECT pg_sleep(0.005)');
          ok++;
        } catch (err) {
          const kind = `${(err as Error).name}: ${(err as Error).message.replace(/\(total=.*\)$/, '').replace(/"[^"]*"/g, '"…"')}`;
          errors[kind] = (errors[kind] ?? 0) + 1;
          await new Promise((r) => setTimeout(r, 20));
        }
      }
    }),
  );
  const seconds = (performance.now() - started) / 1000;
  await pool.end();
  process.stdout.write(`${JSON.stringify({ ok, errors, warnings, ops_per_s: Math.round(ok / seconds) })}\n`);
}

main().catch((err: unknown) => {
  process.stdout.write(`${JSON.stringify({ crashed: err instanceof Error ? err.stack : String(err) })}\n`);
  process.exitCode = 1;
});
