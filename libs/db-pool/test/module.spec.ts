import 'reflect-metadata';
import { Injectable, Module } from '@nestjs/common';
import { ConfigModule, ConfigService } from '@nestjs/config';
import { Test, type TestingModule } from '@nestjs/testing';
import { InjectDataSource, InjectRepository, TypeOrmModule, getDataSourceToken } from '@nestjs/typeorm';
import { Column, DataSource, Entity, PrimaryGeneratedColumn, type Repository } from 'typeorm';
import pg from 'pg';
import {
  DbPool,
  DbPoolConfigError,
  DbPoolModule,
  dbPoolConfig,
  getDbPoolToken,
  InjectDbPool,
  type DbPoolConfig,
  getDbPoolConfigToken,
} from '../src/index.js';
import { backendPids, databaseUrl, eventually } from './support/db.js';

const table = `module_notes_${process.pid}`;

@Entity({ name: table })
class Note {
  @PrimaryGeneratedColumn()
  id!: number;

  @Column({ type: 'text' })
  body!: string;
}

@Injectable()
class NotesService {
  constructor(
    @InjectRepository(Note) readonly notes: Repository<Note>,
    @InjectRepository(Note, 'reporting') readonly reportingNotes: Repository<Note>,
    @InjectDbPool() readonly pool: DbPool,
    @InjectDbPool('reporting') readonly reportingPool: DbPool,
    @InjectDataSource('reporting') readonly reporting: DataSource,
  ) {}
}

@Module({
  imports: [TypeOrmModule.forFeature([Note]), TypeOrmModule.forFeature([Note], 'reporting')],
  providers: [NotesService],
  exports: [NotesService],
})
class NotesModule {}

describe('DbPoolModule', () => {
  let admin: pg.Client;
  beforeAll(async () => {
    admin = new pg.Client({ connectionString: databaseUrl() });
    await admin.connect();
  });
  afterAll(async () => {
    await admin.query(`DROP TABLE IF EXISTS ${table}`);
    await admin.end();
  });

  describe('two named pools side by side', () => {
    let app: TestingModule;
    beforeAll(async () => {
      app = await Test.createTestingModule({
        imports: [
          DbPoolModule.forRoot({
            url: databaseUrl(),
            poolSize: 2,
            maxOverflow: 1,
            applicationName: `mod-default-${process.pid}`,
            env: {},
            typeorm: { entities: [Note], synchronize: true },
          }),
          DbPoolModule.forRoot({
            name: 'reporting',
            url: databaseUrl(),
            poolSize: 3,
            maxOverflow: 0,
            applicationName: `mod-reporting-${process.pid}`,
            env: {},
            typeorm: { entities: [Note] },
          }),
          NotesModule,
        ],
      }).compile();
      await app.init();
    });
    afterAll(async () => {
      await app?.close();
    });

    it('gives each pool its own DbPool, warmed to its own size', async () => {
      const service = app.get(NotesService);
      expect(service.pool).toBeInstanceOf(DbPool);
      expect(service.reportingPool).toBeInstanceOf(DbPool);
      expect(service.pool).not.toBe(service.reportingPool);
      expect(service.pool.settings.name).toBe('default');
      expect(service.reportingPool.settings.name).toBe('reporting');
      expect(service.pool.state()).toMatchObject({ total: 2, active: 0 });
      expect(service.reportingPool.state()).toMatchObject({ total: 3, active: 0 });
      expect(await backendPids(admin, `mod-default-${process.pid}`)).toHaveLength(2);
      expect(await backendPids(admin, `mod-reporting-${process.pid}`)).toHaveLength(3);
      expect(app.get(getDbPoolToken('reporting'))).toBe(service.reportingPool);
    });

    it('keeps TypeOrmModule.forFeature and @InjectRepository working, through the right pool', async () => {
      const service = app.get(NotesService);
      const saved = await service.notes.save({ body: 'hello' });
      const acquiredBefore = service.reportingPool.counters.acquired;
      const found = await service.reportingNotes.findOneBy({ id: saved.id });
      expect(found?.body).toBe('hello');
      expect(service.reportingPool.counters.acquired).toBeGreaterThan(acquiredBefore);
      expect(app.get(getDataSourceToken('reporting'))).toBe(service.reporting);
    });

    it('runs TypeORM transactions through the pool and hands the connection back idle', async () => {
      const service = app.get(NotesService);
      await expect(
        service.notes.manager.transaction(async (em) => {
          await em.save(Note, { body: 'rolled back' });
          throw new Error('abort');
        }),
      ).rejects.toThrow('abort');
      expect(await service.notes.countBy({ body: 'rolled back' })).toBe(0);
      expect(service.pool.state().active).toBe(0);
    });

    it('rolls back a query runner released inside a transaction before anyone else borrows it', async () => {
      const service = app.get(NotesService);
      const runner = service.reporting.createQueryRunner();
      await runner.connect();
      await runner.startTransaction();
      await runner.manager.save(Note, { body: 'leaked transaction' });
      await runner.release(); // forgot commit / rollback
      expect(await service.reportingNotes.countBy({ body: 'leaked transaction' })).toBe(0);
      expect(service.reportingPool.counters.resets).toBe(1);
    });
  });

  describe('forRootAsync', () => {
    it('takes its options from ConfigService, the environment filling what code leaves out', async () => {
      const app = await Test.createTestingModule({
        imports: [
          DbPoolModule.forRootAsync({
            imports: [ConfigModule.forRoot({ ignoreEnvFile: true, load: [() => ({ DATABASE_URL: databaseUrl(), POOL: '2' })] })],
            inject: [ConfigService],
            useFactory: (config: ConfigService) => ({
              url: config.get('DATABASE_URL'),
              poolSize: config.get('POOL'),
              maxOverflow: 0,
              env: { DB_POOL_TIMEOUT: '7' },
            }),
          }),
        ],
      }).compile();
      await app.init();
      const config = app.get<DbPoolConfig>(getDbPoolConfigToken());
      expect(config).toMatchObject({ poolSize: 2, maxOverflow: 0, poolTimeoutMs: 7_000 });
      expect(app.get<DbPool>(getDbPoolToken()).totalCount).toBe(2);
      await app.close();
    });

    it('takes the registerAs namespace (dbPoolConfig.asProvider()) read from the environment', async () => {
      const saved = { ...process.env };
      Object.assign(process.env, { DB_POOL_SIZE: '3', DB_MAX_OVERFLOW: '1', DB_APPLICATION_NAME: `mod-env-${process.pid}` });
      try {
        const app = await Test.createTestingModule({ imports: [DbPoolModule.forRootAsync(dbPoolConfig.asProvider())] }).compile();
        await app.init();
        expect(app.get<DbPool>(getDbPoolToken()).state()).toMatchObject({ total: 3 });
        expect(await backendPids(admin, `mod-env-${process.pid}`)).toHaveLength(3);
        await app.close();
        // The server notices the closed sockets a moment later.
        expect(await eventually(async () => (await backendPids(admin, `mod-env-${process.pid}`)).length === 0, 3_000)).toBe(true);
      } finally {
        for (const key of ['DB_POOL_SIZE', 'DB_MAX_OVERFLOW', 'DB_APPLICATION_NAME']) if (!(key in saved)) delete process.env[key];
      }
    });

    it('fails start-up with the configuration error, listing every bad key', async () => {
      const build = Test.createTestingModule({
        imports: [
          DbPoolModule.forRootAsync({
            useFactory: () => ({ url: databaseUrl(), env: { DB_POOL_SIZE: 'abc', DB_POOL_PRE_PING: 'maybe' } }),
          }),
        ],
      }).compile();
      const err = await build.catch((e: unknown) => e);
      expect(err).toBeInstanceOf(DbPoolConfigError);
      expect((err as DbPoolConfigError).problems).toEqual([
        'DB_POOL_SIZE="abc": must be auto or an integer from 1 to 10000',
        'DB_POOL_PRE_PING="maybe": must be one of true, 1, yes, on, false, 0, no, off',
      ]);
    });
  });
});

