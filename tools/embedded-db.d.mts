export function freePort(): Promise<number>;

export interface EmbeddedPostgres {
  url: string;
  port: number;
  host: string;
  user: string;
  password: string;
  database: string;
  dataDir: string;
  server: { start(): Promise<void>; stop(): Promise<void> };
  stop(): Promise<void>;
}

export function startEmbeddedPostgres(options?: {
  user?: string;
  password?: string;
  authMethod?: 'scram-sha-256' | 'password' | 'md5' | 'trust';
  postgresFlags?: string[];
  database?: string;
  quiet?: boolean;
}): Promise<EmbeddedPostgres>;
