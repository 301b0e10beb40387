// The lag sampler against a real primary and a real streaming standby (tools/replica-set.mjs):
// a server that is busy is not one that cannot be sampled. Each pool has one connection, held
// by a caller's long report; the sampler must go on measuring on a connection of its own.
import { performance } from 'node:perf_hooks';
import type pg from 'pg';
import { createDbPool, type DbPool, type DbPoolOptions } from '../src/index.js';
import { createReplicaRouter } from '../src/create-db-pool.js';
import type { ReplicaRouter, ReplicaStatus } from '../src/pool/replicas.js';
import { startReplicaSet, type ReplicaSet } from '../../../tools/replica-set.mjs';

let rs: ReplicaSet;
beforeAll(async () => {
  rs = await startReplicaSet();
});
afterAll(async () => {
  await rs?.stop();
});

const ended: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const end of ended.splice(0).reverse()) await end();
});

/** A primary pool and the router of its one replica, one connection each, sampled every 250 ms, a sample given 500 ms. */
async function rig(): Promise<{ primary: DbPool; router: ReplicaRouter }> {
  const options: DbPoolOptions = {
    url: rs.primary.url,
    replicaUrls: [rs.standby.url],
    poolSize: 1,
    maxOverflow: 0,
    replicaMaxLagMs: 1_000,
    healthTimeoutMs: 500,
    env: {},
  };
  const primary = await createDbPool(options);
  ended.push(() => primary.end());
  const router = (await createReplicaRouter(options, primary))!;
  ended.push(() => router.end());
  return { primary, router };
}

/** Waits for `n` samples of the replica that answered (a new `sampledAt`), within `timeoutMs`. */
async function samples(router: ReplicaRouter, n: number, timeoutMs: number): Promise<void> {
  const end = performance.now() + timeoutMs;
  let last = router.status()[0].sampledAt;
  for (let seen = 0; seen < n;) {
    if (performance.now() > end)
      throw new Error(`${seen} of ${n} samples within ${timeoutMs} ms; last: ${JSON.stringify(router.status()[0])}`);
    await new Promise((r) => setTimeout(r, 10));
    const at = router.status()[0].sampledAt;
    if (at !== last) {
      last = at;
      seen++;
    }
  }
}

/**
 * Runs `SELECT pg_sleep(seconds)` on `client` and watches the router's standing of the replica
 * until it answers: every standing seen, and how many samples answered meanwhile.
 */
async function watchDuring(router: ReplicaRouter, client: pg.PoolClient, seconds: number) {
  const seen: ReplicaStatus[] = [];
  let done = false;
  const report = client.query(`SELECT pg_sleep(${seconds})`).finally(() => (done = true));
  const firstSampledAt = router.status()[0].sampledAt;
  const sampledAts = new Set<number | undefined>();
  while (!done) {
    const status = router.status()[0];
    seen.push(status);
    if (status.sampledAt !== firstSampledAt) sampledAts.add(status.sampledAt);
    await new Promise((r) => setTimeout(r, 10));
  }
  await report;
  return { seen, samplesAnswered: sampledAts.size };
}

/** The standings seen, each once, as `<code>: <reason>`. */
const distinct = (seen: ReplicaStatus[]) => [...new Set(seen.map((s) => `${s.outOfRotation ?? 'in rotation'}: ${s.reason}`))];

describe('the lag sampler measures on connections of its own', () => {
  it("a busy replica (its pool's one connection running a 3 s report) stays in rotation: its samples do not queue behind the pool's callers", async () => {
    const { router } = await rig();
    await samples(router, 2, 5_000);
    expect(router.status()[0]).toMatchObject({ inRotation: true, lagUnknown: false });

    const report = await router.connect();
    const onStandby = (await report.query<{ standby: boolean }>('SELECT pg_is_in_recovery() AS standby')).rows[0].standby;
    expect(onStandby).toBe(true); // the report holds the replica pool's only connection
    try {
      const { seen, samplesAnswered } = await watchDuring(router, report, 3);
      expect(distinct(seen.filter((s) => !s.inRotation))).toEqual([]);
      // Sampling went on (every 250 ms) while the pool was busy.
      expect(samplesAnswered).toBeGreaterThanOrEqual(4);
    } finally {
      report.release();
    }
  });

  it("a busy primary (its pool's one connection running a 3 s report) does not make the replica's lag unknown: the primary is sampled beside its callers", async () => {
    const { primary, router } = await rig();
    await samples(router, 2, 5_000);
    expect(router.status()[0]).toMatchObject({ inRotation: true, lagUnknown: false });

    const report = await primary.connect();
    try {
      const { seen, samplesAnswered } = await watchDuring(router, report, 3);
      expect(distinct(seen.filter((s) => s.lagUnknown || !s.inRotation))).toEqual([]);
      expect(samplesAnswered).toBeGreaterThanOrEqual(4);
    } finally {
      report.release();
    }
  });
});
