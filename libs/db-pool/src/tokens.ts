import { Inject } from '@nestjs/common';
import { DEFAULT_POOL_NAME } from './config/resolve-config.js';

/** Injection token of the {@link DbPool} of a named pool. */
export function getDbPoolToken(name: string = DEFAULT_POOL_NAME): string {
  return `DbPool:${name}`;
}

/** Injection token of the validated {@link DbPoolConfig} of a named pool. */
export function getDbPoolConfigToken(name: string = DEFAULT_POOL_NAME): string {
  return `DbPoolConfig:${name}`;
}

/** Injection token of the {@link ReplicaRouter} of a named pool (undefined without DB_REPLICA_URLS). */
export function getDbPoolReplicasToken(name: string = DEFAULT_POOL_NAME): string {
  return `DbPoolReplicas:${name}`;
}

/** Injects the {@link DbPool} of a named pool. */
export const InjectDbPool = (name?: string) => Inject(getDbPoolToken(name));

/** Injects the validated {@link DbPoolConfig} of a named pool. */
export const InjectDbPoolConfig = (name?: string) => Inject(getDbPoolConfigToken(name));

/** Injection token of the {@link PoolMonitor} of a named pool. */
export function getPoolMonitorToken(name: string = DEFAULT_POOL_NAME): string {
  return `PoolMonitor:${name}`;
}

/** Injects the {@link PoolMonitor} of a named pool. */
export const InjectPoolMonitor = (name?: string) => Inject(getPoolMonitorToken(name));