describe('DbPoolModule start-up against a role with a connection limit below the pool size', () => {
  const role = `limited_${process.pid}`;
  let admin: pg.Client;
  beforeAll(async () => {
    admin = new pg.Client({ connectionString: databaseUrl() });
    await admin.connect();
    await admin.query(`DROP ROLE IF EXISTS ${role}`);
    await admin.query(`CREATE ROLE ${role} LOGIN PASSWORD 'limited' CONNECTION LIMIT 2`);
  });
  afterAll(async () => {
    await admin.query(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1`, [role]);
    await admin.query(`DROP ROLE IF EXISTS ${role}`);
    await admin.end();
  });

  it('starts with the connections it could open, warns, and gives a clear error past the limit without wedging', async () => {
    const url = new URL(databaseUrl());
    url.username = role;
    url.password = 'limited';
    const logs: string[] = [];
    const app = await Test.createTestingModule({
      imports: [DbPoolModule.forRoot({ url: url.toString(), poolSize: 4, maxOverflow: 0, poolTimeoutSeconds: 2, env: {} })],
    })
      .setLogger({ log: () => {}, error: () => {}, warn: (m: string) => logs.push(String(m)), debug: () => {}, verbose: () => {} })
      .compile();
    await app.init();
    try {
      const pool = app.get<DbPool>(getDbPoolToken());
      // PostgreSQL enforces a role's limit only approximately (CREATE ROLE, CONNECTION LIMIT): four
      // sessions starting at once may leave 1 to 3 open, and the refill may have opened more since
      // the warning counted them. The last of the four to start sees the others, so one is refused.
      expect(pool.totalCount).toBeGreaterThanOrEqual(1);
      expect(pool.totalCount).toBeLessThanOrEqual(3);
      expect(logs).toContainEqual(
        expect.stringMatching(/^db-pool "default": warmed [0-3] of 4 connections: .*too many connections for role/),
      );
      expect(logs.join('\n')).not.toContain('limited@');
      const held: pg.PoolClient[] = [];
      let err: Error | undefined;
      while (!err && held.length <= 3) {
        await pool.connect().then(
          (c) => held.push(c),
          (e: Error) => (err = e),
        );
      }
      expect(held.length).toBeLessThanOrEqual(3);
      if (!err) throw new Error('expected the role limit to refuse a connection');
      // The second failed attempt opened the connect circuit breaker: the error says so and names the last failure.
      expect(err.message).toMatch(/^db-pool "default": could not open a connection: .*too many connections for role/);
      held.forEach((c) => c.release());
      await expect(pool.query('SELECT 1')).resolves.toBeDefined(); // not wedged
    } finally {
      await app.close();
    }
  });
});
