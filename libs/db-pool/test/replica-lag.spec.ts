import 'reflect-metadata';
// Replica lag measured from WAL positions on the pool's own clock, and the reasons a replica
// leaves rotation, against a real primary and a real streaming standby of their own
// (tools/replica-set.mjs). No clock is skewed: the first test shows what the lag means.
import { performance } from 'node:perf_hooks';
import { Test, type TestingModule } from '@nestjs/testing';
import { getDataSourceToken } from '@nestjs/typeorm';
import type { DataSource } from 'typeorm';
import { DbPoolMetrics, DbPoolModule, DbPoolRegistry, type DbPoolOptions, getDbPoolReplicasToken, type PoolMonitor } from '../src/index.js';
import type { ReplicaRouter, ReplicaStatus } from '../src/pool/replicas.js';
import { startReplicaSet, type ReplicaSet } from '../../../tools/replica-set.mjs';
import { databaseUrl } from './support/db.js';

let rs: ReplicaSet;
beforeAll(async () => {
  rs = await startReplicaSet();
  // No autovacuum: the only transactions on the primary are the tests' own.
  await rs.primary.query('CREATE TABLE lag_probe (id serial PRIMARY KEY) WITH (autovacuum_enabled = off)');
  await rs.caughtUp();
});
afterAll(async () => {
  await rs?.stop();
});

interface Rig {
  app: TestingModule;
  router: ReplicaRouter;
  replica: PoolMonitor;
  metrics: () => Promise<string>;
  /** Where a TypeORM read goes: true on a standby. */
  readOnStandby: () => Promise<boolean>;
}

const apps: TestingModule[] = [];
afterEach(async () => {
  await Promise.all(apps.splice(0).map((a) => a.close()));
});

async function rig(options: DbPoolOptions): Promise<Rig> {
  const app = await Test.createTestingModule({
    imports: [
      DbPoolModule.forRoot({
        url: rs.primary.url,
        replicaUrls: rs.standby.url,
        poolSize: 1,
        maxOverflow: 2,
        connectTimeoutSeconds: 1,
        headroomIntervalSeconds: 0,
        env: {},
        ...options,
      }),
    ],
  })
    .setLogger({ log: () => {}, error: () => {}, warn: () => {}, debug: () => {}, verbose: () => {} })
    .compile();
  await app.init();
  apps.push(app);
  const registry = app.get(DbPoolRegistry);
  const ds = app.get<DataSource>(getDataSourceToken());
  return {
    app,
    router: app.get<ReplicaRouter>(getDbPoolReplicasToken()),
    replica: registry.get('default-replica-1'),
    metrics: () => new DbPoolMetrics(registry).metrics(),
    readOnStandby: async () =>
      (await ds
        .createQueryBuilder()
        .select('pg_is_in_recovery()', 'standby')
        .from('pg_class', 'c')
        .limit(1)
        .getRawOne<{ standby: boolean }>())!.standby,
  };
}

/** The replica's standing at each of the router's next samples (a new `sampledAt`), until `done` holds (that status is returned). */
async function sampleUntil(
  router: ReplicaRouter,
  done: (s: ReplicaStatus) => boolean,
  timeoutMs: number,
  what: string,
): Promise<ReplicaStatus> {
  const end = performance.now() + timeoutMs;
  let last = router.status()[0];
  while (performance.now() < end) {
    await new Promise((r) => setTimeout(r, 10));
    const now = router.status()[0];
    if (now.sampledAt === last.sampledAt) continue;
    last = now;
    if (done(now)) return now;
  }
  throw new Error(`no sample within ${timeoutMs} ms where ${what}; last: ${JSON.stringify(last)}`);
}

const lsn = (text: string) => {
  const [hi, lo] = text.split('/');
  return (BigInt(`0x${hi}`) << 32n) | BigInt(`0x${lo}`);
};

