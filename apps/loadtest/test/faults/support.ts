import pg from 'pg';
import { createDbPool, type DbPool, resolveDbPoolConfig, type DbPoolConfig, type DbPoolOptions } from '@db-pool/db-pool';
import { startEmbeddedPostgres, type EmbeddedPostgres } from '../../../../tools/embedded-db.mjs';
import { startFaultProxy, type FaultProxy } from '../../../../tools/fault-proxy.mjs';

/** What a fault test owns: its own PostgreSQL (so it may stop and kill it) and a proxy in front. */
export interface FaultRig {
  db: EmbeddedPostgres;
  proxy: FaultProxy;
  /** The server's URL through the proxy. */
  url: string;
  logs: string[];
  pool(options?: Omit<DbPoolOptions, 'env' | 'url'>, direct?: boolean): Promise<{ pool: DbPool; config: DbPoolConfig }>;
  admin(): Promise<pg.Client>;
  backends(applicationName: string): Promise<number[]>;
}

let counter = 0;

/** Registers beforeAll/afterEach/afterAll hooks that give the file a {@link FaultRig}. */
export function faultRig(serverOptions: Parameters<typeof startEmbeddedPostgres>[0] = {}): () => FaultRig {
  let rig: FaultRig | undefined;
  const pools: DbPool[] = [];
  let adminClient: pg.Client | undefined;
  beforeAll(async () => {
    const db = await startEmbeddedPostgres(serverOptions);
    const proxy = await startFaultProxy({ port: db.port });
    const logs: string[] = [];
    const logger = {
      log: (m: string) => logs.push(`log ${m}`),
      warn: (m: string) => logs.push(`warn ${m}`),
      debug: (m: string) => logs.push(`debug ${m}`),
    };
    rig = {
      db,
      proxy,
      url: proxy.url(db.url),
      logs,
      async pool(options = {}, direct = false) {
        const name = `fault-${++counter}`;
        const all = {
          url: direct ? db.url : proxy.url(db.url),
          poolSize: 3,
          maxOverflow: 2,
          poolTimeoutSeconds: 5,
          shutdownGraceSeconds: 1,
          applicationName: name,
          env: {},
          logger,
          ...options,
          name,
        };
        const pool = await createDbPool(all);
        pools.push(pool);
        return { pool, config: resolveDbPoolConfig(all) };
      },
      async admin() {
        if (!adminClient) {
          const client = new pg.Client({ connectionString: db.url });
          const forget = () => {
            if (adminClient === client) adminClient = undefined;
          };
          client.on('error', forget);
          client.on('end', forget);
          await client.connect();
          adminClient = client;
        }
        return adminClient;
      },
      async backends(applicationName: string) {
        const { rows } = await (
          await rig!.admin()
        ).query<{ pid: number }>('SELECT pid FROM pg_stat_activity WHERE application_name = $1', [applicationName]);
        return rows.map((r) => r.pid);
      },
    };
  });
  afterEach(async () => {
    await rig?.proxy.setMode('pass');
    await Promise.all(
      pools
        .splice(0)
        .filter((p) => !p.ending)
        .map((p) => p.end()),
    );
  });
  afterAll(async () => {
    await adminClient?.end().catch(() => {});
    await rig?.proxy.close();
    await rig?.db.stop();
  });
  return () => rig!;
}
