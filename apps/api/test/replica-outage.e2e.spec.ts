import 'reflect-metadata';
// A read replica that is down, through the api: a real primary and streaming standby
// (tools/replica-set.mjs), the standby behind the fault proxy. A replica out of rotation costs
// the instance nothing but its reads going to the primary: it stays ready, its health says
// `degraded` with the reason, and a pod that (re)starts during the outage starts.
import { type ReplicaRouter, getDbPoolReplicasToken } from '@db-pool/db-pool';
import { startFaultProxy, type FaultProxy } from '../../../tools/fault-proxy.mjs';
import { startReplicaSet, type ReplicaSet } from '../../../tools/replica-set.mjs';
import { eventually } from '../../../tools/wait.mjs';
import { startApi, type RunningApp } from './support/http.js';

describe('a read replica out of rotation over HTTP', () => {
  let rs: ReplicaSet;
  let proxy: FaultProxy;
  const apps: RunningApp[] = [];

  beforeAll(async () => {
    rs = await startReplicaSet();
    proxy = await startFaultProxy({ port: rs.standby.port });
  });
  afterEach(async () => {
    for (const running of apps.splice(0)) await running.close().catch(() => {});
    await proxy.setMode('pass');
  });
  afterAll(async () => {
    await proxy?.close();
    await rs?.stop();
  });

  const start = async () => {
    const running = await startApi({
      url: rs.primary.url,
      replicaUrls: proxy.url(rs.standby.url),
      poolSize: 1,
      maxOverflow: 1,
      connectTimeoutSeconds: 1,
      healthTimeoutMs: 500,
      replicaMaxLagMs: 1_000,
    });
    apps.push(running);
    return { running, router: running.app.get<ReplicaRouter>(getDbPoolReplicasToken()) };
  };
  const post = async (running: RunningApp, name: string): Promise<{ id: number }> => {
    const res = await fetch(`${running.base}/items`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ name }),
    });
    expect(res.status).toBe(201);
    return (await res.json()) as { id: number };
  };
  /** Reads the item back through TypeORM's read path; true when the statement went to the standby (through the proxy). */
  const readGoesToStandby = async (running: RunningApp, id: number): Promise<boolean> => {
    const before = proxy.statements;
    const res = await running.get(`/items/${id}`);
    expect(res.status).toBe(200);
    expect(res.body).toMatchObject({ id });
    return proxy.statements > before;
  };
  /** What an instance with the replica out of rotation must answer: ready, health degraded with the reason, reads from the primary. */
  const expectOutOfRotation = async (running: RunningApp, id: number, reason: RegExp) => {
    const ready = await running.get('/health/ready');
    expect({ status: ready.status, body: ready.body }).toMatchObject({ status: 200, body: { status: 'ok' } });
    expect(Object.keys(ready.body.details)).toEqual(['default']); // readiness checks the primary's pool
    expect(ready.ms).toBeLessThan(500);

    const health = await running.get('/health/db_pool');
    expect(health.status).toBe(200);
    expect(health.body.status).toBe('degraded');
    expect(health.body.details.default).toMatchObject({ status: 'up', pool_status: { health: 'healthy' } });
    const replica = health.body.details['default-replica-1'];
    expect(replica).toMatchObject({
      status: 'degraded',
      pool_status: { health: 'warning' },
      replica: { role: 'replica', in_rotation: false, out_of_rotation: 'unreachable', reason: expect.stringMatching(reason) },
    });
    expect(replica.recommendations.join('\n')).toMatch(/out of rotation for reads \(unreachable\)/);

    expect(await readGoesToStandby(running, id)).toBe(false);
  };

  it('a replica refused, then blackholed: the instance stays ready (200), /health/db_pool is 200 with the replica degraded and why, and reads are served by the primary until it is back', async () => {
    const { running, router } = await start();
    const { id } = await post(running, 'replica-outage');
    await rs.caughtUp();
    expect(await eventually(() => router.status()[0].inRotation, 5_000)).toBe(true);
    expect(await readGoesToStandby(running, id)).toBe(true);

    await proxy.setMode('reset');
    await proxy.setMode('refuse');
    // Reads that reached the replica's pool before the sampler saw it go: the first finds its
    // connection reset, the next cannot open one (its pool has no connection and cannot connect).
    const replicaPool = router.pools()[0];
    const connectFails = async () => {
      await replicaPool.query('SELECT 1').catch(() => {});
      return replicaPool.connectHealth().consecutiveFailures > 0;
    };
    expect(await eventually(connectFails, 5_000)).toBe(true);
    expect(await eventually(() => router.status()[0].outOfRotation === 'unreachable', 5_000)).toBe(true);
    await expectOutOfRotation(running, id, /^the replica could not be sampled: ECONNREFUSED$/);

    await proxy.setMode('blackhole');
    // Accepted and never answered: the sample's connect gives up at DB_POOL_HEALTH_TIMEOUT_MS.
    expect(await eventually(() => /within 500 ms/.test(router.status()[0].cause?.message ?? ''), 5_000)).toBe(true);
    await expectOutOfRotation(running, id, /^the replica could not be sampled: /);

    await proxy.setMode('pass');
    expect(await eventually(() => router.status()[0].inRotation, 10_000)).toBe(true);
    expect(await eventually(() => readGoesToStandby(running, id), 5_000)).toBe(true);
    expect((await running.get('/health/db_pool')).body.details['default-replica-1']).toMatchObject({
      status: 'up',
      replica: { in_rotation: true },
    });
  });

  it('a replica that cannot be reached at start-up does not stop the api: it starts with the replica out of rotation (unreachable), warns once, serves reads from the primary, and takes the replica in when it answers', async () => {
    await proxy.setMode('refuse');
    const { running, router } = await start();
    expect(router.status()[0]).toMatchObject({ inRotation: false, outOfRotation: 'unreachable' });
    const warnings = () => running.logger.lines.filter((l) => l.level === 'warn' && l.text.includes('out of rotation'));
    expect(warnings().map((l) => l.text)).toEqual([
      expect.stringMatching(/^db-pool "default-replica-1": out of rotation for reads: the replica could not be sampled: .*ECONNREFUSED/),
    ]);
    expect(running.logger.lines.filter((l) => l.level === 'error')).toEqual([]);
    const { id } = await post(running, 'replica-outage-start');
    await expectOutOfRotation(running, id, /^the replica could not be sampled: ECONNREFUSED$/);
    expect(warnings()).toHaveLength(1); // not once per sample

    await proxy.setMode('pass');
    expect(await eventually(() => router.status()[0].inRotation, 10_000)).toBe(true);
    await rs.caughtUp();
    expect(await eventually(() => readGoesToStandby(running, id), 5_000)).toBe(true);
    expect(running.logger.lines.some((l) => l.level === 'log' && l.text.includes('"default-replica-1": back in rotation for reads'))).toBe(
      true,
    );
  });
});
