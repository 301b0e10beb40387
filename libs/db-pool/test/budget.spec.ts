// The connection budget (DB_POOL_SIZE=auto) against a real server of its own with
// max_connections=40: "processes" of one application (pools with their monitors, each as a
// process has them) count each other in pg_stat_activity through their presence connections and
// size themselves to their share; processes that arrive are not overrun by those that have not
// shrunk yet, and those that leave give their share back.
import {
  createDbPool,
  type DbPool,
  DbPoolConfigError,
  DbPoolMetrics,
  DbPoolRegistry,
  PoolMonitor,
  resolveDbPoolConfig,
} from '../src/index.js';
import { BUDGET_SPARE, BudgetSampler, decideBudget, presencePrefix, type BudgetInputs } from '../src/monitor/budget.js';
import { startEmbeddedPostgres, type EmbeddedPostgres } from '../../../tools/embedded-db.mjs';
import { startReplicaSet } from '../../../tools/replica-set.mjs';
import { startFaultProxy } from '../../../tools/fault-proxy.mjs';
import pg from 'pg';
import { createReplicaRouter } from '../src/create-db-pool.js';
import { eventually } from './support/db.js';

const QUIET = { log: () => {}, warn: () => {}, debug: () => {} };

describe('the budget arithmetic', () => {
  const inputs = (over: Partial<BudgetInputs>): BudgetInputs => ({
    max_connections: 40,
    superuser_reserved_connections: 3,
    reserved_connections: 0,
    processes: 2,
    claims: [16],
    application_connections: 0,
    other_connections: 0,
    in_use: 2,
    counted_by: 'pg_stat_activity',
    ...over,
  });
  const bounds = { min: 1, max: 60 };
  it('gives each process its share of what the others leave, less a spare for one starting and its own presence', () => {
    // (40 - 3 - 0 - 2) / 2 - 1 = 16; unclaimed 37 - 2 - 2 presences - 16 = 17
    expect(decideBudget(inputs({}), 0, bounds)).toEqual({ capacity: 16, fair_share: 16, unclaimed: 17, limited_by: 'fair_share' });
    // Another application holds 10: (37 - 10 - 2) / 2 - 1 = 11
    expect(decideBudget(inputs({ other_connections: 10, claims: [11] }), 0, bounds)).toMatchObject({
      capacity: 11,
      limited_by: 'fair_share',
    });
    expect(BUDGET_SPARE).toBe(2);
    // Behind PgBouncer, its server pool (here 32) split among the processes: no presence or spare set aside.
    expect(
      decideBudget(inputs({ counted_by: 'pgbouncer', max_connections: 32, superuser_reserved_connections: 0, claims: [16] }), 0, bounds),
    ).toEqual({ capacity: 16, fair_share: 16, unclaimed: 16, limited_by: 'fair_share' });
  });
  it('grows only into what nobody claims, in proportion to what it lacks; shrinks at once', () => {
    // Eight processes, two still claiming 16 each, five newcomers 1 each: fair (35 / 8) - 1 = 3,
    // nothing unclaimed: the newcomer stays at 1 until the two shrink.
    const crowded = inputs({ processes: 8, claims: [16, 16, 1, 1, 1, 1, 1] });
    expect(decideBudget(crowded, 1, bounds)).toEqual({ capacity: 1, fair_share: 3, unclaimed: 0, limited_by: 'unclaimed' });
    // One of the two, at its sample: down to the share at once.
    expect(decideBudget(inputs({ processes: 8, claims: [16, 1, 1, 1, 1, 1, 1] }), 16, bounds)).toMatchObject({
      capacity: 3,
      limited_by: 'fair_share',
    });
    // Both shrunk: 37 - 2 - 8 - (3 + 3 + 5) - 1 = 15 unclaimed; the six below the share lack 2 each: each takes its 2.
    expect(decideBudget(inputs({ processes: 8, claims: [3, 3, 1, 1, 1, 1, 1] }), 1, bounds)).toMatchObject({
      capacity: 3,
      limited_by: 'fair_share',
    });
    // Two still over the share (8 each): 37 - 2 - 8 - 21 others - 1 own = 5 unclaimed, and the six
    // below it lack 2 each: each would take 5 × 2 / 12 = 0 — together no more than is unclaimed.
    expect(decideBudget(inputs({ processes: 8, claims: [8, 8, 1, 1, 1, 1, 1] }), 1, bounds)).toEqual({
      capacity: 1,
      fair_share: 3,
      unclaimed: 5,
      limited_by: 'unclaimed',
    });
    // Its own claim is not unclaimed: at 7 beside one that still claims 26, nothing is left to grow into.
    expect(decideBudget(inputs({ claims: [26], in_use: 35 }), 7, bounds)).toEqual({
      capacity: 7,
      fair_share: 16,
      unclaimed: 0,
      limited_by: 'unclaimed',
    });
    // Nor is what the server has not got free: connections nobody claims (a process whose presence
    // was lost still holds 29) leave nothing to grow into, whatever the claims add up to.
    expect(decideBudget(inputs({ claims: [4], in_use: 37 }), 2, bounds)).toMatchObject({ capacity: 2, limited_by: 'unclaimed' });
  });
  it('keeps within DB_POOL_MIN and DB_POOL_MAX, save for one starting that nobody has made room for yet', () => {
    // A newcomer (claiming nothing) into a server the others still fill: what is unclaimed, below
    // DB_POOL_MIN — createDbPool waits for the others to shrink rather than open what the server does not have.
    expect(decideBudget(inputs({ processes: 3, claims: [16, 16] }), 0, { min: 2, max: 60 })).toEqual({
      capacity: 0,
      fair_share: 10,
      unclaimed: 0,
      limited_by: 'unclaimed',
    });
    expect(decideBudget(inputs({ processes: 3, claims: [16, 15] }), 0, { min: 2, max: 60 })).toMatchObject({
      capacity: 1,
      limited_by: 'unclaimed',
    });
    // A running process keeps what it claims (DB_POOL_MIN at least), and a fair share below the bound gives way to it.
    expect(decideBudget(inputs({ processes: 3, claims: [16, 16] }), 2, { min: 2, max: 60 })).toMatchObject({
      capacity: 2,
      limited_by: 'unclaimed',
    });
    expect(decideBudget(inputs({ processes: 30, claims: [] }), 2, { min: 2, max: 60 })).toMatchObject({ capacity: 2, limited_by: 'min' });
    // Behind PgBouncer, which queues rather than refuses, a newcomer starts at DB_POOL_MIN all the same.
    expect(
      decideBudget(
        inputs({ counted_by: 'pgbouncer', max_connections: 32, superuser_reserved_connections: 0, processes: 3, claims: [16, 16] }),
        0,
        {
          min: 2,
          max: 60,
        },
      ),
    ).toMatchObject({ capacity: 2, fair_share: 10, limited_by: 'min' });
    expect(decideBudget(inputs({ processes: 40, claims: [] }), 0, { min: 2, max: 60 })).toMatchObject({ capacity: 2, limited_by: 'min' });
    expect(decideBudget(inputs({ max_connections: 1000, processes: 1, claims: [] }), 0, { min: 2, max: 60 })).toMatchObject({
      capacity: 60,
      limited_by: 'max',
    });
  });
  it('names the presence connection after the application, its claim after it, within 63 characters', () => {
    expect(presencePrefix('api')).toBe('api~');
    expect(`${presencePrefix('x'.repeat(63))}10000`).toHaveLength(63);
  });
});

