import 'reflect-metadata';
// Read-your-writes over HTTP (DB_REPLICA_CONSISTENCY=read-your-writes, X-Db-Lsn), against a real
// primary and a real streaming standby (tools/replica-set.mjs) whose replay is paused: the api's
// reads go to the standby unless a request must see a write the standby has not replayed.
import { type ReplicaRouter, getDbPoolReplicasToken } from '@db-pool/db-pool';
import { startReplicaSet, type ReplicaSet } from '../../../tools/replica-set.mjs';
import { eventually } from '../../../tools/wait.mjs';
import { startApi, type RunningApp } from './support/http.js';

describe('read-your-writes over HTTP, on a standby whose replay is paused', () => {
  let rs: ReplicaSet;
  let api: RunningApp;
  let router: ReplicaRouter;

  beforeAll(async () => {
    rs = await startReplicaSet();
    api = await startApi({
      url: rs.primary.url,
      replicaUrls: rs.standby.url,
      replicaConsistency: 'read-your-writes',
      poolSize: 1,
      maxOverflow: 2,
      connectTimeoutSeconds: 2,
    });
    router = api.app.get<ReplicaRouter>(getDbPoolReplicasToken());
    await rs.caughtUp(); // the migrations' tables
  });
  beforeEach(async () => {
    await rs.caughtUp();
    // Requested is enough: the startup process checks for the request before it applies each record,
    // and it has applied everything so far (caughtUp).
    await rs.standby.query('SELECT pg_wal_replay_pause()');
  });
  afterEach(async () => {
    await rs.standby.query('SELECT pg_wal_replay_resume()');
  });
  afterAll(async () => {
    await api?.close();
    await rs?.stop();
  });

  const send = async (method: string, path: string, options: { body?: unknown; token?: string } = {}) => {
    const headers: Record<string, string> = {};
    if (options.body !== undefined) headers['content-type'] = 'application/json';
    if (options.token !== undefined) headers['x-db-lsn'] = options.token;
    const res = await fetch(`${api.base}${path}`, {
      method,
      headers,
      ...(options.body !== undefined ? { body: JSON.stringify(options.body) } : {}),
    });
    return { status: res.status, body: (await res.json()) as Record<string, unknown>, token: res.headers.get('x-db-lsn') ?? undefined };
  };
  const counted = async <T>(work: () => Promise<T>) => {
    const before = router.readCounts();
    const result = await work();
    const after = router.readCounts();
    return {
      result,
      replica: after.eventual + after.replayed + after.replayed_on_check - (before.eventual + before.replayed + before.replayed_on_check),
      primary: after.replica_behind + after.no_replica - (before.replica_behind + before.no_replica),
    };
  };

  it('a write then a read in one request returns the write, read from the primary', async () => {
    const created = await send('POST', '/items', { body: { name: 'before' } });
    expect(created.status).toBe(201);
    expect(created.token).toMatch(/^[0-9A-F]+\/[0-9A-F]+$/);
    const { result, replica, primary } = await counted(() =>
      send('PATCH', `/items/${String(created.body.id)}`, { body: { name: 'after' } }),
    );
    expect(result.status).toBe(200);
    expect(result.body).toMatchObject({ id: created.body.id, name: 'after' });
    expect({ replica, primary }).toEqual({ replica: 0, primary: 1 });
    expect(result.token).toBeDefined();
  });

  it("a read carrying a write's token returns it; one without goes to the standby and may be stale, as documented", async () => {
    const created = await send('POST', '/items', { body: { name: 'tokened' } });
    const id = String(created.body.id);

    const withToken = await counted(() => send('GET', `/items/${id}`, { token: created.token }));
    expect(withToken.result).toMatchObject({ status: 200, body: { id: created.body.id, name: 'tokened' } });
    expect(withToken.primary).toBe(1);
    // The token comes back (a client keeps the latest it was given).
    expect(withToken.result.token).toBe(created.token);

    const without = await counted(() => send('GET', `/items/${id}`));
    expect(without.result.status).toBe(404); // the standby has not replayed the insert
    expect(without.replica).toBe(1);
    expect(without.result.token).toBeUndefined();
  });

  it('after replay resumes, reads carrying the token go back to the standby once it has caught up', async () => {
    const created = await send('POST', '/items', { body: { name: 'resumed' } });
    const id = String(created.body.id);
    expect((await counted(() => send('GET', `/items/${id}`, { token: created.token }))).primary).toBe(1);
    await rs.standby.query('SELECT pg_wal_replay_resume()');
    // Every read carrying the token returns the item; the first ones may still come from the primary.
    const onStandby = await eventually(async () => {
      const read = await counted(() => send('GET', `/items/${id}`, { token: created.token }));
      expect(read.result).toMatchObject({ status: 200, body: { name: 'resumed' } });
      return read.replica === 1;
    });
    expect(onStandby).toBe(true);
  });

  it('a malformed token is a 400 that names the header; nothing is read', async () => {
    for (const bad of ['nope', '0/0/0', 'x'.repeat(200)]) {
      const { result, replica, primary } = await counted(() => send('GET', '/items/1', { token: bad }));
      expect(result.status).toBe(400);
      expect(result.body).toMatchObject({
        statusCode: 400,
        error: 'Bad Request',
        message: expect.stringMatching(/^X-Db-Lsn: malformed read-your-writes token/),
      });
      expect({ replica, primary }).toEqual({ replica: 0, primary: 0 });
    }
  });

  it('health and metrics report where reads went and why', async () => {
    const health = await api.get('/health/db_pool');
    expect(health.body.details.default.reads).toMatchObject({
      consistency: 'read-your-writes',
      replica: { total: expect.any(Number) },
      primary: { replica_behind: expect.any(Number) },
    });
    expect(health.body.details.default.reads.primary.replica_behind).toBeGreaterThan(0);
    const metrics = await api.get('/metrics');
    expect(metrics.text).toMatch(/db_pool_replica_reads_total\{pool_name="default",served_by="primary",reason="replica_behind"\} [1-9]/);
  });
});
