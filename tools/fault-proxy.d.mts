export type FaultMode = 'pass' | 'latency' | 'refuse' | 'blackhole' | 'freeze' | 'reset';

export interface FaultProxy {
  readonly port: number;
  readonly mode: FaultMode;
  readonly connections: number;
  readonly accepted: number;
  readonly statements: number;
  url(databaseUrl: string): string;
  setMode(mode: FaultMode, options?: { latencyMs?: number }): Promise<void>;
  close(): Promise<void>;
}

export function startFaultProxy(target: { host?: string; port: number }): Promise<FaultProxy>;