describe('configuration', () => {
  const resolve = (env: Record<string, string>) => () => resolveDbPoolConfig({ env: { DATABASE_URL: 'postgres://u@h/db', ...env } });
  it('takes auto for both, starting at DB_POOL_MIN split as the defaults are', () => {
    const config = resolve({ DB_POOL_SIZE: 'auto', DB_MAX_OVERFLOW: 'AUTO', DB_POOL_MIN: '6', DB_POOL_MAX: '30' })();
    expect(config).toMatchObject({ poolSize: 2, maxOverflow: 4, budget: { min: 6, max: 30 } });
    expect(resolve({})().budget).toBeUndefined();
  });
  it('refuses auto with a number, bounds the wrong way round, no headroom samples, and a name in the URL, naming the keys', () => {
    expect(resolve({ DB_POOL_SIZE: 'auto', DB_MAX_OVERFLOW: '5' })).toThrow(/DB_POOL_SIZE=auto and DB_MAX_OVERFLOW=5: auto goes with auto/);
    expect(resolve({ DB_POOL_SIZE: 'auto', DB_MAX_OVERFLOW: 'auto', DB_POOL_MIN: '9', DB_POOL_MAX: '3' })).toThrow(
      /DB_POOL_MIN=9 exceeds DB_POOL_MAX=3/,
    );
    expect(resolve({ DB_POOL_SIZE: 'auto', DB_MAX_OVERFLOW: 'auto', DB_POOL_HEADROOM_INTERVAL: '0' })).toThrow(
      /DB_POOL_SIZE=auto needs the headroom samples .*DB_POOL_HEADROOM_INTERVAL must not be 0/,
    );
    expect(() =>
      resolveDbPoolConfig({
        env: { DATABASE_URL: 'postgres://u@h/db?application_name=api', DB_POOL_SIZE: 'auto', DB_MAX_OVERFLOW: 'auto' },
      }),
    ).toThrow(/give the application's name with DB_APPLICATION_NAME/);
    expect(resolve({ DB_POOL_SIZE: 'auto', DB_MAX_OVERFLOW: 'auto', DB_APPLICATION_NAME: 'api~v2' })).toThrow(
      /DB_APPLICATION_NAME="api~v2": with DB_POOL_SIZE=auto it must not contain "~"/,
    );
    expect(resolve({ DB_APPLICATION_NAME: 'api~v2' })().applicationName).toBe('api~v2');
    expect(resolve({ DB_POOL_SIZE: 'some' })).toThrow(DbPoolConfigError);
    expect(resolve({ DB_POOL_SIZE: 'some' })).toThrow(/DB_POOL_SIZE="some": must be auto or an integer from 1 to 10000/);
  });
});

describe('a budget that has ended', () => {
  it('answers a late sample with an error that names the budget, not the replica router, and opens no connection', async () => {
    // Nothing listens on port 1: a sample that tried to connect would fail with ECONNREFUSED instead.
    const config = resolveDbPoolConfig({
      env: { DATABASE_URL: 'postgres://u@127.0.0.1:1/db', DB_POOL_SIZE: 'auto', DB_MAX_OVERFLOW: 'auto', DB_APPLICATION_NAME: 'api' },
    });
    const budget = new BudgetSampler(config, pg.Client);
    await budget.close();
    await expect(budget.sample(1_000)).rejects.toThrow('the connection budget (DB_POOL_SIZE=auto) has ended');
    await expect(budget.claim(3, 1_000, false)).rejects.toThrow('the connection budget (DB_POOL_SIZE=auto) has ended');
  });
});

describe('processes of one application sharing a server with max_connections=40', () => {
  let db: EmbeddedPostgres;
  /** A role that is not a superuser: the server refuses it past max_connections - superuser_reserved_connections (37). */
  let url: string;
  beforeAll(async () => {
    db = await startEmbeddedPostgres({ postgresFlags: ['-c', 'max_connections=40'], quiet: true });
    const admin = await createDbPool({ url: db.url, poolSize: 1, maxOverflow: 0, env: {} });
    await admin.query("CREATE ROLE budget_app LOGIN PASSWORD 'budget_app'");
    await admin.end();
    const u = new URL(db.url);
    u.username = 'budget_app';
    u.password = 'budget_app';
    url = u.toString();
  }, 60_000);
  afterAll(async () => {
    await db?.stop();
  });

  const APP = `budget-${process.pid}`;
  interface Process {
    pool: DbPool;
    monitor: PoolMonitor;
    stop(): Promise<void>;
  }
  const running: Process[] = [];
  afterEach(async () => {
    await Promise.all(running.splice(0).map((p) => p.stop()));
  });

  /**
   * One process's pool and monitor, as the module has them (createDbPool takes the first budget
   * sample before it warms up), the monitor started (it hears the others' notices) unless `listening` is false.
   */
  async function startProcess(listening = true): Promise<Process> {
    const options = {
      url,
      poolSize: 'auto' as const,
      maxOverflow: 'auto' as const,
      poolMin: 1,
      poolMax: 60,
      applicationName: APP,
      headroomIntervalSeconds: 3_600, // samples at start-up and at the other processes' notices
      env: {},
    };
    const pool = await createDbPool(options);
    const monitor = new PoolMonitor(pool, resolveDbPoolConfig(options), QUIET);
    const p: Process = {
      pool,
      monitor,
      stop: async () => {
        monitor.stop();
        if (!pool.ending) await pool.end();
      },
    };
    running.push(p);
    if (listening) await monitor.start();
    return p;
  }
  const capacity = (p: Process) => p.pool.settings.poolSize + p.pool.settings.maxOverflow;
  const serverConnections = async () => {
    const admin = await createDbPool({ url: db.url, poolSize: 1, maxOverflow: 0, env: {} });
    try {
      const { rows } = await admin.query<{ n: number }>(
        "SELECT count(*)::int AS n FROM pg_stat_activity WHERE backend_type = 'client backend' AND usename = 'budget_app'",
      );
      return rows[0].n;
    } finally {
      await admin.end();
    }
  };
  /** Every process uses its whole capacity at once (load): the connections the budget gave are all opened. */
  const fill = async (ps: Process[]) => {
    await Promise.all(
      ps.map(async (p) => {
        const held = await Promise.all(Array.from({ length: capacity(p) }, () => p.pool.connect()));
        for (const c of held) c.release();
      }),
    );
  };

  it('two processes split the server; six more arrive, under load, and nobody is refused; all converge at their notices; those that leave give their share back', async () => {
    // Monitors running with an interval of an hour: every sample after the first is taken at another process's notice.
    const first = [await startProcess(), await startProcess()];
    const at = (ps: Process[], share: number) => eventually(async () => ps.every((p) => capacity(p) === share), 10_000);
    // The first to start counted itself alone (34); the second's arrival brought it to (40 - 3 - 2) / 2 - 1 = 16.
    expect(await at(first, 16)).toBe(true);
    await fill(first);
    expect(await serverConnections()).toBe(2 * 17);

    // Six more, each starting while the others hold their whole capacity: each waits for room
    // (the others shrink at its notice) before it opens a connection.
    const all = [...first];
    for (let i = 0; i < 6; i++) {
      const held = await Promise.all(all.map((p) => Promise.all(Array.from({ length: capacity(p) }, () => p.pool.connect()))));
      const arriving = startProcess();
      // The others shrink at the newcomer's notice to the share of one more, (37 - 2) / n - 1; the
      // connections they hold close as they come back.
      const share = Math.floor(35 / (all.length + 1)) - 1;
      expect(await eventually(async () => all.every((p) => capacity(p) <= share), 10_000)).toBe(true);
      for (const c of held.flat()) c.release();
      all.push(await arriving);
      await fill(all);
      expect(await serverConnections()).toBeLessThanOrEqual(37);
    }
    // Every process at the fair share of eight: (37 - 2) / 8 - 1 = 3.
    expect(await at(all, 3)).toBe(true);
    expect(all.map((p) => p.monitor.getBudget()!.inputs.processes)).toEqual(Array(8).fill(8));
    await fill(all);
    expect(await serverConnections()).toBeLessThanOrEqual(37);
    expect(all.map((p) => p.pool.counters.connectErrors)).toEqual(Array(8).fill(0));

    // Six leave: at their notices the two left take their share back.
    await Promise.all(all.slice(2).map((p) => p.stop()));
    expect(await at(first, 16)).toBe(true);
    for (const p of first) expect(p.monitor.getBudget()!.trigger).toMatch(/^(notified|drained)$/);
    await fill(first);
    expect(await serverConnections()).toBeLessThanOrEqual(2 * 17);
  }, 120_000);

  it('two processes that start at the same moment take their samples one at a time: together they claim no more than the server has', async () => {
    const options = {
      url,
      poolSize: 'auto' as const,
      maxOverflow: 'auto' as const,
      poolMin: 1,
      poolMax: 20,
      applicationName: APP,
      headroomIntervalSeconds: 1,
      env: {},
    };
    for (let round = 0; round < 3; round++) {
      const pools = await Promise.all([createDbPool(options), createDbPool(options)]);
      try {
        // Whoever samples first is alone (20, DB_POOL_MAX); the other sees its claim: at most 37 - 2 - 2 presences - 20 = 13.
        const capacities = pools.map((p) => p.budgetDecision!.capacity).sort((a, b) => b - a);
        expect(capacities[0] + capacities[1]).toBeLessThanOrEqual(37 - 2 - 2);
      } finally {
        await Promise.all(pools.map((p) => p.end()));
      }
    }
  });

  it('a process that starts with no room waits for the others to shrink, and one that finds none in time starts at DB_POOL_MIN and says so', async () => {
    // A process that does not hear notices (its monitor not started) and holds all the server would give it.
    const holder = await startProcess(false);
    const held = await Promise.all(Array.from({ length: capacity(holder) }, () => holder.pool.connect()));
    expect(capacity(holder)).toBe(34);
    const warnings: string[] = [];
    const started = Date.now();
    const late = await createDbPool({
      url,
      poolSize: 'auto',
      maxOverflow: 'auto',
      poolMin: 1,
      applicationName: APP,
      headroomIntervalSeconds: 1,
      env: {},
      logger: { ...QUIET, warn: (m: string) => warnings.push(m) },
    });
    running.push({ pool: late, monitor: new PoolMonitor(late, resolveDbPoolConfig({ url, env: {} }), QUIET), stop: () => late.end() });
    // Nobody made room within two intervals: DB_POOL_MIN, with a warning naming it.
    expect(Date.now() - started).toBeGreaterThanOrEqual(2_000);
    expect(late.settings.poolSize + late.settings.maxOverflow).toBe(1);
    expect(late.budgetDecision).toMatchObject({ capacity: 1, limited_by: 'min', trigger: 'start' });
    expect(warnings.join('\n')).toMatch(
      /connection budget: the server has 0 connection\(s\) nobody claims, short of DB_POOL_MIN \(1\), after 2 s/,
    );
    for (const c of held) c.release();

    // With the holder listening, a newcomer is let in at once: the holder shrinks at its notice.
    await holder.monitor.start();
    const held2 = await Promise.all(Array.from({ length: capacity(holder) }, () => holder.pool.connect()));
    const next = startProcess();
    await eventually(async () => capacity(holder) < held2.length, 10_000);
    for (const c of held2) c.release();
    const p = await next;
    expect(p.pool.budgetDecision!.capacity).toBeGreaterThanOrEqual(1);
    expect(await serverConnections()).toBeLessThanOrEqual(37);
  }, 60_000);

  it('a process that starts on a full server (its presence refused) tries again until there is room, and takes its share of it', async () => {
    // Another application holds every connection the role may have (37); the process's attempts go through a proxy that counts them.
    const others = await Promise.all(
      Array.from({ length: 37 }, async () => {
        const c = new pg.Client({ connectionString: url, application_name: 'another-app' });
        c.on('error', () => {});
        await c.connect();
        return c;
      }),
    );
    const proxy = await startFaultProxy({ port: db.port });
    const warnings: string[] = [];
    try {
      const starting = createDbPool({
        url: proxy.url(url),
        poolSize: 'auto',
        maxOverflow: 'auto',
        poolMin: 1,
        applicationName: APP,
        headroomIntervalSeconds: 30,
        env: {},
        logger: { ...QUIET, warn: (m: string) => warnings.push(m) },
      });
      // Refused twice (the server is full), it is still trying: ten of the others leave.
      expect(await eventually(async () => proxy.accepted >= 2, 10_000)).toBe(true);
      await Promise.all(others.splice(0, 10).map((c) => c.end()));
      const pool = await starting;
      running.push({ pool, monitor: new PoolMonitor(pool, resolveDbPoolConfig({ url, env: {} }), QUIET), stop: () => pool.end() });
      // 27 held by the other application: (37 - 27 - 2) / 1 - 1 = 7.
      expect(pool.budgetDecision).toMatchObject({ capacity: 7, trigger: 'start', inputs: { processes: 1, other_connections: 27 } });
      expect(warnings).toEqual([]);
    } finally {
      await Promise.all(others.map((c) => c.end()));
      await proxy.close();
    }
  });

  it('counts the connections of other roles, which a role without pg_read_all_stats sees with most columns empty', async () => {
    // Ten connections of the superuser's (another role) beside a process of budget_app's, which may not see their details.
    const others = await Promise.all(
      Array.from({ length: 10 }, async () => {
        const c = new pg.Client({ connectionString: db.url, application_name: 'another-role' });
        c.on('error', () => {});
        await c.connect();
        return c;
      }),
    );
    try {
      const p = await startProcess(false);
      // (37 - 10 - 2) / 1 - 1 = 24, not 34.
      expect(p.pool.budgetDecision).toMatchObject({ capacity: 24, inputs: { other_connections: 10, processes: 1 } });
      await p.monitor.sampleHeadroom();
      expect(p.monitor.getServerHeadroom()!.in_use).toBeGreaterThanOrEqual(10 + 1);
    } finally {
      await Promise.all(others.map((c) => c.end()));
    }
  });

  it('a presence the server ends (pg_terminate_backend, an idle timeout) is opened again at the next sample, with its claim', async () => {
    const p = await startProcess();
    const claimOf = async () => {
      const admin = new pg.Client({ connectionString: db.url });
      await admin.connect();
      try {
        const { rows } = await admin.query<{ pid: number; application_name: string }>(
          'SELECT pid, application_name FROM pg_stat_activity WHERE application_name LIKE $1',
          [`${APP}~%`],
        );
        return rows;
      } finally {
        await admin.end();
      }
    };
    const [before] = await claimOf();
    expect(before.application_name).toBe(`${APP}~${capacity(p)}`);
    const admin = new pg.Client({ connectionString: db.url });
    await admin.connect();
    await admin.query('SELECT pg_terminate_backend($1)', [before.pid]);
    await admin.end();
    expect(await eventually(async () => (await claimOf()).length === 0)).toBe(true);
    // The next sample fails on the lost connection or opens another; within two, the presence is back with the same claim.
    await p.monitor.sampleBudget();
    await p.monitor.sampleBudget();
    const after = await claimOf();
    expect(after.map((r) => r.application_name)).toEqual([`${APP}~${capacity(p)}`]);
    expect(after[0].pid).not.toBe(before.pid);
    expect(p.monitor.getBudget()!.inputs.processes).toBe(1);
  });

  it('gives no server-headroom advice: the capacity is a share of the server already, whatever DB_POOL_EXPECTED_REPLICAS says', async () => {
    const options = { url, poolSize: 'auto' as const, maxOverflow: 'auto' as const, expectedReplicas: 5, applicationName: APP, env: {} };
    const pool = await createDbPool(options);
    const monitor = new PoolMonitor(pool, resolveDbPoolConfig(options), QUIET);
    running.push({ pool, monitor, stop: async () => (monitor.stop(), pool.end()) });
    await monitor.start();
    // Alone: 34, and 5 × 34 would be far more than the 37 the server has.
    expect(pool.budgetDecision!.capacity).toBe(34);
    expect(monitor.getRecommendations().join(' ')).not.toContain('Server headroom');
  });

  it('health, status and metrics carry the decision and its inputs', async () => {
    const p = await startProcess();
    const registry = new DbPoolRegistry();
    registry.add(p.monitor);
    const budget = p.monitor.getHealthReport().budget!;
    expect(budget).toMatchObject({
      capacity: capacity(p),
      min: 1,
      max: 60,
      limited_by: expect.stringMatching(/^(fair_share|unclaimed|min|max)$/),
      inputs: { max_connections: 40, superuser_reserved_connections: 3, processes: 1 },
    });
    expect(p.monitor.getPoolStatus().total_capacity).toBe(budget.capacity);
    const text = await new DbPoolMetrics(registry).metrics();
    expect(text).toMatch(
      new RegExp(`db_pool_budget_capacity\\{pool_name="default",limited_by="${budget.limited_by}"\\} ${budget.capacity}`),
    );
    expect(text).toContain('db_pool_budget_processes{pool_name="default"} 1');
  });
});

describe('with read replicas', () => {
  it("each replica's pool takes its share of the replica's connections, as the primary's does of the primary's", async () => {
    const rs = await startReplicaSet({ quiet: true });
    try {
      const options = {
        url: rs.primary.url,
        replicaUrls: rs.standby.url,
        poolSize: 'auto' as const,
        maxOverflow: 'auto' as const,
        poolMax: 12,
        applicationName: `budget-replicas-${process.pid}`,
        env: {},
      };
      const primary = await createDbPool(options);
      const router = (await createReplicaRouter(options, primary))!;
      try {
        const [replica] = router.pools();
        // Alone on servers of 100 connections: both at DB_POOL_MAX.
        for (const pool of [primary, replica]) {
          expect(pool.budgetDecision).toMatchObject({ capacity: 12, limited_by: 'max', inputs: { processes: 1 } });
          expect(pool.settings.poolSize + pool.settings.maxOverflow).toBe(12);
        }
      } finally {
        await router.end();
        await primary.end();
      }
    } finally {
      await rs.stop();
    }
  }, 60_000);
});
