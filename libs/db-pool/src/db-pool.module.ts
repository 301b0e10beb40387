import { type DynamicModule, Logger, Module } from '@nestjs/common';
import { TypeOrmModule, getDataSourceToken } from '@nestjs/typeorm';
import { DataSource, type DataSourceOptions } from 'typeorm';
import type { DbPoolConfig, DbPoolOptions } from './config/db-pool.options.js';
import { DEFAULT_POOL_NAME, describeConfig, resolveDbPoolConfig } from './config/resolve-config.js';
import { ASYNC_OPTIONS_TYPE, ConfigurableModuleClass, DB_POOL_MODULE_OPTIONS, OPTIONS_TYPE } from './db-pool.module-definition.js';
import { DbPoolCoreModule } from './db-pool-core.module.js';
import { PoolMonitor } from './monitor/pool-monitor.js';
import { DbPoolRegistry } from './monitor/pool-registry.js';
import type { DbPool } from './pool/db-pool.js';
import { poolOf, toTypeOrmOptions } from './pool/typeorm-options.js';
import { getDbPoolConfigToken, getDbPoolToken, getPoolMonitorToken } from './tokens.js';

const logger = new Logger('DbPool');

/** Holds one pool's resolved configuration, so TypeORM's async factory can inject it. */
@Module({})
class DbPoolConfigModule {}

/**
 * Registers a TypeORM DataSource (through `@nestjs/typeorm`, so `TypeOrmModule.forFeature` and
 * `@InjectRepository` work as usual) whose connections come from a {@link DbPool}, warmed
 * before the application starts. Import it once per named pool.
 */
@Module({})
export class DbPoolModule extends ConfigurableModuleClass {
  static override forRoot(options: typeof OPTIONS_TYPE = {}): DynamicModule {
    return withPool(super.forRoot(options), options.name ?? DEFAULT_POOL_NAME);
  }

  static override forRootAsync(options: typeof ASYNC_OPTIONS_TYPE): DynamicModule {
    return withPool(super.forRootAsync(options), options.name ?? DEFAULT_POOL_NAME);
  }
}

function withPool(base: DynamicModule, name: string): DynamicModule {
  const configToken = getDbPoolConfigToken(name);
  const configModule: DynamicModule = {
    module: DbPoolConfigModule,
    imports: base.imports ?? [],
    providers: [
      ...(base.providers ?? []),
      {
        provide: configToken,
        inject: [DB_POOL_MODULE_OPTIONS],
        useFactory: (options: DbPoolOptions): DbPoolConfig => {
          const config = resolveDbPoolConfig({ ...options, name });
          logger.log(describeConfig(config));
          return config;
        },
      },
    ],
    exports: [configToken],
  };
  const typeOrm = TypeOrmModule.forRootAsync({
    name: name === DEFAULT_POOL_NAME ? undefined : name,
    imports: [configModule],
    inject: [configToken],
    useFactory: (config: DbPoolConfig) => toTypeOrmOptions(config, logger),
    dataSourceFactory: async (options) => {
      const dataSource = await new DataSource(options as DataSourceOptions).initialize();
      const pool = poolOf(dataSource);
      try {
        await pool.warmUp();
      } catch (err) {
        // The server answered TypeORM, so it is reachable: start with what could be opened
        // (a role's CONNECTION LIMIT, say) rather than not at all, and say so.
        logger.warn(
          `db-pool "${name}": warmed ${pool.totalCount} of ${pool.settings.poolSize} connections: ${(err as Error).message}; ` +
            `the pool opens more on demand, up to ${pool.settings.poolSize + pool.settings.maxOverflow}`,
        );
      }
      return dataSource;
    },
  });
  return {
    module: DbPoolModule,
    global: true,
    imports: [DbPoolCoreModule, configModule, typeOrm],
    providers: [
      {
        provide: getDbPoolToken(name),
        inject: [getDataSourceToken(name === DEFAULT_POOL_NAME ? undefined : name)],
        useFactory: poolOf,
      },
      {
        provide: getPoolMonitorToken(name),
        inject: [getDbPoolToken(name), configToken, DbPoolRegistry],
        useFactory: (pool: DbPool, config: DbPoolConfig, registry: DbPoolRegistry) => {
          const monitor = new PoolMonitor(pool, config, logger);
          registry.add(monitor);
          return monitor;
        },
      },
    ],
    exports: [configModule, getDbPoolToken(name), getPoolMonitorToken(name)],
  };
}
