/**
 * The contract of `src/pool/pg-internals.ts`: every undocumented member of pg and TypeORM that
 * db-pool reads exists, with the meaning it relies on, in the versions package.json pins. An
 * upgrade that changes one fails here, naming it.
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import Cursor from 'pg-cursor';
import { createDbPoolDataSource, poolOf } from '../src/index.js';
import {
  awaitingServer,
  backendKeyOf,
  connectionLost,
  hasPgInternals,
  openSubmittables,
  PINNED,
  protocolOf,
  queuedQueries,
  socketTaken,
  typeOrmPoolsOf,
} from '../src/pool/pg-internals.js';
import { databaseUrl } from './support/db.js';

const root = fileURLToPath(new URL('../../../', import.meta.url));
const rootPackage = JSON.parse(readFileSync(`${root}package.json`, 'utf8')) as { dependencies: Record<string, string> };

/** Fails naming the member when it is not what db-pool expects. */
function expectMember(owner: object, member: string, kind: 'boolean' | 'object' | 'function'): void {
  const value = (owner as Record<string, unknown>)[member];
  expect({ member, kind: Array.isArray(value) ? 'object' : typeof value }).toEqual({ member, kind });
}

describe('pg and TypeORM internals db-pool reads (pg-internals.ts)', () => {
  it.each(Object.entries(PINNED))('%s is pinned to %s in package.json and installed at that version', (name, version) => {
    expect(rootPackage.dependencies[name]).toBe(version);
    const installed = JSON.parse(readFileSync(`${root}node_modules/${name}/package.json`, 'utf8')) as { version: string };
    expect(installed.version).toBe(version);
  });

  it('a connected pg.Client has _queryable, _ending, _ended, _queryQueue, readyForQuery and connection, as read', async () => {
    const client = new pg.Client({ connectionString: databaseUrl() });
    await client.connect();
    try {
      for (const member of ['_queryable', '_ending', '_ended', 'readyForQuery'] as const) expectMember(client, member, 'boolean');
      expectMember(client, '_queryQueue', 'object');
      expectMember(client, 'connection', 'object');
      expectMember((client as unknown as { connection: object }).connection, 'stream', 'object');
      // pg reads its socket through one 'data' listener (socketTaken: a COPY TO takes it off), and
      // its connection sends CopyFail (failCopyIn).
      expect(socketTaken(client)).toBe(false);
      expectMember((client as unknown as { connection: object }).connection, 'sendCopyFail', 'function');
      expect(connectionLost(client)).toBe(false);
      expect(queuedQueries(client)).toBe(0);
      // processID and secretKey: the backend's key a cancel request names.
      const { rows } = await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid');
      expect(backendKeyOf(client)).toEqual({ processID: rows[0].pid, secretKey: expect.any(Number) });
      expect(awaitingServer(client)).toBe(false);

      // While a query is on the wire and another is queued behind it:
      const messages: string[] = [];
      expect(hasPgInternals(client)).toBe(true);
      for (const name of ['readyForQuery', 'commandComplete', 'parameterStatus']) protocolOf(client)!.on(name, () => messages.push(name));
      const running = client.query('SELECT pg_sleep(0.05)');
      const queued = client.query("SET TimeZone = 'UTC'");
      expect(awaitingServer(client)).toBe(true);
      expect(queuedQueries(client)).toBe(1);
      await Promise.all([running, queued]);
      expect(awaitingServer(client)).toBe(false);
      expect(messages).toEqual(expect.arrayContaining(['commandComplete', 'readyForQuery', 'parameterStatus']));
    } finally {
      await client.end();
    }
    expect(connectionLost(client)).toBe(true); // ended
  });

  it('pg.Client keeps the submittable it runs as _activeQuery and queued ones in _queryQueue (openSubmittables)', async () => {
    const client = new pg.Client({ connectionString: databaseUrl() });
    await client.connect();
    try {
      expect('_activeQuery' in client).toBe(true); // null or undefined while idle
      expect(openSubmittables(client)).toEqual([]);
      const cursor = client.query(new Cursor('SELECT n FROM generate_series(1, 3) AS n'));
      const queued = client.query(new Cursor('SELECT 1'));
      await cursor.read(1);
      expect(openSubmittables(client)).toEqual([cursor, queued]);
      await cursor.close();
      await queued.read(1);
      await queued.close();
      expect(openSubmittables(client)).toEqual([]);
      // pg's own queries are not submittables of the caller's.
      const running = client.query('SELECT pg_sleep(0.01)');
      expect(openSubmittables(client)).toEqual([]);
      await running;
    } finally {
      await client.end();
    }
  });

  it("pg.Client has getTransactionStatus() (pg ≥ 8.23) and TypeORM's Postgres driver keeps its pool as driver.master", async () => {
    expectMember(pg.Client.prototype, 'getTransactionStatus', 'function');
    const dataSource = await createDbPoolDataSource({ url: databaseUrl(), poolSize: 1, maxOverflow: 0, env: {} });
    try {
      expect(typeOrmPoolsOf(dataSource.driver).master).toBe(poolOf(dataSource));
      expectMember(dataSource.driver, 'slaves', 'object');
    } finally {
      await dataSource.destroy();
    }
  });
});
