import { type DynamicModule, Logger, Module } from '@nestjs/common';
import { TypeOrmModule } from '@nestjs/typeorm';
import type { DbPoolConfig, DbPoolOptions } from './config/db-pool.options.js';
import { DEFAULT_POOL_NAME, describeConfig, resolveDbPoolConfig } from './config/resolve-config.js';
import { ASYNC_OPTIONS_TYPE, ConfigurableModuleClass, DB_POOL_MODULE_OPTIONS, OPTIONS_TYPE } from './db-pool.module-definition.js';
import { DbPoolCoreModule } from './db-pool-core.module.js';
import { PoolMonitor } from './monitor/pool-monitor.js';
import { DbPoolRegistry } from './monitor/pool-registry.js';
import { createDbPool, createReplicaRouter } from './create-db-pool.js';
import type { ReplicaRouter } from './pool/replicas.js';
import type { DbPool } from './pool/db-pool.js';
import { DbPoolDataSource, toTypeOrmOptions } from './pool/typeorm-options.js';
import { getDbPoolConfigToken, getDbPoolReplicasToken, getDbPoolToken, getPoolMonitorToken } from './tokens.js';

const logger = new Logger('DbPool');

/** Holds one pool's resolved configuration and the pool, so TypeORM's async factory can inject them. */
@Module({})
class DbPoolConfigModule {}

/**
 * Registers a TypeORM DataSource (through `@nestjs/typeorm`, so `TypeOrmModule.forFeature` and
 * `@InjectRepository` work as usual) whose connections come from a {@link DbPool} built by
 * {@link createDbPool}, warmed before the application starts. Import it once per named pool.
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
  const poolToken = getDbPoolToken(name);
  const replicasToken = getDbPoolReplicasToken(name);
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
      {
        provide: poolToken,
        // After the configuration: its errors and its start-up line come first.
        inject: [DB_POOL_MODULE_OPTIONS, configToken],
        useFactory: (options: DbPoolOptions): Promise<DbPool> => createDbPool({ logger, ...options, name }),
      },
      {
        provide: replicasToken,
        inject: [DB_POOL_MODULE_OPTIONS, poolToken],
        useFactory: async (options: DbPoolOptions, pool: DbPool): Promise<ReplicaRouter | null> =>
          (await createReplicaRouter({ logger, ...options, name }, pool)) ?? null,
      },
    ],
    exports: [configToken, poolToken, replicasToken],
  };
  // TypeORM ends the pool when the DataSource is destroyed (application shutdown).
  const typeOrm = TypeOrmModule.forRootAsync({
    name: name === DEFAULT_POOL_NAME ? undefined : name,
    imports: [configModule],
    inject: [configToken, poolToken, replicasToken],
    useFactory: (config: DbPoolConfig, pool: DbPool, replicas: ReplicaRouter | null) =>
      toTypeOrmOptions(config, pool, replicas ?? undefined),
    // Its destroy() lets requests in flight finish (DB_POOL_SHUTDOWN_GRACE) before TypeORM releases their runners.
    dataSourceFactory: async (options) => new DbPoolDataSource(options!),
  });
  return {
    module: DbPoolModule,
    global: true,
    imports: [DbPoolCoreModule, configModule, typeOrm],
    providers: [
      {
        provide: getPoolMonitorToken(name),
        inject: [poolToken, configToken, DbPoolRegistry, replicasToken],
        useFactory: (pool: DbPool, config: DbPoolConfig, registry: DbPoolRegistry, replicas: ReplicaRouter | null) => {
          const monitor = new PoolMonitor(
            pool,
            config,
            logger,
            replicas ? { reads: () => replicas.readCounts(), positionReads: () => replicas.positionReads() } : {},
          );
          registry.add(monitor);
          // Each replica's pool has its own health entry and metrics, labelled by its name.
          replicas?.pools().forEach((replica, i) => {
            const replicaMonitor = new PoolMonitor(replica, replicas.configs[i], logger, { replica: () => replicas.status()[i] });
            registry.add(replicaMonitor);
            void replicaMonitor.start();
            replicas.onEnd(() => replicaMonitor.stop());
          });
          return monitor;
        },
      },
    ],
    exports: [configModule, getPoolMonitorToken(name)],
  };
}
