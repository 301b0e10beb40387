import 'reflect-metadata';
import type { INestApplication } from '@nestjs/common';
import { randomUUID } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import pg from 'pg';
import { type EmbeddedPostgres, startEmbeddedPostgres } from '../../../tools/embedded-db.mjs';
import { eventually } from '../../../tools/wait.mjs';
import { createApp } from '../src/bootstrap.js';

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- response bodies are checked by the assertions
const json = async (res: Response): Promise<any> => res.json();

/**
 * A primary whose synchronous standby never confirms: a COMMIT that wrote waits for it until
 * the request's deadline cancels the wait, and PostgreSQL then says the transaction committed
 * locally. A server of its own: `synchronous_standby_names` is server-wide.
 */
describe('api over real HTTP: a write whose COMMIT outlives its deadline', () => {
  let server: EmbeddedPostgres;
  let app: INestApplication;
  let base: string;
  let admin: pg.Client;

  beforeAll(async () => {
    server = await startEmbeddedPostgres();
    // Migrations first, while commits are not held.
    app = await createApp({ url: server.url, poolSize: 2, maxOverflow: 2, env: {} }, { logger: false });
    await app.listen(0, '127.0.0.1');
    base = `http://127.0.0.1:${(app.getHttpServer().address() as AddressInfo).port}`;
    admin = new pg.Client({ connectionString: server.url });
    await admin.connect();
    await admin.query("ALTER SYSTEM SET synchronous_standby_names = 'nobody'");
    await admin.query('SELECT pg_reload_conf()');
    const probe = new pg.Client({ connectionString: server.url });
    await probe.connect();
    try {
      const held = async () =>
        (await probe.query<{ s: string }>('SELECT current_setting($1) AS s', ['synchronous_standby_names'])).rows[0].s === 'nobody';
      expect(await eventually(held, 10_000)).toBe(true);
    } finally {
      await probe.end();
    }
  }, 60_000);
  afterAll(async () => {
    await admin?.end();
    await app?.close();
    await server?.stop();
  });

  const post = (name: string, key: string, headers: Record<string, string> = {}) =>
    fetch(`${base}/items`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'idempotency-key': key, ...headers },
      body: JSON.stringify({ name }),
    });

  it('answers 504 outcome_unknown with committed: true and no Retry-After, and its retry with the same key returns the row without a duplicate', async () => {
    const key = randomUUID();
    const res = await post('sync-unconfirmed', key, { 'x-request-deadline-ms': '500' });
    expect(res.status).toBe(504);
    expect(res.headers.get('retry-after')).toBeNull();
    const body = await json(res);
    expect(body).toMatchObject({ statusCode: 504, condition: 'outcome_unknown', pool: 'default', committed: true });
    expect(body.message).not.toMatch(/retry later/i);
    expect(body).not.toHaveProperty('retry_after');
    // It is on the primary, as the server said.
    const stored = await admin.query<{ id: number }>('SELECT id FROM items WHERE idempotency_key = $1', [key]);
    expect(stored.rows).toHaveLength(1);

    // The retry finds the key's row: nothing is written, so nothing waits for the standby.
    const retry = await post('sync-unconfirmed', key);
    expect(retry.status).toBe(201);
    expect(retry.headers.get('idempotent-replayed')).toBe('true');
    expect(await json(retry)).toMatchObject({ id: stored.rows[0].id, name: 'sync-unconfirmed' });
    expect((await admin.query('SELECT count(*)::int AS n FROM items')).rows[0].n).toBe(1);
  });
});
