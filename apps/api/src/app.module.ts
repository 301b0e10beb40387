import { type DynamicModule, Module } from '@nestjs/common';
import { APP_FILTER } from '@nestjs/core';
import { TypeOrmModule } from '@nestjs/typeorm';
import { DbPoolExceptionFilter, type DbPoolOptions, DbPoolModule } from '@db-pool/db-pool';
import type { ApiEnvironment } from './environment.js';
import { HealthModule } from './health/health.module.js';
import { Item } from './items/item.entity.js';
import { ItemsModule } from './items/items.module.js';
import { CreateItems1764200000000 } from './migrations/1764200000000-create-items.js';
import { AddItemsIdempotencyKey1796500000000 } from './migrations/1796500000000-add-items-idempotency-key.js';
import { StartupMigrations } from './migrations/run-migrations.js';

/**
 * The api's TypeORM needs: its entities and migrations. The migrations run at start-up under an
 * advisory lock ({@link StartupMigrations}), not through TypeORM's `migrationsRun`, which fails
 * when replicas start together on a new database.
 */
export const apiTypeOrmOptions: DbPoolOptions['typeorm'] = {
  entities: [Item],
  migrations: [CreateItems1764200000000, AddItemsIdempotencyKey1796500000000],
};

@Module({})
export class AppModule {
  /**
   * `environment` is what main.ts read and checked at start-up (nothing else reads the process
   * environment); `overrides` lets tests set pool options in code (they win over it);
   * `extraPools` registers further named pools next to the default one.
   */
  static register(
    overrides: DbPoolOptions = {},
    extraPools: DbPoolOptions[] = [],
    environment: Pick<ApiEnvironment, 'dbPoolEnv' | 'shutdownDelayMs'> = { dbPoolEnv: {}, shutdownDelayMs: 0 },
  ): DynamicModule {
    return {
      module: AppModule,
      imports: [
        DbPoolModule.forRoot({ env: environment.dbPoolEnv, ...overrides, typeorm: { ...apiTypeOrmOptions, ...overrides.typeorm } }),
        ...extraPools.map((options) => DbPoolModule.forRoot(options)),
        ItemsModule,
        HealthModule.register(environment.shutdownDelayMs),
      ],
      providers: [
        StartupMigrations,
        // An exhausted or overloaded pool, a passed deadline, an unreachable server: 503 with Retry-After, not 500.
        { provide: APP_FILTER, useClass: DbPoolExceptionFilter },
      ],
    };
  }

  /**
   * The same items routes on a plain `TypeOrmModule.forRoot` with TypeORM's and pg's defaults
   * (pool of 10, no warm-up, no pre-ping, no reset on return): the baseline the HTTP load test
   * (`nx run loadtest:http`) measures db-pool against. Not used by `npm start`.
   */
  static baseline(url: string): DynamicModule {
    return {
      module: AppModule,
      imports: [TypeOrmModule.forRoot({ type: 'postgres', url, ...apiTypeOrmOptions }), ItemsModule],
      providers: [StartupMigrations],
    };
  }
}
