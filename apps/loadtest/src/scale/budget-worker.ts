/**
 * One process of the autoscaling test (test/scale/budget.spec.ts): a pool with the connection
 * budget (`POOL=auto`, as DB_POOL_SIZE=auto and DB_MAX_OVERFLOW=auto) or a fixed size
 * (`POOL=20+40`), its monitor sampling every HEADROOM_INTERVAL seconds, CALLERS callers running
 * QUERY until SIGTERM; then the pool ends (its presence goes with it) and the process exits.
 *
 * It reports on stdout, one JSON object a line:
 * - `{"type":"started"}` once the pool and its monitor are up;
 * - `{"type":"sample", …}` at every budget decision: capacity, processes, fair share, limited by;
 * - `{"type":"tick", …}` every TICK_MS: queries answered so far, and the server's refusals
 *   ("too many clients", "remaining connection slots are reserved") before and after the first
 *   budget sample, from callers and from the pool's warnings alike;
 * - `{"type":"ended", …}` last, with the same counts and every other error by kind.
 */
import { createDbPool, PoolMonitor, resolveDbPoolConfig, type BudgetDecision, type DbPool } from '@db-pool/db-pool';

const REFUSAL = /too many clients|remaining connection slots are reserved/;

async function main(): Promise<void> {
  const env = process.env;
  const callers = Number(env.CALLERS ?? 16);
  const tickMs = Number(env.TICK_MS ?? 250);
  const query = env.QUERY ?? 'SELECT 1';
  const fixed = /^(\d+)\+(\d+)$/.exec(env.POOL ?? 'auto');
  const emit = (event: object) => process.stdout.write(`${JSON.stringify({ ...event, at: Date.now() })}\n`);

  let firstSampleAt: number | undefined;
  const refusals = { before_first_sample: 0, after_first_sample: 0 };
  const errors: Record<string, number> = {};
  const refused = (message: string) => {
    if (!REFUSAL.test(message)) return false;
    refusals[firstSampleAt === undefined ? 'before_first_sample' : 'after_first_sample']++;
    return true;
  };
  const logger = { log() {}, debug() {}, warn: (m: string) => void refused(m) };
  const options = {
    url: env.DATABASE_URL,
    poolSize: fixed ? Number(fixed[1]) : ('auto' as const),
    maxOverflow: fixed ? Number(fixed[2]) : ('auto' as const),
    poolMin: env.POOL_MIN,
    poolMax: env.POOL_MAX,
    headroomIntervalSeconds: env.HEADROOM_INTERVAL ?? 1,
    applicationName: env.APP ?? 'scale-budget',
    poolTimeoutSeconds: 10,
    connectTimeoutSeconds: 3,
    env: {},
    logger,
  };
  const config = resolveDbPoolConfig(options);
  const pool: DbPool = await createDbPool(options);
  const monitor = new PoolMonitor(pool, config, logger);

  let seen: BudgetDecision | undefined;
  const watch = () => {
    const decision = pool.budgetDecision;
    if (!decision || decision === seen) return;
    seen = decision;
    firstSampleAt ??= Date.now();
    emit({
      type: 'sample',
      capacity: decision.capacity,
      processes: decision.inputs.processes,
      fair_share: decision.fair_share,
      limited_by: decision.limited_by,
      trigger: decision.trigger,
      open: pool.totalCount,
    });
  };
  watch(); // the start-up sample (createDbPool takes it before the warm-up)
  await monitor.start();
  watch();

  let ok = 0;
  let stopping = false;
  const counts = () => ({ ok, refusals, open: pool.totalCount, capacity: pool.settings.poolSize + pool.settings.maxOverflow });
  const ticker = setInterval(() => {
    watch();
    emit({ type: 'tick', ...counts() });
  }, tickMs);
  // Budget decisions between ticks are reported as they come.
  const watcher = setInterval(watch, 20);
  emit({ type: 'started', pid: process.pid });

  const load = Promise.all(
    Array.from({ length: callers }, async () => {
      while (!stopping) {
        try {
          await pool.query(query);
          ok++;
        } catch (err) {
          const message = (err as Error).message;
          if (!refused(message)) {
            const kind = `${(err as Error).name}: ${message.replace(/\(total=.*\)$/, '').replace(/"[^"]*"/g, '"…"')}`;
            errors[kind] = (errors[kind] ?? 0) + 1;
          }
          await new Promise((r) => setTimeout(r, 20));
        }
      }
    }),
  );
  await new Promise<void>((resolve) => process.once('SIGTERM', () => resolve()));
  stopping = true;
  await load;
  clearInterval(ticker);
  clearInterval(watcher);
  monitor.stop();
  await pool.end();
  emit({ type: 'ended', ...counts(), errors });
}

main().catch((err: unknown) => {
  process.stdout.write(`${JSON.stringify({ type: 'crashed', error: err instanceof Error ? err.stack : String(err) })}\n`);
  process.exitCode = 1;
});
