import type { INestApplication } from '@nestjs/common';
import type { AddressInfo } from 'node:net';
import pg from 'pg';
import type { DbPoolOptions } from '@db-pool/db-pool';
import { createApp } from '../../src/bootstrap.js';

export const databaseUrl = (): string => process.env.DATABASE_URL!;

/**
 * For the file: the api listening on a free port against the test server, and an admin client
 * to look at the table; the items whose name starts with `tag` are deleted afterwards.
 */
export function itemsFixture(
  tag: string,
  overrides: DbPoolOptions = {},
): { base: () => string; admin: () => pg.Client; app: () => INestApplication } {
  let app: INestApplication | undefined;
  let admin: pg.Client | undefined;
  let base = '';
  beforeAll(async () => {
    app = await createApp({ url: databaseUrl(), poolSize: 2, maxOverflow: 2, env: {}, ...overrides }, { logger: false });
    await app.listen(0, '127.0.0.1');
    base = `http://127.0.0.1:${(app.getHttpServer().address() as AddressInfo).port}`;
    admin = new pg.Client({ connectionString: databaseUrl() });
    await admin.connect();
  });
  afterAll(async () => {
    await admin?.query('DELETE FROM items WHERE name LIKE $1', [`${tag}%`]);
    await admin?.end();
    await app?.close();
  });
  return { base: () => base, admin: () => admin!, app: () => app! };
}
