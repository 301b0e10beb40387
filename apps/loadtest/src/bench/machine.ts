import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import { dirname, join } from 'node:path';
import pg from 'pg';

const require = createRequire(import.meta.url);

/** The installed version of a package, found by walking up from its entry point. */
function packageVersion(name: string): string {
  try {
    let dir = dirname(require.resolve(name));
    for (;;) {
      const file = join(dir, 'package.json');
      if (existsSync(file)) {
        const pkg = JSON.parse(readFileSync(file, 'utf8')) as { name?: string; version?: string };
        if (pkg.name === name) return pkg.version ?? 'unknown';
      }
      const parent = dirname(dir);
      if (parent === dir) return 'unknown';
      dir = parent;
    }
  } catch {
    return 'unknown';
  }
}

export interface ServerInfo {
  version: string;
  maxConnections: number;
  clientConnections: number;
}

export async function serverInfo(url: string): Promise<ServerInfo> {
  const client = new pg.Client({ connectionString: url, application_name: 'bench-admin' });
  await client.connect();
  try {
    const { rows } = await client.query<{ version: string; max: number; used: number }>(
      `SELECT version() AS version, current_setting('max_connections')::int AS max,
              (SELECT count(*)::int FROM pg_stat_activity WHERE backend_type = 'client backend') AS used`,
    );
    return { version: rows[0].version, maxConnections: rows[0].max, clientConnections: rows[0].used };
  } finally {
    await client.end();
  }
}

export function machineInfo(extra: Record<string, unknown>): Record<string, unknown> {
  const cpus = os.cpus();
  return {
    cpu_model: cpus[0]?.model ?? 'unknown',
    cpu_count: cpus.length,
    memory_gb: Math.round(os.totalmem() / 2 ** 30),
    os: `${os.type()} ${os.release()} ${os.arch()}`,
    node_version: process.version,
    ...extra,
    packages: { pg: packageVersion('pg'), postgres: packageVersion('postgres'), typeorm: packageVersion('typeorm') },
  };
}
