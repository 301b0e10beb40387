/**
 * The failover drill through the api, under write load: a primary and a synchronous streaming
 * standby (tools/replica-set.mjs), the api on `DATABASE_URL=primary,standby?target_session_attrs=read-write`,
 * writers posting items; the primary is stopped with `-m immediate` and the standby promoted.
 * Prints the figures docs/high-availability.md reports.
 */
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { startReplicaSet, type ReplicaSet } from '../../../../tools/replica-set.mjs';
import { startFaultProxy, type FaultProxy } from '../../../../tools/fault-proxy.mjs';
import { startApi, type Api } from './api-process.js';
import { eventually } from '../../../../tools/wait.mjs';

const root = fileURLToPath(new URL('../../../../', import.meta.url));

interface Outcome {
  at: number;
  ms: number;
  status: number;
  id?: number;
  name: string;
  condition?: string;
}

describe('failover drill through the api', () => {
  let rs: ReplicaSet;
  let proxy: FaultProxy;
  let api: Api | undefined;
  beforeAll(async () => {
    execFileSync(process.execPath, [`${root}node_modules/typescript/bin/tsc`, '-b', `${root}apps/api/tsconfig.app.json`], {
      stdio: 'inherit',
    });
    rs = await startReplicaSet({ synchronous: true });
    proxy = await startFaultProxy({ port: rs.primary.port });
  });
  afterAll(async () => {
    if (api && api.child.exitCode === null) api.child.kill('SIGKILL');
    await api?.exited;
    await proxy?.close();
    await rs?.stop();
  });

  it('writes resume on the promoted standby; failures in between are prompt 503s (504 outcome_unknown for a COMMIT in flight); every acknowledged write survives; the old server hears nothing after', async () => {
    const poolTimeoutMs = 2_000;
    api = await startApi({
      DATABASE_URL: `postgres://postgres:postgres@127.0.0.1:${proxy.port},${rs.standby.hostPort}/postgres?target_session_attrs=read-write`,
      DB_POOL_SIZE: '2',
      DB_MAX_OVERFLOW: '4',
      DB_CONNECT_TIMEOUT: '1',
      DB_POOL_TIMEOUT: String(poolTimeoutMs / 1000),
    });
    const outcomes: Outcome[] = [];
    let n = 0;
    let stop = false;
    const writer = async () => {
      while (!stop) {
        const name = `drill-${++n}`;
        const started = performance.now();
        try {
          const res = await fetch(`${api!.base}/items`, {
            method: 'POST',
            headers: { 'content-type': 'application/json' },
            body: JSON.stringify({ name }),
          });
          const body = (await res.json()) as { id?: number; condition?: string };
          outcomes.push({ at: started, ms: performance.now() - started, status: res.status, id: body.id, name, condition: body.condition });
          if (res.status !== 201) await new Promise((r) => setTimeout(r, 10)); // a retry's pace
        } catch {
          outcomes.push({ at: started, ms: performance.now() - started, status: 0, name });
        }
      }
    };
    const writers = Array.from({ length: 4 }, writer);
    expect(await eventually(() => outcomes.filter((o) => o.status === 201).length >= 100, 10_000, 10)).toBe(true);
    const killedAt = performance.now();
    await rs.primary.stop('immediate');
    expect(await eventually(() => outcomes.some((o) => o.at >= killedAt && o.status !== 201), 10_000, 5)).toBe(true);
    const statementsSeen = proxy.statements;
    await rs.promote();
    const promotedAt = performance.now();
    expect(await eventually(() => outcomes.some((o) => o.at >= promotedAt && o.status === 201), 15_000, 5)).toBe(true);
    const resumed = Math.min(...outcomes.filter((o) => o.at >= promotedAt && o.status === 201).map((o) => o.at + o.ms));
    const okBefore = outcomes.filter((o) => o.status === 201).length;
    expect(await eventually(() => outcomes.filter((o) => o.status === 201).length >= okBefore + 100, 15_000, 10)).toBe(true);
    stop = true;
    await Promise.all(writers);

    const failed = outcomes.filter((o) => o.status !== 201);
    const acknowledged = outcomes.filter((o) => o.status === 201);
    const { rows } = await rs.standby.query<{ name: string }>(`SELECT name FROM items WHERE name LIKE 'drill-%'`);
    const present = new Set(rows.map((r) => r.name));
    const lost = acknowledged.filter((o) => !present.has(o.name));
    const byKind = failed.reduce<Record<string, number>>((all, o) => {
      const kind = `${o.status}${o.condition ? ` ${o.condition}` : ''}`;
      all[kind] = (all[kind] ?? 0) + 1;
      return all;
    }, {});
    process.stdout.write(
      `api failover drill: writes resumed ${((resumed - promotedAt) / 1000).toFixed(2)} s after the promotion completed ` +
        `(${((resumed - killedAt) / 1000).toFixed(2)} s after the kill); ${failed.length} of ${outcomes.length} requests failed ` +
        `${JSON.stringify(byKind)}, slowest failure ${Math.round(Math.max(...failed.map((o) => o.ms)))} ms; ` +
        `${acknowledged.length} acknowledged, ${lost.length} missing on the new primary; ` +
        `statements at the old primary after the pool saw it go: ${proxy.statements - statementsSeen}\n`,
    );
    // Goal: under 2 s plus one DB_CONNECT_TIMEOUT (1 s).
    expect(resumed - promotedAt).toBeLessThan(3_000);
    expect(failed.length).toBeGreaterThan(0);
    for (const o of failed) {
      // 503: not applied, retry (the pool's answers, or a transaction that died before its COMMIT);
      // 504 outcome_unknown: a COMMIT in flight at the kill, which may have been applied.
      expect(o.status === 503 || (o.status === 504 && o.condition === 'outcome_unknown')).toBe(true);
      expect(o.ms).toBeLessThan(poolTimeoutMs + 500);
    }
    expect(lost).toEqual([]);
    expect(proxy.statements).toBe(statementsSeen);
  }, 120_000);
});
