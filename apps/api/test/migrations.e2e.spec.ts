import 'reflect-metadata';
import type { INestApplication } from '@nestjs/common';
import pg from 'pg';
import type { MigrationInterface } from 'typeorm';
import { createApp } from '../src/bootstrap.js';
import { apiTypeOrmOptions } from '../src/app.module.js';
import { databaseUrl } from './support/items-fixture.js';

const ROUNDS = 5;
const INSTANCES = 4;

/**
 * Replicas of the api started together on a database nobody has migrated yet (a first deploy,
 * a fresh preview environment): each runs the migrations at start-up.
 */
describe('api start-up migrations', () => {
  const database = `api_migrations_${process.pid}`;
  const url = new URL(databaseUrl());
  url.pathname = `/${database}`;
  let admin: pg.Client;
  beforeAll(async () => {
    admin = new pg.Client({ connectionString: databaseUrl() });
    await admin.connect();
  });
  afterAll(async () => {
    await admin?.query(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`);
    await admin?.end();
  });

  it(`${INSTANCES} instances started together on a new database all start, and every migration is applied once (${ROUNDS} rounds)`, async () => {
    const names = (apiTypeOrmOptions!.migrations as (new () => MigrationInterface)[]).map((m) => new m().name!).sort();
    for (let round = 1; round <= ROUNDS; round++) {
      await admin.query(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`);
      await admin.query(`CREATE DATABASE ${database}`);
      const started = await Promise.allSettled(
        Array.from({ length: INSTANCES }, async () => {
          const app = await createApp({ url: url.href, poolSize: 1, maxOverflow: 1, env: {} }, { logger: false });
          try {
            await app.init();
          } catch (err) {
            await app.close().catch(() => {});
            throw err;
          }
          return app;
        }),
      );
      const apps = started.flatMap((s) => (s.status === 'fulfilled' ? [s.value as INestApplication] : []));
      await Promise.all(apps.map((app) => app.close()));
      const failures = started.flatMap((s) => (s.status === 'rejected' ? [`round ${round}: ${String(s.reason)}`] : []));
      expect(failures).toEqual([]);
      const db = new pg.Client({ connectionString: url.href });
      await db.connect();
      try {
        const { rows } = await db.query<{ name: string; n: number }>(
          'SELECT name, count(*)::int AS n FROM migrations GROUP BY name ORDER BY name',
        );
        expect(rows).toEqual(names.map((name) => ({ name, n: 1 })));
        const { rows: columns } = await db.query<{ column_name: string }>(
          "SELECT column_name FROM information_schema.columns WHERE table_name = 'items' ORDER BY column_name",
        );
        expect(columns.map((c) => c.column_name)).toEqual(['created_at', 'id', 'idempotency_key', 'name']);
      } finally {
        await db.end();
      }
    }
  });
});
