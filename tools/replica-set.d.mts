import type pg from 'pg';

export interface ReplicaServer {
  readonly name: string;
  readonly port: number;
  readonly dataDir: string;
  /** postgres://postgres:postgres@127.0.0.1:<port>/postgres */
  readonly url: string;
  /** 127.0.0.1:<port> */
  readonly hostPort: string;
  readonly running: boolean;
  start(): Promise<void>;
  stop(mode?: 'fast' | 'immediate'): Promise<void>;
  query<R extends pg.QueryResultRow = pg.QueryResultRow>(text: string, values?: unknown[]): Promise<pg.QueryResult<R>>;
}

export interface ReplicaSet {
  readonly primary: ReplicaServer;
  readonly standby: ReplicaServer;
  streaming(): Promise<void>;
  caughtUp(): Promise<void>;
  promote(): Promise<void>;
  stop(): Promise<void>;
}

export function startReplicaSet(options?: { synchronous?: boolean; quiet?: boolean }): Promise<ReplicaSet>;