describe('replica lag from WAL positions on the pool clock', () => {
  it('with replay paused after one write and the primary idle, the lag grows by the pool clock from that write (bytes behind > 0), the replica leaves rotation past DB_REPLICA_MAX_LAG_MS and is back at lag 0 when replay resumes', async () => {
    const { router, replica, metrics, readOnStandby } = await rig({ replicaMaxLagMs: 1_000 });
    const interval = router.sampleIntervalMs; // 250 ms
    // A while of samples with the replica current: its last replayed transaction grows old, which
    // must not count as lag.
    for (let i = 0; i < 6; i++) await sampleUntil(router, (s) => s.inRotation, 5_000, 'the replica is in rotation');
    expect(await readOnStandby()).toBe(true);

    const since = performance.now(); // the replica has everything the primary wrote before this
    await rs.caughtUp();
    await rs.standby.query('SELECT pg_wal_replay_pause()');
    try {
      const before = lsn((await rs.primary.query('SELECT pg_current_wal_lsn()::text AS lsn')).rows[0].lsn);
      await rs.primary.query('INSERT INTO lag_probe DEFAULT VALUES'); // the WAL the standby now holds back
      const acknowledged = performance.now();
      const after = lsn((await rs.primary.query('SELECT pg_current_wal_lsn()::text AS lsn')).rows[0].lsn);
      // From here on the primary is idle: nobody writes.
      const first = await sampleUntil(router, (s) => (s.lagMs ?? 0) > 0, 5_000, 'the replica lags');
      // The lag is the pool-clock time since the primary passed the replica's replay position:
      // at least since the write was acknowledged, at most since the replica was last current
      // (plus the resolution of the primary's samples), however old its last replayed
      // transaction is.
      expect(first.lagMs!).toBeLessThanOrEqual(Math.ceil(first.sampledAt! - since) + interval + 250);
      expect(first.lagMs!).toBeGreaterThanOrEqual(Math.floor(first.sampledAt! - acknowledged) - interval);
      expect(first.lagUnknown).toBe(false);
      expect(first.lagBytes!).toBeGreaterThanOrEqual(Number(after - before));

      // It grows while the primary is idle, by exactly the time between samples.
      const seen = [first];
      while (seen.length < 4) seen.push(await sampleUntil(router, () => true, 5_000, 'a sample'));
      for (let i = 1; i < seen.length; i++) {
        expect(seen[i].lagMs!).toBeGreaterThan(seen[i - 1].lagMs!);
        expect(Math.abs(seen[i].lagMs! - seen[i - 1].lagMs! - (seen[i].sampledAt! - seen[i - 1].sampledAt!))).toBeLessThanOrEqual(2);
        expect(seen[i].lagBytes!).toBeGreaterThanOrEqual(Number(after - before));
      }

      const out = await sampleUntil(router, (s) => !s.inRotation, 5_000, 'the replica left rotation');
      expect(out).toMatchObject({ outOfRotation: 'lagging', lagUnknown: false });
      expect(out.reason).toMatch(/^replay lag \d+ ms exceeds DB_REPLICA_MAX_LAG_MS \(1000 ms\)$/);
      expect(out.lagMs!).toBeGreaterThan(1_000);
      expect(await readOnStandby()).toBe(false); // the primary serves reads
      const report = replica.getHealthReport();
      expect(report.pool_status.health).toBe('warning');
      expect(report.replica).toMatchObject({ in_rotation: false, lag_unknown: false, out_of_rotation: 'lagging' });
      expect(report.replica!.lag_bytes).toBeGreaterThanOrEqual(Number(after - before));
      const text = await metrics();
      expect(text).toContain('db_pool_replica_in_rotation{pool_name="default-replica-1"} 0');
      expect(text).toContain('db_pool_replica_out_of_rotation{pool_name="default-replica-1",reason="lagging"} 1');
      expect(text).toContain('db_pool_replica_out_of_rotation{pool_name="default-replica-1",reason="promoted"} 0');
      expect(text).toMatch(/db_pool_replica_lag_seconds\{pool_name="default-replica-1"\} [1-9]/);
      expect(text).toMatch(/db_pool_replica_lag_bytes\{pool_name="default-replica-1"\} [1-9]/);
    } finally {
      await rs.standby.query('SELECT pg_wal_replay_resume()');
    }
    const back = await sampleUntil(router, (s) => s.inRotation, 5_000, 'the replica is back in rotation');
    expect(back).toMatchObject({ lagMs: 0, lagBytes: 0, lagUnknown: false, outOfRotation: undefined, reason: undefined });
    expect(await readOnStandby()).toBe(true);
    expect(replica.getPoolStatus().health).toBe('healthy');
  });

  it("a failed primary sample is reported as lag_unknown with its reason: the replica stays in rotation while the time since the primary's last sample is within DB_REPLICA_MAX_LAG_MS, then leaves it, and returns when the primary answers", async () => {
    const { router, replica, metrics } = await rig({ replicaMaxLagMs: 2_000 });
    await sampleUntil(router, (s) => s.inRotation && s.lagMs === 0, 5_000, 'the replica is current');
    // Watched from before the stop, so a slow shutdown cannot hide the first sample that failed.
    const firstUnknown = sampleUntil(router, (s) => s.lagUnknown, 8_000, 'the lag is unknown');
    await rs.primary.stop('fast');
    try {
      const unknown = await firstUnknown;
      // One sample interval (500 ms) after the primary's last answer: within the limit.
      expect(unknown).toMatchObject({ inRotation: true, lagMs: null, lagBytes: null, outOfRotation: undefined });
      expect(unknown.reason).toMatch(/^lag unknown: the primary's WAL position could not be sampled/);
      expect(replica.getHealthReport().replica).toMatchObject({
        lag_ms: null,
        lag_unknown: true,
        in_rotation: true,
        out_of_rotation: null,
        reason: expect.stringMatching(/^lag unknown: the primary's WAL position could not be sampled.*: \S+/),
      });

      const out = await sampleUntil(router, (s) => !s.inRotation, 5_000, 'the replica left rotation');
      expect(out).toMatchObject({ lagUnknown: true, lagMs: null, outOfRotation: 'lag_unknown' });
      expect(replica.getHealthReport()).toMatchObject({
        pool_status: { health: 'warning' },
        replica: { lag_unknown: true, in_rotation: false, out_of_rotation: 'lag_unknown' },
      });
      const text = await metrics();
      expect(text).toContain('db_pool_replica_out_of_rotation{pool_name="default-replica-1",reason="lag_unknown"} 1');
      expect(text).not.toContain('db_pool_replica_lag_seconds{pool_name="default-replica-1"}');
    } finally {
      await rs.primary.start();
    }
    await rs.streaming();
    const back = await sampleUntil(router, (s) => s.inRotation && !s.lagUnknown, 10_000, 'the replica is back with a known lag');
    expect(back).toMatchObject({ lagMs: 0, outOfRotation: undefined, reason: undefined });
    expect(replica.getHealthReport().replica).toMatchObject({ lag_unknown: false, in_rotation: true, out_of_rotation: null });
  });

  it('a replica URL that names another database cluster (its system identifier differs) never enters rotation', async () => {
    const { router, replica, metrics, readOnStandby } = await rig({ replicaUrls: databaseUrl(), replicaMaxLagMs: 1_000 });
    const status = router.status()[0]; // the first sample was taken at start-up
    expect(status).toMatchObject({ inRotation: false, outOfRotation: 'system_mismatch', lagMs: null });
    expect(status.reason).toMatch(/^another database cluster: system identifier \d+, the primary's \d+$/);
    expect(replica.getHealthReport().replica).toMatchObject({ in_rotation: false, out_of_rotation: 'system_mismatch' });
    expect(await metrics()).toContain('db_pool_replica_out_of_rotation{pool_name="default-replica-1",reason="system_mismatch"} 1');
    expect(await readOnStandby()).toBe(false);
  });

  // Last: the standby stays promoted.
  it('a standby promoted on its own while the primary runs leaves rotation (promoted, on a timeline of its own), with the reason in health and metrics; reads go to the primary', async () => {
    const { router, replica, metrics, readOnStandby } = await rig({ replicaMaxLagMs: 1_000 });
    await sampleUntil(router, (s) => s.inRotation, 5_000, 'the replica is in rotation');
    expect(await readOnStandby()).toBe(true);
    await rs.standby.query('SELECT pg_promote(true, 30)');
    const out = await sampleUntil(router, (s) => !s.inRotation, 5_000, 'the replica left rotation');
    expect(out).toMatchObject({ outOfRotation: 'promoted', lagMs: null, lagUnknown: false });
    expect(out.reason).toMatch(/^not a standby: promoted \(timeline 2; the primary's is 1\)$/);
    expect(await readOnStandby()).toBe(false);
    expect(replica.getHealthReport()).toMatchObject({
      pool_status: { health: 'warning' },
      replica: { in_rotation: false, out_of_rotation: 'promoted', reason: "not a standby: promoted (timeline 2; the primary's is 1)" },
    });
    const text = await metrics();
    expect(text).toContain('db_pool_replica_in_rotation{pool_name="default-replica-1"} 0');
    expect(text).toContain('db_pool_replica_out_of_rotation{pool_name="default-replica-1",reason="promoted"} 1');
    expect(text).toContain('db_pool_replica_out_of_rotation{pool_name="default-replica-1",reason="lagging"} 0');
    // It stays out: the primary still answers on timeline 1.
    expect((await sampleUntil(router, () => true, 5_000, 'a sample')).inRotation).toBe(false);
  });
});
